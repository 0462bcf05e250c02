"""Simulated serving logs for model evaluation: a live model, a shadow, a canary.

Pure (numpy, pyarrow). A binary classifier serves every request from one of
two arms (the stable model and a canary taking a share of the traffic); a
shadow model answers the same requests unseen. Each model is right with a
set probability, the shadow's mistakes correlated with the live model's (as
two versions of one model are); the ground truth arrives for a share of the
requests. The canary may be slower (its latency scaled). The same draws are
rendered as the joined requests (`requests_table`, for simulations of the
statistics) or as JSON log lines (`log_lines`, for the pipeline).
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pyarrow as pa

from simulation import simulate


@dataclasses.dataclass(frozen=True)
class ModelScenario:
  experiment_id: str = "checkout-model"
  requests: int = 30_000
  positive_rate: float = 0.3
  truth_rate: float = 0.5  # share of requests whose truth arrives
  live_accuracy: float = 0.85
  shadow_arm: str | None = "shadow-v3"
  shadow_accuracy: float = 0.83
  # Probability that the shadow is right or wrong exactly when the live
  # model is; otherwise independently.
  shadow_correlation: float = 0.8
  stable_arm: str = "stable"
  canary_arm: str | None = "canary-v3"
  canary_share: float = 0.1
  canary_latency_factor: float = 1.0
  latency_median_ms: float = 40.0
  latency_sigma: float = 0.4
  error_rate: float = 0.01
  reward_rate: float = 0.1
  start: float = simulate.Scenario().start
  duration_s: float = 86_400.0
  seed: int = 7


def _scores(rng, truth: np.ndarray, correct: np.ndarray) -> np.ndarray:
  """Probabilities of class 1 that are right (> 0.5 on the truth's side)
  exactly where `correct`."""
  margin = rng.uniform(0.01, 0.49, len(truth))
  says_one = truth == correct  # right about a 1, or wrong about a 0
  return np.round(np.where(says_one, 0.5 + margin, 0.5 - margin), 4)


def draw(scenario: ModelScenario) -> dict:
  """Every request's draws, as numpy arrays."""
  rng = np.random.default_rng(scenario.seed)
  n = scenario.requests
  truth = (rng.random(n) < scenario.positive_rate).astype(np.int64)
  live_draw = rng.random(n)
  live_correct = live_draw < scenario.live_accuracy
  same = rng.random(n) < scenario.shadow_correlation
  shadow_draw = np.where(same, live_draw, rng.random(n))
  shadow_correct = shadow_draw < scenario.shadow_accuracy
  is_canary = (rng.random(n) < scenario.canary_share) if (
      scenario.canary_arm) else np.zeros(n, bool)
  latency = rng.lognormal(np.log(scenario.latency_median_ms),
                          scenario.latency_sigma, n)
  latency = np.round(np.where(is_canary,
                              latency * scenario.canary_latency_factor,
                              latency), 3)
  return {
      "ts": np.sort(scenario.start + rng.uniform(0, scenario.duration_s, n)),
      "truth": truth, "has_truth": rng.random(n) < scenario.truth_rate,
      "live_score": _scores(rng, truth, live_correct),
      "shadow_score": _scores(rng, truth, shadow_correct),
      "is_canary": is_canary, "latency": latency,
      "error": rng.random(n) < scenario.error_rate,
      "reward": (rng.random(n) < scenario.reward_rate).astype(float),
      "truth_delay": rng.exponential(600.0, n)}


def _arms(scenario: ModelScenario, drawn: dict) -> np.ndarray:
  return np.where(drawn["is_canary"], scenario.canary_arm or "",
                  scenario.stable_arm)


def requests_table(scenario: ModelScenario) -> pa.Table:
  """The requests as `JoinRequests` yields them (include_shadow, with
  prediction, policy, latency_ms, status, reward and truth)."""
  drawn = draw(scenario)
  n = scenario.requests
  ids = np.char.add(f"{scenario.experiment_id}-", np.arange(n).astype(str))
  outcome = lambda values: pa.StructArray.from_arrays(
      [pa.array(values, pa.float64()), pa.nulls(len(values), pa.string()),
       pa.nulls(len(values), pa.list_(pa.float64()))],
      names=["value", "label", "probabilities"])
  truth = pa.StructArray.from_arrays(
      [pa.array(drawn["truth"].astype(float)), pa.nulls(n, pa.string()),
       pa.nulls(n, pa.list_(pa.float64()))],
      names=["value", "label", "probabilities"],
      mask=pa.array(~drawn["has_truth"]))
  columns = {
      "request_id": pa.array(ids), "ts": pa.array(drawn["ts"]),
      "experiment_id": pa.array(np.full(n, scenario.experiment_id)),
      "arm": pa.array(_arms(scenario, drawn)),
      "shadow": pa.array(np.zeros(n, bool)),
      "prediction": outcome(drawn["live_score"]),
      "policy": pa.array(np.full(n, "canary" if scenario.canary_arm
                                 else "ab")),
      "latency_ms": pa.array(drawn["latency"]),
      "status": pa.array(np.where(drawn["error"], "error", "ok")),
      "reward": pa.array(np.where(drawn["has_truth"], drawn["reward"],
                                  np.nan), from_pandas=True),
      "truth": truth}
  live = pa.table(columns)
  if not scenario.shadow_arm:
    return live
  shadow = live.set_column(
      live.column_names.index("arm"), "arm",
      pa.array(np.full(n, scenario.shadow_arm))).set_column(
          live.column_names.index("shadow"), "shadow",
          pa.array(np.ones(n, bool))).set_column(
              live.column_names.index("prediction"), "prediction",
              outcome(drawn["shadow_score"]))
  return pa.concat_tables([live, shadow])


def log_lines(scenario: ModelScenario):
  """(prediction lines, feedback lines): the shadow logs each request after
  the live model; feedback carries the reward and the truth."""
  drawn = draw(scenario)
  arms = _arms(scenario, drawn)
  policy = "canary" if scenario.canary_arm else "ab"
  predictions, feedback = [], []
  for i in range(scenario.requests):
    request_id = f"{scenario.experiment_id}-{i}"
    record = {"request_id": request_id,
              "timestamp": round(float(drawn["ts"][i]), 3),
              "experiment_id": scenario.experiment_id, "arm": str(arms[i]),
              "policy": policy,
              "prediction": float(drawn["live_score"][i]),
              "latency_ms": float(drawn["latency"][i]),
              "status": "error" if drawn["error"][i] else "ok"}
    predictions.append(json.dumps(record))
    if scenario.shadow_arm:
      predictions.append(json.dumps({
          **record, "timestamp": record["timestamp"] + 0.05,
          "arm": scenario.shadow_arm, "shadow": True,
          "prediction": float(drawn["shadow_score"][i])}))
    if drawn["has_truth"][i]:
      feedback.append(json.dumps({
          "request_id": request_id,
          "timestamp": round(float(drawn["ts"][i] +
                                   drawn["truth_delay"][i]), 3),
          "reward": float(drawn["reward"][i]),
          "truth": int(drawn["truth"][i])}))
  return predictions, feedback

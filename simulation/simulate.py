"""A simulated model router and its serving logs, for demos, tests and benchmarks.

Pure (numpy). Requests are routed to arms with known true reward rates; some
get feedback after a delay. Optional messiness mirrors production logs:
re-sent feedback, late feedback, duplicate prediction logs, shadow traffic,
orphan feedback, Seldon-format feedback and malformed records.
"""

from __future__ import annotations

import dataclasses
import datetime
import json

import numpy as np


COUNTRIES = ("US", "DE", "FR", "JP", "BR", "IN")
COUNTRY_WEIGHTS = (0.35, 0.2, 0.15, 0.12, 0.1, 0.08)
PLATFORMS = ("ios", "android", "web")


@dataclasses.dataclass(frozen=True)
class Arm:
  name: str
  reward_rate: float
  weight: float = 1.0
  # Serving metrics, logged when the scenario has `serving_metrics`:
  latency_ms: float = 80.0  # mean serving latency (gamma, shape 4)
  error_rate: float = 0.01  # share of requests with an error status
  purchase_rate: float = 0.2  # share of rewarded requests with a purchase
  revenue_mean: float = 30.0  # mean purchase amount (log-normal)


@dataclasses.dataclass(frozen=True)
class Scenario:
  """One experiment behind one router, and how messy its logs are."""
  experiment_id: str = "homepage-ranker"
  policy: str = "thompson"
  arms: tuple = (Arm("control", 0.10), Arm("candidate-a", 0.13),
                 Arm("candidate-b", 0.08))
  requests: int = 10_000
  start: float = datetime.datetime(2026, 11, 21,
                                   tzinfo=datetime.timezone.utc).timestamp()
  duration_s: float = 86_400.0
  feedback_rate: float = 0.5  # share of requests that get any feedback
  mean_delay_s: float = 600.0
  duplicate_feedback: float = 0.0
  late_feedback: float = 0.0  # feedback delayed past the attribution window
  duplicate_predictions: float = 0.0
  shadow_arm: str | None = None  # a shadow copy scoring every request
  orphan_feedback: float = 0.0
  malformed: float = 0.0
  seldon_feedback: float = 0.0  # share of feedback in Seldon CloudEvent form
  late_delay_s: float = 3 * 86_400.0
  seed: int = 7
  # Log latency_ms, status, attributes (country, platform) and purchase
  # feedback ("metric": "purchase", reward = amount) too.
  serving_metrics: bool = False
  countries: int = len(COUNTRIES)  # how many of COUNTRIES requests come from


def _rfc3339(epoch: float) -> str:
  moment = datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc)
  return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


_MALFORMED = (
    '{"request_id": "broken", "timestamp": ',  # truncated line
    'not json at all',
    '[1, 2, 3]',
    '{"request_id": "x1", "experiment_id": "e", "arm": "a"}',  # no timestamp
    '{"request_id": "x2", "timestamp": "yesterday", "experiment_id": "e", "arm": "a"}',
    '{"request_id": "x3", "timestamp": 1700000000, "experiment_id": "e", "arm": 7}',
)
_MALFORMED_FEEDBACK = (
    '{"request_id": "x4", "timestamp": 1700000000, "reward": NaN}',
    '{"request_id": "x5", "timestamp": 1700000000, "reward": "1"}',
    '{"request_id": "x6", "timestamp": 1700000000}',
)
_MALFORMED_PREDICTION = (
    '{"request_id": "x7", "timestamp": 1700000000, "experiment_id": "e", "arm": "a", "propensity": 0}',
)


def _seldon_event(request_id: str, router: str, branch: int, reward: float,
                  ts: float) -> dict:
  data = {"request": {"data": {"ndarray": [[0.0]]}},
          "response": {"meta": {"puid": request_id,
                                "routing": {router: branch}}}}
  if reward != 0:  # Seldon's client (protobuf JSON) leaves a reward of 0 out.
    data["reward"] = reward
  return {"specversion": "1.0", "type": "io.seldon.serving.feedback",
          "id": f"fb-{request_id}", "source": "seldon", "time": _rfc3339(ts),
          "data": data}


def _serving_fields(scenario: Scenario, arm_index: np.ndarray):
  """Per request: latency_ms, status, attributes (from their own generator,
  so that the other columns stay as without serving metrics)."""
  rng = np.random.default_rng(scenario.seed + 1)
  n = len(arm_index)
  latency_mean = np.array([a.latency_ms for a in scenario.arms])[arm_index]
  latency = rng.gamma(4.0, latency_mean / 4.0)
  errors = rng.random(n) < np.array(
      [a.error_rate for a in scenario.arms])[arm_index]
  status = np.where(errors, np.where(rng.random(n) < 0.5, 500, 503), 200)
  weights = np.array(COUNTRY_WEIGHTS[:scenario.countries])
  country = rng.choice(scenario.countries, size=n, p=weights / weights.sum())
  platform = rng.integers(len(PLATFORMS), size=n)
  purchase = rng.random(n) < np.array(
      [a.purchase_rate for a in scenario.arms])[arm_index]
  revenue_mean = np.array([a.revenue_mean for a in scenario.arms])[arm_index]
  amount = rng.lognormal(np.log(revenue_mean) - 0.5 * 0.6**2, 0.6)
  return [{"latency_ms": round(float(latency[i]), 2),
           "status": int(status[i]),
           "attributes": {"country": COUNTRIES[country[i]],
                          "platform": PLATFORMS[platform[i]]}}
          for i in range(n)], purchase, amount


def generate(scenario: Scenario):
  """(prediction lines, feedback lines, truth) as JSON strings and a summary."""
  rng = np.random.default_rng(scenario.seed)
  n = scenario.requests
  weights = np.array([a.weight for a in scenario.arms], dtype=float)
  weights /= weights.sum()
  arm_index = rng.choice(len(scenario.arms), size=n, p=weights)
  ts = np.sort(scenario.start + rng.uniform(0, scenario.duration_s, n))
  rates = np.array([a.reward_rate for a in scenario.arms])
  rewarded = rng.random(n) < rates[arm_index]
  has_feedback = rng.random(n) < scenario.feedback_rate
  delay = rng.exponential(scenario.mean_delay_s, n)
  late = rng.random(n) < scenario.late_feedback
  delay[late] = scenario.late_delay_s
  ids = [f"{scenario.experiment_id}-{i:08d}" for i in range(n)]

  serving = purchase = amount = None
  if scenario.serving_metrics:
    serving, purchase, amount = _serving_fields(scenario, arm_index)
  predictions, feedback = [], []
  for i in range(n):
    arm = scenario.arms[arm_index[i]]
    record = {"request_id": ids[i], "timestamp": _rfc3339(ts[i]),
              "experiment_id": scenario.experiment_id, "arm": arm.name,
              "policy": scenario.policy,
              "propensity": round(float(weights[arm_index[i]]), 6),
              "user_id": f"user-{i % 997}",
              "prediction": round(float(rates[arm_index[i]]), 4),
              **(serving[i] if serving else {})}
    predictions.append(json.dumps(record))
    if scenario.shadow_arm:
      predictions.append(json.dumps(
          {**record, "request_id": ids[i] + "-shadow",
           "arm": scenario.shadow_arm, "shadow": True}))
  dup_pred = np.flatnonzero(rng.random(n) < scenario.duplicate_predictions)
  predictions.extend(predictions[i * (2 if scenario.shadow_arm else 1)]
                     for i in dup_pred)

  with_feedback = np.flatnonzero(has_feedback)
  seldon = rng.random(n) < scenario.seldon_feedback
  for i in with_feedback:
    reward = 1.0 if rewarded[i] else 0.0
    fb_ts = ts[i] + delay[i]
    if seldon[i]:
      line = json.dumps(_seldon_event(ids[i], scenario.experiment_id,
                                      int(arm_index[i]), reward, fb_ts))
    else:
      line = json.dumps({"request_id": ids[i], "timestamp": _rfc3339(fb_ts),
                         "reward": reward})
    feedback.append(line)
    if serving and rewarded[i] and purchase[i]:
      feedback.append(json.dumps({
          "request_id": ids[i], "timestamp": _rfc3339(fb_ts + 60.0),
          "reward": round(float(amount[i]), 2), "metric": "purchase"}))
  dup_fb = rng.random(len(feedback)) < scenario.duplicate_feedback
  feedback.extend(line for line, dup in zip(list(feedback), dup_fb) if dup)
  n_orphans = int(round(scenario.orphan_feedback * len(with_feedback)))
  feedback.extend(json.dumps({"request_id": f"unknown-{j}",
                              "timestamp": _rfc3339(scenario.start + j),
                              "reward": 1.0}) for j in range(n_orphans))
  n_bad_pred = int(round(scenario.malformed * len(predictions)))
  n_bad_fb = int(round(scenario.malformed * len(feedback)))
  bad_pred = _MALFORMED + _MALFORMED_PREDICTION
  bad_fb = _MALFORMED + _MALFORMED_FEEDBACK
  predictions.extend(bad_pred[j % len(bad_pred)] for j in range(n_bad_pred))
  feedback.extend(bad_fb[j % len(bad_fb)] for j in range(n_bad_fb))
  predictions = [predictions[j] for j in rng.permutation(len(predictions))]
  feedback = [feedback[j] for j in rng.permutation(len(feedback))]
  truth = {a.name: a.reward_rate for a in scenario.arms}
  return predictions, feedback, truth


def write_jsonl(path: str, lines) -> None:
  with open(path, "w", encoding="utf-8") as f:
    for line in lines:
      f.write(line)
      f.write("\n")

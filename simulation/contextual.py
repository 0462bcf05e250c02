"""A contextual bandit environment with known policy values, and its logs.

Pure (numpy). Each request has a context x, uniform on [-1, 1]^d; arm k pays
a Bernoulli reward of mean mu_k(x) = base_k + beta_k . x (kept within [0, 1]
by construction), so the best arm depends on the context. A policy's true
value, E_x[sum_k pi(k|x) mu_k(x)], is computed from the exact means over a
large fixed sample of contexts (no reward noise). `log_requests` routes
requests with a logging policy's probabilities and writes the prediction
(with `features` and `propensity`) and feedback records of the log contract.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Callable

import numpy as np

START = 1_795_000_000.0  # 2026-11-18, epoch seconds


@dataclasses.dataclass(frozen=True)
class Environment:
  arms: tuple = ("arm-a", "arm-b", "arm-c")
  base: tuple = (0.45, 0.50, 0.40)
  # Rows: arms; columns: context features.
  beta: tuple = ((0.30, 0.00), (-0.30, 0.00), (0.00, 0.35))
  experiment_id: str = "contextual-ranker"

  def __post_init__(self):
    base, beta = np.asarray(self.base), np.abs(np.asarray(self.beta))
    if np.any(base - beta.sum(axis=1) < 0) or np.any(
        base + beta.sum(axis=1) > 1):
      raise ValueError("every mean reward must stay within [0, 1]")

  @property
  def dim(self) -> int:
    return len(self.beta[0])

  def contexts(self, rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.uniform(-1.0, 1.0, (n, self.dim))

  def mean_reward(self, contexts: np.ndarray) -> np.ndarray:
    """(n, arms): mu_k(x)."""
    return np.asarray(self.base) + contexts @ np.asarray(self.beta).T

  def rewards(self, rng: np.random.Generator, contexts: np.ndarray,
              arm: np.ndarray) -> np.ndarray:
    mean = self.mean_reward(contexts)[np.arange(len(arm)), arm]
    return (rng.random(len(arm)) < mean).astype(np.float64)

  def true_value(self, probabilities: Callable, n: int = 200_000,
                 seed: int = 12345) -> float:
    """E_x sum_k pi(k|x) mu_k(x); `probabilities` maps contexts to (n, arms)."""
    contexts = self.contexts(np.random.default_rng(seed), n)
    return float(np.mean(np.sum(
        probabilities(contexts) * self.mean_reward(contexts), axis=1)))

  def best_value(self, n: int = 200_000, seed: int = 12345) -> float:
    contexts = self.contexts(np.random.default_rng(seed), n)
    return float(np.mean(self.mean_reward(contexts).max(axis=1)))


@dataclasses.dataclass
class Logged:
  """Requests routed by a logging policy: what the router logged."""
  contexts: np.ndarray  # (n, d)
  arm: np.ndarray  # (n,) index
  propensity: np.ndarray  # (n,)
  reward: np.ndarray  # (n,)


def route(env: Environment, rng: np.random.Generator, n: int,
          probabilities: Callable) -> Logged:
  """n requests: draw contexts, an arm by the policy, then its reward."""
  contexts = env.contexts(rng, n)
  probs = probabilities(contexts)
  cumulative = np.cumsum(probs, axis=1)
  draw = rng.random((n, 1)) * cumulative[:, -1:]
  arm = np.minimum((draw >= cumulative).sum(axis=1), len(env.arms) - 1)
  return Logged(contexts, arm, probs[np.arange(n), arm],
                env.rewards(rng, contexts, arm))


def log_records(env: Environment, logged: Logged, start: float = START,
                prefix: str = "c", policy: str = "logging"):
  """(prediction records, feedback records): one feedback per reward of 1."""
  predictions, feedback = [], []
  for i in range(len(logged.arm)):
    request_id = f"{prefix}{i}"
    ts = start + i * 0.5
    predictions.append(dict(
        request_id=request_id, timestamp=ts,
        experiment_id=env.experiment_id, arm=env.arms[logged.arm[i]],
        policy=policy, propensity=float(logged.propensity[i]),
        features=[round(float(v), 6) for v in logged.contexts[i]]))
    if logged.reward[i]:
      feedback.append(dict(request_id=request_id, timestamp=ts + 30.0,
                           reward=1.0))
  return predictions, feedback


def write_jsonl(path: str, records) -> None:
  with open(path, "w", encoding="utf-8") as out:
    for record in records:
      out.write(json.dumps(record) + "\n")

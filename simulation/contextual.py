"""A contextual bandit environment with known policy values, and its logs.

Pure (numpy). Each request has a context x, uniform on [-1, 1]^d; arm k pays
a Bernoulli reward of mean mu_k(x) = base_k + beta_k . x (kept within [0, 1]
by construction), so the best arm depends on the context. A policy's true
value, E_x[sum_k pi(k|x) mu_k(x)], is computed from the exact means over a
large fixed sample of contexts (no reward noise). `route` serves
requests with a policy's probabilities, `log_records` writes what the router
logged (predictions with `features` and `propensity`, feedback), and
`run_rounds` repeats route -> log -> state -> route with the pure core's
router state (contextual or not) between rounds, measuring regret.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Callable

import numpy as np

from transforms.decisions import router_state
from transforms.decisions import stats
from transforms.policy import linear

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


def concat(parts) -> Logged:
  return Logged(*(np.concatenate([getattr(p, f) for p in parts])
                  for f in ("contexts", "arm", "propensity", "reward")))


def with_intercept(contexts: np.ndarray) -> np.ndarray:
  """x as the pipeline reads it from the logs (features rounded as logged)."""
  return np.hstack([np.ones((len(contexts), 1)), np.round(contexts, 6)])


def state_of(env: Environment, logged: Logged, policy: str,
             alpha: float = 1.0, ridge_lambda: float = 1.0,
             epsilon: float = 0.0) -> dict:
  """The router state reward_batch --contextual_policy writes for these logs
  (feedback on every reward of 1, none on 0: missing rewards count 0)."""
  totals, models = [], []
  x = with_intercept(logged.contexts)
  for k, arm in enumerate(env.arms):
    rows = logged.arm == k
    reward = logged.reward[rows]
    totals.append(stats.ArmTotals(arm, int(rows.sum()), int(rows.sum()),
                                  float(reward.sum()),
                                  float((reward * reward).sum()), True))
    models.append(linear.ridge(linear.LinearStats.of(
        x[rows], reward, np.zeros(rows.sum())), ridge_lambda, arm))
  totals = [t for t in totals if t.samples]
  state = router_state.router_state(env.experiment_id, totals,
                                    stats.experiment_statistics(totals))
  state["contextual"] = linear.state_fields(
      models, policy, alpha, ridge_lambda, 1.0, epsilon, "features",
      [f"features[{i}]" for i in range(env.dim)])
  return state


def policy_of(env: Environment, state: dict | None, contextual: bool):
  """contexts -> (n, arms) serving probabilities of a router on `state`.

  No state yet: uniform. Contextual: the state's policy on its models.
  Context-free: the state's recommended split (Thompson sampling's split).
  """
  arms = len(env.arms)
  if state is None:
    return lambda c: np.full((len(c), arms), 1 / arms)
  if contextual:
    fields = state["contextual"]
    models = linear.models_from_state(fields)
    return lambda c: linear.action_probabilities(
        models, with_intercept(c), fields["policy"], fields["alpha"],
        fields["epsilon"])
  share = {a["arm"]: a["traffic_share"] for a in state["arms"]}
  split = np.array([share.get(arm, 0.0) for arm in env.arms])
  return lambda c: np.broadcast_to(split / split.sum(), (len(c), arms))


def run_rounds(env: Environment, contextual: bool, rounds: int = 20,
               requests: int = 500, seed: int = 0, make_state=None):
  """Cumulative expected regret of `rounds` of route -> log -> new state.

  `make_state(round, logged so far)` returns the next state (default: the
  pure core's `state_of` with linear Thompson sampling).
  """
  make_state = make_state or (lambda _, logged: state_of(
      env, logged, "linear_thompson", epsilon=0.02))
  rng = np.random.default_rng(seed)
  state, parts, regret = None, [], 0.0
  for round_index in range(rounds):
    logged = route(env, rng, requests, policy_of(env, state, contextual))
    mean = env.mean_reward(logged.contexts)
    regret += float(np.sum(mean.max(axis=1) -
                           mean[np.arange(requests), logged.arm]))
    parts.append(logged)
    state = make_state(round_index, concat(parts))
  return regret, state

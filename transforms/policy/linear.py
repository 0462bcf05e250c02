"""Linear bandit statistics per arm, the ridge model and the router's action probabilities.

Pure numpy/scipy, no Beam. `LinearStats` holds one arm's sufficient
statistics, A = sum w x x^T, b = sum w r x, n = sum w, with each record
weighted by `decay` to the power of its age in days (relative to the newest
record seen, so merging rescales the older side: any merge order gives the
same state). `ridge` solves (A + lambda I) theta = b; `action_probabilities`
turns per-arm models into the probability that a greedy, LinUCB or linear
Thompson sampling router serves each arm for a context.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Mapping, Sequence

import numpy as np
import scipy.linalg
import scipy.special

DAY_S = 86_400.0
POLICIES = ("greedy", "linucb", "linear_thompson")
# Linear Thompson sampling probabilities by composite Gauss-Legendre
# quadrature: an arm's score density and CDF change fastest within a few
# spreads of its mean, so each row's nodes lie between the breakpoints
# mean_k + c * scale_k of every arm (accurate to about 1e-6 however different
# the arms' spreads are; one Gauss-Hermite rule around the served arm erred by
# up to 0.03 when another arm's spread was 10-100 times narrower).
THOMPSON_BREAKS = (-6.0, -3.0, -1.5, 0.0, 1.5, 3.0, 6.0)
THOMPSON_NODES_PER_PIECE = 4
_LEGENDRE_NODES, _LEGENDRE_WEIGHTS = np.polynomial.legendre.leggauss(
    THOMPSON_NODES_PER_PIECE)
_THOMPSON_CHUNK_ROWS = 4096
# A score spread below this is treated as this: alpha = 0 makes Thompson
# sampling greedy, which the quadrature still handles.
_MIN_SCALE = 1e-12

@dataclasses.dataclass
class LinearStats:
  """One arm's mergeable sufficient statistics (weights relative to ts_ref)."""
  a: np.ndarray  # (d, d): sum w x x^T
  b: np.ndarray  # (d,): sum w r x
  n: float = 0.0  # sum w
  count: int = 0  # records, unweighted
  ts_ref: float = -math.inf  # the newest record's time: its weight is 1

  @classmethod
  def empty(cls, dim: int) -> "LinearStats":
    return cls(np.zeros((dim, dim)), np.zeros(dim))

  @classmethod
  def of(cls, x: np.ndarray, reward: np.ndarray, ts: np.ndarray,
         decay: float = 1.0) -> "LinearStats":
    """The statistics of contexts `x` (n, d), their rewards and times."""
    if len(ts) == 0:
      return cls.empty(x.shape[1])
    ts_ref = float(np.max(ts))
    weight = _decay_weights(ts_ref - ts, decay)
    weighted = x * weight[:, None]
    return cls(weighted.T @ x, weighted.T @ reward, float(weight.sum()),
               len(ts), ts_ref)

  @property
  def dim(self) -> int:
    return len(self.b)

  def aged(self, ts_ref: float, decay: float) -> "LinearStats":
    """The same statistics with weights relative to a later `ts_ref`."""
    if self.count == 0 or ts_ref == self.ts_ref:
      return dataclasses.replace(self, ts_ref=max(ts_ref, self.ts_ref))
    factor = float(_decay_weights(np.array([ts_ref - self.ts_ref]), decay)[0])
    return LinearStats(self.a * factor, self.b * factor, self.n * factor,
                       self.count, ts_ref)

  def merge(self, other: "LinearStats", decay: float = 1.0) -> "LinearStats":
    if other.count == 0:
      return self
    if self.count == 0:
      return other
    ts_ref = max(self.ts_ref, other.ts_ref)
    mine, theirs = self.aged(ts_ref, decay), other.aged(ts_ref, decay)
    return LinearStats(mine.a + theirs.a, mine.b + theirs.b,
                       mine.n + theirs.n, mine.count + theirs.count, ts_ref)


def _decay_weights(age_s: np.ndarray, decay: float) -> np.ndarray:
  if decay == 1.0:
    return np.ones(len(age_s))
  return np.power(decay, np.asarray(age_s, np.float64) / DAY_S)


def check_decay(decay: float) -> float:
  if not 0.0 < decay <= 1.0:
    raise ValueError(f"decay must be in (0, 1]: {decay}")
  return decay


def merge_all(stats: Sequence[LinearStats], decay: float = 1.0,
              dim: int | None = None) -> LinearStats:
  total = LinearStats.empty(dim if dim is not None else stats[0].dim)
  for part in stats:
    total = total.merge(part, decay)
  return total


@dataclasses.dataclass(frozen=True)
class ArmModel:
  """What a router needs of one arm: theta and the Cholesky factor of A + lambda I."""
  arm: str
  theta: np.ndarray  # (d,)
  cholesky: np.ndarray  # (d, d) lower triangular L, L L^T = A + lambda I
  n: float = 0.0
  count: int = 0


def ridge(stats: LinearStats, ridge_lambda: float, arm: str = "") -> ArmModel:
  """theta = (A + lambda I)^-1 b, through the Cholesky factor of A + lambda I."""
  if ridge_lambda <= 0:
    raise ValueError(f"ridge_lambda must be > 0: {ridge_lambda}")
  gram = stats.a + ridge_lambda * np.eye(stats.dim)
  lower = np.linalg.cholesky(gram)
  theta = scipy.linalg.cho_solve((lower, True), stats.b)
  return ArmModel(arm, theta, lower, stats.n, stats.count)


def experiment_models(arms, ridge_lambda: float,
                      decay: float = 1.0) -> list[ArmModel]:
  """(arm, LinearStats) of one experiment -> its ridge models in arm order.

  Every arm is aged to the experiment's newest request first, so an arm
  that has not been served lately loses weight (and gains uncertainty).
  """
  arms = sorted(arms, key=lambda pair: pair[0])
  newest = max(stats.ts_ref for _, stats in arms)
  return [ridge(stats.aged(newest, decay), ridge_lambda, arm)
          for arm, stats in arms]


def _uncertainty(model: ArmModel, x: np.ndarray) -> np.ndarray:
  """sqrt(x^T (A + lambda I)^-1 x) = |L^-1 x| for each row of x."""
  inverse = scipy.linalg.solve_triangular(model.cholesky,
                                          np.eye(len(model.theta)), lower=True)
  z = x @ inverse.T
  return np.sqrt(np.einsum("ij,ij->i", z, z))


def expected_rewards(models: Sequence[ArmModel], x: np.ndarray) -> np.ndarray:
  """(n, arms): each arm's ridge estimate x . theta."""
  return np.stack([x @ m.theta for m in models], axis=1)


def _argmax_one_hot(scores: np.ndarray) -> np.ndarray:
  """Ties go to the first arm (arms are in name order)."""
  probabilities = np.zeros_like(scores)
  probabilities[np.arange(len(scores)), np.argmax(scores, axis=1)] = 1.0
  return probabilities


def thompson_probabilities(mean: np.ndarray, scale: np.ndarray) -> np.ndarray:
  """P(arm k has the highest score) for independent normal scores.

  mean, scale: (n, arms). P_k = integral of phi_k(s) prod_{j != k} Phi_j(s)
  ds, by composite Gauss-Legendre quadrature (`THOMPSON_BREAKS`); rows sum
  to 1.
  """
  scale = np.maximum(scale, _MIN_SCALE)
  return np.concatenate([
      _thompson_rows(mean[start:start + _THOMPSON_CHUNK_ROWS],
                     scale[start:start + _THOMPSON_CHUNK_ROWS])
      for start in range(0, len(mean), _THOMPSON_CHUNK_ROWS)
  ]) if len(mean) else np.zeros(mean.shape)


def _thompson_rows(mean: np.ndarray, scale: np.ndarray) -> np.ndarray:
  n, arms = mean.shape
  breaks = np.sort((mean[:, :, None] + scale[:, :, None] *
                    np.asarray(THOMPSON_BREAKS)).reshape(n, -1), axis=1)
  half = (breaks[:, 1:] - breaks[:, :-1]) / 2
  nodes = (breaks[:, :-1] + half)[..., None] + half[..., None] * _LEGENDRE_NODES
  weights = half[..., None] * _LEGENDRE_WEIGHTS
  z = (nodes[:, None] - mean[:, :, None, None]) / scale[:, :, None, None]
  cdf = scipy.special.ndtr(z)
  density = np.exp(-0.5 * z * z) / (math.sqrt(2 * math.pi) *
                                     scale[:, :, None, None])
  probabilities = np.empty((n, arms))
  for k in range(arms):
    integrand = density[:, k] * weights
    for j in range(arms):
      if j != k:
        integrand = integrand * cdf[:, j]
    probabilities[:, k] = integrand.sum(axis=(1, 2))
  return probabilities / probabilities.sum(axis=1, keepdims=True)


def action_probabilities(models: Sequence[ArmModel], x: np.ndarray,
                         policy: str, alpha: float = 1.0,
                         epsilon: float = 0.0) -> np.ndarray:
  """(n, arms): the probability each arm is served for each context row.

  greedy: the arm of highest x . theta. linucb: the arm of highest
  x . theta + alpha sqrt(x^T (A + lambda I)^-1 x). linear_thompson: the
  probability that the arm's score, drawn from N(x . theta, alpha^2 x^T
  (A + lambda I)^-1 x), is the highest. `epsilon` of the traffic is spread
  evenly over the arms (so a deterministic policy still explores).
  """
  if policy not in POLICIES:
    raise ValueError(f"policy must be one of {POLICIES}: {policy}")
  if not 0.0 <= epsilon <= 1.0:
    raise ValueError(f"epsilon must be in [0, 1]: {epsilon}")
  mean = expected_rewards(models, x)
  if policy == "greedy":
    chosen = _argmax_one_hot(mean)
  else:
    spread = np.stack([_uncertainty(m, x) for m in models], axis=1)
    if policy == "linucb":
      chosen = _argmax_one_hot(mean + alpha * spread)
    else:
      chosen = thompson_probabilities(mean, alpha * spread)
  return (1.0 - epsilon) * chosen + epsilon / len(models)


def state_fields(models: Sequence[ArmModel], policy: str, alpha: float,
                 ridge_lambda: float, decay: float, epsilon: float,
                 context_source: str, context_features: Sequence[str]) -> dict:
  """The `contextual` field of a router_state record (table and JSON)."""
  return dict(
      policy=policy, alpha=alpha, ridge_lambda=ridge_lambda, decay=decay,
      epsilon=epsilon, context_source=context_source,
      context_features=list(context_features),
      dim=len(models[0].theta) if models else None,
      arms=[dict(arm=m.arm, n=m.n, count=m.count,
                 theta=[float(v) for v in m.theta],
                 cholesky=[float(v) for v in m.cholesky.ravel()])
            for m in models])


def models_from_state(contextual: Mapping) -> list[ArmModel]:
  """The per-arm models of a router_state record's `contextual` field."""
  models = []
  for arm in contextual["arms"]:
    theta = np.asarray(arm["theta"], np.float64)
    lower = np.asarray(arm["cholesky"], np.float64).reshape(len(theta),
                                                            len(theta))
    models.append(ArmModel(arm["arm"], theta, lower, arm.get("n", 0.0),
                           arm.get("count", 0)))
  return sorted(models, key=lambda m: m.arm)

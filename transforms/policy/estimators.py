"""Off-policy estimators of a target policy's value from logged bandit data.

Pure numpy/scipy, no Beam. Each logged request i has a reward r_i, the arm
a_i the logging policy served with propensity p_i, the target policy's
probabilities pi(.|x_i) and a reward model's predictions q(x_i, .). With
w_i = pi(a_i|x_i) / p_i:

  IPS    1/n sum w_i r_i                                  (Horvitz-Thompson)
  SNIPS  sum w_i r_i / sum w_i                   (Swaminathan & Joachims 2015)
  DM     1/n sum_i sum_a pi(a|x_i) q(x_i, a)                  (direct method)
  DR     1/n sum_i [dm_i + w_i (r_i - q(x_i, a_i))]  (Dudik, Langford & Li 2011)
  SNDR   1/n sum_i dm_i + sum w_i (r_i - q_i) / sum w_i  (self-normalised DR)

Every estimate is a function of sums over requests, so `ValueAccumulator`
holds those sums and merges associatively (Beam combines it per experiment
and policy). Normal-approximation intervals come from the same sums: the
sample variance of the per-record terms (IPS, DM, DR) or of their
delta-method influence terms (SNIPS, SNDR). The Poisson bootstrap weights
each request by Poisson(1) draws seeded by its request id, so the replicates
do not depend on how the requests were split into batches.
"""

from __future__ import annotations

import dataclasses
import math
import zlib

import numpy as np
import pyarrow as pa
import scipy.stats

ESTIMATORS = ("ips", "snips", "dm", "dr", "sndr")
Z_95 = float(scipy.stats.norm.ppf(0.975))

# Sums over requests, in this order.
MOMENTS = ("n", "w", "w2", "wr", "w2r", "w2r2", "dm", "dm2", "dr", "dr2",
           "dm_w_res", "dm_w", "w_res", "w2_res2", "w2_res", "r", "r2")
_M = {name: i for i, name in enumerate(MOMENTS)}
# Poisson-weighted sums per bootstrap replicate, in this order.
_BOOT = ("k", "kw", "kwr", "kdm", "kw_res", "kdr", "kr")
_B = {name: i for i, name in enumerate(_BOOT)}
_BOOT_CHUNK_ROWS = 4096
# Poisson(1) CDF up to the count past which the remaining mass is < 2^-53.
_POISSON_CDF = scipy.stats.poisson.cdf(np.arange(20), 1.0)


@dataclasses.dataclass
class Terms:
  """The per-record terms of a batch of logged requests."""
  weight: np.ndarray  # w_i
  reward: np.ndarray  # r_i
  dm: np.ndarray  # sum_a pi(a|x_i) q(x_i, a)
  residual: np.ndarray  # r_i - q(x_i, a_i)

  @property
  def dr(self) -> np.ndarray:
    return self.dm + self.weight * self.residual


def terms(reward: np.ndarray, logged: np.ndarray, propensity: np.ndarray,
          target: np.ndarray, model: np.ndarray) -> Terms:
  """Per-record terms.

  Args:
    reward: (n,) rewards.
    logged: (n,) index of the served arm among the target's arms (-1: an
      arm the target policy does not know, which it never serves).
    propensity: (n,) the logging policy's probability of the served arm.
    target: (n, arms) the target policy's action probabilities.
    model: (n, arms) the reward model's predictions.
  """
  rows = np.arange(len(reward))
  known = logged >= 0
  index = np.where(known, logged, 0)
  weight = np.where(known, target[rows, index], 0.0) / propensity
  logged_model = np.where(known, model[rows, index], 0.0)
  return Terms(weight, reward, np.einsum("ij,ij->i", target, model),
               reward - logged_model)


def moments(t: Terms) -> np.ndarray:
  w, r, dm, res = t.weight, t.reward, t.dm, t.residual
  dr = t.dr
  w2 = w * w
  return np.array([
      len(w), w.sum(), w2.sum(), (w * r).sum(), (w2 * r).sum(),
      (w2 * r * r).sum(), dm.sum(), (dm * dm).sum(), dr.sum(),
      (dr * dr).sum(), (dm * w * res).sum(), (dm * w).sum(),
      (w * res).sum(), (w2 * res * res).sum(), (w2 * res).sum(), r.sum(),
      (r * r).sum()], np.float64)


def request_seeds(request_ids: pa.Array) -> np.ndarray:
  """A 64-bit seed per request id (two CRC-32s of its UTF-8 bytes)."""
  ids = request_ids.cast(pa.binary()).to_pylist()
  high = np.fromiter((zlib.crc32(i) for i in ids), np.uint64, len(ids))
  low = np.fromiter((zlib.crc32(i, 0x9E3779B9) for i in ids), np.uint64,
                    len(ids))
  return (high << np.uint64(32)) | low


def _splitmix64(z: np.ndarray) -> np.ndarray:
  z = z + np.uint64(0x9E3779B97F4A7C15)
  z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
  z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
  return z ^ (z >> np.uint64(31))


def poisson_weights(seeds: np.ndarray, replicates: int) -> np.ndarray:
  """(n, replicates) Poisson(1) draws, a function of each seed alone."""
  counter = np.arange(replicates, dtype=np.uint64) * np.uint64(
      0xD1B54A32D192ED03)
  with np.errstate(over="ignore"):
    bits = _splitmix64(seeds[:, None] ^ counter[None, :])
  uniform = (bits >> np.uint64(11)).astype(np.float64) * 2.0**-53
  return np.searchsorted(_POISSON_CDF, uniform, side="right").astype(
      np.float64)


def bootstrap_sums(t: Terms, seeds: np.ndarray, replicates: int) -> np.ndarray:
  """(replicates, len(_BOOT)) Poisson-weighted sums of a batch."""
  columns = np.stack([np.ones_like(t.weight), t.weight, t.weight * t.reward,
                      t.dm, t.weight * t.residual, t.dr, t.reward], axis=1)
  sums = np.zeros((replicates, len(_BOOT)))
  for start in range(0, len(seeds), _BOOT_CHUNK_ROWS):
    stop = start + _BOOT_CHUNK_ROWS
    sums += poisson_weights(seeds[start:stop], replicates).T @ columns[
        start:stop]
  return sums


@dataclasses.dataclass
class ValueAccumulator:
  """Mergeable sums of one target policy on one experiment's logs."""
  arms: int  # of the target policy
  replicates: int = 0  # bootstrap
  sums: np.ndarray = None  # (len(MOMENTS),)
  max_weight: float = 0.0
  played: np.ndarray = None  # (arms,) requests served each target arm
  target_mass: np.ndarray = None  # (arms,) sum of pi(a|x_i)
  boot: np.ndarray = None  # (replicates, len(_BOOT))

  def __post_init__(self):
    if self.sums is None:
      self.sums = np.zeros(len(MOMENTS))
    if self.played is None:
      self.played = np.zeros(self.arms)
    if self.target_mass is None:
      self.target_mass = np.zeros(self.arms)
    if self.boot is None:
      self.boot = np.zeros((self.replicates, len(_BOOT)))

  def add(self, logged: np.ndarray, t: Terms, target: np.ndarray,
          seeds: np.ndarray | None = None) -> "ValueAccumulator":
    """Add a batch (in place): its served arm indices, terms, target probabilities."""
    self.sums += moments(t)
    if len(t.weight):
      self.max_weight = max(self.max_weight, float(t.weight.max()))
    self.played += np.bincount(logged[logged >= 0], minlength=self.arms)
    self.target_mass += target.sum(axis=0)
    if self.replicates:
      self.boot += bootstrap_sums(t, seeds, self.replicates)
    return self

  def merge(self, other: "ValueAccumulator") -> "ValueAccumulator":
    if other.arms != self.arms or other.replicates != self.replicates:
      raise ValueError("accumulators of different policies do not merge")
    return ValueAccumulator(
        self.arms, self.replicates, self.sums + other.sums,
        max(self.max_weight, other.max_weight), self.played + other.played,
        self.target_mass + other.target_mass, self.boot + other.boot)

  def estimates(self, z: float = Z_95) -> list[dict]:
    """One row per estimator (fields of the policy_value table)."""
    s = self.sums
    n = s[_M["n"]]
    rows = []
    for estimator in ESTIMATORS:
      value, se = _value_and_se(estimator, s) if n else (None, None)
      row = dict(estimator=estimator,
                 value=None if value is None else float(value), n=int(n),
                 ci_low=None, ci_high=None, boot_ci_low=None,
                 boot_ci_high=None)
      if se is not None and math.isfinite(se):
        row["ci_low"] = float(value - z * se)
        row["ci_high"] = float(value + z * se)
      if self.replicates and n:
        row["boot_ci_low"], row["boot_ci_high"] = _percentiles(
            _replicate_values(estimator, self.boot))
      rows.append(row)
    summary = self.summary()
    return [dict(row, **summary) for row in rows]

  def summary(self) -> dict:
    s = self.sums
    n = s[_M["n"]]
    w, w2 = s[_M["w"]], s[_M["w2"]]
    unsupported = (self.target_mass[self.played == 0].sum() / n) if n else None
    return dict(ess=float(w * w / w2) if w2 > 0 else 0.0,
                max_weight=float(self.max_weight),
                unsupported_share=None if unsupported is None else float(
                    unsupported),
                logged_value=float(s[_M["r"]] / n) if n else None)


def _mean_se(total: float, squares: float, n: float) -> float | None:
  if n < 2:
    return None
  variance = max(squares - total * total / n, 0.0) / (n - 1)
  return math.sqrt(variance / n)


def _value_and_se(estimator: str, s: np.ndarray):
  n = s[_M["n"]]
  w = s[_M["w"]]
  if estimator == "ips":
    return s[_M["wr"]] / n, _mean_se(s[_M["wr"]], s[_M["w2r2"]], n)
  if estimator == "dm":
    return s[_M["dm"]] / n, _mean_se(s[_M["dm"]], s[_M["dm2"]], n)
  if estimator == "dr":
    return s[_M["dr"]] / n, _mean_se(s[_M["dr"]], s[_M["dr2"]], n)
  if w <= 0:
    return None, None
  if estimator == "snips":
    value = s[_M["wr"]] / w
    squares = (s[_M["w2r2"]] - 2 * value * s[_M["w2r"]] +
               value * value * s[_M["w2"]])
    return value, math.sqrt(max(squares, 0.0)) / w
  # sndr: the DM mean plus the self-normalised residual correction.
  mean_dm = s[_M["dm"]] / n
  correction = s[_M["w_res"]] / w
  mean_w = w / n
  dm_squares = s[_M["dm2"]] - n * mean_dm * mean_dm
  cross = (s[_M["dm_w_res"]] - correction * s[_M["dm_w"]] -
           mean_dm * s[_M["w_res"]] + mean_dm * correction * w)
  residual_squares = (s[_M["w2_res2"]] - 2 * correction * s[_M["w2_res"]] +
                      correction * correction * s[_M["w2"]])
  influence = (dm_squares + 2 * cross / mean_w +
               residual_squares / (mean_w * mean_w))
  return mean_dm + correction, math.sqrt(max(influence, 0.0)) / n


def _replicate_values(estimator: str, boot: np.ndarray) -> np.ndarray:
  with np.errstate(invalid="ignore", divide="ignore"):
    k, kw = boot[:, _B["k"]], boot[:, _B["kw"]]
    if estimator == "ips":
      return boot[:, _B["kwr"]] / k
    if estimator == "snips":
      return boot[:, _B["kwr"]] / kw
    if estimator == "dm":
      return boot[:, _B["kdm"]] / k
    if estimator == "dr":
      return boot[:, _B["kdr"]] / k
    return boot[:, _B["kdm"]] / k + boot[:, _B["kw_res"]] / kw


def _percentiles(values: np.ndarray):
  values = values[np.isfinite(values)]
  if not len(values):
    return None, None
  low, high = np.quantile(values, [0.025, 0.975])
  return float(low), float(high)

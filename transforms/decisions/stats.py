"""Decision statistics of an online experiment from its per-arm reward totals.

Pure numpy/scipy, no Beam. `experiment_statistics` turns the totals of every
arm of one experiment into the statistics columns of its `arm_stats` rows; the
formula behind each column is in docs/statistics.md. The test and interval
helpers take numpy arrays as well as scalars, so simulations can call them for
many experiments at once; they return NaN where a statistic is undefined.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Mapping, Sequence

import numpy as np
import scipy.special
import scipy.stats

BINARY = "binary"
CONTINUOUS = "continuous"

SRM_ALERT_P_VALUE = 0.001
# Standard deviation of the normal mixture over the relative lift (0.1 = lifts
# of about +-10%): the sequential interval is narrowest when se(lift) is about
# a third of it.
DEFAULT_SEQ_TUNING = 0.1

# Each posterior contributes this many quadrature points, evenly spaced across
# its bulk: all but 2 * _TAIL_MASS of its probability.
_GRID_POINTS = 2001
_TAIL_MASS = 1e-10
# A zero-variance continuous arm is treated as a normal this narrow (relative
# to its mean) so that it still has a density to integrate.
_MIN_RELATIVE_SCALE = 1e-9

COLUMNS = (
    "reward_type", "reward_mean", "ci_low", "ci_high", "posterior_alpha",
    "posterior_beta", "prob_best", "expected_loss", "control_arm", "lift",
    "lift_ci_low", "lift_ci_high", "p_value", "p_value_adj", "seq_p_value",
    "seq_ci_low", "seq_ci_high", "srm_p_value", "srm_alert")


@dataclasses.dataclass(frozen=True)
class ArmTotals:
  """What the pipeline counted for one arm of one experiment."""
  arm: str
  impressions: int  # non-shadow served predictions of the arm (used for SRM)
  samples: int  # denominator n of reward_mean
  reward_sum: float
  reward_sq_sum: float
  binary: bool  # every counted reward of this arm was 0 or 1
  # Centred sum of squares and range of the rewards (see rewards.ArmAccumulator);
  # None: only the sums are known, the variance comes from them.
  reward_m2: float | None = None
  reward_mean: float | None = None
  reward_min: float | None = None
  reward_max: float | None = None


def _normal_quantile(alpha: float) -> float:
  return scipy.stats.norm.ppf(1 - alpha / 2)


def wilson_interval(successes, n, alpha: float = 0.05):
  """Wilson score interval of a proportion (Wilson 1927), as (low, high)."""
  successes, n = np.asarray(successes, float), np.asarray(n, float)
  z = _normal_quantile(alpha)
  with np.errstate(divide="ignore", invalid="ignore"):
    p = successes / n
    denominator = 1 + z**2 / n
    center = (p + z**2 / (2 * n)) / denominator
    half_width = z / denominator * np.sqrt(p * (1 - p) / n + z**2 / (4 * n**2))
  # At p = 0 or 1 an end equals p; rounding must not leave p outside.
  return (np.clip(center - half_width, 0.0, p),
          np.clip(center + half_width, p, 1.0))


def sample_variance(reward_sum, reward_sq_sum, n):
  """Unbiased variance of the rewards from their sum and sum of squares.

  NaN below two samples.
  """
  reward_sum, reward_sq_sum = np.asarray(reward_sum), np.asarray(reward_sq_sum)
  n = np.asarray(n, float)
  with np.errstate(divide="ignore", invalid="ignore"):
    centered_sq_sum = reward_sq_sum - reward_sum**2 / n
    # When every reward is equal, cancellation leaves a rounding residue (of
    # either sign) instead of 0; a residue within the sums' rounding error is 0.
    rounding = 4 * n * np.finfo(float).eps * reward_sq_sum
    centered_sq_sum = np.where(centered_sq_sum <= rounding, 0.0,
                               centered_sq_sum)
    variance = centered_sq_sum / (n - 1)
  return np.where(n > 1, variance, np.nan)


def moments_variance(m2, n, minimum, maximum):
  """Unbiased variance from a centred sum of squares (no cancellation).

  Exactly 0 only when every value was equal (minimum == maximum); NaN below
  two samples.
  """
  m2, n = np.asarray(m2, float), np.asarray(n, float)
  with np.errstate(divide="ignore", invalid="ignore"):
    variance = np.maximum(m2, 0.0) / (n - 1)
  variance = np.where(np.asarray(minimum) == np.asarray(maximum), 0.0,
                      variance)
  return np.where(n > 1, variance, np.nan)


def t_interval(mean, variance, n, alpha: float = 0.05):
  """Student t interval of a mean, as (low, high); NaN below two samples."""
  mean, variance, n = np.asarray(mean), np.asarray(variance), np.asarray(n)
  with np.errstate(divide="ignore", invalid="ignore"):
    quantile = scipy.stats.t.ppf(1 - alpha / 2, n - 1)
    half_width = quantile * np.sqrt(variance / n)
  return mean - half_width, mean + half_width


def two_proportion_test(successes_a, n_a, successes_b, n_b):
  """Two-sided pooled two-proportion z-test of p_a == p_b: (p_value, z, se).

  se is the pooled standard error of p_a - p_b under the null. All NaN when
  it is zero (no success or no failure in either arm: nothing to test).
  """
  successes_a, n_a = np.asarray(successes_a, float), np.asarray(n_a, float)
  successes_b, n_b = np.asarray(successes_b, float), np.asarray(n_b, float)
  with np.errstate(divide="ignore", invalid="ignore"):
    pooled = (successes_a + successes_b) / (n_a + n_b)
    se = np.sqrt(pooled * (1 - pooled) * (1 / n_a + 1 / n_b))
    se = np.where(se > 0, se, np.nan)
    z = (successes_a / n_a - successes_b / n_b) / se
  return 2 * scipy.stats.norm.sf(np.abs(z)), z, se


def welch_test(mean_a, variance_a, n_a, mean_b, variance_b, n_b):
  """Two-sided Welch t-test of mean_a == mean_b: (p_value, z, se).

  z is the normal score with the same p-value as Welch's t, so that a test
  built on z is never less conservative than the t-test; se is the unpooled
  standard error of mean_a - mean_b. All NaN with fewer than two samples in
  an arm or a zero se.
  """
  n_a, n_b = np.asarray(n_a, float), np.asarray(n_b, float)
  with np.errstate(divide="ignore", invalid="ignore"):
    variance_of_mean_a = np.asarray(variance_a) / n_a
    variance_of_mean_b = np.asarray(variance_b) / n_b
    se2 = variance_of_mean_a + variance_of_mean_b
    se = np.sqrt(np.where((se2 > 0) & (n_a > 1) & (n_b > 1), se2, np.nan))
    df = se2**2 / (variance_of_mean_a**2 / (n_a - 1)
                   + variance_of_mean_b**2 / (n_b - 1))
    t = (np.asarray(mean_a) - mean_b) / se
    log_tail = scipy.stats.t.logsf(np.abs(t), df)
  z = np.sign(t) * -scipy.special.ndtri_exp(log_tail)
  return 2 * np.exp(log_tail), z, se


def relative_lift(mean, variance_of_mean, control_mean,
                  control_variance_of_mean):
  """Relative lift (mean - control) / |control| and its delta-method se.

  For a positive control mean this is mean / control - 1. NaN when the
  control mean is zero.
  """
  mean, control_mean = np.asarray(mean, float), np.asarray(control_mean, float)
  with np.errstate(divide="ignore", invalid="ignore"):
    denominator = np.where(control_mean != 0, np.abs(control_mean), np.nan)
    lift = (mean - control_mean) / denominator
    variance = (variance_of_mean / denominator**2
                + mean**2 * control_variance_of_mean / denominator**4)
  return lift, np.sqrt(variance)


def wald_interval(estimate, standard_error, alpha: float = 0.05):
  """estimate -+ z * se, as (low, high); NaN where se is zero."""
  standard_error = np.asarray(standard_error, float)
  half_width = _normal_quantile(alpha) * np.where(
      standard_error > 0, standard_error, np.nan)
  return estimate - half_width, estimate + half_width


def sequential_p_value(z, se, mean, tuning: float = DEFAULT_SEQ_TUNING):
  """Anytime-valid p-value of "no difference": the mixture SPRT.

  The likelihood ratio of the normal-mixture mSPRT (Johari et al. 2017) for
  a difference of means observed as z = difference / se, mixing the effect
  over N(0, (tuning * mean)**2): `tuning` is the spread of the relative lift
  and `mean` the common (pooled) mean reward. p = min(1, 1 / ratio) may be
  recomputed at every look without inflating the false-positive rate, and
  is never below the normal p-value 2 * Phi(-|z|). NaN when mean or se is 0.
  """
  with np.errstate(divide="ignore", invalid="ignore"):
    # Variance of the mixture over variance of the difference.
    r = np.where(np.asarray(mean) != 0, (tuning * mean / se)**2, np.nan)
    log_p = 0.5 * np.log1p(r) - np.asarray(z)**2 * r / (2 * (1 + r))
  return np.minimum(1.0, np.exp(log_p))


def confidence_sequence(estimate, se, alpha: float = 0.05,
                        tuning: float = DEFAULT_SEQ_TUNING):
  """Anytime-valid (low, high) for an estimate ~ N(effect, se**2).

  The normal-mixture confidence sequence (Robbins 1970; Howard et al. 2021),
  i.e. the inversion of the mSPRT with a N(0, tuning**2) mixture, which
  Waudby-Smith et al. (2023) show holds asymptotically with an estimated se.
  Always contains the fixed-horizon Wald interval. NaN where se is zero.
  """
  se = np.asarray(se, float)
  with np.errstate(divide="ignore", invalid="ignore"):
    variance = np.where(se > 0, se**2, np.nan)
    r = tuning**2 / variance
    half_width = np.sqrt(
        variance * (1 + 1 / r) * (np.log1p(r) - 2 * math.log(alpha)))
  return estimate - half_width, estimate + half_width


def holm_adjust(p_values: Sequence[float]) -> list[float]:
  """Holm (1979) step-down adjusted p-values, in the order given."""
  order = sorted(range(len(p_values)), key=lambda i: p_values[i])
  adjusted = [0.0] * len(p_values)
  running_max = 0.0
  for rank, i in enumerate(order):
    running_max = max(running_max,
                      min(1.0, (len(p_values) - rank) * p_values[i]))
    adjusted[i] = running_max
  return adjusted


def benjamini_hochberg_adjust(p_values: Sequence[float]) -> list[float]:
  """Benjamini-Hochberg (1995) step-up adjusted p-values, in the order given."""
  m = len(p_values)
  order = sorted(range(m), key=lambda i: p_values[i], reverse=True)
  adjusted = [0.0] * m
  running_min = 1.0
  for position, i in enumerate(order):
    rank = m - position
    running_min = min(running_min, p_values[i] * m / rank)
    adjusted[i] = running_min
  return adjusted


CORRECTIONS = ("holm", "bh", "none")


def adjust_p_values(p_values: Sequence[float], method: str) -> list[float]:
  """p-values adjusted for multiplicity: holm, bh (Benjamini-Hochberg), none."""
  if method == "holm":
    return holm_adjust(p_values)
  if method == "bh":
    return benjamini_hochberg_adjust(p_values)
  if method == "none":
    return list(p_values)
  raise ValueError(f"correction must be one of {CORRECTIONS}: {method}")


def srm_p_value(impressions: Mapping[str, int],
                expected_allocation: Mapping[str, float] | None = None
                ) -> float | None:
  """Chi-square goodness of fit of the impressions to the planned split.

  Weights are normalized over the arms present (equal by default). An arm
  missing from `expected_allocation` is planned to get no traffic: if it has
  impressions the split is mismatched and the p-value is 0. None with fewer
  than two arms or no impressions.
  """
  total = sum(impressions.values())
  if len(impressions) < 2 or total == 0:
    return None
  if expected_allocation is None:
    weights = {arm: 1.0 for arm in impressions}
  else:
    weights = {arm: float(expected_allocation.get(arm, 0.0))
               for arm in impressions}
  if any(not math.isfinite(w) or w < 0 for w in weights.values()):
    raise ValueError(f"expected allocation must be finite and >= 0: {weights}")
  planned = [arm for arm in impressions if weights[arm] > 0]
  if any(impressions[arm] > 0 for arm in impressions if weights[arm] == 0):
    return 0.0
  if len(planned) < 2:
    return 1.0
  weight_total = sum(weights[arm] for arm in planned)
  observed = np.array([impressions[arm] for arm in planned], float)
  expected = np.array([total * weights[arm] / weight_total for arm in planned])
  statistic = np.sum((observed - expected)**2 / expected)
  return float(scipy.stats.chi2.sf(statistic, len(planned) - 1))


def _integrated_prob_best(distributions):
  """(P(X_i is the largest), E[max], E[X_i]) by quadrature.

  Where X_i is the largest, the density of the maximum is
  f_i(x) * prod_{j != i} F_j(x). Each posterior is integrated over its own
  bulk (all but 2 * _TAIL_MASS of it), on the points that every posterior
  places evenly across its bulk, so that narrow posteriors are resolved
  inside wide ones (trapezoidal rule).
  """
  bulks = [(d.ppf(_TAIL_MASS), d.isf(_TAIL_MASS)) for d in distributions]
  grid = np.unique(np.concatenate(
      [np.linspace(low, high, _GRID_POINTS) for low, high in bulks]))
  cdfs = np.array([d.cdf(grid) for d in distributions])
  prob_best, means = [], []
  expected_max = 0.0
  for i, (d, (low, high)) in enumerate(zip(distributions, bulks)):
    inside = (grid >= low) & (grid <= high)
    x = grid[inside]
    density = d.pdf(x)
    density_of_max = density * np.prod(
        np.delete(cdfs[:, inside], i, axis=0), axis=0)
    prob_best.append(np.trapezoid(density_of_max, x))
    expected_max += np.trapezoid(x * density_of_max, x)
    means.append(np.trapezoid(x * density, x))
  return np.array(prob_best), expected_max, np.array(means)


def _sampled_prob_best(distributions, draws: int, seed: int):
  rng = np.random.default_rng(seed)
  samples = np.array([d.rvs(size=draws, random_state=rng)
                      for d in distributions])
  wins = np.bincount(np.argmax(samples, axis=0), minlength=len(distributions))
  return wins / draws, np.max(samples, axis=0).mean(), samples.mean(axis=1)


def posterior_prob_best(distributions, mc_draws: int = 0, seed: int = 0):
  """(prob_best, expected_loss) arrays for independent posteriors.

  expected_loss[i] = E[max_j X_j - X_i]. Exact numerical integration when
  `mc_draws` is 0, else Monte Carlo with that many draws.
  """
  if mc_draws:
    prob_best, expected_max, means = _sampled_prob_best(
        distributions, mc_draws, seed)
  else:
    prob_best, expected_max, means = _integrated_prob_best(distributions)
  # Quadrature error leaves the sum a hair off 1; routers want an exact split.
  prob_best = prob_best / prob_best.sum()
  return prob_best, np.maximum(expected_max - means, 0.0)


@dataclasses.dataclass(frozen=True)
class _Estimate:
  """An arm's mean reward and the variance of one reward (NaN if undefined)."""
  n: int
  mean: float
  variance: float

  @property
  def variance_of_mean(self) -> float:
    return self.variance / self.n if self.n else math.nan


def _estimate(arm: ArmTotals, binary: bool) -> _Estimate:
  if arm.samples == 0:
    return _Estimate(0, math.nan, math.nan)
  mean = arm.reward_sum / arm.samples
  if binary:
    return _Estimate(arm.samples, mean, mean * (1 - mean))
  if arm.reward_m2 is not None:
    if arm.reward_mean is not None:
      mean = arm.reward_mean  # sum / n loses digits of a large mean
    return _Estimate(arm.samples, mean, float(moments_variance(
        arm.reward_m2, arm.samples, arm.reward_min, arm.reward_max)))
  return _Estimate(arm.samples, mean, float(sample_variance(
      arm.reward_sum, arm.reward_sq_sum, arm.samples)))


def _interval(arm: ArmTotals, estimate: _Estimate, binary: bool,
              alpha: float):
  if binary:
    return wilson_interval(arm.reward_sum, arm.samples, alpha)
  return t_interval(estimate.mean, estimate.variance, estimate.n, alpha)


def _optional(value) -> float | None:
  value = float(value)
  return value if math.isfinite(value) else None


def _posteriors(arms: Sequence[ArmTotals], estimates: dict, binary: bool):
  """arm name -> posterior of its mean reward (arms that have one)."""
  if binary:
    return {a.arm: scipy.stats.beta(1 + a.reward_sum,
                                     1 + a.samples - a.reward_sum)
            for a in arms}
  posteriors = {}
  for arm in arms:
    estimate = estimates[arm.arm]
    if not math.isnan(estimate.variance):
      scale = max(math.sqrt(estimate.variance_of_mean),
                  _MIN_RELATIVE_SCALE * max(1.0, abs(estimate.mean)))
      posteriors[arm.arm] = scipy.stats.norm(estimate.mean, scale)
  return posteriors


def _choose_control(arms: Sequence[ArmTotals], control_arm: str | None) -> str:
  if any(a.arm == control_arm for a in arms):
    return control_arm
  return min(arms, key=lambda a: (-a.impressions, a.arm)).arm


def _comparison(arm: ArmTotals, control: ArmTotals, estimate: _Estimate,
                control_estimate: _Estimate, binary: bool, alpha: float,
                seq_tuning: float) -> dict:
  """The lift and test columns of a candidate arm against the control."""
  if binary:
    p_value, z, se = two_proportion_test(arm.reward_sum, arm.samples,
                                         control.reward_sum, control.samples)
  else:
    p_value, z, se = welch_test(
        estimate.mean, estimate.variance, estimate.n, control_estimate.mean,
        control_estimate.variance, control_estimate.n)
  pooled_samples = arm.samples + control.samples
  pooled_mean = ((arm.reward_sum + control.reward_sum) / pooled_samples
                 if pooled_samples else math.nan)
  lift, lift_se = relative_lift(estimate.mean, estimate.variance_of_mean,
                                control_estimate.mean,
                                control_estimate.variance_of_mean)
  lift_low, lift_high = wald_interval(lift, lift_se, alpha)
  seq_low, seq_high = confidence_sequence(lift, lift_se, alpha, seq_tuning)
  columns = dict(
      lift=lift, lift_ci_low=lift_low, lift_ci_high=lift_high,
      p_value=p_value,
      seq_p_value=sequential_p_value(z, se, pooled_mean, seq_tuning),
      seq_ci_low=seq_low, seq_ci_high=seq_high)
  return {name: _optional(value) for name, value in columns.items()}


def experiment_statistics(
    arms: Sequence[ArmTotals],
    control_arm: str | None = None,
    expected_allocation: Mapping[str, float] | None = None,
    alpha: float = 0.05,
    seq_tuning: float = DEFAULT_SEQ_TUNING,
    mc_draws: int = 0,
    seed: int = 0) -> dict[str, dict]:
  """arm name -> the statistics columns (`COLUMNS`) for that arm's row.

  Args:
    arms: the totals of every arm of one experiment (unique names).
    control_arm: the arm the others are compared with; when None or not an
      arm of the experiment, the arm with the most impressions (ties: the
      first name in sort order).
    expected_allocation: planned traffic weight per arm for the SRM check,
      normalized over the arms present; equal weights when None.
    alpha: 1 - confidence level of every interval and sequential test.
    seq_tuning: standard deviation of the normal mixture over the relative
      lift used by the sequential test.
    mc_draws: 0 integrates the posteriors numerically for prob_best and
      expected_loss (deterministic); otherwise the number of Monte Carlo
      draws, made with `seed`.
    seed: seed of the Monte Carlo draws.
  """
  if not 0 < alpha < 1:
    raise ValueError(f"alpha must be in (0, 1): {alpha}")
  if not seq_tuning > 0:
    raise ValueError(f"seq_tuning must be > 0: {seq_tuning}")
  if len({a.arm for a in arms}) != len(arms):
    raise ValueError("arm names must be unique within an experiment")
  if not arms:
    return {}
  # An arm without samples says nothing about the type of the rewards.
  binary = all(a.binary for a in arms if a.samples > 0)
  estimates = {a.arm: _estimate(a, binary) for a in arms}
  rows = {a.arm: dict.fromkeys(COLUMNS) for a in arms}

  for arm in arms:
    row, estimate = rows[arm.arm], estimates[arm.arm]
    row["reward_type"] = BINARY if binary else CONTINUOUS
    row["reward_mean"] = _optional(estimate.mean)
    row["ci_low"], row["ci_high"] = map(
        _optional, _interval(arm, estimate, binary, alpha))
    if binary:
      row["posterior_alpha"] = 1.0 + arm.reward_sum
      row["posterior_beta"] = 1.0 + arm.samples - arm.reward_sum

  posteriors = _posteriors(arms, estimates, binary)
  if posteriors:
    prob_best, expected_loss = posterior_prob_best(
        list(posteriors.values()), mc_draws, seed)
    for name, p, loss in zip(posteriors, prob_best, expected_loss):
      rows[name]["prob_best"] = float(p)
      rows[name]["expected_loss"] = float(loss)

  control_name = _choose_control(arms, control_arm)
  control = next(a for a in arms if a.arm == control_name)
  candidates = [a for a in arms if a.arm != control_name]
  for arm in arms:
    rows[arm.arm]["control_arm"] = control_name
  for arm in candidates:
    rows[arm.arm].update(_comparison(
        arm, control, estimates[arm.arm], estimates[control_name], binary,
        alpha, seq_tuning))
  tested = [a.arm for a in candidates if rows[a.arm]["p_value"] is not None]
  adjusted = holm_adjust([rows[name]["p_value"] for name in tested])
  for name, p_adjusted in zip(tested, adjusted):
    rows[name]["p_value_adj"] = p_adjusted

  srm = srm_p_value({a.arm: a.impressions for a in arms}, expected_allocation)
  for row in rows.values():
    row["srm_p_value"] = srm
    row["srm_alert"] = None if srm is None else srm < SRM_ALERT_P_VALUE
  return rows

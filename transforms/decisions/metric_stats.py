"""Statistics of every metric of one experiment (and segment), per arm.

Pure (numpy/scipy, no Beam). `segment_statistics` takes the merged
`MetricSummary` of each (metric, arm) of one experiment segment and returns
its `metric_stats` rows: the estimate with its interval, the relative lift
against the control with its fixed and anytime-valid intervals, p-values
(adjusted across goal metrics x candidate arms), and for guardrails the
non-inferiority p-value against their margin. Formulas: docs/metrics.md.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Mapping

import numpy as np
import scipy.stats

from transforms.attribution.metric_summary import MetricSummary
from transforms.decisions import metrics as metric_defs
from transforms.decisions import stats

FIXED = "fixed"
SEQUENTIAL = "sequential"
DECISION_MODES = (FIXED, SEQUENTIAL)


@dataclasses.dataclass(frozen=True)
class MetricConfig:
  """How metrics are compared and decided."""
  control_arm: str | None = None
  expected_allocation: Mapping[str, float] | None = None
  alpha: float = 0.05
  seq_tuning: float = stats.DEFAULT_SEQ_TUNING
  correction: str = "holm"
  decide_on: str = SEQUENTIAL
  min_samples: int = 100

  def __post_init__(self):
    if self.correction not in stats.CORRECTIONS:
      raise ValueError(f"correction must be one of {stats.CORRECTIONS}")
    if self.decide_on not in DECISION_MODES:
      raise ValueError(f"decide_on must be one of {DECISION_MODES}")
    if not 0 < self.alpha < 1:
      raise ValueError(f"alpha must be in (0, 1): {self.alpha}")
    if self.min_samples < 0:
      raise ValueError("min_samples must be >= 0")


@dataclasses.dataclass(frozen=True)
class Estimate:
  """One arm's value of a metric, its interval and its standard error."""
  value: float
  low: float
  high: float
  se: float  # of the value (NaN when undefined)


def quantile_rank_error(summary: MetricSummary) -> float:
  """The sketch's normalized rank error (0 while it still holds every value)."""
  if summary.sketch is None or not summary.sketch.is_estimation_mode():
    return 0.0
  return summary.sketch.normalized_rank_error(False)


def quantile_interval(summary: MetricSummary, q: float, alpha: float):
  """(estimate, low, high) of the q-quantile from the sketch.

  Order-statistic bounds: the population q-quantile lies between the sample
  quantiles of ranks q -+ z sqrt(q (1 - q) / n) with probability about
  1 - alpha (normal approximation to the binomial count below it); each rank
  is widened by the sketch's normalized rank error so that the sketch's
  answer still bounds the exact order statistic.
  """
  z = scipy.stats.norm.ppf(1 - alpha / 2)
  spread = z * math.sqrt(q * (1 - q) / summary.n) + quantile_rank_error(summary)
  sketch = summary.sketch
  return (sketch.get_quantile(q), sketch.get_quantile(max(0.0, q - spread)),
          sketch.get_quantile(min(1.0, q + spread)))


def estimate(summary: MetricSummary, definition: metric_defs.MetricDefinition,
             alpha: float) -> Estimate:
  """The arm's metric value, its (1 - alpha) interval and standard error."""
  n = summary.n
  if n == 0:
    return Estimate(math.nan, math.nan, math.nan, math.nan)
  z = scipy.stats.norm.ppf(1 - alpha / 2)
  if definition.type == metric_defs.PROPORTION:
    p = summary.mean
    low, high = stats.wilson_interval(p * n, n, alpha)
    return Estimate(p, float(low), float(high), math.sqrt(p * (1 - p) / n))
  if definition.type == metric_defs.MEAN:
    variance = summary.variance
    low, high = stats.t_interval(summary.mean, variance, n, alpha)
    return Estimate(summary.mean, float(low), float(high),
                    math.sqrt(variance / n) if n > 1 else math.nan)
  if definition.type == metric_defs.RATIO:
    if summary.den_mean == 0 or n < 2:
      return Estimate(math.nan, math.nan, math.nan, math.nan)
    ratio = summary.mean / summary.den_mean
    # Delta method: Var(x/y) ~ (Vx - 2 R Cxy + R^2 Vy) / (n ybar^2).
    variance = (summary.variance
                - 2 * ratio * summary.comoment / (n - 1)
                + ratio**2 * max(summary.den_m2, 0.0) / (n - 1))
    se = math.sqrt(max(variance, 0.0) / n) / abs(summary.den_mean)
    return Estimate(ratio, ratio - z * se, ratio + z * se, se)
  value, low, high = quantile_interval(summary, definition.q, alpha)
  # The interval's half-width read as z standard errors, for the lift.
  return Estimate(value, low, high, (high - low) / (2 * z))


def _test(arm: MetricSummary, control: MetricSummary, arm_estimate: Estimate,
          control_estimate: Estimate, definition):
  """Two-sided test of no difference: (p_value, z, se of the difference)."""
  if definition.type == metric_defs.PROPORTION:
    return stats.two_proportion_test(arm.mean * arm.n, arm.n,
                                     control.mean * control.n, control.n)
  if definition.type == metric_defs.MEAN:
    return stats.welch_test(arm.mean, arm.variance, arm.n, control.mean,
                            control.variance, control.n)
  se = math.hypot(arm_estimate.se, control_estimate.se)
  if not se > 0:
    return math.nan, math.nan, math.nan
  z = (arm_estimate.value - control_estimate.value) / se
  return 2 * scipy.stats.norm.sf(abs(z)), z, se


def _optional(value) -> float | None:
  value = float(value)
  return value if math.isfinite(value) else None


def bad_sign(definition) -> int:
  """+1 when an increase is worse (direction decrease), else -1."""
  return 1 if definition.direction == metric_defs.DECREASE else -1


def _comparison(arm, control, arm_estimate, control_estimate, definition,
                config: MetricConfig) -> dict:
  p_value, z, se = _test(arm, control, arm_estimate, control_estimate,
                         definition)
  lift, lift_se = stats.relative_lift(
      arm_estimate.value, arm_estimate.se**2, control_estimate.value,
      control_estimate.se**2)
  lift_low, lift_high = stats.wald_interval(lift, lift_se, config.alpha)
  seq_low, seq_high = stats.confidence_sequence(lift, lift_se, config.alpha,
                                                config.seq_tuning)
  columns = dict(lift=lift, lift_ci_low=lift_low, lift_ci_high=lift_high,
                 p_value=p_value,
                 seq_p_value=stats.sequential_p_value(
                     z, se, control_estimate.value, config.seq_tuning),
                 seq_ci_low=seq_low, seq_ci_high=seq_high)
  if definition.role == metric_defs.GUARDRAIL:
    # H0: the lift is at least `margin` in the bad direction.
    with np.errstate(divide="ignore", invalid="ignore"):
      z_ni = (definition.margin - bad_sign(definition) * lift) / lift_se
    columns["ni_p_value"] = scipy.stats.norm.sf(z_ni)
  return {name: _optional(value) for name, value in columns.items()}


def choose_control(impressions: Mapping[str, int],
                   control_arm: str | None) -> str:
  """The configured control, else the arm with most requests (ties: name)."""
  if control_arm in impressions:
    return control_arm
  return min(impressions, key=lambda arm: (-impressions[arm], arm))


def segment_statistics(summaries: Mapping[str, Mapping[str, MetricSummary]],
                       impressions: Mapping[str, int], definitions,
                       config: MetricConfig) -> list:
  """metric_stats rows (without ids and run fields) of one experiment segment.

  summaries: metric name -> arm -> merged MetricSummary; impressions: arm ->
  requests of the segment (every arm of the experiment, 0 if none).
  """
  if not impressions:
    return []
  control = choose_control(impressions, config.control_arm)
  srm = stats.srm_p_value(impressions, config.expected_allocation)
  rows = []
  for definition in definitions:
    per_arm = summaries.get(definition.name, {})
    control_summary = per_arm.get(control, MetricSummary())
    control_estimate = estimate(control_summary, definition, config.alpha)
    for arm in sorted(impressions):
      summary = per_arm.get(arm, MetricSummary())
      arm_estimate = estimate(summary, definition, config.alpha)
      row = {
          "arm": arm, "metric": definition.name,
          "metric_type": definition.type, "role": definition.role,
          "direction": definition.direction, "margin": definition.margin,
          "quantile": definition.q, "requests": impressions[arm],
          "n": summary.n, "value_sum": summary.sum, "value_m2": summary.m2,
          "value_min": _optional(summary.minimum),
          "value_max": _optional(summary.maximum),
          "estimate": _optional(arm_estimate.value),
          "ci_low": _optional(arm_estimate.low),
          "ci_high": _optional(arm_estimate.high),
          "control_arm": control, "srm_p_value": srm,
          "srm_alert": None if srm is None else srm < stats.SRM_ALERT_P_VALUE}
      if definition.type == metric_defs.RATIO:
        row.update(den_sum=summary.den_mean * summary.n,
                   den_m2=summary.den_m2, comoment=summary.comoment)
      if definition.type == metric_defs.QUANTILE and summary.n:
        row["rank_error"] = quantile_rank_error(summary)
      if arm != control and summary.n and control_summary.n:
        row.update(_comparison(summary, control_summary, arm_estimate,
                               control_estimate, definition, config))
      rows.append(row)
  _adjust(rows, config.correction)
  return rows


def _adjust(rows: list, correction: str) -> None:
  """p_value_adj and seq_p_value_adj across goal metrics x candidate arms."""
  for column in ("p_value", "seq_p_value"):
    tested = [row for row in rows if row["role"] == metric_defs.GOAL
              and row.get(column) is not None]
    adjusted = stats.adjust_p_values([row[column] for row in tested],
                                     correction)
    for row, value in zip(tested, adjusted):
      row[f"{column}_adj"] = value

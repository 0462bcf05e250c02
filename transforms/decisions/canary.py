"""Canary judge: each metric of a canary against its baseline, a score, a verdict.

Pure (numpy and scipy, no Beam), after Kayenta's judge (Netflix and Google):
each metric is classified Pass, High or Low at `confidence` -- Mann-Whitney
U for continuous metrics (latency), a two-proportion z-test for rates
(errors, a binary reward) -- and only a significant change of at least
`min_effect` (relative to the baseline) in the metric's harmful direction
fails it. The score is the weighted share of passing metrics, 0-100; a
failing `critical` metric fails the canary outright, otherwise the score
against `pass_score` and `marginal_score` gives Pass, Marginal or Fail.

Metrics come through a small interface (`Metric` and a per-arm summary:
`Histogram` for continuous metrics, `Rate` for rates), so any mergeable
summary converts to it: a quantile sketch gives a `Histogram` by evaluating
its CDF at `LATENCY_EDGES`. The Mann-Whitney U of two histograms on the same
edges counts pairs within one bin as ties, so it is within
`Comparison.u_max_error` (a share of all pairs, stated in the table) of U on
the raw values; with `LATENCY_EDGES` (bins 1.2 % wide) the docs give the
measured agreement with `scipy.stats.mannwhitneyu`.

`arm_partials` makes the per-arm summaries of the metrics the logs carry
(`latency_ms`, `status` errors, the reward) from joined requests;
`judge_definitions` judges the metrics of a metrics file instead (quantile
and proportion metrics, from their per-arm `MetricSummary`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Mapping, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import scipy.stats

from transforms.decisions import metrics as metric_defs
from transforms.decisions import model_quality
from transforms.decisions import outcomes
from transforms.decisions import stats
from transforms.logs import contract

CONTINUOUS = "continuous"
RATE = "rate"
INCREASE = "increase"  # an increase is harmful (latency, errors)
DECREASE = "decrease"  # a decrease is harmful (reward)
EITHER = "either"

PASS = "Pass"
HIGH = "High"
LOW = "Low"
NO_DATA = "NoData"
MARGINAL = "Marginal"
FAIL = "Fail"

# Log-spaced edges from 1 microsecond to about 28 hours in milliseconds:
# 2,000 bins, each 1.2 % wider than the one before; below and above them
# one open bin each.
LATENCY_EDGES = np.geomspace(1e-3, 1e8, 2001)


@dataclasses.dataclass(frozen=True)
class Metric:
  """A metric the judge compares."""
  name: str
  kind: str  # CONTINUOUS or RATE
  direction: str = INCREASE
  weight: float = 1.0
  critical: bool = False
  min_effect: float | None = None  # None: the judge's default


class Histogram(NamedTuple):
  """A continuous metric's values of one arm: counts in the bins of `edges`
  (len(edges) + 1 bins: below the first edge, between edges, above the
  last), and their sum (for the mean)."""
  edges: np.ndarray
  counts: np.ndarray
  total: float

  @property
  def n(self) -> float:
    return float(self.counts.sum())


class Rate(NamedTuple):
  events: float
  trials: float


@dataclasses.dataclass(frozen=True)
class JudgeConfig:
  confidence: float = 0.98
  min_effect: float = 0.05  # relative change the judge ignores below
  pass_score: float = 95.0
  marginal_score: float = 75.0
  min_samples: int = 50  # per arm and metric; fewer: NoData

  def __post_init__(self):
    if not 0.5 < self.confidence < 1:
      raise ValueError("canary confidence must be in (0.5, 1)")
    if not 0 <= self.marginal_score <= self.pass_score <= 100:
      raise ValueError("need 0 <= canary_marginal <= canary_pass <= 100")


class Comparison(NamedTuple):
  """One metric of the canary against the baseline."""
  metric: Metric
  classification: str  # PASS, HIGH, LOW or NO_DATA
  passed: bool | None  # None: no data
  canary_value: float | None  # the mean (continuous) or the rate
  baseline_value: float | None
  effect: float | None  # canary / baseline - 1
  p_value: float | None
  u_max_error: float | None  # Mann-Whitney only


def mann_whitney(canary: Histogram, baseline: Histogram):
  """Mann-Whitney U of two histograms on the same edges: (U of the canary,
  two-sided p-value, max error of U / (n1 n2)). The p-value is the normal
  approximation with tie correction and continuity correction, as
  `scipy.stats.mannwhitneyu(method="asymptotic")`."""
  c, b = np.asarray(canary.counts, float), np.asarray(baseline.counts, float)
  n1, n2 = c.sum(), b.sum()
  below = np.concatenate([[0.0], np.cumsum(b)[:-1]])
  same_bin = float((c * b).sum())
  u = float((c * below).sum() + 0.5 * same_bin)
  n = n1 + n2
  ties = c + b
  tie_term = float((ties**3 - ties).sum()) / (n * (n - 1))
  variance = n1 * n2 / 12 * ((n + 1) - tie_term)
  if not variance > 0:
    return u, 1.0, 0.5 * same_bin / (n1 * n2)
  z = (abs(u - n1 * n2 / 2) - 0.5) / math.sqrt(variance)
  p_value = float(min(1.0, 2 * scipy.stats.norm.sf(max(z, 0.0))))
  return u, p_value, 0.5 * same_bin / (n1 * n2)


def histogram(values: np.ndarray, edges: np.ndarray = LATENCY_EDGES
              ) -> Histogram:
  values = np.asarray(values, float)
  counts = np.bincount(np.searchsorted(edges, values, side="right"),
                       minlength=len(edges) + 1).astype(float)
  return Histogram(edges, counts, float(values.sum()))


def histogram_from_cdf(cdf, n: float, total: float,
                       edges: np.ndarray = LATENCY_EDGES) -> Histogram:
  """A histogram from a distribution's CDF at `edges`: len(edges) + 1
  shares of values below each edge, then 1 (a KLL sketch's
  `get_cdf(edges, inclusive=False)`); n values summing to `total`."""
  shares = np.diff(np.concatenate([[0.0], np.asarray(cdf, float)]))
  return Histogram(edges, n * np.clip(shares, 0.0, None), float(total))


def _effect(canary: float, baseline: float) -> float | None:
  if baseline == 0:
    return None if canary == 0 else math.copysign(math.inf, canary)
  return canary / abs(baseline) - 1 if baseline > 0 else (
      (canary - baseline) / abs(baseline))


def compare(metric: Metric, canary, baseline,
            config: JudgeConfig) -> Comparison:
  """Classify one metric of the canary against the baseline."""
  alpha = 1 - config.confidence
  min_effect = config.min_effect if metric.min_effect is None else (
      metric.min_effect)
  if metric.kind == CONTINUOUS:
    n_canary, n_baseline = canary.n, baseline.n
  else:
    n_canary, n_baseline = canary.trials, baseline.trials
  if min(n_canary, n_baseline) < max(config.min_samples, 1):
    return Comparison(metric, NO_DATA, None, None, None, None, None, None)
  u_error = None
  if metric.kind == CONTINUOUS:
    canary_value = canary.total / n_canary
    baseline_value = baseline.total / n_baseline
    u, p_value, u_error = mann_whitney(canary, baseline)
    higher = u > n_canary * n_baseline / 2
  else:
    canary_value = canary.events / n_canary
    baseline_value = baseline.events / n_baseline
    p_value, z, _ = stats.two_proportion_test(canary.events, n_canary,
                                              baseline.events, n_baseline)
    p_value = 1.0 if np.isnan(p_value) else float(p_value)
    higher = canary_value > baseline_value
  effect = _effect(canary_value, baseline_value)
  large = effect is None or abs(effect) >= min_effect
  classification = PASS
  if p_value < alpha and large and canary_value != baseline_value:
    classification = HIGH if higher else LOW
  harmful = {INCREASE: (HIGH,), DECREASE: (LOW,), EITHER: (HIGH, LOW)}
  passed = classification not in harmful[metric.direction]
  return Comparison(metric, classification, passed, canary_value,
                    baseline_value, effect, p_value, u_error)


class Verdict(NamedTuple):
  score: float | None
  verdict: str  # PASS, MARGINAL, FAIL or NO_DATA
  reason: str
  comparisons: list


def judge(metrics, canary: Mapping, baseline: Mapping,
          config: JudgeConfig) -> Verdict:
  """Every metric compared, the weighted score and the verdict. `canary`
  and `baseline` map metric names to their summaries."""
  comparisons = [compare(m, canary[m.name], baseline[m.name], config)
                 for m in metrics if m.name in canary and m.name in baseline]
  judged = [c for c in comparisons if c.passed is not None]
  weights = sum(c.metric.weight for c in judged)
  if not judged or weights <= 0:
    return Verdict(None, NO_DATA, "no metric has enough data", comparisons)
  score = 100 * sum(c.metric.weight for c in judged if c.passed) / weights
  failed = [c for c in judged if not c.passed]
  critical = [c.metric.name for c in failed if c.metric.critical]
  names = ", ".join(f"{c.metric.name} {c.classification}" for c in failed)
  if critical:
    return Verdict(score, FAIL, f"critical metric failed: {names}",
                   comparisons)
  if score >= config.pass_score:
    return Verdict(score, PASS, names and f"failed: {names}" or
                   "every metric passed", comparisons)
  verdict = MARGINAL if score >= config.marginal_score else FAIL
  return Verdict(score, verdict, f"failed: {names}", comparisons)


# The metrics the serving logs carry, until the metrics file names others.
LATENCY = Metric("latency_ms", CONTINUOUS, INCREASE)
ERROR_RATE = Metric("error_rate", RATE, INCREASE, critical=True)
REWARD = Metric("reward", RATE, DECREASE)
LOG_METRICS = (LATENCY, ERROR_RATE, REWARD)

# The per-arm accumulator: these sums, then the latency histogram.
_SCALARS = ("requests", "canary_policy", "latency_n", "latency_sum",
            "status_n", "errors", "reward_n", "reward_sum", "non_binary")
_AT = {name: i for i, name in enumerate(_SCALARS)}
_HISTOGRAM = len(_SCALARS)
SIZE = _HISTOGRAM + len(LATENCY_EDGES) + 1
CANARY_POLICY = "canary"


def empty() -> np.ndarray:
  return np.zeros(SIZE)


def arm_partials(requests: pa.Table, missing_reward: str = "zero") -> list:
  """Joined (live) requests -> [((experiment_id, arm), accumulator)] of the
  log metrics: latency histogram, errors among requests with a status, the
  reward (a request without counted feedback: 0, or left out with
  `missing_reward` "ignore"), and how many requests say `policy: canary`."""
  used = [name for name in ("experiment_id", "arm", "policy", "latency_ms",
                            "status", "reward")
          if name in requests.column_names]
  live = requests.select(used)
  if "shadow" in requests.column_names and pc.any(requests["shadow"]).as_py():
    live = live.filter(pc.invert(requests["shadow"]))
  if not live.num_rows:
    return []
  codes, names = model_quality.group_codes(live, ("experiment_id", "arm"))
  n_groups = len(names)
  sums = np.zeros((n_groups, SIZE))

  def add(name, rows, weights=None):
    sums[:, _AT[name]] = np.bincount(codes[rows], weights=weights,
                                     minlength=n_groups)

  everyone = np.ones(len(codes), bool)
  add("requests", everyone)
  if "policy" in live.column_names:
    add("canary_policy", _numpy(pc.fill_null(pc.equal(
        live["policy"], CANARY_POLICY), False)).astype(bool))
  if "latency_ms" in live.column_names:
    latency = _numpy(pc.fill_null(live["latency_ms"], np.nan)).astype(float)
    timed = ~np.isnan(latency)
    add("latency_n", timed)
    add("latency_sum", timed, latency[timed])
    bins = np.searchsorted(LATENCY_EDGES, latency[timed], side="right")
    sums[:, _HISTOGRAM:] = np.bincount(
        codes[timed] * (SIZE - _HISTOGRAM) + bins,
        minlength=n_groups * (SIZE - _HISTOGRAM)).reshape(n_groups, -1)
  if "status" in live.column_names:
    status = outcomes.array(live["status"])
    known = _numpy(status.is_valid()).astype(bool)
    code = pc.cast(pc.if_else(pc.match_substring_regex(
        pc.fill_null(status, ""), r"^[0-9]+$"), status, None), pa.int64())
    errors = _numpy(pc.fill_null(pc.or_kleene(
        pc.equal(status, contract.STATUS_ERROR), pc.greater_equal(code, 500)),
        False)).astype(bool)
    add("status_n", known)
    add("errors", errors & known)
  reward = _numpy(pc.fill_null(live["reward"], np.nan)).astype(float)
  rewarded = ~np.isnan(reward)
  counted = rewarded if missing_reward == "ignore" else everyone
  add("reward_n", counted)
  add("reward_sum", counted, np.where(rewarded, reward, 0.0)[counted])
  add("non_binary", rewarded & (reward != 0.0) & (reward != 1.0))
  return [(name, sums[i]) for i, name in enumerate(names)]


def _numpy(array) -> np.ndarray:
  return array.to_numpy(zero_copy_only=False)


def summaries(accumulator) -> dict:
  """The log metrics' summaries of a merged per-arm accumulator."""
  value = lambda name: float(accumulator[_AT[name]])
  found = {}
  if value("latency_n"):
    found[LATENCY.name] = Histogram(LATENCY_EDGES,
                                    np.asarray(accumulator[_HISTOGRAM:]),
                                    value("latency_sum"))
  if value("status_n"):
    found[ERROR_RATE.name] = Rate(value("errors"), value("status_n"))
  if value("reward_n") and not value("non_binary"):
    found[REWARD.name] = Rate(value("reward_sum"), value("reward_n"))
  return found


def choose_arms(arms: Mapping[str, np.ndarray], canary_arm: str | None,
                baseline_arm: str | None):
  """(canary, baseline) of an experiment, or None when it has no canary: the
  `canary_arm` given, else the least-served arm of an experiment whose
  requests say `policy: canary`; the baseline is `baseline_arm` or the
  most-served other arm."""
  requests = {arm: float(acc[_AT["requests"]]) for arm, acc in arms.items()}
  if canary_arm is None:
    if not any(acc[_AT["canary_policy"]] for acc in arms.values()):
      return None
    canary_arm = min(sorted(requests), key=requests.get)
  if canary_arm not in arms:
    return None
  others = [arm for arm in sorted(requests) if arm != canary_arm]
  if baseline_arm in others:
    return canary_arm, baseline_arm
  if not others:
    return None
  return canary_arm, max(others, key=requests.get)


def _optional(value) -> float | None:
  if value is None:
    return None
  value = float(value)
  return value if math.isfinite(value) else None


def verdict_row(experiment_id: str, canary_arm: str, baseline_arm: str,
                verdict: Verdict) -> dict:
  """The `canary_verdicts` row of one experiment."""
  return {
      "experiment_id": experiment_id, "canary_arm": canary_arm,
      "baseline_arm": baseline_arm, "score": verdict.score,
      "verdict": verdict.verdict, "reason": verdict.reason,
      "metrics": [{
          "metric": c.metric.name, "kind": c.metric.kind,
          "direction": c.metric.direction, "weight": c.metric.weight,
          "critical": c.metric.critical, "classification": c.classification,
          "passed": c.passed, "canary_value": _optional(c.canary_value),
          "baseline_value": _optional(c.baseline_value),
          "effect": _optional(c.effect), "p_value": _optional(c.p_value),
          "u_max_error": _optional(c.u_max_error)}
          for c in verdict.comparisons]}


def experiment_verdict(experiment_id: str, arms: Mapping[str, np.ndarray],
                       config: JudgeConfig, canary_arm: str | None = None,
                       baseline_arm: str | None = None,
                       metrics=LOG_METRICS) -> dict | None:
  """The `canary_verdicts` row of an experiment from its merged per-arm
  accumulators, or None when it has no canary."""
  chosen = choose_arms(arms, canary_arm, baseline_arm)
  if chosen is None:
    return None
  canary, baseline = chosen
  return verdict_row(experiment_id, canary, baseline, judge(
      metrics, summaries(arms[canary]), summaries(arms[baseline]), config))


# The metrics file's metrics (transforms/decisions/metrics.py) in the judge.
DEFINITION_BINS = 2000


def definition_metric(definition) -> Metric | None:
  """The judge's Metric of a metrics-file definition, None for the types it
  does not judge (mean, ratio). A quantile metric is continuous (judged on
  its KLL sketch), a proportion a rate; the direction becomes the harmful
  one; a guardrail is critical with its margin as the minimum effect."""
  kinds = {metric_defs.QUANTILE: CONTINUOUS, metric_defs.PROPORTION: RATE}
  if definition.type not in kinds:
    return None
  harmful = {metric_defs.INCREASE: DECREASE, metric_defs.DECREASE: INCREASE}
  guardrail = definition.role == metric_defs.GUARDRAIL
  return Metric(definition.name, kinds[definition.type],
                harmful[definition.direction], critical=guardrail,
                min_effect=definition.margin if guardrail else None)


def definition_edges(canary_summary, baseline_summary) -> np.ndarray:
  """DEFINITION_BINS bins over the values of both arms: log-spaced for
  positive values (as LATENCY_EDGES), equal otherwise."""
  low = min(canary_summary.minimum, baseline_summary.minimum)
  high = max(canary_summary.maximum, baseline_summary.maximum)
  if not high > low:
    return np.array([low])
  if low > 0:
    return np.geomspace(low, high, DEFINITION_BINS + 1)
  return np.linspace(low, high, DEFINITION_BINS + 1)


def definition_summary(metric: Metric, summary, edges=None):
  """A MetricSummary (n, mean, its KLL sketch for a quantile) -> the
  judge's Histogram (CDF of the sketch at `edges`) or Rate (mean * n, n)."""
  if metric.kind == RATE:
    return Rate(summary.mean * summary.n, float(summary.n))
  return histogram_from_cdf(summary.sketch.get_cdf(list(edges)), summary.n,
                            summary.mean * summary.n, edges)


def judge_definitions(definitions, canary: Mapping, baseline: Mapping,
                      config: JudgeConfig) -> Verdict:
  """The judge on a metrics file's definitions; `canary` and `baseline` map
  metric names to their merged MetricSummary (a metric missing from one arm
  is left out, a type the judge does not take too)."""
  metrics, canary_inputs, baseline_inputs = [], {}, {}
  for definition in definitions:
    metric = definition_metric(definition)
    if metric is None or not (definition.name in canary and
                              definition.name in baseline):
      continue
    canary_summary, baseline_summary = (canary[definition.name],
                                        baseline[definition.name])
    edges = None
    if metric.kind == CONTINUOUS:
      edges = definition_edges(canary_summary, baseline_summary)
    metrics.append(metric)
    canary_inputs[metric.name] = definition_summary(metric, canary_summary,
                                                    edges)
    baseline_inputs[metric.name] = definition_summary(
        metric, baseline_summary, edges)
  return judge(metrics, canary_inputs, baseline_inputs, config)


def experiment_verdict_on_definitions(
    experiment_id: str, arms: Mapping[str, np.ndarray],
    summaries_by_arm: Mapping[str, Mapping], definitions,
    config: JudgeConfig, canary_arm: str | None = None,
    baseline_arm: str | None = None) -> dict | None:
  """`experiment_verdict` judged on the definitions that apply to the
  experiment; `summaries_by_arm`: arm -> {metric name: MetricSummary}."""
  chosen = choose_arms(arms, canary_arm, baseline_arm)
  if chosen is None:
    return None
  canary, baseline = chosen
  applying = [d for d in definitions if d.applies_to(experiment_id)]
  return verdict_row(experiment_id, canary, baseline, judge_definitions(
      applying, summaries_by_arm.get(canary, {}),
      summaries_by_arm.get(baseline, {}), config))

"""Known answers and simulations for metric statistics and verdicts."""

import math

import numpy as np
import pytest
import scipy.stats
from statsmodels.stats import multitest
from statsmodels.stats import proportion

from transforms.attribution import metric_summary
from transforms.attribution import rewards
from transforms.decisions import arm_table
from transforms.decisions import metric_stats
from transforms.decisions import metrics
from transforms.decisions import stats
from transforms.decisions import verdicts

CLICKS = metrics.MetricDefinition("clicks", metrics.PROPORTION,
                                  "feedback:click", role=metrics.GOAL)
REVENUE = metrics.MetricDefinition("revenue", metrics.MEAN,
                                   "feedback:purchase", role=metrics.GOAL)
LATENCY = metrics.MetricDefinition(
    "latency_ms", metrics.MEAN, "prediction:latency_ms",
    role=metrics.GUARDRAIL, direction=metrics.DECREASE, margin=0.05,
    missing="ignore")
P95 = metrics.MetricDefinition(
    "latency_ms", metrics.QUANTILE, "prediction:latency_ms", q=0.95,
    role=metrics.GUARDRAIL, direction=metrics.DECREASE, margin=0.05,
    missing="ignore")
FIXED = metric_stats.MetricConfig(decide_on="fixed", correction="none",
                                  min_samples=0)


def summary(values, denominators=None, sketch=False):
  values = np.asarray(values, float)
  (result,) = metric_summary.summarize_groups(
      np.zeros(len(values), np.int64), 1, values,
      None if denominators is None else np.asarray(denominators, float),
      with_sketch=sketch)
  return result


def test_summaries_merge_to_the_moments_of_all_values():
  rng = np.random.default_rng(1)
  parts = [rng.normal(1e6, 1.0, size) for size in (1, 7, 1000, 33)]
  dens = [rng.uniform(1, 2, len(p)) for p in parts]
  merged = metric_summary.merge_all(summary(p, d) for p, d in zip(parts, dens))
  values, den = np.concatenate(parts), np.concatenate(dens)
  assert merged.n == len(values)
  assert merged.mean == pytest.approx(values.mean(), rel=1e-15)
  assert merged.variance == pytest.approx(values.var(ddof=1), rel=1e-9)
  assert merged.comoment == pytest.approx(
      np.sum((values - values.mean()) * (den - den.mean())), rel=1e-9)
  assert (merged.minimum, merged.maximum) == (values.min(), values.max())
  assert summary([3.0] * 5).variance == 0.0


def test_large_mean_small_spread_keeps_its_variance():
  # The case: 1e5 -+ 1, n = 1,000,000 (sums alone give 0).
  n = 1_000_000
  values = np.where(np.arange(n) % 2 == 0, 1e5 - 1, 1e5 + 1)
  partials = rewards.per_arm(_requests("a", values), "zero")
  (_, accumulator), = partials
  totals = arm_table.arm_totals("a", accumulator)
  assert float(stats.sample_variance(totals.reward_sum, totals.reward_sq_sum,
                                     n)) == 0.0  # the old cancellation
  assert stats.moments_variance(totals.reward_m2, n, totals.reward_min,
                                totals.reward_max) == pytest.approx(
                                    n / (n - 1), rel=1e-9)
  shifted = rewards.per_arm(_requests("b", values + 0.001), "zero")[0][1]
  rows = stats.experiment_statistics(
      [totals, arm_table.arm_totals("b", shifted)], control_arm="a")
  welch = scipy.stats.ttest_ind(values + 0.001, values, equal_var=False)
  assert rows["b"]["p_value"] == pytest.approx(welch.pvalue, rel=1e-6)
  assert rows["b"]["ci_high"] > rows["b"]["ci_low"]
  assert rows["b"]["prob_best"] < 0.9


def _requests(arm, values):
  import pyarrow as pa
  return pa.table({"experiment_id": ["e"] * len(values),
                   "arm": [arm] * len(values),
                   "ts": np.zeros(len(values)),
                   "reward": np.asarray(values, float)})


def test_proportion_interval_and_test_match_statsmodels():
  arm = summary([1] * 130 + [0] * 870)
  control = summary([1] * 100 + [0] * 900)
  low, high = proportion.proportion_confint(130, 1000, method="wilson")
  rows = metric_stats.segment_statistics(
      {"clicks": {"a": control, "b": arm}}, {"a": 1000, "b": 1000}, [CLICKS],
      metric_stats.MetricConfig(control_arm="a"))
  row = rows[1]
  assert (row["ci_low"], row["ci_high"]) == pytest.approx((low, high))
  _, p_value = proportion.proportions_ztest([130, 100], [1000, 1000])
  assert row["p_value"] == pytest.approx(p_value, rel=1e-9)
  assert row["lift"] == pytest.approx(0.3)


def test_mean_interval_and_welch_test_match_scipy():
  rng = np.random.default_rng(2)
  a, b = rng.exponential(10, 400), rng.exponential(11, 300)
  rows = metric_stats.segment_statistics(
      {"revenue": {"a": summary(a), "b": summary(b)}}, {"a": 400, "b": 300},
      [REVENUE], metric_stats.MetricConfig(control_arm="a"))
  interval = scipy.stats.t.interval(0.95, len(b) - 1, b.mean(),
                                    scipy.stats.sem(b))
  assert (rows[1]["ci_low"], rows[1]["ci_high"]) == pytest.approx(interval)
  assert rows[1]["p_value"] == pytest.approx(
      scipy.stats.ttest_ind(b, a, equal_var=False).pvalue, rel=1e-9)


def test_ratio_uses_the_delta_method():
  rng = np.random.default_rng(3)
  clicks = rng.poisson(3, 2000).astype(float)
  revenue = clicks * rng.gamma(2, 5, 2000)
  definition = metrics.MetricDefinition("rpc", metrics.RATIO,
                                        numerator="revenue",
                                        denominator="clicks")
  got = metric_stats.estimate(summary(revenue, clicks), definition, 0.05)
  ratio = revenue.sum() / clicks.sum()
  covariance = np.cov(revenue, clicks)  # ddof = 1
  variance = (covariance[0, 0] - 2 * ratio * covariance[0, 1]
              + ratio**2 * covariance[1, 1]) / (len(clicks) * clicks.mean()**2)
  assert got.value == pytest.approx(ratio, rel=1e-12)
  assert got.se == pytest.approx(math.sqrt(variance), rel=1e-9)
  assert got.high - got.value == pytest.approx(1.959964 * math.sqrt(variance),
                                               rel=1e-6)


def test_guardrail_non_inferiority_p_value():
  rng = np.random.default_rng(4)
  control, arm = rng.normal(100, 20, 5000), rng.normal(103, 20, 5000)
  rows = metric_stats.segment_statistics(
      {"latency_ms": {"a": summary(control), "b": summary(arm)}},
      {"a": 5000, "b": 5000}, [LATENCY],
      metric_stats.MetricConfig(control_arm="a"))
  row = rows[1]
  lift = arm.mean() / control.mean() - 1
  se = math.sqrt(arm.var(ddof=1) / 5000 / control.mean()**2
                 + arm.mean()**2 * control.var(ddof=1) / 5000
                 / control.mean()**4)
  assert row["lift"] == pytest.approx(lift)
  assert row["ni_p_value"] == pytest.approx(
      scipy.stats.norm.sf((0.05 - lift) / se), rel=1e-9)


@pytest.mark.parametrize("method,statsmodels_method", [
    ("holm", "holm"), ("bh", "fdr_bh")])
def test_corrections_equal_statsmodels(method, statsmodels_method):
  rng = np.random.default_rng(5)
  for size in (1, 2, 5, 17):
    p_values = list(rng.uniform(0, 0.2, size)) + [0.01] * 2  # with ties
    expected = multitest.multipletests(p_values,
                                       method=statsmodels_method)[1]
    assert stats.adjust_p_values(p_values, method) == pytest.approx(
        list(expected), rel=1e-12)


def test_goal_metrics_times_arms_are_corrected_together():
  rng = np.random.default_rng(6)
  arms = {name: rng.binomial(1, p, 3000) for name, p in (
      ("a", 0.1), ("b", 0.12), ("c", 0.115))}
  summaries = {"clicks": {k: summary(v) for k, v in arms.items()},
               "revenue": {k: summary(v * 3.0) for k, v in arms.items()}}
  rows = metric_stats.segment_statistics(
      summaries, {k: 3000 for k in arms}, [CLICKS, REVENUE],
      metric_stats.MetricConfig(control_arm="a", correction="bh"))
  tested = [r for r in rows if r["arm"] != "a"]
  expected = multitest.multipletests([r["p_value"] for r in tested],
                                     method="fdr_bh")[1]
  assert [r["p_value_adj"] for r in tested] == pytest.approx(list(expected))


def test_cap_winsorizes_values():
  import pyarrow as pa
  capped = metrics.MetricDefinition("revenue", metrics.MEAN,
                                    "feedback:purchase", cap=100.0)
  table = pa.table({"feedback:purchase:max": pa.array(
      [5.0, None, 1000.0, 100.0, 250.0])})
  values = metric_summary.metric_values(table, capped)
  assert list(values) == [5.0, 0.0, 100.0, 100.0, 100.0]


def test_sketch_quantile_within_its_rank_error_on_a_million_values():
  rng = np.random.default_rng(7)
  values = rng.lognormal(4, 0.6, 1_000_000)
  parts = [summary(chunk, sketch=True) for chunk in np.array_split(values, 8)]
  merged = metric_summary.merge_all(parts)
  error = metric_stats.quantile_rank_error(merged)
  assert 0 < error < 0.02
  answer = merged.sketch.get_quantile(0.95)
  rank = np.mean(values <= answer)
  assert abs(rank - 0.95) <= error
  exact = np.quantile(values, [0.95 - error, 0.95 + error])
  assert exact[0] <= answer <= exact[1]
  value, low, high = metric_stats.quantile_interval(merged, 0.95, 0.05)
  assert low < np.quantile(values, 0.95) < high and value == answer


def test_quantile_interval_covers_the_true_quantile():
  rng = np.random.default_rng(8)
  true_p95 = scipy.stats.expon.ppf(0.95, scale=50)
  covered = [low <= true_p95 <= high for low, high in (
      metric_stats.quantile_interval(
          summary(rng.exponential(50, 2000), sketch=True), 0.95, 0.05)[1:]
      for _ in range(200))]
  assert np.mean(covered) >= 0.93


def _rows(summaries, definitions, config, n):
  arms = {arm: n for arm in next(iter(summaries.values()))}
  return metric_stats.segment_statistics(summaries, arms, definitions, config)


def test_reasons_read_as_sentences():
  rng = np.random.default_rng(9)
  summaries = {"clicks": {"a": summary(rng.binomial(1, 0.1, 20000)),
                          "b": summary(rng.binomial(1, 0.13, 20000))},
               "latency_ms": {"a": summary(rng.normal(100, 10, 20000)),
                              "b": summary(rng.normal(120, 10, 20000))}}
  config = metric_stats.MetricConfig(control_arm="a")
  (decision,) = verdicts.decide(_rows(summaries, [CLICKS, LATENCY], config,
                                      20000), config)
  assert decision["verdict"] == verdicts.ROLLBACK
  clicks, latency = decision["reasons"]
  assert clicks.startswith("clicks +") and clicks.endswith(": better")
  assert latency.startswith("latency_ms +20.")
  assert "guardrail margin +5.0%: worse" in latency


def test_srm_and_empty_arm_are_invalid():
  rng = np.random.default_rng(10)
  good = {"a": summary(rng.binomial(1, 0.1, 1000)),
          "b": summary(rng.binomial(1, 0.1, 1000))}
  config = metric_stats.MetricConfig(control_arm="a")
  rows = metric_stats.segment_statistics({"clicks": good},
                                         {"a": 1000, "b": 700}, [CLICKS],
                                         config)
  (decision,) = verdicts.decide(rows, config)
  assert decision["verdict"] == verdicts.INVALID
  assert decision["reasons"][0].startswith("sample ratio mismatch")
  rows = metric_stats.segment_statistics({"clicks": {"a": good["a"]}},
                                         {"a": 1000, "b": 1000}, [CLICKS],
                                         config)
  (decision,) = verdicts.decide(rows, config)
  assert decision["verdict"] == verdicts.INVALID
  assert "clicks: no data in b" in decision["reasons"]


def test_min_samples_holds_back_ship():
  rng = np.random.default_rng(11)
  summaries = {"clicks": {"a": summary(rng.binomial(1, 0.1, 5000)),
                          "b": summary(rng.binomial(1, 0.2, 5000))}}
  for min_samples, verdict in ((100, verdicts.SHIP),
                               (10000, verdicts.KEEP_RUNNING)):
    config = metric_stats.MetricConfig(control_arm="a",
                                       min_samples=min_samples)
    (decision,) = verdicts.decide(_rows(summaries, [CLICKS], config, 5000),
                                  config)
    assert decision["verdict"] == verdict


# Simulations of the decision rule.

def _arm(rng, n, click_rate, latency_mean):
  return {"clicks": summary(rng.binomial(1, click_rate, n)),
          "latency_ms": summary(rng.gamma(4.0, latency_mean / 4.0, n))}


def _experiment(rng, n, candidate_click, candidate_latency):
  control = _arm(rng, n, 0.10, 100.0)
  candidate = _arm(rng, n, candidate_click, candidate_latency)
  return {m: {"a": control[m], "b": candidate[m]} for m in control}


def _verdict(summaries, config, n):
  (decision,) = verdicts.decide(
      _rows(summaries, [CLICKS, LATENCY], config, n), config)
  return decision["verdict"]


@pytest.mark.parametrize("decide_on", ["fixed", "sequential"])
def test_guardrail_broken_by_twice_its_margin_is_rolled_back(decide_on):
  config = metric_stats.MetricConfig(control_arm="a", decide_on=decide_on)
  outcomes = [_verdict(_experiment(np.random.default_rng(seed), 20000, 0.11,
                                   110.0), config, 20000)
              for seed in range(200)]
  assert outcomes.count(verdicts.ROLLBACK) >= 190


@pytest.mark.parametrize("decide_on", ["fixed", "sequential"])
def test_a_a_experiment_is_never_shipped(decide_on):
  config = metric_stats.MetricConfig(control_arm="a", decide_on=decide_on)
  outcomes = [_verdict(_experiment(np.random.default_rng(1000 + seed), 20000,
                                   0.10, 100.0), config, 20000)
              for seed in range(200)]
  # A false ship is a goal wrongly significant in its good direction: about
  # alpha / 2 of A/A tests at a single look.
  assert outcomes.count(verdicts.KEEP_RUNNING) >= 190
  assert outcomes.count(verdicts.SHIP) <= 10


def _false_ship_rate(decide_on, seeds=200, days=30, daily=1000):
  config = metric_stats.MetricConfig(control_arm="a", decide_on=decide_on,
                                     min_samples=0)
  shipped = 0
  for seed in range(seeds):
    rng = np.random.default_rng(5000 + seed)
    total = None
    for day in range(days):
      today = _experiment(rng, daily, 0.10, 100.0)
      total = today if total is None else {
          m: {a: total[m][a].merge(today[m][a]) for a in today[m]}
          for m in today}
      if _verdict(total, config, daily * (day + 1)) == verdicts.SHIP:
        shipped += 1
        break
  return shipped / seeds


def test_daily_looks_keep_false_ship_rate_with_sequential():
  assert _false_ship_rate("sequential") <= 0.05

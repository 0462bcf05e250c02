"""The canary judge on a metrics file's definitions (issue 14's metrics):
known answers against scipy and statsmodels, and the pipeline with --metrics."""

import json

import numpy as np
import pyarrow as pa
import pytest
import scipy.stats
from statsmodels.stats.proportion import proportions_ztest

from pipelines import model_evaluation
from simulation import model_logs
from transforms.attribution import metric_summary
from transforms.attribution import rewards
from transforms.decisions import canary
from transforms.decisions import metrics

LATENCY_P95 = metrics.MetricDefinition(
    name="latency_p95", type=metrics.QUANTILE, q=0.95,
    source="prediction:latency_ms", role=metrics.GUARDRAIL,
    direction=metrics.DECREASE, margin=0.1)
ERRORS = metrics.MetricDefinition(
    name="errors", type=metrics.PROPORTION, source="prediction:error",
    role=metrics.GUARDRAIL, direction=metrics.DECREASE, margin=0.2)
CLICKS = metrics.MetricDefinition(
    name="clicks", type=metrics.PROPORTION, source="feedback:click",
    role=metrics.GOAL, direction=metrics.INCREASE)
REVENUE = metrics.MetricDefinition(
    name="revenue", type=metrics.MEAN, source="feedback:purchase")


def _summary(values, with_sketch):
  values = np.asarray(values, float)
  return metric_summary.summarize_groups(np.zeros(len(values), np.int64), 1,
                                         values, with_sketch=with_sketch)[0]


def test_definitions_become_judge_metrics_in_their_harmful_direction():
  assert canary.definition_metric(LATENCY_P95) == canary.Metric(
      "latency_p95", canary.CONTINUOUS, canary.INCREASE, critical=True,
      min_effect=0.1)
  assert canary.definition_metric(CLICKS) == canary.Metric(
      "clicks", canary.RATE, canary.DECREASE)
  assert canary.definition_metric(ERRORS).critical
  assert canary.definition_metric(REVENUE) is None


@pytest.mark.parametrize("n_canary,n_baseline,shift,seed", [
    (300, 700, 1.0, 1), (600, 750, 1.04, 2), (2000, 20000, 1.03, 3)])
def test_quantile_metric_matches_scipy_mann_whitney(n_canary, n_baseline,
                                                    shift, seed):
  rng = np.random.default_rng(seed)
  canary_values = rng.lognormal(np.log(40 * shift), 0.4, n_canary)
  baseline_values = rng.lognormal(np.log(40), 0.4, n_baseline)
  canary_summary = _summary(canary_values, True)
  baseline_summary = _summary(baseline_values, True)
  metric = canary.definition_metric(LATENCY_P95)
  edges = canary.definition_edges(canary_summary, baseline_summary)
  histograms = [canary.definition_summary(metric, s, edges)
                for s in (canary_summary, baseline_summary)]
  assert histograms[0].n == n_canary
  assert histograms[0].total == pytest.approx(canary_values.sum())
  u, p_value, u_error = canary.mann_whitney(*histograms)
  expected = scipy.stats.mannwhitneyu(canary_values, baseline_values,
                                      method="asymptotic")
  pairs = n_canary * n_baseline
  # Below k = 800 values a KLL sketch holds them all: only the binning
  # errs (u_error). Above, the sketch's random rank error dominates: over 40
  # sketches of these values |dU| / pairs <= 0.0012 and |log10 of the
  # p-values' ratio| <= 0.32 (docs); the test allows about twice that.
  exact = max(n_canary, n_baseline) <= 800
  tolerance = u_error if exact else 0.003
  assert abs(u - expected.statistic) / pairs <= tolerance + 1e-12
  assert abs(np.log10(p_value / expected.pvalue)) <= (0.05 if exact else 0.6)


def test_proportion_metric_is_a_two_proportion_test():
  rng = np.random.default_rng(4)
  canary_values = (rng.random(3000) < 0.06).astype(float)
  baseline_values = (rng.random(9000) < 0.04).astype(float)
  canary_summary = _summary(canary_values, False)
  metric = canary.definition_metric(ERRORS)
  assert canary.definition_summary(metric, canary_summary) == canary.Rate(
      pytest.approx(canary_values.sum()), 3000)
  verdict = canary.judge_definitions(
      [ERRORS], {"errors": canary_summary},
      {"errors": _summary(baseline_values, False)}, canary.JudgeConfig())
  (comparison,) = verdict.comparisons
  _, expected_p = proportions_ztest(
      [canary_values.sum(), baseline_values.sum()], [3000, 9000])
  assert comparison.p_value == pytest.approx(expected_p, rel=1e-9)
  assert comparison.classification == canary.HIGH
  # A critical (guardrail) metric that fails fails the canary.
  assert verdict.verdict == canary.FAIL and "critical" in verdict.reason


def test_goal_falling_below_baseline_fails_and_untyped_metrics_are_left_out():
  rng = np.random.default_rng(5)
  summaries = {
      "canary": {"clicks": _summary(rng.random(4000) < 0.08, False),
                 "revenue": _summary(rng.random(4000), False)},
      "baseline": {"clicks": _summary(rng.random(4000) < 0.12, False),
                   "revenue": _summary(rng.random(4000), False)}}
  verdict = canary.judge_definitions([CLICKS, REVENUE], summaries["canary"],
                                     summaries["baseline"],
                                     canary.JudgeConfig())
  assert [(c.metric.name, c.classification, c.passed)
          for c in verdict.comparisons] == [("clicks", canary.LOW, False)]
  assert verdict.score == 0 and verdict.verdict == canary.FAIL


def test_pipeline_judges_the_canary_on_the_metrics_file(tmp_path):
  scenario = model_logs.ModelScenario(requests=3000, canary_share=0.2,
                                      canary_latency_factor=1.5, seed=3)
  predictions, feedback = model_logs.log_lines(scenario)
  (tmp_path / "p.jsonl").write_text("\n".join(predictions) + "\n")
  (tmp_path / "f.jsonl").write_text("\n".join(feedback) + "\n")
  definitions = (LATENCY_P95, ERRORS, REVENUE)
  requests = model_logs.requests_table(scenario)
  # No purchase feedback in these logs: the join gives the column, null.
  requests = requests.append_column(
      rewards.signal_column("purchase", "max"),
      pa.nulls(requests.num_rows, pa.float64()))
  partials = model_evaluation._live_metric_partials(requests, definitions)
  by_arm = {}
  for (_, arm, metric), summary in partials:
    by_arm.setdefault(arm, {})[metric] = summary
  expected = canary.judge_definitions(definitions, by_arm["canary-v3"],
                                      by_arm["stable"], canary.JudgeConfig())
  assert expected.verdict == canary.FAIL
  (tmp_path / "metrics.json").write_text(json.dumps({"metrics": [
      {"name": "latency_p95", "source": "prediction:latency_ms",
       "type": "quantile", "q": 0.95, "role": "guardrail",
       "direction": "decrease", "margin": 0.1},
      {"name": "errors", "source": "prediction:error", "type": "proportion",
       "role": "guardrail", "direction": "decrease", "margin": 0.2},
      {"name": "revenue", "source": "feedback:purchase", "type": "mean"}]}))
  model_evaluation.run([
      f"--predictions={tmp_path}/p.jsonl", f"--feedback={tmp_path}/f.jsonl",
      f"--metrics={tmp_path}/metrics.json", f"--output_dir={tmp_path}/out",
      "--runner=FnApiRunner", "--join_shards=3"])
  (row,) = [json.loads(line) for path in (tmp_path / "out").glob(
      "canary_verdicts*") for line in path.read_text().splitlines()]
  assert (row["canary_arm"], row["baseline_arm"], row["verdict"]) == (
      "canary-v3", "stable", canary.FAIL)
  found = {m["metric"]: m for m in row["metrics"]}
  assert list(found) == [c.metric.name for c in expected.comparisons] == [
      "latency_p95", "errors"]
  for comparison in expected.comparisons:
    metric = found[comparison.metric.name]
    assert metric["classification"] == comparison.classification
    assert metric["critical"] and metric["direction"] == canary.INCREASE
    assert metric["canary_value"] == pytest.approx(comparison.canary_value,
                                                   rel=1e-9)
    if comparison.metric.kind == canary.RATE:
      assert metric["p_value"] == pytest.approx(comparison.p_value, rel=1e-9)
    else:  # KLL sketches are random: the same side of the confidence.
      assert (metric["p_value"] < 0.02) == (comparison.p_value < 0.02)

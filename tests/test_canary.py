"""Canary judge: Mann-Whitney from histograms against scipy; classes, score, verdict."""

import json

import numpy as np
import pyarrow as pa
import pytest
import scipy.stats

from transforms.decisions import canary


@pytest.mark.parametrize("seed", range(5))
def test_mann_whitney_from_histograms_matches_scipy(seed):
  rng = np.random.default_rng(seed)
  shift = [1.0, 1.02, 1.05, 1.1, 0.97][seed]
  baseline = rng.lognormal(np.log(40), 0.5, 4000)
  candidate = rng.lognormal(np.log(40 * shift), 0.5, 500)
  u, p_value, max_error = canary.mann_whitney(canary.histogram(candidate),
                                              canary.histogram(baseline))
  expected = scipy.stats.mannwhitneyu(candidate, baseline,
                                      method="asymptotic")
  n_pairs = len(candidate) * len(baseline)
  assert abs(u - expected.statistic) / n_pairs <= max_error
  assert max_error < 0.005
  # The tolerance the docs state: p-values within 12 % of scipy's.
  assert abs(np.log10(p_value / expected.pvalue)) <= 0.05


def _metrics(**changes):
  return {"latency_ms": canary.histogram(changes.get("latency")),
          "error_rate": canary.Rate(*changes["errors"]),
          "reward": canary.Rate(*changes["reward"])}


def test_classes_score_and_verdicts():
  rng = np.random.default_rng(1)
  config = canary.JudgeConfig()
  baseline = _metrics(latency=rng.lognormal(3, 0.5, 5000),
                      errors=(50, 5000), reward=(500, 5000))
  same = _metrics(latency=rng.lognormal(3, 0.5, 1000), errors=(10, 1000),
                  reward=(100, 1000))
  verdict = canary.judge(canary.LOG_METRICS, same, baseline, config)
  assert verdict.verdict == canary.PASS and verdict.score == 100
  assert [c.classification for c in verdict.comparisons] == [canary.PASS] * 3

  slow = {**same, "latency_ms": canary.histogram(
      rng.lognormal(3, 0.5, 1000) * 1.3)}
  verdict = canary.judge(canary.LOG_METRICS, slow, baseline, config)
  latency = verdict.comparisons[0]
  assert latency.classification == canary.HIGH and not latency.passed
  assert latency.effect == pytest.approx(0.3, abs=0.06)
  assert verdict.score == pytest.approx(200 / 3)
  assert verdict.verdict == canary.FAIL

  # Faster is a Low, and harmless for a metric whose increase is harmful.
  fast = {**same, "latency_ms": canary.histogram(
      rng.lognormal(3, 0.5, 1000) * 0.7)}
  verdict = canary.judge(canary.LOG_METRICS, fast, baseline, config)
  assert verdict.comparisons[0].classification == canary.LOW
  assert verdict.verdict == canary.PASS

  # A critical metric failing fails the canary whatever the score.
  weighted = (canary.LATENCY, canary.ERROR_RATE,
              canary.Metric("reward", canary.RATE, canary.DECREASE,
                            weight=20))
  errors = {**same, "error_rate": canary.Rate(40, 1000)}
  verdict = canary.judge(weighted, errors, baseline, config)
  assert verdict.score > 90 and verdict.verdict == canary.FAIL
  assert "critical" in verdict.reason

  # Marginal between the thresholds.
  marginal = canary.JudgeConfig(pass_score=95, marginal_score=60)
  verdict = canary.judge(canary.LOG_METRICS, slow, baseline, marginal)
  assert verdict.verdict == canary.MARGINAL


def test_minimum_effect_and_no_data():
  config = canary.JudgeConfig(min_effect=0.05)
  baseline = canary.Rate(100_000, 1_000_000)
  # Significant (p ~ 1e-5) but a 3 % change: below the minimum effect.
  small = canary.compare(canary.ERROR_RATE, canary.Rate(31_000, 300_000),
                         baseline, config)
  assert small.p_value < 0.001 and small.classification == canary.PASS
  few = canary.compare(canary.ERROR_RATE, canary.Rate(10, 20), baseline,
                       config)
  assert few.classification == canary.NO_DATA and few.passed is None


def _requests(arm, n, latency_scale, rng, policy="canary"):
  return pa.table({
      "request_id": [f"{arm}{i}" for i in range(n)],
      "experiment_id": ["e"] * n, "arm": [arm] * n, "shadow": [False] * n,
      "policy": [policy] * n,
      "latency_ms": rng.lognormal(3, 0.4, n) * latency_scale,
      "status": pa.array(rng.choice(["ok", "503", "error", None], n,
                                    p=[0.96, 0.01, 0.01, 0.02])),
      "reward": pa.array(np.where(rng.random(n) < 0.5,
                                  (rng.random(n) < 0.1).astype(float),
                                  np.nan), from_pandas=True)})


def test_experiment_verdict_from_joined_requests():
  rng = np.random.default_rng(2)
  requests = pa.concat_tables([_requests("stable", 6000, 1.0, rng),
                               _requests("canary-v2", 600, 1.3, rng)])
  arms = {}
  for part in (requests.slice(0, 3000), requests.slice(3000)):
    for (experiment, arm), accumulator in canary.arm_partials(part):
      arms[arm] = arms.get(arm, canary.empty()) + accumulator
  row = canary.experiment_verdict("e", arms, canary.JudgeConfig())
  assert (row["canary_arm"], row["baseline_arm"]) == ("canary-v2", "stable")
  assert row["verdict"] == canary.FAIL
  by_name = {m["metric"]: m for m in row["metrics"]}
  assert by_name["latency_ms"]["classification"] == canary.HIGH
  json.dumps(row)  # Python numbers only: BigQuery's encoder refuses numpy's.
  errors = requests.filter(pa.compute.equal(requests["arm"], "stable"))
  known = errors["status"].drop_null()
  assert by_name["error_rate"]["baseline_value"] == pytest.approx(np.mean(
      np.isin(known.to_pylist(), ["503", "error"])))
  assert by_name["error_rate"]["baseline_value"] > 0.015
  # Without `policy: canary` and --canary_arm, no experiment is judged.
  plain = {arm: acc.copy() for arm, acc in arms.items()}
  for acc in plain.values():
    acc[1] = 0
  assert canary.experiment_verdict("e", plain, canary.JudgeConfig()) is None
  assert canary.experiment_verdict("e", plain, canary.JudgeConfig(),
                                   canary_arm="canary-v2")["verdict"] == (
                                       canary.FAIL)


def test_a_quantile_sketch_feeds_the_judge_through_its_cdf():
  """How a metric summarized by a KLL sketch (datasketches) reaches the
  Mann-Whitney U: its CDF at the histogram's edges."""
  import datasketches
  rng = np.random.default_rng(8)
  baseline = rng.lognormal(np.log(40), 0.5, 20_000)
  candidate = rng.lognormal(np.log(41.5), 0.5, 2_000)

  def from_sketch(values):
    sketch = datasketches.kll_doubles_sketch(800)
    sketch.update(values)
    return canary.histogram_from_cdf(
        sketch.get_cdf(canary.LATENCY_EDGES.tolist(), inclusive=False),
        len(values), float(values.sum()))

  u, p_value, _ = canary.mann_whitney(from_sketch(candidate),
                                      from_sketch(baseline))
  expected = scipy.stats.mannwhitneyu(candidate, baseline,
                                      method="asymptotic")
  # KLL k=800 ranks within about 0.35 % of n; measured: U within 0.001 of
  # all pairs (the docs' figure).
  assert abs(u - expected.statistic) / (len(candidate) * len(baseline)) < 0.002
  assert expected.pvalue < 0.01 and p_value < 0.01

"""Model quality, shadow comparison: known answers against scikit-learn and scipy."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import sklearn.calibration
import sklearn.metrics

from transforms.decisions import model_quality
from transforms.decisions import outcomes
from transforms.decisions import shadow
from transforms.logs import batches


def _outcome(value=None, label=None, probabilities=None):
  return {"value": value, "label": label, "probabilities": probabilities}


def _requests(predictions, truths, arm="a", shadow=False, experiment="e"):
  n = len(predictions)
  return pa.table({
      "request_id": [f"r{i}" for i in range(n)],
      "experiment_id": [experiment] * n, "arm": [arm] * n,
      "shadow": [shadow] * n,
      "prediction": pa.array(predictions, batches.EXTRA_TYPES["prediction"]),
      "truth": pa.array(truths, batches.EXTRA_TYPES["truth"])})


def _binary_data(seed, n=3000):
  rng = np.random.default_rng(seed)
  y = rng.random(n) < 0.3
  scores = 1 / (1 + np.exp(-(rng.normal(size=n) + 1.2 * y - 0.8)))
  return y.astype(int), scores


def _merged(requests, task, parts=3):
  """Accumulators of `parts` slices merged, as Beam's combine would."""
  totals = {}
  step = -(-requests.num_rows // parts)
  for start in range(0, requests.num_rows, step):
    for key, accumulator in model_quality.partials(
        requests.slice(start, step), task):
      totals[key] = totals.get(key, model_quality.empty()) + accumulator
  return totals


@pytest.mark.parametrize("seed", range(3))
def test_binary_classification_matches_scikit_learn(seed):
  y, scores = _binary_data(seed)
  requests = _requests([_outcome(value=float(s)) for s in scores],
                       [_outcome(value=float(t)) for t in y])
  (key, accumulator), = _merged(requests, "classification").items()
  row = model_quality.quality_row(key, accumulator, "classification")
  assert row["scored"] == len(y)
  assert row["accuracy"] == pytest.approx(
      sklearn.metrics.accuracy_score(y, scores > 0.5))
  assert row["log_loss"] == pytest.approx(sklearn.metrics.log_loss(y, scores))
  assert row["brier"] == pytest.approx(
      sklearn.metrics.brier_score_loss(y, scores))
  exact_auc = sklearn.metrics.roc_auc_score(y, scores)
  assert abs(row["auc"] - exact_auc) <= row["auc_max_error"]
  assert row["auc_max_error"] < 1e-3
  assert row["auc_ci_low"] < exact_auc < row["auc_ci_high"]
  observed, predicted = sklearn.calibration.calibration_curve(
      y, scores, n_bins=10, strategy="uniform")
  np.testing.assert_allclose([b["observed_rate"] for b in row["calibration"]],
                             observed)
  np.testing.assert_allclose([b["mean_predicted"] for b in row["calibration"]],
                             predicted)
  assert row["accuracy_ci_low"] < row["accuracy"] < row["accuracy_ci_high"]
  # Rows hold Python numbers: BigQuery's JSON encoder refuses numpy's.
  json.dumps(row)


def test_class_probabilities_and_labels():
  rng = np.random.default_rng(4)
  n = 600
  probabilities = rng.dirichlet([1, 1, 1], n)
  y = rng.integers(0, 3, n)
  requests = _requests(
      [_outcome(probabilities=p.tolist()) for p in probabilities],
      [_outcome(value=float(t)) for t in y])
  (key, accumulator), = model_quality.partials(requests,
                                                "classification")
  row = model_quality.quality_row(key, accumulator, "classification")
  assert row["accuracy"] == pytest.approx(sklearn.metrics.accuracy_score(
      y, probabilities.argmax(axis=1)))
  assert row["log_loss"] == pytest.approx(sklearn.metrics.log_loss(
      y, probabilities, labels=[0, 1, 2]))
  assert row["auc"] is None and row["brier"] is None  # Not binary.
  # Labels: accuracy only; a truth no prediction can score is not scored.
  labelled = _requests([_outcome(label="cat"), _outcome(label="dog"),
                        _outcome(label="cat"), _outcome(value=0.7)],
                       [_outcome(label="cat"), _outcome(label="cat"), None,
                        _outcome(label="cat")])
  (key, accumulator), = model_quality.partials(labelled, "classification")
  row = model_quality.quality_row(key, accumulator, "classification")
  assert (row["requests"], row["with_truth"], row["scored"]) == (4, 3, 2)
  assert row["accuracy"] == 0.5 and row["log_loss"] is None


def test_regression_matches_scikit_learn():
  rng = np.random.default_rng(5)
  truth = rng.normal(10, 3, 2000)
  predicted = truth + rng.normal(0.4, 1.5, 2000)
  requests = _requests([_outcome(value=float(p)) for p in predicted],
                       [_outcome(value=float(t)) for t in truth])
  (key, accumulator), = _merged(requests, "regression").items()
  row = model_quality.quality_row(key, accumulator, "regression")
  assert row["mae"] == pytest.approx(
      sklearn.metrics.mean_absolute_error(truth, predicted))
  assert row["rmse"] == pytest.approx(
      np.sqrt(sklearn.metrics.mean_squared_error(truth, predicted)))
  assert row["mean_error"] == pytest.approx(np.mean(predicted - truth))
  assert row["mean_error_ci_low"] < 0.4 < row["mean_error_ci_high"]
  assert row["rmse_ci_low"] < row["rmse"] < row["rmse_ci_high"]


def test_groups_by_arm_and_shadow():
  live = _requests([_outcome(value=0.9)] * 3, [_outcome(value=1.0)] * 3)
  shadow = _requests([_outcome(value=0.1)] * 2, [_outcome(value=1.0)] * 2,
                     arm="s", shadow=True)
  rows = {key: model_quality.quality_row(key, acc, "classification")
          for key, acc in model_quality.partials(
              pa.concat_tables([live, shadow]), "classification")}
  assert rows[("e", "a", False)]["accuracy"] == 1.0
  assert rows[("e", "s", True)]["accuracy"] == 0.0
  assert rows[("e", "s", True)]["requests"] == 2


def test_one_definition_of_agreement():
  """Offline shadow scoring and the comparison from logs share it."""
  from transforms.scoring import predictions
  model = np.array([[0.2, 0.8], [0.6, 0.4]])
  baseline = np.array([[0.3, 0.7], [0.3, 0.7]])
  columns, totals = predictions.compare(model, baseline, "classification")
  shared = outcomes.differences(model, baseline, True)
  np.testing.assert_allclose(columns["abs_diff"].to_numpy(), shared.abs_diff)
  assert columns["agrees"].to_pylist() == shared.agrees.tolist() == [
      True, False]
  assert totals.agreements == 1


def _paired(live_scores, shadow_scores, truths):
  n = len(live_scores)
  live = _requests([_outcome(value=float(s)) for s in live_scores], truths,
                   arm="live")
  shadow = _requests([_outcome(value=float(s)) for s in shadow_scores],
                     truths, arm="shadow-m", shadow=True)
  return pa.concat_tables([live, shadow]).take(
      np.random.default_rng(0).permutation(2 * n))


@pytest.mark.parametrize("seed", range(3))
def test_paired_comparison_matches_scipy_and_statsmodels(seed):
  from statsmodels.stats.contingency_tables import mcnemar
  import scipy.stats
  y, live_scores = _binary_data(seed, n=800)
  rng = np.random.default_rng(seed + 10)
  shadow_scores = np.clip(live_scores + rng.normal(0, 0.15, len(y)), 0.01,
                          0.99)
  truths = [_outcome(value=float(t)) for t in y]
  truths[3] = None  # No truth: paired, not scored.
  requests = _paired(live_scores, shadow_scores, truths)
  # Join shards hold whole requests; their accumulators add up.
  odd = pc.equal(pc.utf8_slice_codeunits(requests["request_id"], -1),
                 "1").combine_chunks()
  accumulator = sum(
      dict(shadow.partials(requests.filter(part), "classification"))[
          ("e", "live", "shadow-m")] for part in (odd, pc.invert(odd)))
  (key, whole), = shadow.partials(requests, "classification")
  np.testing.assert_allclose(accumulator, whole)
  row = shadow.comparison_row(key, accumulator, "classification")
  assert key == ("e", "live", "shadow-m")
  assert row["pairs"] == len(y) and row["pairs_with_truth"] == len(y) - 1
  live_class, shadow_class = live_scores > 0.5, shadow_scores > 0.5
  assert row["agreement_rate"] == pytest.approx(
      np.mean(live_class == shadow_class))
  assert row["mean_abs_diff"] == pytest.approx(
      np.mean(np.abs(shadow_scores - live_scores)))
  keep = np.arange(len(y)) != 3
  live_right = (live_class == y)[keep]
  shadow_right = (shadow_class == y)[keep]
  table = [[np.sum(live_right & shadow_right), np.sum(live_right & ~shadow_right)],
           [np.sum(~live_right & shadow_right), np.sum(~live_right & ~shadow_right)]]
  assert row["mcnemar_p_value"] == pytest.approx(
      mcnemar(table, exact=True).pvalue)
  assert row["accuracy_diff"] == pytest.approx(
      shadow_right.mean() - live_right.mean())

  def log_loss(p, t):
    return -np.log(np.where(t == 1, p, 1 - p))
  expected = scipy.stats.ttest_rel(log_loss(shadow_scores, y)[keep],
                                   log_loss(live_scores, y)[keep])
  assert row["paired_t_p_value"] == pytest.approx(expected.pvalue)
  low, high = expected.confidence_interval()
  assert (row["loss_diff_ci_low"], row["loss_diff_ci_high"]) == (
      pytest.approx(low), pytest.approx(high))
  assert row["verdict"] in (shadow.WORSE, shadow.BETTER, shadow.NO_DIFFERENCE)
  json.dumps(row)
  assert row["summary"].startswith("shadow-m is ")


def test_regression_pairs_use_squared_error():
  import scipy.stats
  rng = np.random.default_rng(3)
  truth = rng.normal(0, 1, 300)
  live_values = truth + rng.normal(0, 0.5, 300)
  shadow_values = truth + rng.normal(0, 0.8, 300)
  requests = _paired(live_values, shadow_values,
                     [_outcome(value=float(t)) for t in truth])
  (key, accumulator), = shadow.partials(requests, "regression")
  row = shadow.comparison_row(key, accumulator, "regression")
  expected = scipy.stats.ttest_rel((shadow_values - truth)**2,
                                   (live_values - truth)**2)
  assert row["paired_t_p_value"] == pytest.approx(expected.pvalue)
  assert row["agreement_rate"] is None and row["mcnemar_p_value"] is None
  assert row["verdict"] == shadow.WORSE
  assert "significantly worse" in row["summary"]


def test_identical_shadow_and_no_truth():
  scores = np.linspace(0.05, 0.95, 50)
  requests = _paired(scores, scores, [None] * 50)
  (key, accumulator), = shadow.partials(requests, "classification")
  row = shadow.comparison_row(key, accumulator, "classification")
  assert row["agreement_rate"] == 1.0 and row["mean_abs_diff"] == 0.0
  assert row["verdict"] == shadow.NO_TRUTH
  y = (scores > 0.5).astype(float)
  requests = _paired(scores, scores, [_outcome(value=v) for v in y])
  (key, accumulator), = shadow.partials(requests, "classification")
  assert shadow.comparison_row(key, accumulator, "classification")[
      "verdict"] == shadow.NO_DIFFERENCE


def test_binary_scores_read_without_class_texts_as_with_them():
  y, scores = _binary_data(9, n=500)
  truths = [_outcome(value=float(t)) for t in y] + [_outcome(value=2.0)]
  predictions = [_outcome(value=float(s)) for s in scores]
  numbers = outcomes.row_metrics(
      pa.array(predictions + [_outcome(value=0.5)],
               batches.EXTRA_TYPES["prediction"]),
      pa.array(truths, batches.EXTRA_TYPES["truth"]), "classification")
  # One label sends the column through the class texts.
  texts = outcomes.row_metrics(
      pa.array(predictions + [_outcome(label="2")],
               batches.EXTRA_TYPES["prediction"]),
      pa.array(truths, batches.EXTRA_TYPES["truth"]), "classification")
  assert not numbers.usable[-1] and texts.usable[-1]
  for name in ("usable", "correct", "loss", "score", "positive"):
    np.testing.assert_array_equal(getattr(numbers, name)[:-1],
                                  getattr(texts, name)[:-1])

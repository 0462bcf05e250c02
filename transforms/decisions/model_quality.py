"""Model quality per arm on the requests whose ground truth arrived.

Pure (numpy and pyarrow, no Beam). `partials` turns joined requests (one
join shard: `prediction`, `truth`, `shadow`) into one mergeable accumulator
per (experiment_id, arm, shadow): a vector of sums and histograms that
merges by addition, so Beam combines it per key and a streaming pane holds
no rows. `quality_row` makes the `model_quality` row of a merged one.

Classification: accuracy (Wilson interval), log-loss and Brier score (t
intervals), ROC AUC from score histograms of positives and negatives
(`AUC_BINS` equal bins on [0, 1]; the pairs that share a bin are counted as
ties, so the exact AUC is within `auc_max_error` of the reported one, which
the row states; Hanley-McNeil interval) and calibration in ten equal bins
of the predicted probability. Regression: MAE, RMSE and mean error (bias),
with t intervals (RMSE: the square root of the MSE's interval).
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from transforms.decisions import outcomes
from transforms.decisions import stats

AUC_BINS = 2000
CALIBRATION_BINS = 10

# The accumulator: these sums, then the histograms.
_SCALARS = ("requests", "with_truth", "scored", "correct", "loss_n",
            "loss_sum", "loss_sq_sum", "binary_n", "brier_sum",
            "brier_sq_sum", "error_sum", "abs_error_sum", "sq_error_sum",
            "sq_error_sq_sum")
_AT = {name: i for i, name in enumerate(_SCALARS)}
_POSITIVES = len(_SCALARS)
_NEGATIVES = _POSITIVES + AUC_BINS
_CALIBRATION = _NEGATIVES + AUC_BINS  # count, predicted sum, positives
SIZE = _CALIBRATION + 3 * CALIBRATION_BINS


def empty() -> np.ndarray:
  return np.zeros(SIZE)


def _bins(scores: np.ndarray, bins: int) -> np.ndarray:
  return np.minimum((scores * bins).astype(np.int64), bins - 1)


def group_codes(requests: pa.Table, columns=("experiment_id", "arm",
                                              "shadow")):
  """Per row, the code of its key (the values of `columns`); and the keys."""
  codes = np.zeros(requests.num_rows, np.int64)
  dictionaries = []
  for name in columns:
    encoded = pc.dictionary_encode(outcomes.array(requests[name]))
    dictionaries.append(encoded.dictionary.to_pylist())
    codes = codes * len(dictionaries[-1]) + encoded.indices.to_numpy(
        zero_copy_only=False)
  unique, codes = np.unique(codes, return_inverse=True)
  keys = []
  for code in unique.tolist():
    key = []
    for dictionary in reversed(dictionaries):
      code, index = divmod(code, len(dictionary))
      key.append(dictionary[index])
    keys.append(tuple(reversed(key)))
  return codes.reshape(-1), keys


def partials(requests: pa.Table, task: str) -> list:
  """Joined requests -> [((experiment_id, arm, shadow), accumulator)]."""
  if not requests.num_rows:
    return []
  codes, names = group_codes(requests)
  metrics = outcomes.row_metrics(requests["prediction"], requests["truth"],
                                 task)
  n_groups = len(names)
  sums = np.zeros((n_groups, SIZE))

  def add(name, weights, rows=None):
    rows = np.ones(len(codes), bool) if rows is None else rows
    sums[:, _AT[name]] = np.bincount(codes[rows], weights=weights,
                                     minlength=n_groups)

  usable = metrics.usable
  add("requests", None)
  add("with_truth", None, metrics.has_truth)
  add("scored", None, usable)
  if task == outcomes.CLASSIFICATION:
    add("correct", None, metrics.correct)
    with_loss = usable & ~np.isnan(metrics.loss)
    add("loss_n", None, with_loss)
    add("loss_sum", metrics.loss[with_loss], with_loss)
    add("loss_sq_sum", metrics.loss[with_loss]**2, with_loss)
    binary = usable & ~np.isnan(metrics.score)
    score = metrics.score[binary]
    positive = metrics.positive[binary]
    brier = (score - positive)**2
    add("binary_n", None, binary)
    add("brier_sum", brier, binary)
    add("brier_sq_sum", brier**2, binary)
    group = codes[binary]
    auc_bin = _bins(score, AUC_BINS)
    for offset, which in ((_POSITIVES, positive), (_NEGATIVES, ~positive)):
      sums[:, offset:offset + AUC_BINS] = np.bincount(
          group[which] * AUC_BINS + auc_bin[which],
          minlength=n_groups * AUC_BINS).reshape(n_groups, AUC_BINS)
    calibration_bin = group * CALIBRATION_BINS + _bins(score, CALIBRATION_BINS)
    size = n_groups * CALIBRATION_BINS
    for i, weights in enumerate((None, score, positive.astype(float))):
      start = _CALIBRATION + i * CALIBRATION_BINS
      sums[:, start:start + CALIBRATION_BINS] = np.bincount(
          calibration_bin, weights=weights, minlength=size).reshape(
              n_groups, CALIBRATION_BINS)
  else:
    error = metrics.error[usable]
    add("loss_n", None, usable)
    add("error_sum", error, usable)
    add("abs_error_sum", np.abs(error), usable)
    add("sq_error_sum", error**2, usable)
    add("sq_error_sq_sum", error**4, usable)
  return [(name, sums[i]) for i, name in enumerate(names)]


_OUTCOME = pa.struct([("value", pa.float64()), ("label", pa.string()),
                      ("probabilities", pa.list_(pa.float64()))])
ROW_SCHEMA = pa.schema([("experiment_id", pa.string()), ("arm", pa.string()),
                        ("shadow", pa.bool_()), ("prediction", _OUTCOME),
                        ("truth", _OUTCOME)])


def requests_from_rows(rows) -> pa.Table:
  """Joined requests as dicts (the streaming attribution's rows: live
  requests, with `prediction` and `truth` as the contract reads them) -> the
  table `partials` takes."""
  return pa.Table.from_pylist(
      [{"shadow": False, **{name: row.get(name) for name in ROW_SCHEMA.names
                            if name != "shadow"}} for row in rows],
      schema=ROW_SCHEMA)


def _value(accumulator, name: str) -> float:
  return float(accumulator[_AT[name]])


def _optional(value) -> float | None:
  value = float(value)
  return value if math.isfinite(value) else None


def _mean_interval(total: float, sq_total: float, n: float, alpha: float):
  """(mean, low, high) from a sum and sum of squares; None below one row."""
  if n < 1:
    return None, None, None
  mean = total / n
  low, high = stats.t_interval(mean, stats.sample_variance(total, sq_total, n),
                               n, alpha)
  return mean, _optional(low), _optional(high)


def auc_from_histograms(positives: np.ndarray, negatives: np.ndarray):
  """(AUC, max error) of scores binned as these counts: pairs in one bin
  count as ties (half), so the exact AUC is within max error of it."""
  n_pos, n_neg = float(positives.sum()), float(negatives.sum())
  if not n_pos or not n_neg:
    return None, None
  below = np.concatenate([[0.0], np.cumsum(negatives)[:-1]])
  same_bin = float((positives * negatives).sum())
  auc = float((positives * below).sum() + 0.5 * same_bin) / (n_pos * n_neg)
  return auc, 0.5 * same_bin / (n_pos * n_neg)


def hanley_mcneil_interval(auc: float, n_pos: float, n_neg: float,
                           alpha: float):
  """Wald interval of an AUC with Hanley and McNeil's (1982) standard error."""
  q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
  variance = (auc * (1 - auc) + (n_pos - 1) * (q1 - auc * auc) +
              (n_neg - 1) * (q2 - auc * auc)) / (n_pos * n_neg)
  low, high = stats.wald_interval(auc, math.sqrt(max(variance, 0.0)), alpha)
  return (_optional(np.clip(low, 0, 1)), _optional(np.clip(high, 0, 1)))


def calibration(accumulator) -> list[dict]:
  """The non-empty calibration bins: mean predicted vs observed rate."""
  counts, predicted, positives = accumulator[_CALIBRATION:].reshape(
      3, CALIBRATION_BINS)
  return [{"bin_low": i / CALIBRATION_BINS,
           "bin_high": (i + 1) / CALIBRATION_BINS, "count": int(counts[i]),
           "mean_predicted": float(predicted[i] / counts[i]),
           "observed_rate": float(positives[i] / counts[i])}
          for i in range(CALIBRATION_BINS) if counts[i]]


def quality_row(key: tuple, accumulator, task: str,
                alpha: float = 0.05) -> dict:
  """The `model_quality` row of a merged accumulator."""
  experiment_id, arm, shadow = key
  scored = _value(accumulator, "scored")
  row = {"experiment_id": experiment_id, "arm": arm, "shadow": bool(shadow),
         "task": task, "requests": int(_value(accumulator, "requests")),
         "with_truth": int(_value(accumulator, "with_truth")),
         "scored": int(scored), "calibration": []}
  if task == outcomes.CLASSIFICATION:
    correct = _value(accumulator, "correct")
    low, high = stats.wilson_interval(correct, scored, alpha)
    row.update(accuracy=correct / scored if scored else None,
               accuracy_ci_low=_optional(low) if scored else None,
               accuracy_ci_high=_optional(high) if scored else None)
    row.update(zip(("log_loss", "log_loss_ci_low", "log_loss_ci_high"),
                   _mean_interval(_value(accumulator, "loss_sum"),
                                  _value(accumulator, "loss_sq_sum"),
                                  _value(accumulator, "loss_n"), alpha)))
    row.update(zip(("brier", "brier_ci_low", "brier_ci_high"),
                   _mean_interval(_value(accumulator, "brier_sum"),
                                  _value(accumulator, "brier_sq_sum"),
                                  _value(accumulator, "binary_n"), alpha)))
    positives = accumulator[_POSITIVES:_NEGATIVES]
    negatives = accumulator[_NEGATIVES:_CALIBRATION]
    auc, max_error = auc_from_histograms(positives, negatives)
    row.update(auc=auc, auc_max_error=max_error, auc_ci_low=None,
               auc_ci_high=None)
    if auc is not None:
      row["auc_ci_low"], row["auc_ci_high"] = hanley_mcneil_interval(
          auc, positives.sum(), negatives.sum(), alpha)
    row["calibration"] = calibration(accumulator)
    return row
  n = _value(accumulator, "loss_n")
  sq_sum = _value(accumulator, "sq_error_sum")
  row.update(zip(("mae", "mae_ci_low", "mae_ci_high"), _mean_interval(
      _value(accumulator, "abs_error_sum"), sq_sum, n, alpha)))
  row.update(zip(("mean_error", "mean_error_ci_low", "mean_error_ci_high"),
                 _mean_interval(_value(accumulator, "error_sum"), sq_sum, n,
                                alpha)))
  mse, mse_low, mse_high = _mean_interval(
      sq_sum, _value(accumulator, "sq_error_sq_sum"), n, alpha)
  root = lambda x: None if x is None else math.sqrt(max(x, 0.0))
  row.update(rmse=root(mse), rmse_ci_low=root(mse_low),
             rmse_ci_high=root(mse_high))
  return row

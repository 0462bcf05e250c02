"""Shadow vs live, paired on the requests both answered.

Pure (numpy, pyarrow and scipy, no Beam). `partials` pairs each shadow row
of joined requests (`rewards.join_requests(..., include_shadow=True)`; a
request's rows are all in one join shard) with the live row of the same
request and sums, per (experiment_id, live arm, shadow arm), what the pairs
say: without truth, the agreement of their predicted classes and their mean
|difference| (`outcomes.differences`, the same code as batch inference's
shadow mode); with truth, who was right (McNemar's exact test on the
discordant pairs) and the per-request loss difference (log-loss, or squared
error for regression; a paired t-test). The accumulator is a vector that
merges by addition. `comparison_row` makes the `shadow_comparison` row and
says in words whether the shadow is significantly worse or better.
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import scipy.stats

from transforms.decisions import model_quality
from transforms.decisions import outcomes
from transforms.decisions import stats

_SCALARS = ("pairs", "compared", "diff_sum", "abs_diff_sum", "agreement_n",
            "agreements", "truth_pairs", "live_correct", "shadow_correct",
            "live_only_correct", "shadow_only_correct", "loss_pairs",
            "live_loss_sum", "shadow_loss_sum", "loss_diff_sum",
            "loss_diff_sq_sum")
_AT = {name: i for i, name in enumerate(_SCALARS)}
SIZE = len(_SCALARS)

WORSE = "worse"
BETTER = "better"
NO_DIFFERENCE = "no difference"
NO_TRUTH = "no truth"


def _pairs(requests: pa.Table):
  """(live rows, shadow rows) of the same request."""
  ids = pc.dictionary_encode(outcomes.array(requests["request_id"]))
  codes = ids.indices.to_numpy(zero_copy_only=False).astype(np.int64)
  is_shadow = requests["shadow"].to_numpy().astype(bool)
  live_of_code = np.full(len(ids.dictionary), -1, np.int64)
  live = np.flatnonzero(~is_shadow)
  live_of_code[codes[live]] = live
  shadow = np.flatnonzero(is_shadow)
  partner = live_of_code[codes[shadow]]
  return partner[partner >= 0], shadow[partner >= 0]


def _form(predictions: outcomes.Predictions) -> np.ndarray:
  """Per row: 0 a number, k > 0 that many class probabilities, -1 neither."""
  return np.where(~np.isnan(predictions.values), 0,
                  np.where(predictions.lengths > 0, predictions.lengths, -1))


def partials(requests: pa.Table, task: str) -> list:
  """Joined requests with shadow rows -> [((experiment_id, live arm, shadow
  arm), accumulator)]."""
  live, shadow = _pairs(requests)
  if not len(live):
    return []
  keys = pa.table({"experiment_id": requests["experiment_id"].take(live),
                   "live_arm": requests["arm"].take(live),
                   "shadow_arm": requests["arm"].take(shadow)})
  codes, names = model_quality.group_codes(keys, keys.column_names)
  n_groups = len(names)
  sums = np.zeros((n_groups, SIZE))

  def add(name, rows, weights=None):
    sums[:, _AT[name]] += np.bincount(codes[rows], weights=weights,
                                      minlength=n_groups)

  classification = task == outcomes.CLASSIFICATION
  predictions = outcomes.read_predictions(requests["prediction"])
  form = _form(predictions)
  add("pairs", np.arange(len(live)))
  for kind in np.unique(form[live]):
    at = np.flatnonzero((form[live] == kind) & (form[shadow] == kind))
    if kind < 0 or not len(at):
      continue
    width = 1 if kind == 0 else int(kind)
    live_outputs = _matrix(predictions, live[at], kind, width)
    shadow_outputs = _matrix(predictions, shadow[at], kind, width)
    diff, abs_diff, agrees = outcomes.differences(shadow_outputs,
                                                  live_outputs, classification)
    add("compared", at)
    add("diff_sum", at, diff)
    add("abs_diff_sum", at, abs_diff)
    if agrees is not None:
      add("agreement_n", at)
      add("agreements", at[agrees])
  if classification:
    labelled = np.flatnonzero(_numpy_valid(predictions.labels, live) &
                              _numpy_valid(predictions.labels, shadow))
    same = pc.equal(predictions.labels.take(pa.array(live[labelled])),
                    predictions.labels.take(pa.array(shadow[labelled])))
    add("agreement_n", labelled)
    add("agreements", labelled[same.to_numpy(zero_copy_only=False)])

  if "truth" in requests.column_names:
    metrics = outcomes.row_metrics(requests["prediction"], requests["truth"],
                                   task)
    both = np.flatnonzero(metrics.usable[live] & metrics.usable[shadow])
    live_correct = metrics.correct[live[both]]
    shadow_correct = metrics.correct[shadow[both]]
    add("truth_pairs", both)
    if classification:
      add("live_correct", both[live_correct])
      add("shadow_correct", both[shadow_correct])
      add("live_only_correct", both[live_correct & ~shadow_correct])
      add("shadow_only_correct", both[shadow_correct & ~live_correct])
    live_loss, shadow_loss = metrics.loss[live[both]], metrics.loss[
        shadow[both]]
    with_loss = ~np.isnan(live_loss) & ~np.isnan(shadow_loss)
    at = both[with_loss]
    delta = shadow_loss[with_loss] - live_loss[with_loss]
    add("loss_pairs", at)
    add("live_loss_sum", at, live_loss[with_loss])
    add("shadow_loss_sum", at, shadow_loss[with_loss])
    add("loss_diff_sum", at, delta)
    add("loss_diff_sq_sum", at, delta * delta)
  return [(name, sums[i]) for i, name in enumerate(names)]


def _numpy_valid(array: pa.Array, rows: np.ndarray) -> np.ndarray:
  return array.is_valid().to_numpy(zero_copy_only=False)[rows]


def _matrix(predictions: outcomes.Predictions, rows: np.ndarray, kind: int,
            width: int) -> np.ndarray:
  if kind == 0:
    return predictions.values[rows, None]
  return predictions.flat[predictions.starts[rows, None] + np.arange(width)]


def mcnemar_exact(live_only_correct: int, shadow_only_correct: int) -> float:
  """McNemar's exact test: the discordant pairs against Binomial(b + c, 1/2),
  two-sided."""
  discordant = live_only_correct + shadow_only_correct
  if not discordant:
    return 1.0
  return float(scipy.stats.binomtest(int(shadow_only_correct),
                                     int(discordant), 0.5).pvalue)


def paired_t(diff_sum: float, diff_sq_sum: float, n: float):
  """Paired t-test from the sum and sum of squares of the differences:
  (mean, p-value, variance), p-value None when undefined."""
  mean = diff_sum / n
  variance = float(stats.sample_variance(diff_sum, diff_sq_sum, n))
  if n < 2 or not variance > 0:
    return mean, None, variance
  t = mean / math.sqrt(variance / n)
  return mean, float(2 * scipy.stats.t.sf(abs(t), n - 1)), variance


def _optional(value) -> float | None:
  value = float(value)
  return value if math.isfinite(value) else None


def comparison_row(key: tuple, accumulator, task: str,
                   alpha: float = 0.05) -> dict:
  """The `shadow_comparison` row of a merged accumulator."""
  value = lambda name: float(accumulator[_AT[name]])
  experiment_id, live_arm, shadow_arm = key
  compared, agreement_n = value("compared"), value("agreement_n")
  row = {"experiment_id": experiment_id, "live_arm": live_arm,
         "shadow_arm": shadow_arm, "task": task, "pairs": int(value("pairs")),
         "agreement_rate": (value("agreements") / agreement_n
                            if agreement_n else None),
         "mean_diff": value("diff_sum") / compared if compared else None,
         "mean_abs_diff": (value("abs_diff_sum") / compared
                           if compared else None),
         "pairs_with_truth": int(value("truth_pairs")),
         "loss": ("log_loss" if task == outcomes.CLASSIFICATION
                  else "squared_error")}
  for name in ("live_accuracy", "shadow_accuracy", "accuracy_diff",
               "accuracy_diff_ci_low", "accuracy_diff_ci_high",
               "mcnemar_p_value", "live_loss", "shadow_loss", "loss_diff",
               "loss_diff_ci_low", "loss_diff_ci_high", "paired_t_p_value"):
    row[name] = None
  n = value("truth_pairs")
  b, c = value("live_only_correct"), value("shadow_only_correct")
  row.update(live_only_correct=int(b), shadow_only_correct=int(c))
  if n and task == outcomes.CLASSIFICATION:
    diff = (c - b) / n
    se = math.sqrt(max((b + c) - (c - b)**2 / n, 0.0)) / n
    low, high = stats.wald_interval(diff, se, alpha)
    row.update(live_accuracy=value("live_correct") / n,
               shadow_accuracy=value("shadow_correct") / n,
               accuracy_diff=diff, accuracy_diff_ci_low=_optional(low),
               accuracy_diff_ci_high=_optional(high),
               mcnemar_p_value=mcnemar_exact(b, c))
  loss_pairs = value("loss_pairs")
  if loss_pairs:
    mean, p_value, variance = paired_t(value("loss_diff_sum"),
                                       value("loss_diff_sq_sum"), loss_pairs)
    low, high = stats.t_interval(mean, variance, loss_pairs, alpha)
    row.update(live_loss=value("live_loss_sum") / loss_pairs,
               shadow_loss=value("shadow_loss_sum") / loss_pairs,
               loss_diff=mean, loss_diff_ci_low=_optional(low),
               loss_diff_ci_high=_optional(high), paired_t_p_value=p_value)
  row["verdict"], row["summary"] = _verdict(row, alpha)
  return row


def _verdict(row: dict, alpha: float) -> tuple[str, str]:
  """Worse, better or no difference, by McNemar's test on accuracy (a
  classifier) or else the paired t-test on the loss; and why, in words."""
  shadow, live = row["shadow_arm"], row["live_arm"]
  agreement = ""
  if row["agreement_rate"] is not None:
    agreement = f"; agrees with {live} on {row['agreement_rate']:.1%}"
  if row["mcnemar_p_value"] is not None and (
      row["live_only_correct"] + row["shadow_only_correct"]):
    p_value, change = row["mcnemar_p_value"], row["accuracy_diff"]
    measured = (f"accuracy {row['shadow_accuracy']:.1%} vs "
                f"{row['live_accuracy']:.1%} ({change * 100:+.1f} points, "
                f"McNemar p={p_value:.2g})")
    worse = change < 0
  elif row["paired_t_p_value"] is not None:
    p_value, change = row["paired_t_p_value"], row["loss_diff"]
    measured = (f"{row['loss']} {row['shadow_loss']:.4g} vs "
                f"{row['live_loss']:.4g} (paired t p={p_value:.2g})")
    worse = change > 0
  elif row["pairs_with_truth"]:
    return NO_DIFFERENCE, (f"{shadow} answers as {live} on "
                           f"{row['pairs_with_truth']:,} requests with truth"
                           f"{agreement}")
  else:
    return NO_TRUTH, (f"{shadow}: {row['pairs']:,} requests paired with "
                      f"{live}, none with truth yet{agreement}")
  if p_value >= alpha:
    return NO_DIFFERENCE, (f"{shadow} is not significantly different from "
                           f"{live}: {measured}{agreement}")
  verdict = WORSE if worse else BETTER
  return verdict, (f"{shadow} is significantly {verdict} than {live}: "
                   f"{measured}{agreement}")

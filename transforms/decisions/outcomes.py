"""What logged predictions and the ground truth say, row by row.

Pure (numpy and pyarrow, no Beam). Holds the one definition of how two
models' outputs differ (`differences`: agreement of predicted classes, mean
|model - baseline|), used by offline shadow scoring
(`transforms.scoring.predictions`) and by the online shadow comparison from
logs (`transforms.decisions.shadow`); and the reading of a logged
`prediction` and `truth` (`contract.EXTRAS`: {value, label, probabilities})
into per-request classes, scores and losses, shared by model quality and the
shadow comparison.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

CLASSIFICATION = "classification"
REGRESSION = "regression"
TASKS = (CLASSIFICATION, REGRESSION)

# log-loss clips probabilities to [EPSILON, 1 - EPSILON], as scikit-learn
# does for float64 (its eps="auto").
EPSILON = float(np.finfo(np.float64).eps)


def predicted_classes(output: np.ndarray) -> np.ndarray:
  """[rows, k] outputs -> class indices: `score > 0.5` for one output, the
  argmax otherwise."""
  if output.shape[1] == 1:
    return (output[:, 0] > 0.5).astype(np.int64)
  return output.argmax(axis=1)


class Differences(NamedTuple):
  """Per row: the mean over outputs of model - baseline, of |model -
  baseline|, and (classifiers) whether the predicted classes agree."""
  diff: np.ndarray
  abs_diff: np.ndarray
  agrees: np.ndarray | None


def differences(output: np.ndarray, baseline: np.ndarray,
                classification: bool) -> Differences:
  """A model's [rows, k] outputs against a baseline's of the same shape."""
  if output.shape != baseline.shape:
    raise ValueError(f"output shape {output.shape} is not the baseline's "
                     f"{baseline.shape}")
  delta = np.asarray(output, np.float64) - baseline
  agrees = None
  if classification:
    agrees = predicted_classes(output) == predicted_classes(baseline)
  return Differences(delta.mean(axis=1), np.abs(delta).mean(axis=1), agrees)


def _numpy(array) -> np.ndarray:
  return array.to_numpy(zero_copy_only=False)


def array(column) -> pa.Array:
  return column.combine_chunks() if isinstance(column,
                                               pa.ChunkedArray) else column


class Predictions(NamedTuple):
  """A column of logged predictions."""
  values: np.ndarray  # the number; NaN: none
  labels: pa.Array  # the class label; null: none
  lengths: np.ndarray  # how many class probabilities (0: none)
  starts: np.ndarray  # where a row's probabilities start in `flat`
  flat: np.ndarray  # every row's probabilities, one after the other

  @property
  def numbers_only(self) -> bool:
    return not (self.lengths.any() or self.labels.null_count < len(
        self.labels))

  def classes(self) -> pa.Array:
    """The predicted class as text (null: none)."""
    argmax = np.full(len(self.values), -1, np.int64)
    for k in np.unique(self.lengths[self.lengths > 0]):
      rows = np.flatnonzero(self.lengths == k)
      argmax[rows] = predicted_classes(
          self.flat[self.starts[rows, None] + np.arange(k)])
    scored = ~np.isnan(self.values)
    return pc.coalesce(self.labels, _texts(argmax, argmax >= 0),
                       _texts((self.values > 0.5).astype(np.int64), scored))


def read_predictions(column) -> Predictions:
  """An outcome struct column (`batches.EXTRA_TYPES["prediction"]`)."""
  column = array(column)
  values = _numpy(pc.fill_null(pc.struct_field(column, "value"),
                               np.nan)).astype(np.float64)
  labels = pc.struct_field(column, "label")
  probabilities = pc.struct_field(column, "probabilities")
  lengths = _numpy(pc.fill_null(pc.list_value_length(probabilities),
                                0)).astype(np.int64)
  flat = _numpy(pc.list_flatten(probabilities)).astype(np.float64)
  starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
  return Predictions(values, labels, lengths, starts, flat)


def _texts(numbers: np.ndarray, present: np.ndarray) -> pa.Array:
  return pa.array(np.where(present, numbers, 0), pa.int64(),
                  mask=~present).cast(pa.string())


class Truths(NamedTuple):
  """A column of ground truths."""
  present: np.ndarray  # bool
  values: np.ndarray  # NaN: none (a label)
  labels: pa.Array  # null: none

  def classes(self) -> pa.Array:
    """A label, or an integral number as text (null: none)."""
    values = self.values
    integral = np.isfinite(values) & (values == np.round(values)) & (
        np.abs(values) < 2**53)
    return pc.coalesce(self.labels, _texts(
        np.where(integral, values, 0).astype(np.int64), integral))


def read_truths(column) -> Truths:
  column = array(column)
  values = _numpy(pc.fill_null(pc.struct_field(column, "value"),
                               np.nan)).astype(np.float64)
  return Truths(_numpy(column.is_valid()).astype(bool), values,
                pc.struct_field(column, "label"))


class RowMetrics(NamedTuple):
  """Per request, what its prediction scores against its truth.

  `usable`: the request has a truth and a prediction the task can score
  against it; the other arrays mean something on usable rows only.
  Classification: `correct`, and where the prediction gives the truth's
  class a probability, `loss` (log-loss) and, for a binary score (a number,
  or two class probabilities), `score` (the probability of class "1") and
  `positive` (the truth is "1"). Regression: `error` (prediction - truth)
  and `loss` (squared error).
  """
  has_truth: np.ndarray
  usable: np.ndarray
  correct: np.ndarray
  loss: np.ndarray  # NaN: none
  score: np.ndarray  # NaN: none
  positive: np.ndarray
  error: np.ndarray


def row_metrics(prediction_column, truth_column, task: str) -> RowMetrics:
  """Each request's prediction against its truth (see RowMetrics)."""
  predictions = read_predictions(prediction_column)
  truths = read_truths(truth_column)
  n = len(truths.present)
  nan = np.full(n, np.nan)
  if task == REGRESSION:
    error = predictions.values - truths.values
    usable = truths.present & np.isfinite(error)
    return RowMetrics(truths.present, usable, np.zeros(n, bool),
                      np.where(usable, error * error, np.nan), nan,
                      np.zeros(n, bool), np.where(usable, error, np.nan))
  if predictions.numbers_only and truths.labels.null_count == n:
    return _binary_scores(predictions.values, truths)
  truth_classes = truths.classes()
  correct = _numpy(pc.fill_null(pc.equal(predictions.classes(),
                                         truth_classes), False)).astype(bool)
  is_one = _numpy(pc.fill_null(pc.equal(truth_classes, "1"),
                               False)).astype(bool)
  is_zero = _numpy(pc.fill_null(pc.equal(truth_classes, "0"),
                                False)).astype(bool)
  binary_truth = is_one | is_zero
  values = predictions.values
  has_value = ~np.isnan(values)
  # A number is the probability of class "1": only a 0/1 truth scores it.
  value_ok = has_value & (values >= 0.0) & (values <= 1.0) & binary_truth
  p_truth = np.where(is_one, values, 1.0 - values)
  score = np.where(value_ok, values, np.nan)

  lengths = predictions.lengths
  has_probabilities = lengths > 0
  truth_index = np.full(n, -1, np.int64)
  index_text = pc.if_else(pc.match_substring_regex(
      pc.fill_null(truth_classes, ""), r"^[0-9]{1,9}$"), truth_classes, None)
  indexed = _numpy(pc.is_valid(index_text)).astype(bool)
  truth_index[indexed] = _numpy(pc.cast(index_text.filter(
      pa.array(indexed)), pa.int64()))
  probabilities_ok = has_probabilities & (truth_index >= 0) & (
      truth_index < lengths)
  at = np.clip(predictions.starts + np.maximum(truth_index, 0), 0,
               max(len(predictions.flat) - 1, 0))
  if len(predictions.flat):
    p_truth = np.where(probabilities_ok, predictions.flat[at], p_truth)
    two = probabilities_ok & (lengths == 2)
    score = np.where(two, predictions.flat[np.clip(
        predictions.starts + 1, 0, len(predictions.flat) - 1)], score)
  labelled = _numpy(predictions.labels.is_valid()).astype(bool)
  has_truth_class = _numpy(truth_classes.is_valid()).astype(bool)
  usable = truths.present & has_truth_class & (
      value_ok | probabilities_ok | labelled)
  with_probability = usable & (value_ok | probabilities_ok)
  clipped = np.clip(p_truth, EPSILON, 1.0 - EPSILON)
  loss = np.where(with_probability, -np.log(clipped), np.nan)
  score = np.where(usable, score, np.nan)
  return RowMetrics(truths.present, usable, correct & usable, loss, score,
                    is_one, nan)


def _binary_scores(values: np.ndarray, truths: Truths) -> RowMetrics:
  """`row_metrics` of a classifier logging numbers against numeric truths,
  without class texts: a number scores a 0/1 truth only."""
  n = len(values)
  positive = truths.values == 1.0
  binary_truth = positive | (truths.values == 0.0)
  usable = truths.present & binary_truth & (values >= 0.0) & (values <= 1.0)
  correct = usable & ((values > 0.5) == positive)
  p_truth = np.where(positive, values, 1.0 - values)
  loss = np.where(usable, -np.log(np.clip(p_truth, EPSILON, 1.0 - EPSILON)),
                  np.nan)
  return RowMetrics(truths.present, usable, correct, loss,
                    np.where(usable, values, np.nan), positive,
                    np.full(n, np.nan))

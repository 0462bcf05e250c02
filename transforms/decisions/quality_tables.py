"""Streamed joined requests -> model_quality rows (Beam).

  rows ─KeyByArm─CombinePerKey(ModelQualityCombineFn)─Rows── model_quality

The streaming attribution emits one dict per decided live request; the
combine buffers them per (experiment_id, arm, shadow) and folds each batch of
`batch_size` into `model_quality.partials`' vector (sums and histograms that
merge by addition), so a pane's rows are the batch statistics of the same
requests.
"""

from __future__ import annotations

import apache_beam as beam

from transforms.decisions import model_quality


class ModelQualityCombineFn(beam.CombineFn):
  """Request rows of one (experiment_id, arm, shadow) -> its merged vector."""

  def __init__(self, task: str, batch_size: int = 1000):
    self._task = task
    self._batch_size = batch_size

  def create_accumulator(self):
    return (model_quality.empty(), [])

  def _fold(self, accumulator):
    total, rows = accumulator
    if rows:
      for _, partial in model_quality.partials(
          model_quality.requests_from_rows(rows), self._task):
        total = total + partial
    return (total, [])

  def add_input(self, accumulator, row):
    accumulator[1].append(row)
    if len(accumulator[1]) >= self._batch_size:
      return self._fold(accumulator)
    return accumulator

  def merge_accumulators(self, accumulators):
    total, rows = model_quality.empty(), []
    for partial_total, partial_rows in accumulators:
      total = total + partial_total
      rows.extend(partial_rows)
    return self._fold((total, rows))

  def compact(self, accumulator):
    return self._fold(accumulator)

  def extract_output(self, accumulator):
    return self._fold(accumulator)[0]


class StreamedModelQuality(beam.PTransform):
  """Joined request rows (dicts with `prediction` and `truth`) ->
  model_quality rows of `windowing` (a WindowInto), per pane."""

  def __init__(self, task: str, windowing: beam.PTransform,
               alpha: float = 0.05):
    super().__init__()
    self._task = task
    self._windowing = windowing
    self._alpha = alpha

  def expand(self, rows):
    return (rows
            | "KeyByArm" >> beam.Map(lambda row: (
                (row["experiment_id"], row["arm"], False), row))
            | "Window" >> self._windowing
            | "Combine" >> beam.CombinePerKey(ModelQualityCombineFn(
                self._task))
            | "Rows" >> beam.Map(lambda item, task, alpha: (
                model_quality.quality_row(*item, task, alpha)), self._task,
                                 self._alpha))

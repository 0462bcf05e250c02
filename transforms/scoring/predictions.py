"""What model outputs become: prediction rows, ensembles, shadow comparisons.

Pure (numpy and pyarrow, no Beam). Every function works on a whole scored
batch: an output is a [rows, k] array per model, k = 1 for a single score (a
sigmoid probability, a regression value) or one column per class, and its
rows are one `json_lines.RowBatch` per model, built from the arrays as they
are. A classifier's class is `score > 0.5` for a single output and the argmax
otherwise.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Iterable

import numpy as np
import pyarrow as pa

from transforms.decisions import outcomes
from transforms.decisions.outcomes import predicted_classes
from transforms.io import json_lines

SCORE = "score"
ENSEMBLE = "ensemble"
SHADOW = "shadow"
MODES = (SCORE, ENSEMBLE, SHADOW)

MEAN = "mean"
VOTE = "vote"
COMBINERS = (MEAN, VOTE)

CLASSIFICATION = "classification"
REGRESSION = "regression"
TASKS = (CLASSIFICATION, REGRESSION)

# A single-score model has no `scores`; an immutable empty value serializes as
# an empty REPEATED field and may be shared by every row.
_NO_SCORES = ()


@dataclasses.dataclass(frozen=True)
class ScoringConfig:
  """What the pipeline makes of the models' outputs."""
  models: tuple[str, ...]
  mode: str = SCORE
  combine: str = MEAN
  baseline: str | None = None
  task: str = CLASSIFICATION

  def validate(self) -> None:
    if not self.models:
      raise ValueError("give at least one --model NAME=PATH")
    if self.mode == ENSEMBLE and self.combine == VOTE and (
        self.task != CLASSIFICATION):
      raise ValueError("--combine vote needs --task classification")
    if self.mode == SHADOW:
      if self.baseline not in self.models:
        raise ValueError("shadow mode needs --baseline, one of the models")
      if len(self.models) < 2:
        raise ValueError("shadow mode needs a model besides the baseline")

  @property
  def ensemble_name(self) -> str:
    """The `model` column of ensemble rows, e.g. "mean(logreg,mlp)"."""
    return f"{self.combine}({','.join(self.models)})"


@dataclasses.dataclass
class ScoredBatch:
  """One feature batch and every model's output for it."""
  request_ids: pa.Array  # of strings
  outputs: dict[str, np.ndarray]  # model name -> [rows, k]
  scored_at: str  # When the batch was scored, as schemas.format_timestamp.


def as_matrix(output) -> np.ndarray:
  """A model's output as a [rows, k] array (a vector is one column)."""
  output = np.asarray(output)
  return output.reshape(len(output), -1)


def _votes(output: np.ndarray) -> np.ndarray:
  """One-hot class votes, shaped like the output (one column for a sigmoid)."""
  classes = predicted_classes(output)
  if output.shape[1] == 1:
    return classes[:, None].astype(np.float64)
  return np.eye(output.shape[1])[classes]


def combine(outputs: list[np.ndarray], how: str) -> np.ndarray:
  """Several models' outputs -> one output, shaped like each of them.

  mean averages the outputs; vote averages one-hot class votes (the share of
  models voting for each class), so its class is the majority class (a tie
  goes to the lower class).
  """
  shapes = {output.shape for output in outputs}
  if len(shapes) != 1:
    raise ValueError(f"ensemble models disagree on output shape: {shapes}")
  if how == VOTE:
    outputs = [_votes(output) for output in outputs]
  return np.mean(outputs, axis=0)


def _prediction_columns(request_ids: pa.Array, output: np.ndarray,
                        task: str) -> dict[str, pa.Array]:
  columns = {"request_id": request_ids}
  if output.shape[1] == 1:
    columns["prediction"] = pa.array(output[:, 0])
  else:
    columns["scores"] = pa.FixedSizeListArray.from_arrays(
        pa.array(output.reshape(-1)), output.shape[1])
  if task == CLASSIFICATION:
    columns["predicted_class"] = pa.array(predicted_classes(output))
  return columns


def _constants(output: np.ndarray, **values) -> dict:
  if output.shape[1] == 1:
    values["scores"] = _NO_SCORES
  return values


def _model_batch(model: str, scored: ScoredBatch, output: np.ndarray,
                 task: str, **columns: pa.Array) -> json_lines.RowBatch:
  return json_lines.RowBatch(
      _constants(output, model=model, scored_at=scored.scored_at),
      pa.table({**_prediction_columns(scored.request_ids, output, task),
                **columns}))


def score_batches(scored: ScoredBatch, task: str) -> list[json_lines.RowBatch]:
  """The predictions rows of every model, a batch per model."""
  return [_model_batch(model, scored, output, task)
          for model, output in scored.outputs.items()]


def ensemble_batch(scored: ScoredBatch,
                   config: ScoringConfig) -> json_lines.RowBatch:
  """The predictions rows of the models' combined output, one per request."""
  output = combine([scored.outputs[model] for model in config.models],
                   config.combine)
  return _model_batch(config.ensemble_name, scored, output, config.task)


@dataclasses.dataclass(frozen=True)
class ShadowTotals:
  """Partial sums of one model's differences from the baseline."""
  rows: int = 0
  diff_sum: float = 0.0
  abs_diff_sum: float = 0.0
  max_abs_diff: float = 0.0
  agreements: int | None = None  # None: not a classifier.

  def merge(self, other: "ShadowTotals") -> "ShadowTotals":
    agreements = None
    if self.agreements is not None or other.agreements is not None:
      agreements = (self.agreements or 0) + (other.agreements or 0)
    return ShadowTotals(self.rows + other.rows,
                        self.diff_sum + other.diff_sum,
                        self.abs_diff_sum + other.abs_diff_sum,
                        max(self.max_abs_diff, other.max_abs_diff), agreements)

  def summary(self) -> dict:
    """The shadow_summary columns: means over rows (NULL without rows)."""
    def mean(total):
      return total / self.rows if self.rows and total is not None else None
    return {"rows": self.rows, "mean_diff": mean(self.diff_sum),
            "mean_abs_diff": mean(self.abs_diff_sum),
            "max_abs_diff": self.max_abs_diff if self.rows else None,
            "agreement_rate": mean(self.agreements)}


def sum_totals(totals: Iterable[ShadowTotals]) -> ShadowTotals:
  """Merge partial sums (associative and commutative: a CombinePerKey fn)."""
  return functools.reduce(ShadowTotals.merge, totals, ShadowTotals())


def compare(output: np.ndarray, baseline: np.ndarray,
            task: str) -> tuple[dict[str, pa.Array], ShadowTotals]:
  """A model's output against the baseline's: per-row columns and totals.

  A row's difference is the mean over the output columns of model - baseline.
  """
  diff, abs_diff, agrees = outcomes.differences(output, baseline,
                                                task == CLASSIFICATION)
  columns = {"abs_diff": pa.array(abs_diff)}
  if baseline.shape[1] == 1:
    columns["baseline_prediction"] = pa.array(baseline[:, 0])
  agreements = None
  if agrees is not None:
    columns["agrees"] = pa.array(agrees)
    agreements = int(agrees.sum())
  totals = ShadowTotals(len(output), float(diff.sum()), float(abs_diff.sum()),
                        float(abs_diff.max(initial=0.0)), agreements)
  return columns, totals


def shadow_batches(
    scored: ScoredBatch, config: ScoringConfig
) -> tuple[list[json_lines.RowBatch], dict[str, ShadowTotals]]:
  """Every model's predictions rows, a batch per model, the others compared
  with the baseline; and each other model's totals."""
  baseline = scored.outputs[config.baseline]
  batches, totals = [], {}
  for model, output in scored.outputs.items():
    comparison = {}
    if model != config.baseline:
      comparison, totals[model] = compare(output, baseline, config.task)
    batches.append(_model_batch(model, scored, output, config.task,
                                **comparison))
  return batches, totals

"""What model outputs become: prediction rows, ensembles, shadow comparisons.

Pure (numpy, no Beam). Every function works on a whole scored batch: an output
is a [rows, k] array per model, k = 1 for a single score (a sigmoid
probability, a regression value) or one column per class. A classifier's
class is `score > 0.5` for a single output and the argmax otherwise.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Iterable

import numpy as np

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
  request_ids: list[str]
  outputs: dict[str, np.ndarray]  # model name -> [rows, k]
  scored_at: str  # When the batch was scored, as schemas.format_timestamp.


def as_matrix(output) -> np.ndarray:
  """A model's output as a [rows, k] array (a vector is one column)."""
  output = np.asarray(output)
  return output.reshape(len(output), -1)


def predicted_classes(output: np.ndarray) -> np.ndarray:
  if output.shape[1] == 1:
    return (output[:, 0] > 0.5).astype(np.int64)
  return output.argmax(axis=1)


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


def _rows(constants: dict, columns: dict[str, list]) -> list[dict]:
  names = (*constants, *columns)
  values = tuple(constants.values())
  return [dict(zip(names, (*values, *row)))
          for row in zip(*columns.values())]


def _prediction_columns(request_ids: list[str], output: np.ndarray,
                        task: str) -> dict[str, list]:
  columns = {"request_id": request_ids}
  if output.shape[1] == 1:
    columns["prediction"] = output[:, 0].tolist()
  else:
    columns["scores"] = output.tolist()
  if task == CLASSIFICATION:
    columns["predicted_class"] = predicted_classes(output).tolist()
  return columns


def _constants(output: np.ndarray, **values) -> dict:
  if output.shape[1] == 1:
    values["scores"] = _NO_SCORES
  return values


def score_rows(scored: ScoredBatch, task: str) -> list[dict]:
  """One predictions row per model and request."""
  rows = []
  for model, output in scored.outputs.items():
    rows += _rows(
        _constants(output, model=model, scored_at=scored.scored_at),
        _prediction_columns(scored.request_ids, output, task))
  return rows


def ensemble_rows(scored: ScoredBatch, config: ScoringConfig) -> list[dict]:
  """One predictions row per request: the models' combined output."""
  output = combine([scored.outputs[model] for model in config.models],
                   config.combine)
  return _rows(_constants(output, model=config.ensemble_name,
                          scored_at=scored.scored_at),
               _prediction_columns(scored.request_ids, output, config.task))


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
            task: str) -> tuple[dict[str, list], ShadowTotals]:
  """A model's output against the baseline's: per-row columns and totals.

  A row's difference is the mean over the output columns of model - baseline.
  """
  if output.shape != baseline.shape:
    raise ValueError(f"output shape {output.shape} is not the baseline's "
                     f"{baseline.shape}")
  diff = (output - baseline).mean(axis=1, dtype=np.float64)
  abs_diff = np.abs(output - baseline).mean(axis=1, dtype=np.float64)
  columns = {"abs_diff": abs_diff.tolist()}
  if baseline.shape[1] == 1:
    columns["baseline_prediction"] = baseline[:, 0].tolist()
  agreements = None
  if task == CLASSIFICATION:
    agrees = predicted_classes(output) == predicted_classes(baseline)
    columns["agrees"] = agrees.tolist()
    agreements = int(agrees.sum())
  totals = ShadowTotals(len(output), float(diff.sum()), float(abs_diff.sum()),
                        float(abs_diff.max(initial=0.0)), agreements)
  return columns, totals


def shadow_rows(scored: ScoredBatch, config: ScoringConfig
               ) -> tuple[list[dict], dict[str, ShadowTotals]]:
  """Every model's rows, the others compared with the baseline; and each
  other model's totals."""
  baseline = scored.outputs[config.baseline]
  rows, totals = [], {}
  for model, output in scored.outputs.items():
    constants = _constants(output, model=model, scored_at=scored.scored_at)
    columns = _prediction_columns(scored.request_ids, output, config.task)
    if model != config.baseline:
      comparison, totals[model] = compare(output, baseline, config.task)
      columns.update(comparison)
    rows += _rows(constants, columns)
  return rows, totals

"""Beam parts of batch inference: read feature batches, score them with shared
Keras models, turn the outputs into table rows.

From the reader to the sink, one element is a whole block of rows (a
`features.FeatureBatch`, then a `predictions.ScoredBatch`, then a
`json_lines.RowBatch` of predictions per model): Beam's per-element cost is
paid once per block.
"""

from __future__ import annotations

import collections
import itertools
import json
import threading
import time
import zipfile

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.ml.inference import base as ml_base
import numpy as np
import pyarrow.parquet as pq

from transforms.logs import contract
from transforms.scoring import features
from transforms.scoring import predictions
from transforms.logs import quality
from transforms.logs import read_logs
from transforms.io import schemas

METRICS_NAMESPACE = "batch_inference"
MODEL_LOADS = "model_loads"
ROWS_PER_BATCH = "rows_per_batch"
SCORED = "scored"
SHADOW_TOTALS = "shadow_totals"
_MAX_ERROR_DETAIL = 500  # TensorFlow errors can run to pages; each row has one.


REGISTRY_SCHEME = "models:/"


def resolve_model_path(path: str) -> str:
  """A `.keras` path as given, or the `.keras` file of a registered model
  version (`models:/NAME@ALIAS` or `models:/NAME/VERSION`) in the MLflow
  store MLFLOW_TRACKING_URI names. Resolved once, when the job is built."""
  if not path.startswith(REGISTRY_SCHEME):
    return path
  import mlflow  # The [mlflow] extra.
  name, _, version = path[len(REGISTRY_SCHEME):].partition("/")
  name, _, alias = name.partition("@")
  client = mlflow.MlflowClient()
  found = (client.get_model_version_by_alias(name, alias) if alias else
           client.get_model_version(name, version))
  source = found.source.removeprefix("file://")
  matches = FileSystems.match([f"{source.rstrip('/')}/*.keras"])[0]
  if len(matches.metadata_list) != 1:
    raise ValueError(f"{path}: expected one .keras file in {source}")
  return matches.metadata_list[0].path


def saved_input_width(path: str) -> int:
  """The feature width the model in a `.keras` file takes, from its config."""
  with FileSystems.open(path) as f, zipfile.ZipFile(f) as archive:
    config = json.loads(archive.read("config.json"))
  shape = (config.get("build_config") or {}).get("input_shape")
  if shape is None:
    shape = next((layer["config"].get("batch_shape")
                  for layer in config.get("config", {}).get("layers", [])
                  if layer.get("class_name") == "InputLayer"), None)
  if not shape or len(shape) != 2 or not isinstance(shape[1], int):
    raise ValueError(f"{path}: no [batch, width] input shape in its config "
                     f"({shape}); give --num_features")
  return shape[1]


def _emit_block(block: features.ParsedBlock):
  """Outputs of one parsed block: its batch, its dead letters, its counts."""
  if len(block.batch):
    yield block.batch
  counts = collections.Counter({quality.READ: block.read,
                                quality.PARSED: len(block.batch)})
  for raw, rejected in block.rejected:
    counts[quality.dead_letter_metric(rejected.reason)] += 1
    yield pvalue.TaggedOutput(quality.DEAD_LETTER, quality.dead_letter(
        features.FEATURES, block.batch.source, raw, rejected))
  yield from _emit_counts(counts)


def _emit_counts(counts: dict):
  for metric, count in counts.items():
    Metrics.counter(features.FEATURES, metric).inc(count)
    yield pvalue.TaggedOutput(quality.COUNTS,
                              ((features.FEATURES, metric), count))


class _ReadFeatureFile(beam.DoFn):
  """A Parquet or JSONL file -> FeatureBatches of up to batch_size rows."""

  def __init__(self, spec: features.FeatureSpec, batch_size: int):
    self._spec = spec
    self._batch_size = batch_size

  def process(self, path):
    if read_logs.is_parquet(path):
      blocks = self._parquet_blocks(path)
    else:
      blocks = self._json_blocks(path)
    for block in blocks:
      yield from _emit_block(block)

  def _parquet_blocks(self, path):
    with FileSystems.open(path) as f:
      parquet = pq.ParquetFile(f)
      present = [column for column in self._spec.input_columns
                 if column in parquet.schema_arrow.names]
      # One thread: a batch is too small to decode in parallel, and idle
      # Arrow threads slow the model's own thread pool down (benchmarks/).
      for batch in parquet.iter_batches(self._batch_size, columns=present,
                                        use_threads=False):
        yield features.parse_arrow_batch(batch, self._spec, path)

  def _json_blocks(self, path):
    with FileSystems.open(path) as f:  # .gz and other suffixes decompress.
      lines = (line.rstrip(b"\r\n") for line in iter(f.readline, b"")
               if line.strip())
      while block := list(itertools.islice(lines, self._batch_size)):
        yield features.parse_json_lines(block, self._spec, path)


class _ParseRecords(beam.DoFn):
  """A list of row dicts -> one FeatureBatch."""

  def __init__(self, spec: features.FeatureSpec, source: str):
    self._spec = spec
    self._source = source

  def process(self, records):
    yield from _emit_block(features.parse_records(records, self._spec,
                                                  self._source))


class ReadFeatures(beam.PTransform):
  """Feature files (Parquet, JSONL) or a BigQuery table -> FeatureBatches.

  Main output "batches"; tagged outputs `quality.DEAD_LETTER` rows and
  `quality.COUNTS` pairs.
  """

  def __init__(self, spec: features.FeatureSpec, batch_size: int,
               file_pattern: str | None = None, table: str | None = None):
    super().__init__()
    if (file_pattern is None) == (table is None):
      raise ValueError("read either feature files or a feature table")
    self._spec = spec
    self._batch_size = batch_size
    self._file_pattern = file_pattern
    self._table = table

  def expand(self, pbegin):
    outputs = (quality.DEAD_LETTER, quality.COUNTS)
    if self._table:
      return (pbegin
              | "ReadTable" >> beam.io.ReadFromBigQuery(
                  table=self._table,
                  method=beam.io.ReadFromBigQuery.Method.DIRECT_READ,
                  selected_fields=list(self._spec.input_columns))
              | "Batch" >> beam.BatchElements(
                  min_batch_size=self._batch_size,
                  max_batch_size=self._batch_size)
              | "Parse" >> beam.ParDo(_ParseRecords(
                  self._spec, self._table)).with_outputs(*outputs,
                                                         main="batches"))
    return (pbegin
            | "Match" >> read_logs.match_files(self._file_pattern)
            | "Paths" >> beam.Map(lambda metadata: metadata.path)
            | "Distribute" >> beam.Reshuffle()
            | "Parse" >> beam.ParDo(_ReadFeatureFile(
                self._spec, self._batch_size)).with_outputs(*outputs,
                                                            main="batches"))


class ModelSet:
  """Named Keras models, loaded together, each scoring every batch."""

  def __init__(self, models: dict):
    self._models = models
    self._unreported_loads = len(models)
    self._lock = threading.Lock()

  def predict(self, batch: np.ndarray) -> dict[str, np.ndarray]:
    return {name: predictions.as_matrix(model.predict_on_batch(batch))
            for name, model in self._models.items()}

  def take_unreported_loads(self) -> int:
    with self._lock:
      loads, self._unreported_loads = self._unreported_loads, 0
    return loads


class KerasModelsHandler(ml_base.ModelHandler):
  """RunInference handler: `.keras` models scoring whole FeatureBatches.

  An element is a batch already, so RunInference batches one element per
  call. RunInference shares the loaded ModelSet by all threads of a process
  (`shared.Shared`), or by all processes of a machine with `large_model` or
  `model_copies` (`multi_process_shared`; then `ModelSet.predict` is called
  through a proxy).
  """

  def __init__(self, model_paths: dict[str, str], large_model: bool = False,
               model_copies: int | None = None):
    super().__init__(min_batch_size=1, max_batch_size=1,
                     large_model=large_model, model_copies=model_copies)
    self._model_paths = dict(model_paths)

  def load_model(self) -> ModelSet:
    import keras  # Only workers need TensorFlow; building the job does not.
    return ModelSet({name: keras.models.load_model(path, compile=False)
                     for name, path in self._model_paths.items()})

  def run_inference(self, batch, model, inference_args=None):
    # Loads happen in DoFn.setup, where Beam records no metrics.
    loads = model.take_unreported_loads()
    if loads:
      Metrics.counter(METRICS_NAMESPACE, MODEL_LOADS).inc(loads)
    scored = []
    for feature_batch in batch:
      outputs = model.predict(feature_batch.features)
      Metrics.distribution(METRICS_NAMESPACE, ROWS_PER_BATCH).update(
          len(feature_batch))
      scored.append(predictions.ScoredBatch(
          feature_batch.request_ids, outputs,
          schemas.format_timestamp(time.time())))
    return scored

  def get_num_bytes(self, batch) -> int:
    return sum(feature_batch.features.nbytes for feature_batch in batch)

  def get_metrics_namespace(self) -> str:
    return METRICS_NAMESPACE


def _count_scored(scored: predictions.ScoredBatch):
  yield scored
  yield from _emit_counts({SCORED: len(scored.request_ids)})


def _failed_to_dead_letters(failure):
  """A batch RunInference could not score -> a dead letter per row."""
  batch, (_, error, _) = failure
  rejected = contract.Rejected(features.INFERENCE_FAILED,
                               error[:_MAX_ERROR_DETAIL])
  rows = 0
  for feature_batch in batch:
    rows += len(feature_batch)
    for raw in feature_batch.raw_rows():
      yield quality.dead_letter(features.FEATURES, feature_batch.source, raw,
                                rejected)
  yield from _emit_counts(
      {quality.dead_letter_metric(features.INFERENCE_FAILED): rows})


class ScoreBatches(beam.PTransform):
  """FeatureBatches -> ScoredBatches through RunInference.

  Returns {"scored", quality.DEAD_LETTER, quality.COUNTS}; a batch that fails
  to score becomes a dead letter per row.
  """

  def __init__(self, handler: ml_base.ModelHandler):
    super().__init__()
    self._handler = handler

  def expand(self, batches):
    scored, failed = (batches
                      | "RunInference" >> ml_base.RunInference(
                          self._handler).with_exception_handling())
    counted = scored | "CountScored" >> beam.FlatMap(
        _count_scored).with_outputs(quality.COUNTS, main="scored")
    dead = failed.failed_inferences | "FailedToDeadLetter" >> beam.FlatMap(
        _failed_to_dead_letters).with_outputs(quality.COUNTS,
                                              main=quality.DEAD_LETTER)
    return {"scored": counted.scored,
            quality.DEAD_LETTER: dead[quality.DEAD_LETTER],
            quality.COUNTS: ((counted[quality.COUNTS], dead[quality.COUNTS])
                             | "FlattenCounts" >> beam.Flatten())}


class _PredictionBatches(beam.DoFn):
  """A ScoredBatch -> predictions RowBatches (and shadow totals per model)."""

  def __init__(self, config: predictions.ScoringConfig):
    self._config = config

  def process(self, scored):
    config = self._config
    if config.mode == predictions.SCORE:
      yield from predictions.score_batches(scored, config.task)
    elif config.mode == predictions.ENSEMBLE:
      yield predictions.ensemble_batch(scored, config)
    else:
      batches, totals = predictions.shadow_batches(scored, config)
      yield from batches
      for model, model_totals in totals.items():
        yield pvalue.TaggedOutput(SHADOW_TOTALS, (model, model_totals))


class ToPredictions(beam.PTransform):
  """ScoredBatches -> predictions rows as `json_lines.RowBatch`es ("batches"),
  and in shadow mode (model, predictions.ShadowTotals) partial sums per batch
  (SHADOW_TOTALS)."""

  def __init__(self, config: predictions.ScoringConfig):
    super().__init__()
    self._config = config

  def expand(self, scored):
    return scored | "Batches" >> beam.ParDo(_PredictionBatches(
        self._config)).with_outputs(SHADOW_TOTALS, main="batches")


class ShadowSummary(beam.PTransform):
  """(model, ShadowTotals) partial sums -> a shadow_summary row per model."""

  def __init__(self, baseline: str):
    super().__init__()
    self._baseline = baseline

  def expand(self, totals):
    baseline = self._baseline
    return (totals
            | "Sum" >> beam.CombinePerKey(predictions.sum_totals)
            | "ToRows" >> beam.MapTuple(lambda model, model_totals: {
                "model": model, "baseline": baseline,
                **model_totals.summary()}))

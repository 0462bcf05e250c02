r"""Batch inference: feature rows in, every model's predictions out.

  features ─ReadFeatures─ScoreBatches (RunInference, models shared per process)
    ─ToPredictions─┬─ predictions
                   └─ShadowSummary─ shadow_summary (shadow mode)
  (read, score) ─ dead letters ─ dead_letter;  counts ─ data_quality
  data_quality ─RunSummary (quality gates)─ run_summary

One element is a block of rows (a Parquet record batch, a block of JSON
lines) from the reader to the model: RunInference scores each block with one
call per model. Modes: score (every model scores every row), ensemble (one
combined prediction per row), shadow (every model, compared with a baseline).

Run locally:
  python -m pipelines.train_demo_models --out demo/
  python -m pipelines.batch_inference --features 'demo/features*.parquet' \
      --model logreg=demo/logreg.keras --model mlp=demo/mlp.keras \
      --mode score --output_dir out/
"""

from __future__ import annotations

import dataclasses
import logging

import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.options.pipeline_options import TestOptions

from transforms.checks import gates
from transforms.checks import preflight
from transforms.checks import run_summary
from transforms.scoring import features
from transforms.scoring import inference
from transforms import options as opts
from transforms.scoring import predictions
from transforms.logs import quality
from transforms.io import schemas
from transforms.io import sinks

TABLE_REGEX = r"^[A-Za-z0-9_.:-]+[:.][A-Za-z0-9_]+\.[A-Za-z0-9_$-]+$"
COLUMNS_REGEX = r"^[A-Za-z_][A-Za-z0-9_]*(,[A-Za-z_][A-Za-z0-9_]*)*$"
MODELS_REGEX = r"^[A-Za-z0-9_.-]+=[^,]+(,[A-Za-z0-9_.-]+=[^,]+)*$"


class BatchInferenceOptions(PipelineOptions):
  """Inputs of the batch inference pipeline."""

  INPUT_OPTIONS = (
      opts.Option("features", "Feature files: pattern of Parquet (.parquet) "
                  "or JSON lines (.jsonl, .gz) files, local or gs://.",
                  "Feature files", param_type="GCS_READ_FILE"),
      opts.Option("features_table", "Feature table PROJECT:DATASET.TABLE, "
                  "read with the BigQuery Storage Read API (instead of "
                  "--features).", "Feature table",
                  param_type="BIGQUERY_TABLE", regexes=(TABLE_REGEX,)),
      opts.Option("feature_columns", "Comma-separated numeric columns that "
                  "make the feature vector, in order (default: the list "
                  "column `features`).", "Feature columns",
                  regexes=(COLUMNS_REGEX,)),
      opts.Option("num_features", "Length of the feature vector (default: "
                  "the input width saved in the models).",
                  "Number of features", type=int, regexes=(r"^[0-9]+$",)),
      opts.Option("batch_size", "Rows per block: one element from the "
                  "reader to the model, one call per model.", "Batch size",
                  type=int, default=8192, regexes=(r"^[1-9][0-9]*$",)),
  )
  OUTPUT_FILE_OPTIONS = (
      opts.Option("output_format", "Files under --output_dir: jsonl (JSON "
                  "lines) or parquet (columnar: smaller, and faster to write "
                  "for large outputs; loads into the same BigQuery schema).",
                  "Output file format", default=sinks.JSONL,
                  choices=sinks.FILE_FORMATS,
                  regexes=(f"^({'|'.join(sinks.FILE_FORMATS)})$",)),
  )

  @classmethod
  def _add_argparse_args(cls, parser):
    opts.add_options(parser, cls.INPUT_OPTIONS)
    opts.add_options(parser, cls.OUTPUT_FILE_OPTIONS)


class ModelOptions(PipelineOptions):
  """The models and what is made of their outputs."""

  MODEL_OPTIONS = (
      opts.Option("model", "Models: NAME=PATH of a Keras .keras file, local "
                  "or gs://, or NAME=models:/REGISTERED@ALIAS of the MLflow "
                  "registry at $MLFLOW_TRACKING_URI. Repeat, or separate "
                  "several with commas.",
                  "Models", action="append", regexes=(MODELS_REGEX,)),
      opts.Option("mode", "score: every model scores every row; ensemble: "
                  "one combined prediction per row; shadow: every model, "
                  "compared with --baseline.", "Mode",
                  default=predictions.SCORE, choices=predictions.MODES),
      opts.Option("combine", "Ensemble: the mean of the outputs, or the "
                  "majority vote of the models' classes.", "Ensemble combiner",
                  default=predictions.MEAN, choices=predictions.COMBINERS),
      opts.Option("baseline", "Shadow: the model the others are compared "
                  "with.", "Baseline model"),
      opts.Option("large_model", "Load the models once per machine, shared "
                  "by its worker processes, instead of once per process.",
                  "Large model", type=opts.parse_bool, default=False,
                  regexes=(opts.BOOL_REGEX,)),
      opts.Option("model_copies", "Exact number of copies of the models per "
                  "machine, shared by its processes.", "Model copies",
                  type=int, regexes=(r"^[0-9]+$",)),
  )

  @classmethod
  def _add_argparse_args(cls, parser):
    opts.add_options(parser, cls.MODEL_OPTIONS)


OPTION_CLASSES = (BatchInferenceOptions, ModelOptions, opts.TaskOptions,
                  opts.QualityGateOptions, opts.OutputFileOptions,
                  opts.OutputPipelineOptions)
TABLES = (*schemas.INFERENCE_TABLES.values(), schemas.RUN_SUMMARY)


def model_paths(model_options: list[str] | None) -> dict[str, str]:
  """["a=x.keras,b=y.keras", "c=z.keras"] -> {"a": "x.keras", ...}."""
  paths = {}
  for option in model_options or ():
    for model in option.split(","):
      name, separator, path = model.partition("=")
      if not separator or not name or not path:
        raise ValueError(f"--model {model}: expected NAME=PATH")
      if name in paths:
        raise ValueError(f"--model {name} is given twice")
      paths[name] = inference.resolve_model_path(path)
  return paths


def feature_spec(inputs: BatchInferenceOptions,
                 paths: dict[str, str]) -> features.FeatureSpec:
  """The feature vector the models take, checked against the options."""
  columns = tuple(inputs.feature_columns.split(",")) if (
      inputs.feature_columns) else ()
  width = inputs.num_features
  if width is None:
    widths = {name: inference.saved_input_width(path)
              for name, path in paths.items()}
    if len(set(widths.values())) != 1:
      raise ValueError(f"the models take different input widths: {widths}")
    width = next(iter(widths.values()))
  if columns and len(columns) != width:
    raise ValueError(f"{len(columns)} --feature_columns for {width} features")
  return features.FeatureSpec(width, columns)


class BatchInference(beam.PTransform):
  """Features -> predictions (as `json_lines.RowBatch`es), shadow_summary
  (shadow mode), dead_letter and data_quality rows."""

  def __init__(self, read: inference.ReadFeatures,
               handler: inference.KerasModelsHandler,
               scoring: predictions.ScoringConfig):
    super().__init__()
    self._read = read
    self._handler = handler
    self._scoring = scoring

  def expand(self, pbegin):
    read = pbegin | "ReadFeatures" >> self._read
    scored = read["batches"] | "ScoreBatches" >> inference.ScoreBatches(
        self._handler)
    predicted = scored["scored"] | "ToPredictions" >> inference.ToPredictions(
        self._scoring)
    outputs = {"predictions": predicted["batches"]}
    if self._scoring.mode == predictions.SHADOW:
      outputs["shadow_summary"] = (
          predicted[inference.SHADOW_TOTALS]
          | "ShadowSummary" >> inference.ShadowSummary(self._scoring.baseline))
    outputs["dead_letter"] = ((read[quality.DEAD_LETTER],
                               scored[quality.DEAD_LETTER])
                              | "FlattenDeadLetters" >> beam.Flatten())
    outputs["data_quality"] = ((read[quality.COUNTS], scored[quality.COUNTS])
                               | "FlattenCounts" >> beam.Flatten()
                               | "DataQuality" >> quality.SummarizeCounts())
    return outputs


def batch_inference(pipeline_options: PipelineOptions) -> BatchInference:
  """The job's transform from its options, checked (building it reads the
  models' input width when --num_features is not given)."""
  inputs = pipeline_options.view_as(BatchInferenceOptions)
  models = pipeline_options.view_as(ModelOptions)
  if bool(inputs.features) == bool(inputs.features_table):
    raise ValueError("give either --features or --features_table")
  if inputs.batch_size < 1:
    raise ValueError(f"--batch_size must be at least 1: {inputs.batch_size}")
  paths = model_paths(models.model)
  scoring = predictions.ScoringConfig(tuple(paths), models.mode,
                                      models.combine, models.baseline,
                                      pipeline_options.view_as(
                                          opts.TaskOptions).task)
  scoring.validate()
  read = inference.ReadFeatures(feature_spec(inputs, paths), inputs.batch_size,
                                file_pattern=inputs.features,
                                table=inputs.features_table)
  handler = inference.KerasModelsHandler(paths, bool(models.large_model),
                                         models.model_copies)
  return BatchInference(read, handler, scoring)


def build(pipeline: beam.Pipeline, pipeline_options: PipelineOptions) -> None:
  """Add the whole job to `pipeline`, as the options say."""
  output = dataclasses.replace(
      sinks.OutputConfig.from_options(pipeline_options),
      file_format=pipeline_options.view_as(BatchInferenceOptions).output_format)
  sinks.prepare_emulator_tables(output, TABLES, replace_partition=True)
  checks = pipeline_options.view_as(opts.QualityGateOptions)
  gate_config = gates.GateConfig(
      max_dead_letter_fraction=checks.max_dead_letter_fraction,
      allow_partial=bool(checks.allow_partial))
  outputs = pipeline | "BatchInference" >> batch_inference(pipeline_options)
  summary = outputs | "RunSummary" >> run_summary.RunSummary(
      "batch_inference", gate_config, run_summary.destinations(output, TABLES),
      gates.inference_verdicts)
  _ = ({**outputs, schemas.RUN_SUMMARY.name: summary}
       | "WriteOutputs" >> sinks.WriteTables(TABLES, output))


def preflight_checks(pipeline_options) -> None:
  """What can fail in seconds, before the pipeline starts: the models are
  Keras files of one input width that --num_features and --feature_columns
  agree with, the feature files are JSON lines or Parquet with those columns."""
  inputs = pipeline_options.view_as(BatchInferenceOptions)
  models = pipeline_options.view_as(ModelOptions)
  preflight.check_outputs(pipeline_options, TABLES)
  paths = model_paths(models.model)
  if not paths:
    raise preflight.UserError("give at least one --model NAME=PATH")
  widths = {}
  for name, path in paths.items():
    preflight.check_keras_file(name, path)
    try:
      widths[name] = inference.saved_input_width(path)
    except ValueError as error:
      if inputs.num_features is None:
        raise preflight.UserError(f"--model {name}={path}: {error}") from None
  preflight.check_widths(widths, inputs.num_features)
  spec = feature_spec(inputs, paths)
  if inputs.features:
    preflight.check_inputs("features", inputs.features, spec.input_columns)


def _counter(result, namespace: str, name: str) -> int:
  query = result.metrics().query(
      MetricsFilter().with_namespace(namespace).with_name(name))
  return sum(counter.committed or 0 for counter in query["counters"])


def _distribution(result, namespace: str, name: str):
  query = result.metrics().query(
      MetricsFilter().with_namespace(namespace).with_name(name))
  return next((d.committed for d in query["distributions"] if d.committed),
              None)


def metrics_report(result) -> dict:
  """Row counts, model loads, batch sizes and latencies from Beam's metrics."""
  counters = result.metrics().query(
      MetricsFilter().with_namespace(features.FEATURES))["counters"]
  dead_lettered = sum(
      counter.committed or 0 for counter in counters
      if counter.key.metric.name.startswith(quality.DEAD_LETTERED + ":"))
  namespace = inference.METRICS_NAMESPACE
  return {
      "rows_read": _counter(result, features.FEATURES, quality.READ),
      "rows_scored": _counter(result, features.FEATURES, inference.SCORED),
      "rows_dead_lettered": dead_lettered,
      "model_loads": _counter(result, namespace, inference.MODEL_LOADS),
      "rows_per_batch": _distribution(result, namespace,
                                      inference.ROWS_PER_BATCH),
      "inference_batch_latency_micro_secs": _distribution(
          result, namespace, "inference_batch_latency_micro_secs"),
      "load_model_latency_milli_secs": _distribution(
          result, namespace, "load_model_latency_milli_secs"),
  }


def format_report(report: dict) -> str:
  balanced = report["rows_read"] == (report["rows_scored"] +
                                     report["rows_dead_lettered"])
  lines = [f"rows read {report['rows_read']} {'=' if balanced else '!='} "
           f"scored {report['rows_scored']} + dead-lettered "
           f"{report['rows_dead_lettered']}",
           f"model loads: {report['model_loads']}"]
  for name in ("rows_per_batch", "inference_batch_latency_micro_secs",
               "load_model_latency_milli_secs"):
    value = report[name]
    if value is not None:
      lines.append(f"{name}: count {value.count} mean {value.mean:.0f} "
                   f"min {value.min} max {value.max}")
  return "\n".join(lines)


def run(argv=None):
  """Check the options, models and inputs, run the job to completion, print
  its metrics and summary; exit non-zero if it broke a quality gate."""
  pipeline_options = opts.parse_pipeline_options(argv, OPTION_CLASSES,
                                                 __doc__)
  program = opts.program_name(BatchInferenceOptions)
  dry_run = pipeline_options.view_as(TestOptions).dry_run
  with preflight.user_errors(program):
    if not dry_run:  # A dry run reads nothing.
      preflight_checks(pipeline_options)
    output = dataclasses.replace(
        sinks.fix_run(pipeline_options),
        file_format=pipeline_options.view_as(
            BatchInferenceOptions).output_format)
  with beam.Pipeline(options=pipeline_options) as pipeline:
    with preflight.user_errors(program):
      build(pipeline, pipeline_options)
  if not dry_run:  # A dry run has no metrics.
    print(format_report(metrics_report(pipeline.result)))
    run_summary.finish(program, output)
  return pipeline


if __name__ == "__main__":
  logging.getLogger().setLevel(logging.INFO)
  run()

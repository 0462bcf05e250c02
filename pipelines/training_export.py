r"""Training export: served predictions with their rewards, as de-identified TFRecords.

  predictions ─ReadPredictions─┐
                               ├─JoinRequests─(MaskWithCloudDlp)─ExportTrainingSet─┬─ PREFIX/{train,eval}-*.tfrecord.gz
  feedback ────ReadFeedback────┘                                                   ├─ PREFIX/schema.json
                                                                                   └─ export_summary
  (every stage) ─ dead letters ─ScrubDeadLetters─ dead_letter;  counts ─ data_quality

The same attribution as the reward pipeline (shadow predictions are never
exported); request and user ids pseudonymized with HMAC-SHA256 under a key
read on the workers from --pseudonymize_key_env; free-text fields scrubbed.

Run locally:
  KEY=... python -m pipelines.training_export --predictions 'logs/p-*.jsonl' \
      --feedback 'logs/f-*.jsonl' --feature_count 16 --pseudonymize_key_env KEY \
      --output_prefix out/export/dt=2026-11-21/ --output_dir out/
"""

from __future__ import annotations

import datetime
import logging

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from pipelines import reward_batch
from transforms.checks import preflight
from transforms import options as opts
from transforms.attribution.attribution import JoinRequests
from transforms.export import deid
from transforms.export import export
from transforms.export import training_set
from transforms.io import schemas
from transforms.io import sinks
from transforms.logs import contract
from transforms.logs import quality
from transforms.logs.read_logs import ReadLogs

TEXT_FIELDS_REGEX = r"^[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*(,[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*)*$"
TIME_REGEX = r"^\d{4}-\d{2}-\d{2}(T[0-9:.]+(Z|[+-]\d{2}:\d{2}))?$"


class TrainingExportOptions(PipelineOptions):
  """What the training export writes, and which requests it takes."""

  EXPORT_OPTIONS = (
      opts.Option("output_prefix", "Directory (local or gs://) of the day's "
                  "export, e.g. gs://bucket/export/dt=2026-11-21/: "
                  "train-*.tfrecord.gz, eval-*.tfrecord.gz, schema.json.",
                  "Export directory", param_type="GCS_WRITE_FOLDER",
                  required=True),
      opts.Option("feature_count", "Length of every exported feature vector "
                  "(`features` of the predictions); other lengths are "
                  "dead-lettered.", "Feature count", type=int, required=True,
                  regexes=(r"^[1-9][0-9]*$",)),
      opts.Option("eval_fraction", "Share of users in the eval split (by a "
                  "hash of the pseudonymized user id).", "Eval fraction",
                  type=float, default=0.2, regexes=(r"^[0-9.]+$",)),
      opts.Option("export_shards", "Files per split.", "Shards per split",
                  type=int, default=4, regexes=(r"^[1-9][0-9]*$",)),
      opts.Option("text_fields", "Comma-separated paths of free-text fields "
                  "of the prediction records (request.text,...), exported "
                  "de-identified.", "Free-text fields",
                  regexes=(TEXT_FIELDS_REGEX,)),
      opts.Option("start_time", "Export predictions at or after this time "
                  "(RFC 3339 or YYYY-MM-DD, UTC).", "Start time",
                  regexes=(TIME_REGEX,)),
      opts.Option("end_time", "Export predictions before this time (RFC 3339 "
                  "or YYYY-MM-DD, UTC).", "End time", regexes=(TIME_REGEX,)),
      opts.Option("experiment_ids", "Comma-separated experiments to export "
                  "(default: all).", "Experiments"),
      opts.Option("min_arm_count", "Leave out arms with fewer requests.",
                  "Minimum requests per arm", type=int, default=0,
                  regexes=(r"^[0-9]+$",)),
      opts.Option("max_arm_count", "Keep about this many requests per arm, "
                  "the same ones on every run (0: all).",
                  "Maximum requests per arm", type=int, default=0,
                  regexes=(r"^[0-9]+$",)),
      opts.Option("pseudonymize_key_secret", "Secret Manager secret version "
                  "(projects/P/secrets/S/versions/V) holding the key, read "
                  "by the workers (instead of --pseudonymize_key_env).",
                  "Pseudonymization key secret",
                  regexes=(r"^projects/[^/]+/secrets/[^/]+/versions/[^/]+$",)),
      opts.Option("dlp_project", "Also de-identify the free-text fields with "
                  "Cloud DLP (MaskDetectedDetails) in this project, on "
                  "Dataflow.", "Cloud DLP project"),
      opts.Option("dlp_template", "Cloud DLP de-identify template name "
                  "(projects/.../deidentifyTemplates/...).",
                  "Cloud DLP de-identify template"),
  )

  @classmethod
  def _add_argparse_args(cls, parser):
    opts.add_options(parser, cls.EXPORT_OPTIONS)


OPTION_CLASSES = (TrainingExportOptions, reward_batch.RewardBatchOptions,
                  reward_batch.AttributionOptions, opts.OutputFileOptions,
                  opts.OutputPipelineOptions)


def parse_time(text: str | None) -> float | None:
  if not text:
    return None
  moment = datetime.datetime.fromisoformat(text.upper().replace("Z",
                                                                 "+00:00"))
  if moment.tzinfo is None:
    moment = moment.replace(tzinfo=datetime.timezone.utc)
  return moment.timestamp()


def export_config(pipeline_options) -> training_set.ExportConfig:
  export_options = pipeline_options.view_as(TrainingExportOptions)
  attribution = pipeline_options.view_as(reward_batch.AttributionOptions)
  split = lambda text: tuple(t.strip() for t in (text or "").split(",")
                             if t.strip())
  return training_set.ExportConfig(
      feature_count=export_options.feature_count,
      text_fields=split(export_options.text_fields),
      eval_fraction=export_options.eval_fraction,
      start=parse_time(export_options.start_time),
      end=parse_time(export_options.end_time),
      experiment_ids=split(export_options.experiment_ids),
      missing_reward=attribution.missing_reward,
      min_arm_count=export_options.min_arm_count,
      max_arm_count=export_options.max_arm_count,
      num_shards=export_options.export_shards)


class _ScrubDeadLetter(beam.DoFn):
  """A dead letter's raw record, de-identified; with a Secret Manager key,
  its user_id pseudonymized too (with --pseudonymize_key_env the table sink
  does that)."""

  def __init__(self, key_secret: str | None):
    self._key_secret = key_secret
    self._key = None

  def setup(self):
    if self._key_secret:
      self._key = export.read_key(None, self._key_secret)

  def process(self, row):
    raw = row["raw"] and deid.scrub(row["raw"])
    yield {**row, "raw": raw and contract.redact_raw(raw, self._key)}


class TrainingExport(beam.PTransform):
  """Logs -> TFRecord export, export_summary, dead_letter, data_quality."""

  def __init__(self, predictions: str, feedback: str, attribution,
               config: training_set.ExportConfig, key_env: str | None,
               prefix: str, join_shards: int = 32,
               dlp_project: str | None = None,
               dlp_template: str | None = None,
               key_secret: str | None = None):
    super().__init__()
    self._key_secret = key_secret
    self._dlp_project = dlp_project
    self._dlp_template = dlp_template
    self._predictions = predictions
    self._feedback = feedback
    self._attribution = attribution
    self._config = config
    self._key_env = key_env
    self._prefix = prefix
    self._join_shards = join_shards

  def expand(self, pbegin):
    feedback = pbegin | "ReadFeedback" >> ReadLogs(self._feedback,
                                                    contract.FEEDBACK)
    predictions = pbegin | "ReadPredictions" >> ReadLogs(
        self._predictions, contract.PREDICTION, extras=training_set.EXTRAS)
    joined = ({"predictions": predictions.records,
               "feedback": feedback.records}
              | "JoinRequests" >> JoinRequests(
                  self._attribution, self._join_shards, training_set.EXTRAS))
    requests = joined["requests"]
    stages = [predictions, feedback, joined]
    if self._dlp_project:
      masked = requests | "MaskWithCloudDlp" >> export.MaskWithCloudDlp(
          self._dlp_project, self._dlp_template)
      requests = masked["requests"]
      stages.append(masked)
    exported = requests | "ExportTrainingSet" >> (
        export.ExportTrainingSet(self._config, self._key_env, self._prefix,
                                 self._key_secret))
    stages.append(exported)
    # Rejected raw records may hold free text too: only scrubbed ones are kept.
    dead_letters = ([s[quality.DEAD_LETTER] for s in stages]
                    | "FlattenDeadLetters" >> beam.Flatten()
                    | "ScrubDeadLetters" >> beam.ParDo(
                        _ScrubDeadLetter(self._key_secret)))
    counts = ([s[quality.COUNTS] for s in stages]
              | "FlattenCounts" >> beam.Flatten()
              | "DataQuality" >> quality.SummarizeCounts())
    return {"export_summary": exported["export_summary"],
            "dead_letter": dead_letters, "data_quality": counts}


def build(pipeline: beam.Pipeline, pipeline_options: PipelineOptions) -> None:
  """Add the whole job to `pipeline`, as the options say."""
  inputs = pipeline_options.view_as(reward_batch.RewardBatchOptions)
  export_options = pipeline_options.view_as(TrainingExportOptions)
  reward_batch.check_feedback_files(inputs)
  opts.check_required(export_options, TrainingExportOptions.EXPORT_OPTIONS)
  if not inputs.predictions:
    raise ValueError("required: --predictions (the features are in them)")
  config = export_config(pipeline_options)
  output = sinks.OutputConfig.from_options(pipeline_options)
  if not export_options.pseudonymize_key_secret:
    # Fails at start, in one line, when the variable is not set here; the
    # workers read it again (the key never enters the pipeline graph).
    export.read_key(output.pseudonymize_key_env)
  sinks.prepare_emulator_tables(output, schemas.EXPORT_TABLES.values(),
                                replace_partition=True)
  _ = (pipeline
       | "TrainingExport" >> TrainingExport(
           inputs.predictions, inputs.feedback,
           reward_batch.attribution_config(pipeline_options, True), config,
           output.pseudonymize_key_env, export_options.output_prefix,
           inputs.join_shards, export_options.dlp_project,
           export_options.dlp_template,
           export_options.pseudonymize_key_secret)
       | "WriteOutputs" >> sinks.WriteTables(schemas.EXPORT_TABLES.values(),
                                             output))


def run(argv=None):
  """Check the options, inputs and outputs, run the job to completion."""
  return reward_batch.run_log_file_pipeline(
      argv, OPTION_CLASSES, __doc__, build, schemas.EXPORT_TABLES.values())


if __name__ == "__main__":
  logging.getLogger().setLevel(logging.INFO)
  # A user error (an option, an input, an output) is one line.
  with preflight.user_errors("pipelines.training_export"):
    run()

r"""Streaming reward aggregation: live per-arm rewards and router state from Pub/Sub.

  predictions ─Read─ParseMessages─┐
                                  ├─AttributeRequests─┬─ArmStatsPerWindow─── arm_stats
  feedback ────Read─ParseMessages─┘  (state + timers  └─StatisticsSoFar──┬── router_state
                                      per request_id)                    └── (arm rows so far)
             (with --metrics) └─ requests ─MetricsSoFar─┬─ metric_stats
                                                         └─ decisions
       (with --model_quality) └─ requests ─ModelQualitySoFar─ model_quality
  (every stage) ─ dead letters ─ dead_letter;  counts ─CountsSoFar─ data_quality

Run locally against the Pub/Sub and BigQuery emulators (see
pipelines/streaming_demo.py, which starts both):
  PUBSUB_EMULATOR_HOST=127.0.0.1:8085 python -m pipelines.reward_streaming \
      --predictions_subscription projects/local-project/subscriptions/predictions \
      --feedback_subscription projects/local-project/subscriptions/feedback \
      --timestamp_attribute ts --output_dataset local-project:rewards \
      --bigquery_emulator_host http://127.0.0.1:9050 \
      --runner BundleBasedDirectRunner --duration_s 60
"""

from __future__ import annotations

import dataclasses
import logging
import time

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.options.pipeline_options import TestOptions
from apache_beam.transforms import trigger
from apache_beam.transforms import window

from pipelines import reward_batch
from transforms.checks import preflight
from transforms.decisions import arm_table
from transforms.decisions import metric_tables
from transforms.decisions import quality_tables
from transforms.decisions import experiments
from transforms.logs import contract
from transforms.logs import messages
from transforms import options as opts
from transforms.logs import quality
from transforms.attribution import rewards
from transforms.io import schemas
from transforms.io import sinks
from transforms.logs.messages import ParseMessages
from transforms.attribution import streaming_attribution
from transforms.attribution.streaming_attribution import AttributeRequests


class RewardStreamingOptions(PipelineOptions):
  """Sources and windows of the streaming reward pipeline."""

  STREAMING_OPTIONS = (
      opts.Option("predictions_subscription",
                  "Pub/Sub subscription of the prediction logs "
                  "(projects/PROJECT/subscriptions/NAME), one record per "
                  "message.", "Prediction log subscription",
                  param_type="PUBSUB_SUBSCRIPTION",
                  regexes=(opts.SUBSCRIPTION_REGEX,), required=True),
      opts.Option("feedback_subscription",
                  "Pub/Sub subscription of the feedback logs "
                  "(projects/PROJECT/subscriptions/NAME), one record per "
                  "message.", "Feedback log subscription",
                  param_type="PUBSUB_SUBSCRIPTION",
                  regexes=(opts.SUBSCRIPTION_REGEX,), required=True),
      opts.Option("timestamp_attribute",
                  "Message attribute with the record's event time (RFC 3339 "
                  "or epoch milliseconds), set by the publisher: the source's "
                  "watermark follows it. Default: the publish time.",
                  "Timestamp attribute"),
      opts.Option("window_s", "Length of the fixed event-time windows of "
                  "arm_stats.", "Window (s)", type=float, default=3600.0,
                  regexes=(r"^[0-9.]+$",)),
      opts.Option("early_firing_s",
                  "Processing time (whole seconds) between two updates of an "
                  "open window's rows, of router_state and of data_quality.",
                  "Update period (s)", type=int, default=60,
                  regexes=(r"^[0-9]+$",)),
      opts.Option("allowed_lateness_s",
                  "How late (behind the watermark) a record may arrive and "
                  "still count in its window's rows: a window stays open for "
                  "the attribution window plus this.", "Allowed lateness (s)",
                  type=float, default=600.0, regexes=(r"^[0-9.]+$",)),
      opts.Option("model_quality",
                  "Also write model_quality of the live arms so far: each "
                  "prediction's `prediction` against its feedback's `truth`, "
                  "scored as --task says.", "Model quality",
                  type=opts.parse_bool, default=False,
                  regexes=(opts.BOOL_REGEX,)),
      opts.Option("duration_s",
                  "Stop the job after this many seconds (local runs). "
                  "Default: run until cancelled or drained.",
                  "Run duration (s)", type=float, regexes=(r"^[0-9.]+$",)),
  )

  @classmethod
  def _add_argparse_args(cls, parser):
    opts.add_options(parser, cls.STREAMING_OPTIONS)


OPTION_CLASSES = (RewardStreamingOptions, reward_batch.AttributionOptions,
                  reward_batch.StatisticsOptions, reward_batch.MetricOptions,
                  opts.TaskOptions, opts.OutputPipelineOptions)


@dataclasses.dataclass(frozen=True)
class WindowConfig:
  """How rows are windowed and how often they are refreshed."""
  window_s: float = 3600.0
  early_firing_s: int = 60  # Processing-time triggers take whole seconds.
  allowed_lateness_s: float = 600.0


def window_config(pipeline_options) -> WindowConfig:
  streaming = pipeline_options.view_as(RewardStreamingOptions)
  return WindowConfig(window_s=streaming.window_s,
                      early_firing_s=streaming.early_firing_s,
                      allowed_lateness_s=streaming.allowed_lateness_s)


class ArmStatsPerWindow(beam.PTransform):
  """Per-request contributions -> arm_stats rows per fixed event-time window.

  A window's rows are refreshed every `early_firing_s` while data comes,
  accumulating. A request is decided once its attribution window and the
  allowed lateness have passed, so a window accepts contributions until its
  end + the attribution window + the allowed lateness; later ones reach only
  the totals so far.
  """

  def __init__(self, windows: WindowConfig, attribution_window_s: float,
               statistics: arm_table.StatisticsConfig):
    super().__init__()
    self._windows = windows
    self._attribution_window_s = attribution_window_s
    self._statistics = statistics

  def expand(self, contributions):
    refresh = trigger.AfterProcessingTime(self._windows.early_firing_s)
    return (contributions
            | "FixedWindows" >> beam.WindowInto(
                window.FixedWindows(self._windows.window_s),
                trigger=trigger.AfterWatermark(early=refresh, late=refresh),
                accumulation_mode=trigger.AccumulationMode.ACCUMULATING,
                allowed_lateness=(self._attribution_window_s +
                                  self._windows.allowed_lateness_s))
            | "ExperimentStatistics" >> experiments.ExperimentStatistics(
                self._statistics)).arm_stats


class SoFar(beam.PTransform):
  """Elements -> the global window, fired every `early_firing_s`, accumulating."""

  def __init__(self, early_firing_s: int):
    super().__init__()
    self._early_firing_s = early_firing_s

  def expand(self, pcoll):
    return pcoll | "GlobalWindow" >> beam.WindowInto(
        window.GlobalWindows(),
        trigger=trigger.AfterWatermark(
            early=trigger.AfterProcessingTime(self._early_firing_s)),
        accumulation_mode=trigger.AccumulationMode.ACCUMULATING)


class StatisticsSoFar(beam.PTransform):
  """Per-request contributions -> arm rows and router_state of all data so far."""

  def __init__(self, early_firing_s: int,
               statistics: arm_table.StatisticsConfig):
    super().__init__()
    self._early_firing_s = early_firing_s
    self._statistics = statistics

  def expand(self, contributions):
    return (contributions
            | "SoFar" >> SoFar(self._early_firing_s)
            | "ExperimentStatistics" >> experiments.ExperimentStatistics(
                self._statistics))


class RewardStreaming(beam.PTransform):
  """{"predictions", "feedback"} message payloads -> arm_stats (per window),
  router_state and arm_stats_so_far (all data so far), dead_letter, data_quality.

  `subscriptions` names each input's source (the dead letters' source_file).
  With a metric `plan` (reward_batch.MetricPlan), also metric_stats and
  decisions of all data so far, refreshed every pane, decided on the
  sequential statistics. With a `quality_task` (classification or
  regression), also model_quality of the live arms so far.
  """

  def __init__(self, subscriptions: dict,
               attribution: rewards.AttributionConfig,
               statistics: arm_table.StatisticsConfig, windows: WindowConfig,
               plan: reward_batch.MetricPlan | None = None,
               quality_task: str | None = None):
    super().__init__()
    self._subscriptions = subscriptions
    self._attribution = attribution
    self._statistics = statistics
    self._windows = windows
    self._plan = plan
    self._quality_task = quality_task

  def expand(self, payloads):
    plan = self._plan
    prediction_extras = tuple(plan.prediction_extras if plan else ()) + (
        ("prediction",) if self._quality_task else ())
    feedback_extras = ("truth",) if self._quality_task else ()
    extras = {
        contract.PREDICTION: prediction_extras,
        contract.FEEDBACK: (("metric",) if plan else ()) + feedback_extras}
    parsed = {
        name: payloads[name] | f"Parse_{name}" >> ParseMessages(
            record_type, self._subscriptions[name], extras[record_type])
        for name, record_type in messages.SOURCES.items()
    }
    attributed = ({name: p.records for name, p in parsed.items()}
                  | "AttributeRequests" >> AttributeRequests(
                      self._attribution, self._windows.allowed_lateness_s,
                      self._subscriptions["feedback"],
                      plan.signals if plan else (), prediction_extras,
                      feedback_extras))
    contributions = attributed.contributions
    arm_stats = contributions | "ArmStatsPerWindow" >> ArmStatsPerWindow(
        self._windows, self._attribution.attribution_window_s,
        self._statistics)
    so_far = contributions | "StatisticsSoFar" >> StatisticsSoFar(
        self._windows.early_firing_s, self._statistics)
    dead_letters = ([p[quality.DEAD_LETTER] for p in parsed.values()] +
                    [attributed[quality.DEAD_LETTER]]
                    | "FlattenDeadLetters" >> beam.Flatten())
    counts = ([p[quality.COUNTS] for p in parsed.values()] +
              [attributed[quality.COUNTS]]
              | "FlattenCounts" >> beam.Flatten()
              | "CountsSoFar" >> SoFar(self._windows.early_firing_s)
              | "DataQuality" >> quality.SummarizeCounts())
    outputs = {"arm_stats": arm_stats,
               "router_state": so_far[experiments.ROUTER_STATE],
               "arm_stats_so_far": so_far.arm_stats,
               "dead_letter": dead_letters, "data_quality": counts}
    if self._quality_task:
      outputs[schemas.MODEL_QUALITY.name] = (
          attributed[streaming_attribution.REQUESTS]
          | "ModelQualitySoFar" >> quality_tables.StreamedModelQuality(
              self._quality_task, SoFar(self._windows.early_firing_s)))
    if plan:
      if any(d.cap_percentile is not None for d in plan.definitions):
        raise ValueError("cap_percentile is for batch runs: a stream has no "
                         "control percentile before it aggregates; use cap")
      config = dataclasses.replace(plan.config, decide_on="sequential")
      outputs.update(
          attributed[streaming_attribution.REQUESTS]
          | "MetricsSoFar" >> metric_tables.StreamedMetricRows(
              plan.definitions, config, SoFar(self._windows.early_firing_s),
              plan.dimensions, plan.max_segment_values))
    return outputs


def build(pipeline: beam.Pipeline, pipeline_options: PipelineOptions) -> None:
  """Add the whole job to `pipeline`, as the options say."""
  streaming = pipeline_options.view_as(RewardStreamingOptions)
  opts.check_required(streaming, RewardStreamingOptions.STREAMING_OPTIONS)
  subscriptions = {"predictions": streaming.predictions_subscription,
                   "feedback": streaming.feedback_subscription}
  output = sinks.OutputConfig.from_options(pipeline_options)
  if output.output_dir:
    raise ValueError("--output_dir is for batch runs: a streaming run writes "
                     "BigQuery (--output_dataset)")
  plan = reward_batch.metric_plan(pipeline_options)
  tables = list(schemas.TABLES.values())
  if plan:
    tables += schemas.METRIC_TABLES.values()
  quality_task = None
  if streaming.model_quality:
    quality_task = pipeline_options.view_as(opts.TaskOptions).task
    tables.append(schemas.MODEL_QUALITY)
  sinks.prepare_emulator_tables(output, tables, replace_partition=False)
  payloads = {
      name: pipeline | f"Read_{name}" >> beam.io.ReadFromPubSub(
          subscription=subscription,
          timestamp_attribute=streaming.timestamp_attribute)
      for name, subscription in subscriptions.items()
  }
  outputs = payloads | "RewardStreaming" >> RewardStreaming(
      subscriptions, reward_batch.attribution_config(pipeline_options, True),
      reward_batch.statistics_config(pipeline_options),
      window_config(pipeline_options), plan, quality_task)
  _ = ({table.name: outputs[table.name] for table in tables}
       | "WriteOutputs" >> sinks.WriteTables(tables, output))


def start(pipeline_options: PipelineOptions):
  """Build the job and start it; returns its PipelineResult."""
  pipeline = beam.Pipeline(options=pipeline_options)
  build(pipeline, pipeline_options)
  return pipeline.run()


def run(argv=None):
  """Parse the options, start the job, wait for it or stop it after --duration_s."""
  pipeline_options = opts.parse_pipeline_options(argv, OPTION_CLASSES, __doc__,
                                                 streaming=True)
  with preflight.user_errors(opts.program_name(RewardStreamingOptions)):
    if not pipeline_options.view_as(TestOptions).dry_run:  # Reads nothing.
      preflight.check_outputs(pipeline_options, schemas.TABLES.values())
    pipeline = beam.Pipeline(options=pipeline_options)
    build(pipeline, pipeline_options)
  result = pipeline.run()
  duration_s = pipeline_options.view_as(RewardStreamingOptions).duration_s
  if duration_s is None:
    result.wait_until_finish()
  else:
    # The direct runner's wait_until_finish takes no duration.
    time.sleep(duration_s)
    result.cancel()
  return result


if __name__ == "__main__":
  logging.getLogger().setLevel(logging.INFO)
  run()

r"""Batch reward aggregation: serving logs in, per-arm rewards and statistics out.

  predictions ─ReadPredictions─┐
                               ├─AttributeRewards─ExperimentStatistics─┬─ arm_stats
  feedback ────ReadFeedback────┘      │                                └─ router_state
                    (with --metrics)  └─ requests ─MetricDecisions─┬─ metric_stats
                                                                   └─ decisions
  (every stage) ─ dead letters ─ dead_letter;  counts ─ data_quality

Run locally:
  python -m pipelines.reward_batch --predictions 'logs/predictions*.jsonl' \
      --feedback 'logs/feedback*.jsonl' --output_dir out/
"""

from __future__ import annotations

import logging
from typing import NamedTuple

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from apache_beam.io.filesystems import FileSystems

from transforms.decisions import arm_table
from transforms.decisions import metric_stats
from transforms.decisions import metric_tables
from transforms.decisions import metrics
from transforms.logs import contract
from transforms.decisions import experiments
from transforms import options as opts
from transforms.logs import quality
from transforms.attribution import rewards
from transforms.io import schemas
from transforms.io import sinks
from transforms.attribution.attribution import AttributeRewards
from transforms.logs.read_logs import ReadLogs


class RewardBatchOptions(PipelineOptions):
  """Inputs of the batch reward pipeline."""

  INPUT_OPTIONS = (
      opts.Option("predictions",
                  "Prediction logs: file pattern (JSONL, .gz or Parquet; local "
                  "or gs://). Without it, feedback must carry experiment_id "
                  "and arm.", "Prediction log files",
                  param_type="GCS_READ_FILE"),
      opts.Option("feedback", "Feedback logs: file pattern (JSONL, .gz or "
                  "Parquet; local or gs://).", "Feedback log files",
                  param_type="GCS_READ_FILE", required=True),
      opts.Option("join_shards", "Number of request-id shards the join is "
                  "spread over.", "Join shards", type=int, default=32,
                  regexes=(r"^[0-9]+$",)),
  )

  @classmethod
  def _add_argparse_args(cls, parser):
    opts.add_options(parser, cls.INPUT_OPTIONS)


class AttributionOptions(PipelineOptions):
  """How feedback becomes a reward."""

  @classmethod
  def _add_argparse_args(cls, parser):
    opts.add_options(parser, opts.ATTRIBUTION_OPTIONS)


class StatisticsOptions(PipelineOptions):
  """What the statistics compare against."""

  @classmethod
  def _add_argparse_args(cls, parser):
    opts.add_options(parser, opts.STATISTICS_OPTIONS)


class MetricOptions(PipelineOptions):
  """Which metrics decide, per segment, and how."""

  @classmethod
  def _add_argparse_args(cls, parser):
    opts.add_options(parser, opts.METRIC_OPTIONS)


OPTION_CLASSES = (RewardBatchOptions, AttributionOptions, StatisticsOptions,
                  MetricOptions, opts.OutputFileOptions,
                  opts.OutputPipelineOptions)


def attribution_config(pipeline_options,
                       with_predictions: bool) -> rewards.AttributionConfig:
  attribution = pipeline_options.view_as(AttributionOptions)
  return rewards.AttributionConfig(
      attribution_window_s=attribution.attribution_window_s,
      reward_reduce=attribution.reward_reduce,
      missing_reward=attribution.missing_reward,
      with_predictions=with_predictions)


def statistics_config(pipeline_options) -> arm_table.StatisticsConfig:
  statistics = pipeline_options.view_as(StatisticsOptions)
  return arm_table.StatisticsConfig(
      control_arm=statistics.control_arm,
      expected_allocation=opts.parse_allocation(
          statistics.expected_allocation),
      seq_tuning=statistics.seq_tuning,
      traffic_floor=statistics.traffic_floor)


def _read_text(path: str) -> str:
  with FileSystems.open(path) as f:
    return f.read().decode("utf-8")


class MetricPlan(NamedTuple):
  """What --metrics and its companions ask for."""
  definitions: tuple
  config: metric_stats.MetricConfig
  dimensions: tuple
  max_segment_values: int

  @property
  def prediction_extras(self) -> tuple:
    extras = metrics.prediction_extras(self.definitions)
    return extras + (("attributes",) if self.dimensions else ())

  @property
  def signals(self) -> tuple:
    return metrics.feedback_signals(self.definitions)


def metric_plan(pipeline_options) -> MetricPlan | None:
  """The metric plan of the options; None without --metrics.

  Reads the definitions now, so a bad file fails the run before it starts.
  """
  chosen = pipeline_options.view_as(MetricOptions)
  if not chosen.metrics:
    return None
  statistics = pipeline_options.view_as(StatisticsOptions)
  return MetricPlan(
      metrics.load_metrics(chosen.metrics, read=_read_text),
      metric_stats.MetricConfig(
          control_arm=statistics.control_arm,
          expected_allocation=opts.parse_allocation(
              statistics.expected_allocation),
          seq_tuning=statistics.seq_tuning, correction=chosen.correction,
          decide_on=chosen.decide_on, min_samples=chosen.min_samples),
      tuple(d.strip() for d in (chosen.dimensions or "").split(",")
            if d.strip()),
      chosen.max_segment_values)


class RewardAggregation(beam.PTransform):
  """Prediction and feedback logs -> arm_stats, router_state, dead_letter, data_quality."""

  def __init__(self, predictions: str | None, feedback: str,
               attribution: rewards.AttributionConfig,
               statistics: arm_table.StatisticsConfig, join_shards: int = 32,
               plan: MetricPlan | None = None):
    super().__init__()
    self._plan = plan
    self._predictions = predictions
    self._feedback = feedback
    self._attribution = attribution
    self._statistics = statistics
    self._join_shards = join_shards

  def expand(self, pbegin):
    plan = self._plan
    if plan and not self._predictions:
      raise ValueError("--metrics needs --predictions")
    feedback = pbegin | "ReadFeedback" >> ReadLogs(
        self._feedback, contract.FEEDBACK, ("metric",) if plan else ())
    reads = [feedback]
    predictions = None
    if self._predictions:
      predictions = pbegin | "ReadPredictions" >> ReadLogs(
          self._predictions, contract.PREDICTION,
          plan.prediction_extras if plan else ())
      reads.append(predictions)
    tables = {"feedback": feedback.records}
    if predictions:
      tables["predictions"] = predictions.records
    attributed = (tables
                  | "AttributeRewards" >> AttributeRewards(
                      self._attribution, self._join_shards,
                      plan.prediction_extras if plan else (),
                      plan.signals if plan else ()))
    statistics = (attributed["arm_totals"]
                  | "ExperimentStatistics" >>
                  experiments.ExperimentStatistics(self._statistics))
    dead_letters = ([r[quality.DEAD_LETTER] for r in reads] +
                    [attributed[quality.DEAD_LETTER]]
                    | "FlattenDeadLetters" >> beam.Flatten())
    counts = ([r[quality.COUNTS] for r in reads] +
              [attributed[quality.COUNTS]]
              | "FlattenCounts" >> beam.Flatten()
              | "DataQuality" >> quality.SummarizeCounts())
    outputs = {"arm_stats": statistics.arm_stats,
               "router_state": statistics[experiments.ROUTER_STATE],
               "dead_letter": dead_letters, "data_quality": counts}
    if plan:
      outputs.update(attributed["requests"]
                     | "MetricDecisions" >> metric_tables.MetricDecisions(
                         plan.definitions, plan.config, plan.dimensions,
                         plan.max_segment_values))
    return outputs


def build(pipeline: beam.Pipeline, pipeline_options: PipelineOptions) -> None:
  """Add the whole job to `pipeline`, as the options say."""
  inputs = pipeline_options.view_as(RewardBatchOptions)
  opts.check_required(inputs, RewardBatchOptions.INPUT_OPTIONS)
  plan = metric_plan(pipeline_options)
  tables = list(schemas.TABLES.values())
  if plan:
    tables += schemas.METRIC_TABLES.values()
  output = sinks.OutputConfig.from_options(pipeline_options)
  sinks.prepare_emulator_tables(output, tables, replace_partition=True)
  _ = (pipeline
       | "RewardAggregation" >> RewardAggregation(
           inputs.predictions, inputs.feedback,
           attribution_config(pipeline_options, bool(inputs.predictions)),
           statistics_config(pipeline_options), inputs.join_shards, plan)
       | "WriteOutputs" >> sinks.WriteTables(tables, output))


def run(argv=None):
  """Parse the options, build the job and run it to completion."""
  pipeline_options = opts.parse_pipeline_options(argv, OPTION_CLASSES,
                                                 __doc__)
  with beam.Pipeline(options=pipeline_options) as pipeline:
    build(pipeline, pipeline_options)
  return pipeline


if __name__ == "__main__":
  logging.getLogger().setLevel(logging.INFO)
  run()

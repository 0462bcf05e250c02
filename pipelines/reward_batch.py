r"""Batch reward aggregation: serving logs in, per-arm rewards and statistics out.

  predictions ─ReadPredictions─┐
                               ├─AttributeRewards─ExperimentStatistics─┬─ arm_stats
  feedback ────ReadFeedback────┘                                       └─ router_state
  (every stage) ─ dead letters ─ dead_letter;  counts ─ data_quality

Run locally:
  python -m pipelines.reward_batch --predictions 'logs/predictions*.jsonl' \
      --feedback 'logs/feedback*.jsonl' --output_dir out/
"""

from __future__ import annotations

import logging

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from transforms.decisions import arm_table
from transforms.logs import contract
from transforms.decisions import experiments
from transforms import options as opts
from transforms.logs import quality
from transforms.attribution import rewards
from transforms.io import schemas
from transforms.io import sinks
from transforms.attribution.attribution import AttributeRewards
from transforms.logs.read_logs import ReadLogs
from transforms.policy import evaluation as policy_evaluation
from transforms.policy import requests as policy_requests


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


OPTION_CLASSES = (RewardBatchOptions, AttributionOptions, StatisticsOptions,
                  opts.ContextOptions, opts.ContextualPolicyOptions,
                  opts.OutputFileOptions, opts.OutputPipelineOptions)


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


def contextual_router_state(pipeline_options):
  """The ContextualRouterState step the options ask for, or None."""
  policy = pipeline_options.view_as(opts.ContextualPolicyOptions)
  context = pipeline_options.view_as(opts.ContextOptions)
  spec = policy_requests.ContextSpec.parse(context.context_features,
                                           context.context_dim)
  if not policy.contextual_policy:
    if spec:
      raise ValueError("--context_features/--context_dim need "
                       "--contextual_policy here")
    return None
  if not spec:
    raise ValueError("--contextual_policy needs --context_features or "
                     "--context_dim")
  return policy_evaluation.ContextualRouterState(
      spec, policy.contextual_policy, policy.policy_alpha,
      context.ridge_lambda, context.decay, policy.policy_epsilon)


class RewardAggregation(beam.PTransform):
  """Prediction and feedback logs -> arm_stats, router_state, dead_letter, data_quality."""

  def __init__(self, predictions: str | None, feedback: str,
               attribution: rewards.AttributionConfig,
               statistics: arm_table.StatisticsConfig, join_shards: int = 32,
               contextual=None):
    super().__init__()
    self._contextual = contextual
    self._predictions = predictions
    self._feedback = feedback
    self._attribution = attribution
    self._statistics = statistics
    self._join_shards = join_shards

  def expand(self, pbegin):
    feedback = pbegin | "ReadFeedback" >> ReadLogs(self._feedback,
                                                    contract.FEEDBACK)
    reads = [feedback]
    predictions = None
    if self._predictions:
      predictions = pbegin | "ReadPredictions" >> ReadLogs(
          self._predictions, contract.PREDICTION,
          self._contextual.extras if self._contextual else ())
      reads.append(predictions)
    tables = {"feedback": feedback.records}
    if predictions:
      tables["predictions"] = predictions.records
    attributed = (tables
                  | "AttributeRewards" >> AttributeRewards(
                      self._attribution, self._join_shards,
                      self._contextual.extras if self._contextual else ()))
    statistics = (attributed["arm_totals"]
                  | "ExperimentStatistics" >>
                  experiments.ExperimentStatistics(self._statistics))
    router_state = statistics[experiments.ROUTER_STATE]
    if self._contextual:
      contextual = ({"requests": attributed["requests"],
                     "router_state": router_state}
                    | "ContextualRouterState" >> self._contextual)
      router_state = contextual["router_state"]
      reads.append(contextual)
    dead_letters = ([r[quality.DEAD_LETTER] for r in reads] +
                    [attributed[quality.DEAD_LETTER]]
                    | "FlattenDeadLetters" >> beam.Flatten())
    counts = ([r[quality.COUNTS] for r in reads] +
              [attributed[quality.COUNTS]]
              | "FlattenCounts" >> beam.Flatten()
              | "DataQuality" >> quality.SummarizeCounts())
    return {"arm_stats": statistics.arm_stats,
            "router_state": router_state,
            "dead_letter": dead_letters, "data_quality": counts}


def build(pipeline: beam.Pipeline, pipeline_options: PipelineOptions) -> None:
  """Add the whole job to `pipeline`, as the options say."""
  inputs = pipeline_options.view_as(RewardBatchOptions)
  opts.check_required(inputs, RewardBatchOptions.INPUT_OPTIONS)
  output = sinks.OutputConfig.from_options(pipeline_options)
  sinks.prepare_emulator_tables(output, schemas.TABLES.values(),
                                replace_partition=True)
  _ = (pipeline
       | "RewardAggregation" >> RewardAggregation(
           inputs.predictions, inputs.feedback,
           attribution_config(pipeline_options, bool(inputs.predictions)),
           statistics_config(pipeline_options), inputs.join_shards,
           contextual_router_state(pipeline_options))
       | "WriteOutputs" >> sinks.WriteTables(schemas.TABLES.values(), output))


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

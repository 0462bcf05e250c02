r"""Batch reward aggregation: serving logs in, per-arm rewards and statistics out.

  predictions ─ReadPredictions─┐
                               ├─AttributeRewards─ExperimentStatistics─┬─ arm_stats
  feedback ────ReadFeedback────┘                                       └─ router_state
  (every stage) ─ dead letters ─ dead_letter;  counts ─ data_quality
  data_quality, arm_stats ─RunSummary (quality gates)─ run_summary

Before it starts, a preflight checks the inputs and the emulator; after it,
the run summary is printed and a broken gate exits with status 3.

Run locally:
  python -m pipelines.reward_batch --predictions 'logs/predictions*.jsonl' \
      --feedback 'logs/feedback*.jsonl' --output_dir out/
"""

from __future__ import annotations

import logging

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.options.pipeline_options import TestOptions

from transforms.checks import gates
from transforms.checks import preflight
from transforms.checks import run_summary
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
                  opts.QualityGateOptions, opts.OutputFileOptions,
                  opts.OutputPipelineOptions)
TABLES = (*schemas.TABLES.values(), schemas.RUN_SUMMARY)


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


def gate_config(pipeline_options) -> gates.GateConfig:
  checks = pipeline_options.view_as(opts.QualityGateOptions)
  statistics = statistics_config(pipeline_options)
  return gates.GateConfig(
      max_dead_letter_fraction=checks.max_dead_letter_fraction,
      allow_partial=bool(checks.allow_partial),
      control_arm=statistics.control_arm,
      expected_allocation=statistics.expected_allocation)


class RewardAggregation(beam.PTransform):
  """Prediction and feedback logs -> arm_stats, router_state, dead_letter, data_quality."""

  def __init__(self, predictions: str | None, feedback: str,
               attribution: rewards.AttributionConfig,
               statistics: arm_table.StatisticsConfig, join_shards: int = 32):
    super().__init__()
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
          self._predictions, contract.PREDICTION)
      reads.append(predictions)
    tables = {"feedback": feedback.records}
    if predictions:
      tables["predictions"] = predictions.records
    attributed = (tables
                  | "AttributeRewards" >> AttributeRewards(
                      self._attribution, self._join_shards))
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
    return {"arm_stats": statistics.arm_stats,
            "router_state": statistics[experiments.ROUTER_STATE],
            "dead_letter": dead_letters, "data_quality": counts}


def build(pipeline: beam.Pipeline, pipeline_options: PipelineOptions) -> None:
  """Add the whole job to `pipeline`, as the options say."""
  inputs = pipeline_options.view_as(RewardBatchOptions)
  opts.check_required(inputs, RewardBatchOptions.INPUT_OPTIONS)
  output = sinks.OutputConfig.from_options(pipeline_options)
  sinks.prepare_emulator_tables(output, TABLES, replace_partition=True)
  outputs = (pipeline
             | "RewardAggregation" >> RewardAggregation(
                 inputs.predictions, inputs.feedback,
                 attribution_config(pipeline_options, bool(inputs.predictions)),
                 statistics_config(pipeline_options), inputs.join_shards))
  summary = (outputs
             | "RunSummary" >> run_summary.RunSummary(
                 "reward_batch", gate_config(pipeline_options),
                 run_summary.destinations(output, TABLES),
                 gates.reward_verdicts))
  _ = ({**outputs, schemas.RUN_SUMMARY.name: summary}
       | "WriteOutputs" >> sinks.WriteTables(TABLES, output))


def preflight_checks(pipeline_options) -> None:
  """What can fail in seconds, before the pipeline starts: the outputs, the
  log files given (build() says which inputs are required)."""
  inputs = pipeline_options.view_as(RewardBatchOptions)
  preflight.check_outputs(pipeline_options, TABLES)
  files = {}
  for option, record_type in (("feedback", contract.FEEDBACK),
                              ("predictions", contract.PREDICTION)):
    if getattr(inputs, option):
      files[option] = preflight.check_log_inputs(
          option, getattr(inputs, option), record_type)
  if len(files) == 2:
    preflight.check_disjoint("predictions", files["predictions"], "feedback",
                             files["feedback"])
  statistics_config(pipeline_options)  # The allocation parses.


def run(argv=None):
  """Check the options and inputs, run the job to completion, print its
  summary; exit non-zero if it broke a quality gate."""
  pipeline_options = opts.parse_pipeline_options(argv, OPTION_CLASSES,
                                                 __doc__)
  program = opts.program_name(RewardBatchOptions)
  dry_run = pipeline_options.view_as(TestOptions).dry_run
  with preflight.user_errors(program):
    if not dry_run:  # A dry run reads nothing.
      preflight_checks(pipeline_options)
    output = sinks.fix_run(pipeline_options)
  with beam.Pipeline(options=pipeline_options) as pipeline:
    with preflight.user_errors(program):
      build(pipeline, pipeline_options)
  if not dry_run:
    run_summary.finish(program, output)
  return pipeline


if __name__ == "__main__":
  logging.getLogger().setLevel(logging.INFO)
  run()

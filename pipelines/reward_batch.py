r"""Batch reward aggregation: serving logs in, per-arm rewards and statistics out.

  predictions ─ReadPredictions─┐
                               ├─AttributeRewards─ExperimentStatistics─┬─ arm_stats
  feedback ────ReadFeedback────┘      │                                └─ router_state
                    (with --metrics)  └─ requests ─MetricDecisions─┬─ metric_stats
                                                                   └─ decisions
  (every stage) ─ dead letters ─ dead_letter;  counts ─ data_quality
  data_quality, arm_stats ─RunSummary (quality gates)─ run_summary

Before it starts, a preflight checks the inputs and the emulator; after it,
the run summary is printed and a broken gate exits with status 3.

Run locally:
  python -m pipelines.reward_batch --predictions 'logs/predictions*.jsonl' \
      --feedback 'logs/feedback*.jsonl' --output_dir out/
or from BigQuery (one day of each table; docs/log-sources.md):
  python -m pipelines.reward_batch --project P --partition_date 2026-12-01 \
      --predictions_table P:logs.request_response_logging --log_format vertex \
      --feedback_table P:logs.conversions --output_dataset P:online_eval
"""

from __future__ import annotations

import logging
from typing import NamedTuple

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import TestOptions

from transforms.checks import gates
from transforms.checks import preflight
from transforms.checks import run_summary
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
from transforms.logs import sources as log_sources
from transforms.policy import evaluation as policy_evaluation
from transforms.policy import requests as policy_requests


class RewardBatchOptions(PipelineOptions):
  """Inputs of the batch reward pipeline."""

  INPUT_OPTIONS = (
      opts.Option("predictions",
                  "Prediction logs: file pattern (JSONL, .gz or Parquet; local "
                  "or gs://). Without it (or --predictions_table/_query), "
                  "feedback must carry experiment_id and arm.",
                  "Prediction log files",
                  param_type="GCS_READ_FILE"),
      opts.Option("feedback", "Feedback logs: file pattern (JSONL, .gz or "
                  "Parquet; local or gs://). Required unless "
                  "--feedback_table or --feedback_query is given.",
                  "Feedback log files", param_type="GCS_READ_FILE"),
      opts.Option("join_shards", "Number of request-id shards the join is "
                  "spread over.", "Join shards", type=int, default=32,
                  regexes=(r"^[0-9]+$",)),
  )

  @classmethod
  def _add_argparse_args(cls, parser):
    opts.add_options(parser, cls.INPUT_OPTIONS)


def check_feedback_files(inputs) -> None:
  """Pipelines that read their logs from files only need --feedback (here it
  is optional, as feedback may come from BigQuery instead)."""
  if not inputs.feedback:
    raise ValueError("required: --feedback")


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


OPTION_CLASSES = (RewardBatchOptions, opts.LogSourceOptions,
                  AttributionOptions, StatisticsOptions, MetricOptions,
                  opts.ContextOptions, opts.ContextualPolicyOptions,
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
  plan = metric_plan(pipeline_options)
  return gates.GateConfig(
      max_dead_letter_fraction=checks.max_dead_letter_fraction,
      allow_partial=bool(checks.allow_partial),
      control_arm=statistics.control_arm,
      expected_allocation=statistics.expected_allocation,
      reward_measured=plan is None or not plan.signals or any(
          signal == rewards.DEFAULT_SIGNAL for signal, _ in plan.signals))


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

  def join_signals(self, reward_reduce: str) -> tuple:
    """The signals the join reduces: the metrics', or the reward alone, so
    that with --metrics the reward is always the `reward` signal's."""
    return self.signals or ((rewards.DEFAULT_SIGNAL, reward_reduce),)


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

  def __init__(self, predictions: str | log_sources.LogSource | None,
               feedback: str | log_sources.LogSource,
               attribution: rewards.AttributionConfig,
               statistics: arm_table.StatisticsConfig, join_shards: int = 32,
               sampling_rates: dict | None = None,
               plan: MetricPlan | None = None, contextual=None):
    """predictions, feedback: file patterns, or where the logs are."""
    super().__init__()
    self._plan = plan
    self._contextual = contextual
    self._predictions = _log_source(predictions)
    self._feedback = _log_source(feedback)
    self._attribution = attribution
    self._statistics = statistics
    self._join_shards = join_shards
    self._sampling_rates = sampling_rates

  def expand(self, pbegin):
    plan = self._plan
    if plan and not self._predictions:
      raise ValueError("--metrics needs --predictions")
    feedback = pbegin | "ReadFeedback" >> log_sources.ReadLogSource(
        self._feedback, contract.FEEDBACK, ("metric",) if plan else ())
    reads = [feedback]
    predictions = None
    extras = tuple(sorted(
        set(plan.prediction_extras if plan else ()) |
        set(self._contextual.extras if self._contextual else ())))
    if self._predictions:
      predictions = pbegin | "ReadPredictions" >> log_sources.ReadLogSource(
          self._predictions, contract.PREDICTION, extras)
      reads.append(predictions)
    tables = {"feedback": feedback.records}
    if predictions:
      tables["predictions"] = predictions.records
    signals = (plan.join_signals(self._attribution.reward_reduce) if plan
               else ())
    attributed = (tables
                  | "AttributeRewards" >> AttributeRewards(
                      self._attribution, self._join_shards,
                      extras, signals))
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
    estimated = []
    if predictions and self._sampling_rates:
      estimated.append(predictions.records
                       | "EstimatedRequests" >> log_sources.EstimatedRequests(
                           self._sampling_rates))
    counts = ([r[quality.COUNTS] for r in reads] +
              [attributed[quality.COUNTS]] + estimated
              | "FlattenCounts" >> beam.Flatten()
              | "DataQuality" >> quality.SummarizeCounts())
    outputs = {"arm_stats": statistics.arm_stats,
               "router_state": router_state,
               "dead_letter": dead_letters, "data_quality": counts}
    if plan:
      outputs.update(attributed["requests"]
                     | "MetricDecisions" >> metric_tables.MetricDecisions(
                         plan.definitions, plan.config, plan.dimensions,
                         plan.max_segment_values))
    return outputs


def _log_source(source):
  if isinstance(source, str):
    return log_sources.LogSource(files=source)
  return source


def build(pipeline: beam.Pipeline, pipeline_options: PipelineOptions) -> None:
  """Add the whole job to `pipeline`, as the options say."""
  inputs = pipeline_options.view_as(RewardBatchOptions)
  plan = metric_plan(pipeline_options)
  tables = list(TABLES)
  if plan:
    tables += schemas.METRIC_TABLES.values()
  output = sinks.OutputConfig.from_options(pipeline_options)
  sources = log_sources.log_sources(pipeline_options, output.partition_date,
                                    predictions=inputs.predictions,
                                    feedback=inputs.feedback)
  if sources["feedback"] is None:
    raise ValueError("required: --feedback, --feedback_table or "
                     "--feedback_query")
  sampling_rates = opts.parse_sampling_rate(
      pipeline_options.view_as(opts.LogSourceOptions).sampling_rate)
  sinks.prepare_emulator_tables(output, tables, replace_partition=True)
  outputs = (pipeline
             | "RewardAggregation" >> RewardAggregation(
                 sources["predictions"], sources["feedback"],
                 attribution_config(pipeline_options,
                                    sources["predictions"] is not None),
                 statistics_config(pipeline_options), inputs.join_shards,
                 sampling_rates, plan,
                 contextual_router_state(pipeline_options)))
  summary = (outputs
             | "RunSummary" >> run_summary.RunSummary(
                 "reward_batch", gate_config(pipeline_options),
                 run_summary.destinations(output, tables),
                 gates.reward_verdicts))
  _ = ({**outputs, schemas.RUN_SUMMARY.name: summary}
       | "WriteOutputs" >> sinks.WriteTables(tables, output))


def preflight_checks(pipeline_options) -> None:
  """What can fail in seconds, before the pipeline starts: the outputs, the
  log files given (build() says which inputs are required)."""
  inputs = pipeline_options.view_as(RewardBatchOptions)
  log_sources.log_sources(pipeline_options, None,  # One source per log.
                          predictions=inputs.predictions,
                          feedback=inputs.feedback)
  plan = metric_plan(pipeline_options)  # The metrics file loads.
  preflight.check_outputs(pipeline_options, [
      *TABLES, *(schemas.METRIC_TABLES.values() if plan else ())])
  check_log_files(inputs)
  statistics_config(pipeline_options)  # The allocation parses.
  contextual_router_state(pipeline_options)  # The context options agree.


def check_log_files(inputs) -> None:
  """The log files given are readable logs, each record type its own."""
  files = {}
  for option, record_type in (("feedback", contract.FEEDBACK),
                              ("predictions", contract.PREDICTION)):
    if getattr(inputs, option):
      files[option] = preflight.check_log_inputs(
          option, getattr(inputs, option), record_type)
  if len(files) == 2:
    preflight.check_disjoint("predictions", files["predictions"], "feedback",
                             files["feedback"])


def run_log_file_pipeline(argv, option_classes, description: str, build,
                          tables) -> beam.Pipeline:
  """Run a pipeline that reads prediction and feedback files (the first of
  `option_classes` is its own): its log files and outputs are checked before
  it starts, and a mistake raises preflight.UserError."""
  pipeline_options = opts.parse_pipeline_options(argv, option_classes,
                                                 description)
  if not pipeline_options.view_as(TestOptions).dry_run:
    inputs = pipeline_options.view_as(RewardBatchOptions)
    check_feedback_files(inputs)
    preflight.check_outputs(pipeline_options, tables)
    check_log_files(inputs)
  with beam.Pipeline(options=pipeline_options) as pipeline:
    build(pipeline, pipeline_options)
  return pipeline


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

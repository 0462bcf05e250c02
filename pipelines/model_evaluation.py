r"""Model evaluation from serving logs: model quality, shadow vs live, canary verdicts.

  predictions ─ReadPredictions─┐                       ┌─ModelQuality──────── model_quality
                               ├─JoinRequests─requests─┼─ShadowComparison──── shadow_comparison
  feedback ────ReadFeedback────┘ (shadow rows too)     └─CanaryJudge───────── canary_verdicts
  (every stage) ─ dead letters ─ dead_letter;  counts ─ data_quality

Predictions carry the model's `prediction` (and `latency_ms`, `status`,
`policy` for the canary); feedback carries the ground truth `truth`. With
`--metrics`, the canary is judged on the file's quantile and proportion
metrics instead of the log metrics.

Run locally:
  python -m pipelines.model_evaluation --predictions 'logs/predictions*.jsonl' \
      --feedback 'logs/feedback*.jsonl' --task classification --output_dir out/
"""

from __future__ import annotations

import logging

import apache_beam as beam
import pyarrow.compute as pc
from apache_beam.options.pipeline_options import PipelineOptions

from transforms.checks import preflight
from transforms import options as opts
from transforms.attribution import metric_summary
from transforms.attribution.attribution import JoinRequests
from transforms.decisions import canary
from transforms.decisions import metric_tables
from transforms.decisions import model_quality
from transforms.decisions import shadow
from transforms.io import schemas
from transforms.io import sinks
from transforms.logs import contract
from transforms.logs import quality
from transforms.logs.read_logs import ReadLogs
from pipelines import reward_batch

PREDICTION_EXTRAS = ("prediction", "policy", "latency_ms", "status")
FEEDBACK_EXTRAS = ("truth",)


class ModelEvaluationOptions(PipelineOptions):
  """What the model evaluation computes and judges by. Its inputs are the
  reward pipeline's (`--predictions`, required here, `--feedback`,
  `--join_shards`); `--task` is batch inference's."""

  EVALUATION_OPTIONS = (
      opts.Option("quality_confidence", "Confidence of the intervals in "
                  "model_quality and shadow_comparison, and of a shadow's "
                  "worse / better verdict.", "Quality confidence",
                  type=float, default=0.95, regexes=(r"^0?\.[0-9]+$",)),
      opts.Option("canary_arm", "Arm judged as the canary in every "
                  "experiment that has it (default: the least-served arm of "
                  "an experiment whose predictions say policy canary).",
                  "Canary arm"),
      opts.Option("canary_baseline", "Arm the canary is compared with "
                  "(default: the most-served other arm).", "Canary baseline"),
      opts.Option("canary_confidence", "Confidence at which a canary metric "
                  "is classified High or Low.", "Canary confidence",
                  type=float, default=0.98, regexes=(r"^0?\.[0-9]+$",)),
      opts.Option("canary_min_effect", "Smallest relative change of a "
                  "canary metric that can fail it (0.05: five percent).",
                  "Canary minimum effect", type=float, default=0.05,
                  regexes=(r"^[0-9.]+$",)),
      opts.Option("canary_pass", "Score (0-100) from which the canary "
                  "passes.", "Canary pass score", type=float, default=95.0,
                  regexes=(r"^[0-9.]+$",)),
      opts.Option("canary_marginal", "Score (0-100) from which a canary "
                  "that does not pass is Marginal rather than Fail.",
                  "Canary marginal score", type=float, default=75.0,
                  regexes=(r"^[0-9.]+$",)),
  )

  @classmethod
  def _add_argparse_args(cls, parser):
    opts.add_options(parser, cls.EVALUATION_OPTIONS)


OPTION_CLASSES = (ModelEvaluationOptions, reward_batch.RewardBatchOptions,
                  opts.TaskOptions, reward_batch.AttributionOptions,
                  reward_batch.MetricOptions,
                  opts.OutputFileOptions, opts.OutputPipelineOptions)


class VectorSum(beam.CombineFn):
  """Sum accumulators that are numpy vectors (they merge by addition)."""

  def create_accumulator(self):
    return None

  def add_input(self, total, vector):
    return vector.copy() if total is None else total + vector

  def merge_accumulators(self, totals):
    merged = None
    for total in totals:
      if total is not None:
        merged = self.add_input(merged, total)
    return merged

  def extract_output(self, total):
    return total


class SummedRows(beam.PTransform):
  """Joined requests -> table rows: mergeable partial vectors per key, summed,
  each sum made into a row (model_quality, shadow_comparison)."""

  def __init__(self, partials, to_row, task: str, alpha: float):
    super().__init__()
    self._partials = partials
    self._to_row = to_row
    self._task = task
    self._alpha = alpha

  def expand(self, requests):
    return (requests
            | "Partials" >> beam.FlatMap(self._partials, self._task)
            | "Combine" >> beam.CombinePerKey(VectorSum())
            | "Rows" >> beam.Map(lambda item, to_row, task, alpha:
                                 to_row(*item, task, alpha),
                                 self._to_row, self._task, self._alpha))


def _verdict(experiment_arms, config, canary_arm, baseline_arm):
  experiment, arms = experiment_arms
  row = canary.experiment_verdict(experiment, dict(arms), config, canary_arm,
                                  baseline_arm)
  return [row] if row else []


def _verdict_on_definitions(experiment_grouped, definitions, config,
                            canary_arm, baseline_arm):
  experiment, grouped = experiment_grouped
  summaries_by_arm = {}
  for arm, metric, summary in grouped["metrics"]:
    summaries_by_arm.setdefault(arm, {})[metric] = summary
  row = canary.experiment_verdict_on_definitions(
      experiment, dict(grouped["arms"]), summaries_by_arm, definitions,
      config, canary_arm, baseline_arm)
  return [row] if row else []


def _live_metric_partials(requests, definitions):
  """Joined requests (shadow rows too) -> the live arms' overall
  ((experiment_id, arm, metric), MetricSummary) partials."""
  live = requests.filter(pc.invert(requests["shadow"]))
  return [((experiment_id, arm, metric), summary)
          for (experiment_id, dimension, _, arm, metric), summary
          in metric_summary.summarize(live, definitions)
          if dimension == metric_summary.ALL and
          metric != metric_summary.REQUESTS]


class CanaryJudge(beam.PTransform):
  """Joined requests -> a canary_verdicts row per experiment with a canary."""

  def __init__(self, config: canary.JudgeConfig, canary_arm: str | None,
               baseline_arm: str | None, missing_reward: str,
               definitions=()):
    super().__init__()
    self._definitions = tuple(definitions)
    self._config = config
    self._canary_arm = canary_arm
    self._baseline_arm = baseline_arm
    self._missing_reward = missing_reward

  def expand(self, requests):
    arms = (requests
            | "ArmPartials" >> beam.FlatMap(canary.arm_partials,
                                            self._missing_reward)
            | "CombinePerArm" >> beam.CombinePerKey(VectorSum())
            | "ByExperiment" >> beam.MapTuple(
                lambda key, acc: (key[0], (key[1], acc))))
    if not self._definitions:
      return (arms
              | "GroupArms" >> beam.GroupByKey()
              | "Judge" >> beam.FlatMap(_verdict, self._config,
                                        self._canary_arm,
                                        self._baseline_arm))
    summaries = (requests
                 | "MetricPartials" >> beam.FlatMap(_live_metric_partials,
                                                    self._definitions)
                 | "CombineMetrics" >> beam.CombinePerKey(
                     metric_tables.MetricSummaryCombineFn())
                 | "MetricsByExperiment" >> beam.MapTuple(
                     lambda key, summary: (key[0], (key[1], key[2], summary))))
    return ({"arms": arms, "metrics": summaries}
            | "GroupArmsAndMetrics" >> beam.CoGroupByKey()
            | "Judge" >> beam.FlatMap(_verdict_on_definitions,
                                      self._definitions, self._config,
                                      self._canary_arm, self._baseline_arm))


def judge_config(view) -> canary.JudgeConfig:
  return canary.JudgeConfig(confidence=view.canary_confidence,
                            min_effect=view.canary_min_effect,
                            pass_score=view.canary_pass,
                            marginal_score=view.canary_marginal)


class ModelEvaluation(beam.PTransform):
  """Prediction and feedback logs -> model_quality, shadow_comparison,
  canary_verdicts, dead_letter, data_quality."""

  def __init__(self, predictions: str, feedback: str, attribution, task: str,
               alpha: float, judge: canary.JudgeConfig,
               canary_arm: str | None = None,
               baseline_arm: str | None = None, join_shards: int = 32,
               plan: reward_batch.MetricPlan | None = None):
    super().__init__()
    self._plan = plan
    self._predictions = predictions
    self._feedback = feedback
    self._attribution = attribution
    self._task = task
    self._alpha = alpha
    self._judge = judge
    self._canary_arm = canary_arm
    self._baseline_arm = baseline_arm
    self._join_shards = join_shards

  def expand(self, pbegin):
    plan = self._plan
    prediction_extras = PREDICTION_EXTRAS + tuple(
        e for e in (plan.prediction_extras if plan else ())
        if e not in PREDICTION_EXTRAS)
    feedback_extras = FEEDBACK_EXTRAS + (("metric",) if plan else ())
    predictions = pbegin | "ReadPredictions" >> ReadLogs(
        self._predictions, contract.PREDICTION, prediction_extras)
    feedback = pbegin | "ReadFeedback" >> ReadLogs(
        self._feedback, contract.FEEDBACK, feedback_extras)
    joined = ({"predictions": predictions.records,
               "feedback": feedback.records}
              | "JoinRequests" >> JoinRequests(
                  self._attribution, self._join_shards, prediction_extras,
                  signals=plan.signals if plan else (),
                  feedback_extras=feedback_extras, include_shadow=True))
    requests = joined["requests"]
    reads = (predictions, feedback)
    dead_letters = ([r[quality.DEAD_LETTER] for r in reads] +
                    [joined[quality.DEAD_LETTER]]
                    | "FlattenDeadLetters" >> beam.Flatten())
    counts = ([r[quality.COUNTS] for r in reads] + [joined[quality.COUNTS]]
              | "FlattenCounts" >> beam.Flatten()
              | "DataQuality" >> quality.SummarizeCounts())
    return {
        schemas.MODEL_QUALITY.name: requests | "ModelQuality" >> SummedRows(
            model_quality.partials, model_quality.quality_row, self._task,
            self._alpha),
        schemas.SHADOW_COMPARISON.name: requests | "ShadowComparison" >>
        SummedRows(shadow.partials, shadow.comparison_row, self._task,
                   self._alpha),
        schemas.CANARY_VERDICTS.name: requests | "CanaryJudge" >> CanaryJudge(
            self._judge, self._canary_arm, self._baseline_arm,
            self._attribution.missing_reward,
            plan.definitions if plan else ()),
        schemas.DEAD_LETTER.name: dead_letters,
        schemas.DATA_QUALITY.name: counts}


def build(pipeline: beam.Pipeline, pipeline_options: PipelineOptions) -> None:
  """Add the whole job to `pipeline`, as the options say."""
  inputs = pipeline_options.view_as(reward_batch.RewardBatchOptions)
  reward_batch.check_feedback_files(inputs)
  if not inputs.predictions:
    raise ValueError("required: --predictions")
  view = pipeline_options.view_as(ModelEvaluationOptions)
  if not 0 < view.quality_confidence < 1:
    raise ValueError("--quality_confidence must be in (0, 1)")
  judge = judge_config(view)
  plan = reward_batch.metric_plan(pipeline_options)
  if plan and any(d.cap_percentile is not None for d in plan.definitions):
    raise ValueError("cap_percentile is for reward_batch: the canary judge "
                     "takes cap")
  output = sinks.OutputConfig.from_options(pipeline_options)
  tables = schemas.MODEL_EVALUATION_TABLES.values()
  sinks.prepare_emulator_tables(output, tables, replace_partition=True)
  _ = (pipeline
       | "ModelEvaluation" >> ModelEvaluation(
           inputs.predictions, inputs.feedback,
           reward_batch.attribution_config(pipeline_options, True),
           pipeline_options.view_as(opts.TaskOptions).task,
           1 - view.quality_confidence, judge, view.canary_arm,
           view.canary_baseline, inputs.join_shards, plan)
       | "WriteOutputs" >> sinks.WriteTables(tables, output))


def run(argv=None):
  """Check the options, inputs and outputs, run the job to completion."""
  return reward_batch.run_log_file_pipeline(
      argv, OPTION_CLASSES, __doc__, build, schemas.MODEL_EVALUATION_TABLES.values())


if __name__ == "__main__":
  logging.getLogger().setLevel(logging.INFO)
  # A user error (an option, an input, an output) is one line.
  with preflight.user_errors("pipelines.model_evaluation"):
    run()

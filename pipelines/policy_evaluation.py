r"""Off-policy evaluation: what target routing policies would earn, from logged propensities.

  predictions (propensity, context) ─┐
                                     ├─JoinRequests─UsableRequests─┬─RewardModels (ridge per arm)─┐
  feedback ──────────────────────────┘                             └─EvaluatePolicies ◀── models ─┴─ policy_value
  (every stage) ─ dead letters ─ dead_letter;  counts ─ data_quality

Run locally:
  python -m pipelines.policy_evaluation --predictions 'logs/p-*.jsonl' \
      --feedback 'logs/f-*.jsonl' --context_dim 2 \
      --target_policy 'uniform=split:a=1,b=1,c=1' \
      --target_policy 'ctx=linear_thompson:out/router_state-00000-of-00001.json' \
      --output_dir out/
"""

from __future__ import annotations

import logging

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from pipelines import reward_batch
from transforms.checks import preflight
from transforms import options as opts
from transforms.attribution.attribution import JoinRequests
from transforms.io import schemas
from transforms.io import sinks
from transforms.logs import contract
from transforms.logs import quality
from transforms.logs.read_logs import ReadLogs
from transforms.policy import evaluation
from transforms.policy import requests as policy_requests
from transforms.policy import targets as policy_targets
from transforms.scoring import inference


class PolicyEvaluationOptions(PipelineOptions):
  """The target policies and how they are evaluated."""

  EVALUATION_OPTIONS = (
      opts.Option("target_policy",
                  "A policy to evaluate, NAME=KIND:ARGUMENT: split:a=1,b=2 "
                  "(a fixed split), router_state:FILE (its recommended "
                  "split), greedy:FILE, linucb:FILE or linear_thompson:FILE "
                  "(its contextual state), keras:PATH#arm,arm,... (a Keras "
                  "model: context in, a probability per arm out). Repeat "
                  "for several.",
                  "Target policies", action="append", required=True,
                  regexes=(r"^[^=]+=[a-z_]+:.+$",)),
      opts.Option("reward_model",
                  "The direct method's and DR's reward model: a Keras "
                  "model PATH#arm,arm,... (context in, a predicted reward "
                  "per arm out). Default: the per-arm ridge models of the "
                  "same logs.", "Reward model"),
      opts.Option("bootstrap",
                  "Poisson bootstrap replicates (per-request weights seeded "
                  "by the request id) for boot_ci_low/high; 0: none.",
                  "Bootstrap replicates", type=int, default=200,
                  regexes=(r"^[0-9]+$",)),
      opts.Option("experiment_id",
                  "The experiment the target policies are for: a file-based "
                  "target without a state for it stops the run.",
                  "Experiment"),
  )

  @classmethod
  def _add_argparse_args(cls, parser):
    opts.add_options(parser, cls.EVALUATION_OPTIONS)


OPTION_CLASSES = (PolicyEvaluationOptions, reward_batch.RewardBatchOptions,
                  reward_batch.AttributionOptions, opts.ContextOptions,
                  opts.OutputFileOptions, opts.OutputPipelineOptions)


def read_lines(file_pattern: str) -> list[str]:
  """Every line of the files of a pattern (a target policy's router state)."""
  matches = FileSystems.match([file_pattern])[0].metadata_list
  if not matches:
    raise ValueError(f"no file matches {file_pattern}")
  lines = []
  for metadata in sorted(matches, key=lambda m: m.path):
    with FileSystems.open(metadata.path) as f:
      lines.extend(f.read().decode("utf-8").splitlines())
  return lines


def check_model_width(name: str, path: str,
                      spec: policy_requests.ContextSpec | None) -> None:
  """A Keras model must take the context this run reads (the intercept aside)."""
  if spec is None:
    raise ValueError(f"{name}: a Keras model needs a context: give "
                     "--context_dim or --context_features")
  width = inference.saved_input_width(path)
  if width != spec.dim - 1:
    raise ValueError(f"{name}: {path} takes {width} inputs, the context has "
                     f"{spec.dim - 1}")


def load_targets(texts, spec: policy_requests.ContextSpec | None,
                 experiment_id: str | None) -> list[policy_targets.Target]:
  dim = spec.dim if spec else 1
  targets = []
  for target_spec in policy_targets.parse_specs(texts):
    if target_spec.kind == policy_targets.SPLIT:
      targets.append(policy_targets.fixed_split(target_spec.name,
                                                target_spec.argument))
    elif target_spec.kind == policy_targets.KERAS:
      target = policy_targets.keras_target(target_spec)
      check_model_width(f"target {target.name}", target.model_path, spec)
      targets.append(target)
    else:
      targets.append(policy_targets.from_states(
          target_spec, read_lines(target_spec.argument), dim))
  policy_targets.check_experiment(targets, experiment_id)
  return targets


class PolicyEvaluation(beam.PTransform):
  """Prediction and feedback logs -> policy_value, dead_letter, data_quality."""

  def __init__(self, predictions: str, feedback: str, attribution,
               spec: policy_requests.ContextSpec | None, targets,
               ridge_lambda: float = 1.0, decay: float = 1.0,
               bootstrap: int = 0, join_shards: int = 32,
               reward_model: tuple | None = None):
    super().__init__()
    if attribution.missing_reward != "zero":
      raise ValueError("off-policy evaluation counts every logged request: "
                       "--missing_reward must be zero")
    self._predictions = predictions
    self._feedback = feedback
    self._attribution = attribution
    self._spec = spec
    self._targets = targets
    self._ridge_lambda = ridge_lambda
    self._decay = decay
    self._bootstrap = bootstrap
    self._join_shards = join_shards
    self._reward_model = reward_model

  def expand(self, pbegin):
    extras = policy_requests.extras(self._spec, with_propensity=True)
    predictions = pbegin | "ReadPredictions" >> ReadLogs(
        self._predictions, contract.PREDICTION, extras)
    feedback = pbegin | "ReadFeedback" >> ReadLogs(self._feedback,
                                                    contract.FEEDBACK)
    joined = ({"predictions": predictions.records,
               "feedback": feedback.records}
              | "JoinRequests" >> JoinRequests(self._attribution,
                                               self._join_shards, extras))
    usable = joined["requests"] | "UsableRequests" >> (
        evaluation.UsableRequests(self._spec, with_propensity=True))
    dim = self._spec.dim if self._spec else 1
    models = usable["requests"] | "RewardModels" >> evaluation.LinearModels(
        dim, self._ridge_lambda, self._decay)
    values = usable["requests"] | "EvaluatePolicies" >> (
        evaluation.EvaluatePolicies(self._targets, models, self._bootstrap,
                                    self._reward_model))
    stages = (predictions, feedback, joined, usable)
    dead_letters = ([s[quality.DEAD_LETTER] for s in stages]
                    | "FlattenDeadLetters" >> beam.Flatten())
    counts = ([s[quality.COUNTS] for s in stages] +
              [values[quality.COUNTS]]
              | "FlattenCounts" >> beam.Flatten()
              | "DataQuality" >> quality.SummarizeCounts())
    return {"policy_value": values["rows"], "dead_letter": dead_letters,
            "data_quality": counts}


def policy_evaluation(pipeline_options) -> PolicyEvaluation:
  inputs = pipeline_options.view_as(reward_batch.RewardBatchOptions)
  context = pipeline_options.view_as(opts.ContextOptions)
  evaluation_options = pipeline_options.view_as(PolicyEvaluationOptions)
  reward_batch.check_feedback_files(inputs)
  opts.check_required(evaluation_options,
                      PolicyEvaluationOptions.EVALUATION_OPTIONS)
  if not inputs.predictions:
    raise ValueError("required: --predictions (with their propensities)")
  spec = policy_requests.ContextSpec.parse(context.context_features,
                                           context.context_dim)
  targets = load_targets(evaluation_options.target_policy, spec,
                         evaluation_options.experiment_id)
  reward_model = None
  if evaluation_options.reward_model:
    reward_model = policy_targets.model_file("--reward_model",
                                             evaluation_options.reward_model)
    check_model_width("--reward_model", reward_model[0], spec)
  return PolicyEvaluation(
      inputs.predictions, inputs.feedback,
      reward_batch.attribution_config(pipeline_options, True), spec, targets,
      context.ridge_lambda, context.decay, evaluation_options.bootstrap,
      inputs.join_shards, reward_model)


def build(pipeline: beam.Pipeline, pipeline_options: PipelineOptions) -> None:
  """Add the whole job to `pipeline`, as the options say."""
  evaluate = policy_evaluation(pipeline_options)
  output = sinks.OutputConfig.from_options(pipeline_options)
  sinks.prepare_emulator_tables(output, schemas.POLICY_TABLES.values(),
                                replace_partition=True)
  _ = (pipeline
       | "PolicyEvaluation" >> evaluate
       | "WriteOutputs" >> sinks.WriteTables(schemas.POLICY_TABLES.values(),
                                             output))


def run(argv=None):
  """Check the options, inputs and outputs, run the job to completion."""
  return reward_batch.run_log_file_pipeline(
      argv, OPTION_CLASSES, __doc__, build, schemas.POLICY_TABLES.values())


if __name__ == "__main__":
  logging.getLogger().setLevel(logging.INFO)
  # A user error (an option, an input, an output) is one line.
  with preflight.user_errors("pipelines.policy_evaluation"):
    run()

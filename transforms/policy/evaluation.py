"""Beam composites of contextual bandits and off-policy evaluation.

`UsableRequests` turns joined requests (`JoinRequests`) into the arrays a
policy works on, dead-lettering what it cannot use; `LinearModels` combines
each arm's linear bandit statistics with `CombinePerKey` and solves the
ridge models; `ContextualState` makes the router_state's `contextual` field
of them; `EvaluatePolicies` combines each target policy's estimator sums per
experiment into policy_value rows. All work batch-wise on Arrow tables.
"""

from __future__ import annotations

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.ml.inference import base as ml_base
import numpy as np
import pyarrow as pa

from transforms.io import arrow_coder  # noqa: F401 (registers the coder)
from transforms.logs import contract
from transforms.logs import quality
from transforms.attribution import rewards
from transforms.policy import estimators
from transforms.policy import linear
from transforms.policy import requests as policy_requests
from transforms.scoring import features
from transforms.scoring import inference


# data_quality record type of the contexts a reward run reads besides its
# rewards: read = counted + dead-lettered, on their own.
CONTEXT = "context"


class _Usable(beam.DoFn):
  """A joined request table -> a usable request table; dead letters, counts."""

  def __init__(self, spec, with_propensity: bool):
    self._spec = spec
    self._with_propensity = with_propensity

  def process(self, table):
    usable = policy_requests.policy_requests(table, self._spec,
                                             self._with_propensity)
    if usable.size:
      yield policy_requests.to_table(usable)
    if self._with_propensity:
      # Off-policy evaluation leaves a rejected request out: the join
      # counted it, it is dead-lettered instead.
      record_type = contract.PREDICTION
      counts = {rewards.COUNTED: -len(usable.rejected)}
    else:
      # A reward run still counts the request's reward: its context balances
      # as a record type of its own.
      record_type = CONTEXT
      counts = {quality.READ: table.num_rows, rewards.COUNTED: usable.size}
    for row, rejected in usable.rejected:
      yield pvalue.TaggedOutput(quality.DEAD_LETTER, quality.dead_letter(
          record_type, None, policy_requests.raw_record(row), rejected))
      metric = quality.dead_letter_metric(rejected.reason)
      counts[metric] = counts.get(metric, 0) + 1
    for metric, count in counts.items():
      yield pvalue.TaggedOutput(quality.COUNTS, ((record_type, metric), count))


class UsableRequests(beam.PTransform):
  """Joined request tables -> usable request tables (`policy_requests.to_table`).

  Tagged outputs: `quality.DEAD_LETTER` (a request without a usable
  propensity or context), `quality.COUNTS`: with propensities (off-policy
  evaluation) a rejected request moves from counted to dead-lettered; else
  (a reward run's contexts) record type `CONTEXT` balances on its own.
  """

  def __init__(self, spec: policy_requests.ContextSpec | None,
               with_propensity: bool):
    super().__init__()
    self._spec = spec
    self._with_propensity = with_propensity

  def expand(self, joined):
    usable = joined | "Check" >> beam.ParDo(
        _Usable(self._spec, self._with_propensity)).with_outputs(
            quality.DEAD_LETTER, quality.COUNTS, main="requests")
    return {"requests": usable.requests,
            quality.DEAD_LETTER: usable[quality.DEAD_LETTER],
            quality.COUNTS: usable[quality.COUNTS]}


def _arm_statistics(table, decay: float):
  """A usable request table -> ((experiment_id, arm), LinearStats) partials."""
  requests = policy_requests.from_table(table)
  for key, rows in policy_requests.groups(requests.experiment_id,
                                          requests.arm):
    yield key, linear.LinearStats.of(requests.x[rows], requests.reward[rows],
                                     requests.ts[rows], decay)


class LinearStatsCombineFn(beam.CombineFn):
  """Merge one arm's LinearStats partials (decay-aware)."""

  def __init__(self, decay: float, dim: int):
    self._decay = decay
    self._dim = dim

  def create_accumulator(self):
    return linear.LinearStats.empty(self._dim)

  def add_input(self, accumulator, partial):
    return accumulator.merge(partial, self._decay)

  def merge_accumulators(self, accumulators):
    return linear.merge_all(list(accumulators), self._decay, self._dim)

  def extract_output(self, accumulator):
    return accumulator


class LinearModels(beam.PTransform):
  """Usable request tables -> (experiment_id, [ArmModel] in arm order)."""

  def __init__(self, dim: int, ridge_lambda: float, decay: float = 1.0):
    super().__init__()
    self._dim = dim
    self._ridge_lambda = ridge_lambda
    self._decay = linear.check_decay(decay)

  def expand(self, usable):
    ridge_lambda, decay = self._ridge_lambda, self._decay
    return (usable
            | "PerArm" >> beam.FlatMap(_arm_statistics, decay)
            | "CombinePerArm" >> beam.CombinePerKey(
                LinearStatsCombineFn(decay, self._dim))
            | "ByExperiment" >> beam.MapTuple(lambda key, stats: (
                key[0], (key[1], stats)))
            | "GroupArms" >> beam.GroupByKey()
            | "Ridge" >> beam.MapTuple(lambda experiment, arms: (
                experiment, linear.experiment_models(arms, ridge_lambda,
                                                     decay))))


class ContextualState(beam.PTransform):
  """Usable request tables -> (experiment_id, router_state `contextual` field)."""

  def __init__(self, spec: policy_requests.ContextSpec, policy: str,
               alpha: float, ridge_lambda: float, decay: float = 1.0,
               epsilon: float = 0.0):
    super().__init__()
    if policy not in linear.POLICIES:
      raise ValueError(f"contextual policy must be one of {linear.POLICIES}")
    self._spec = spec
    self._fields = dict(policy=policy, alpha=alpha, ridge_lambda=ridge_lambda,
                        decay=decay, epsilon=epsilon,
                        context_source=spec.source,
                        context_features=spec.feature_names)

  def expand(self, usable):
    fields = self._fields
    return (usable
            | "LinearModels" >> LinearModels(self._spec.dim,
                                             fields["ridge_lambda"],
                                             fields["decay"])
            | "StateFields" >> beam.MapTuple(lambda experiment, models: (
                experiment, linear.state_fields(models, **fields))))


class AddContextualState(beam.PTransform):
  """router_state rows + (experiment_id, contextual) -> rows with `contextual`."""

  def __init__(self, contextual):
    super().__init__()
    self._contextual = contextual

  def expand(self, router_states):
    return (router_states
            | "WithContextual" >> beam.Map(
                lambda state, fields: dict(
                    state, contextual=fields.get(state["experiment_id"])),
                beam.pvalue.AsDict(self._contextual)))


class ContextualRouterState(beam.PTransform):
  """{"requests": joined requests, "router_state": rows} -> rows with `contextual`.

  Also dead letters and counts of the contexts (record type `CONTEXT`).
  """

  def __init__(self, spec: policy_requests.ContextSpec, policy: str,
               alpha: float = 1.0, ridge_lambda: float = 1.0,
               decay: float = 1.0, epsilon: float = 0.0):
    super().__init__()
    self._spec = spec
    self._state = ContextualState(spec, policy, alpha, ridge_lambda, decay,
                                  epsilon)

  @property
  def extras(self) -> tuple:
    """The prediction extras it reads."""
    return policy_requests.extras(self._spec, with_propensity=False)

  def expand(self, inputs):
    usable = inputs["requests"] | "UsableContexts" >> UsableRequests(
        self._spec, with_propensity=False)
    contextual = usable["requests"] | "ContextualState" >> self._state
    states = inputs["router_state"] | "AddContextualState" >> (
        AddContextualState(contextual))
    return {"router_state": states,
            quality.DEAD_LETTER: usable[quality.DEAD_LETTER],
            quality.COUNTS: usable[quality.COUNTS]}


# data_quality record type: requests of an experiment a target policy has no
# state for (metric "TARGET:EXPERIMENT").
NOT_EVALUATED = "policy_not_evaluated"
# The name the reward model's outputs go by among a table's model scores.
REWARD_MODEL = "reward_model"


def _context_batch(table):
  """A usable request table -> (table, FeatureBatch of its contexts)."""
  x = policy_requests.from_table(table).x
  return table, features.FeatureBatch(table["request_id"].combine_chunks(),
                                      x[:, 1:].astype(np.float32))


class ScoreContexts(beam.PTransform):
  """Usable request tables -> (table, {model name: outputs (rows, k)}).

  The Keras models score each table's contexts (without the intercept)
  through RunInference with batch inference's shared model handler: loaded
  once per worker process and shared by its threads.
  """

  def __init__(self, model_paths: dict):
    super().__init__()
    self._model_paths = dict(model_paths)

  def expand(self, usable):
    if not self._model_paths:
      return usable | "NoModels" >> beam.Map(lambda table: (table, {}))
    handler = ml_base.KeyedModelHandler(
        inference.KerasModelsHandler(self._model_paths))
    return (usable
            | "Contexts" >> beam.Map(_context_batch)
            | "RunInference" >> ml_base.RunInference(handler)
            | "Outputs" >> beam.MapTuple(lambda table, scored: (
                table, scored.outputs)))


def _reward_predictions(x, arms, reward_models, scores, reward_model_arms):
  """(rows, arms): the reward model's prediction for each target arm."""
  predicted = np.zeros((len(x), len(arms)))
  if reward_model_arms:
    column = {arm: i for i, arm in enumerate(reward_model_arms)}
    output = scores[REWARD_MODEL]
    for i, arm in enumerate(arms):
      if arm in column:
        predicted[:, i] = output[:, column[arm]]
    return predicted
  for i, arm in enumerate(arms):
    if arm in reward_models:
      predicted[:, i] = x @ reward_models[arm].theta
  return predicted


class _PolicyValues(beam.DoFn):
  """(usable request table, model scores) -> ((experiment_id, target), ValueAccumulator) partials."""

  def __init__(self, targets, replicates: int, reward_model_arms: tuple):
    self._targets = targets
    self._replicates = replicates
    self._reward_model_arms = reward_model_arms

  def process(self, element, models):
    table, all_scores = element
    requests = policy_requests.from_table(table)
    seeds = (estimators.request_seeds(requests.request_id)
             if self._replicates else None)
    for (experiment,), rows in policy_requests.groups(requests.experiment_id):
      x = requests.x[rows]
      arm_codes, arm_names = policy_requests.codes(
          requests.arm.take(pa.array(rows)))
      reward_models = {m.arm: m for m in models.get(experiment, [])}
      for target in self._targets:
        if not target.covers(experiment):
          # Visible in data_quality: the target's file has no state for it.
          yield pvalue.TaggedOutput(quality.COUNTS, (
              (NOT_EVALUATED, f"{target.name}:{experiment}"), len(rows)))
          continue
        arms = target.arms(experiment)
        index = {arm: i for i, arm in enumerate(arms)}
        logged = np.array([index.get(a, -1) for a in arm_names],
                          np.int64)[arm_codes]
        scores = {name: output[rows] for name, output in all_scores.items()}
        probabilities = target.probabilities(experiment, x, scores)
        predicted = _reward_predictions(x, arms, reward_models, scores,
                                        self._reward_model_arms)
        terms = estimators.terms(requests.reward[rows], logged,
                                 requests.propensity[rows], probabilities,
                                 predicted)
        yield (experiment, target.name), estimators.ValueAccumulator(
            len(arms), self._replicates).add(
                logged, terms, probabilities,
                None if seeds is None else seeds[rows])


class ValueCombineFn(beam.CombineFn):

  def create_accumulator(self):
    return None

  def add_input(self, accumulator, partial):
    return partial if accumulator is None else accumulator.merge(partial)

  def merge_accumulators(self, accumulators):
    total = None
    for accumulator in accumulators:
      if accumulator is not None:
        total = self.add_input(total, accumulator)
    return total

  def extract_output(self, accumulator):
    return accumulator


def policy_value_rows(key, accumulator) -> list[dict]:
  experiment, policy = key
  return [dict(row, experiment_id=experiment, policy=policy)
          for row in accumulator.estimates()]


class EvaluatePolicies(beam.PTransform):
  """Usable request tables (with propensity) -> {"rows": policy_value rows, COUNTS}.

  `models`: (experiment_id, [ArmModel]) reward models of the direct method
  and DR (an arm without one predicts 0), unless `reward_model` (PATH,
  arms) names a Keras model predicting each arm's reward from the context.
  Keras targets and the Keras reward model score the contexts first
  (`ScoreContexts`). A target whose file has no state for an experiment is
  counted in data_quality (`NOT_EVALUATED`).
  """

  def __init__(self, targets, models, replicates: int = 0,
               reward_model: tuple | None = None):
    super().__init__()
    self._targets = tuple(targets)
    self._models = models
    self._replicates = replicates
    self._reward_model = reward_model

  def expand(self, usable):
    model_paths = {t.name: t.model_path for t in self._targets
                   if t.model_arms}
    reward_model_arms = ()
    if self._reward_model:
      model_paths[REWARD_MODEL], reward_model_arms = self._reward_model
    partials = (usable
                | "ScoreContexts" >> ScoreContexts(model_paths)
                | "PerPolicy" >> beam.ParDo(
                    _PolicyValues(self._targets, self._replicates,
                                  reward_model_arms),
                    beam.pvalue.AsDict(self._models)).with_outputs(
                        quality.COUNTS, main="partials"))
    rows = (partials.partials
            | "CombinePerPolicy" >> beam.CombinePerKey(ValueCombineFn())
            | "Rows" >> beam.FlatMapTuple(policy_value_rows))
    return {"rows": rows, quality.COUNTS: partials[quality.COUNTS]}

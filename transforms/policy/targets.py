"""Target policies to evaluate: what each would serve for a logged context.

Pure (numpy, no Beam). A target is named on the command line as
`NAME=KIND:ARGUMENT`:

  split:a=1,b=1           a fixed split (weights normalised), any experiment
  router_state:PATH       the recommended split (traffic_share) of a
                          router_state file, for the experiments in it
  greedy:PATH, linucb:PATH, linear_thompson:PATH
                          the contextual state of a router_state file,
                          acting greedily, by LinUCB or by linear Thompson
                          sampling (its alpha and epsilon)
  keras:PATH#a,b,c        a Keras model: context (without the intercept) in,
                          one probability per arm (in the order given) out

The pipeline reads the files; this module turns their router states into
`Target`s. A file is checked when loaded: every line a router state, the
contextual ones of the context length the pipeline reads.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import numpy as np

from transforms.decisions import router_state
from transforms.policy import linear

SPLIT = "split"
ROUTER_STATE = "router_state"
KERAS = "keras"
KINDS = (SPLIT, ROUTER_STATE, KERAS) + linear.POLICIES


@dataclasses.dataclass(frozen=True)
class TargetSpec:
  name: str
  kind: str
  argument: str



def parse_spec(text: str) -> TargetSpec:
  """`NAME=KIND:ARGUMENT` -> TargetSpec (ValueError naming what is wrong)."""
  name, _, rest = text.partition("=")
  kind, _, argument = rest.partition(":")
  if not name or not rest:
    raise ValueError(f"--target_policy {text!r}: expected NAME=KIND:ARGUMENT")
  if kind not in KINDS:
    raise ValueError(f"--target_policy {text!r}: kind must be one of "
                     f"{', '.join(KINDS)}")
  if not argument:
    raise ValueError(f"--target_policy {text!r}: {kind} needs an argument")
  return TargetSpec(name.strip(), kind, argument)


def parse_specs(texts: Sequence[str]) -> list[TargetSpec]:
  specs = [parse_spec(t) for t in texts or ()]
  names = [s.name for s in specs]
  if len(set(names)) != len(names):
    raise ValueError(f"--target_policy names repeat: {', '.join(names)}")
  return specs


@dataclasses.dataclass(frozen=True)
class Target:
  """One target policy: its arms per experiment and its action probabilities."""
  name: str
  split: tuple = ()  # ((arm, share), ...) for every experiment
  # experiment -> ((arm, share), ...): a router_state file's recommended split
  splits: Mapping = dataclasses.field(default_factory=dict)
  # experiment -> [ArmModel]: a contextual state
  models: Mapping = dataclasses.field(default_factory=dict)
  policy: str = ""
  alpha: float = 1.0
  epsilon: float = 0.0
  # A Keras model's file and the arm of each of its outputs.
  model_path: str = ""
  model_arms: tuple = ()

  def covers(self, experiment_id: str) -> bool:
    return bool(self.split or self.model_arms) or (
        experiment_id in self.splits) or experiment_id in self.models

  def arms(self, experiment_id: str) -> list[str]:
    if self.model_arms:
      return list(self.model_arms)
    if self.models:
      return [m.arm for m in self.models[experiment_id]]
    split = self.split or self.splits[experiment_id]
    return [arm for arm, _ in split]

  def probabilities(self, experiment_id: str, x: np.ndarray,
                    scores: Mapping | None = None) -> np.ndarray:
    """(n, arms) for contexts x (n, dim), arms in `arms(experiment_id)` order.

    `scores`: model name -> its outputs for these rows (Keras targets).
    """
    if self.model_arms:
      return model_probabilities(self.name, scores[self.name])
    if self.models:
      return linear.action_probabilities(self.models[experiment_id], x,
                                         self.policy, self.alpha,
                                         self.epsilon)
    split = self.split or self.splits[experiment_id]
    shares = np.array([share for _, share in split])
    return np.broadcast_to(shares, (len(x), len(shares)))


def model_file(name: str, argument: str) -> tuple[str, tuple]:
  """`PATH#a,b,c` -> (PATH, ("a", "b", "c")): a model and its outputs' arms."""
  path, _, arms = argument.rpartition("#")
  names = tuple(a.strip() for a in arms.split(","))
  if not path or "" in names or len(set(names)) != len(names):
    raise ValueError(f"{name}: a Keras model is PATH#arm,arm,... with "
                     f"distinct arms: {argument!r}")
  return path, names


def keras_target(spec: TargetSpec) -> Target:
  path, arms = model_file(f"target {spec.name}", spec.argument)
  return Target(spec.name, model_path=path, model_arms=arms)


def model_probabilities(name: str, output: np.ndarray) -> np.ndarray:
  """A model's outputs as action probabilities: negatives are 0, rows sum to 1."""
  output = np.clip(np.asarray(output, np.float64), 0.0, None)
  total = output.sum(axis=1, keepdims=True)
  if np.any(~(total > 0)) or not np.all(np.isfinite(total)):
    raise ValueError(f"target {name}: the model gave a context no positive "
                     "finite probability")
  return output / total


def fixed_split(name: str, text: str) -> Target:
  """`a=1,b=3` -> shares 0.25, 0.75 (arms in name order)."""
  weights = {}
  for part in text.split(","):
    arm, _, weight = part.partition("=")
    try:
      weights[arm.strip()] = float(weight)
    except ValueError:
      raise ValueError(f"target {name}: split {text!r} is arm=weight,...") \
          from None
  total = sum(weights.values())
  if "" in weights or total <= 0 or min(weights.values()) < 0:
    raise ValueError(f"target {name}: split {text!r} needs arm names and "
                     "non-negative weights that do not all vanish")
  return Target(name, split=tuple((arm, weights[arm] / total)
                                  for arm in sorted(weights)))


def from_states(spec: TargetSpec, lines: Sequence[str],
                context_dim: int) -> Target:
  """A target from the lines of its router_state file(s)."""
  try:
    states = [router_state.from_json(line) for line in lines if line.strip()]
  except ValueError as error:
    raise ValueError(f"target {spec.name}: {spec.argument} is not a "
                     f"router_state file ({error})") from None
  if not states:
    raise ValueError(f"target {spec.name}: {spec.argument} holds no router "
                     "state")
  if spec.kind == ROUTER_STATE:
    splits = {}
    for state in states:
      arms = sorted(state["arms"], key=lambda a: a["arm"])
      splits[state["experiment_id"]] = tuple(
          (a["arm"], float(a["traffic_share"])) for a in arms)
    return Target(spec.name, splits=splits)
  models, contextual = {}, None
  for state in states:
    contextual = state.get("contextual")
    if not contextual:
      raise ValueError(
          f"target {spec.name}: the state of {state['experiment_id']} in "
          f"{spec.argument} has no contextual part (run reward_batch with "
          "--contextual_policy)")
    if contextual["dim"] != context_dim:
      raise ValueError(
          f"target {spec.name}: the state of {state['experiment_id']} has "
          f"contexts of length {contextual['dim']} (intercept included), "
          f"this run reads {context_dim}")
    models[state["experiment_id"]] = linear.models_from_state(contextual)
  return Target(spec.name, models=models, policy=spec.kind,
                alpha=float(contextual["alpha"]),
                epsilon=float(contextual.get("epsilon") or 0.0))


def check_experiment(targets: Sequence[Target], experiment_id: str | None):
  """With --experiment_id, every target must cover that experiment."""
  if experiment_id is None:
    return
  for target in targets:
    if not target.covers(experiment_id):
      raise ValueError(
          f"target {target.name} has no state for experiment "
          f"{experiment_id} (its file is for "
          f"{', '.join(sorted(set(target.splits) | set(target.models)))})")

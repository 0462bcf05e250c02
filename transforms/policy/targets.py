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
KINDS = (SPLIT, ROUTER_STATE) + linear.POLICIES


@dataclasses.dataclass(frozen=True)
class TargetSpec:
  name: str
  kind: str
  argument: str

  @property
  def reads_file(self) -> bool:
    return self.kind != SPLIT


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

  def covers(self, experiment_id: str) -> bool:
    return bool(self.split) or experiment_id in self.splits or (
        experiment_id in self.models)

  def arms(self, experiment_id: str) -> list[str]:
    if self.models:
      return [m.arm for m in self.models[experiment_id]]
    split = self.split or self.splits[experiment_id]
    return [arm for arm, _ in split]

  def probabilities(self, experiment_id: str, x: np.ndarray) -> np.ndarray:
    """(n, arms) for contexts x (n, dim), arms in `arms(experiment_id)` order."""
    if self.models:
      return linear.action_probabilities(self.models[experiment_id], x,
                                         self.policy, self.alpha,
                                         self.epsilon)
    split = self.split or self.splits[experiment_id]
    shares = np.array([share for _, share in split])
    return np.broadcast_to(shares, (len(x), len(shares)))


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
  states = [router_state.from_json(line) for line in lines if line.strip()]
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

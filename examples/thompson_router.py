"""A Seldon Core v1 router that continues a bandit from the pipeline's state.

Use it as the ROUTER unit of a SeldonDeployment graph (Python wrapper:
`seldon-core-microservice thompson_router.BanditRouter --service-type
ROUTER`), with parameters (docs/seldon.md has a whole deployment):

  state_path            a router_state*.json file written by the pipeline:
                        one JSON object per line, one line per experiment;
  experiment_id         the line to continue from: the router's node name,
                        which Seldon puts in `meta.routing` and the pipeline
                        records as the experiment;
  policy                "thompson" (default) or "epsilon_greedy";
  epsilon               exploration probability of epsilon-greedy (0.1);
  seed                  random seed, for reproducible routing;
  branch_names          the arm of each child, in order, separated by ":" (as
                        in Seldon's own routers). By default child i is arm
                        "i", which is how the pipeline names the arms of
                        Seldon feedback;
  new_arm_prior_weight  how many requests' worth of the known arms' pooled
                        reward a branch without data starts from (default
                        100; 0 is Seldon's uniform Beta(1, 1) prior);
  reload_interval_s     re-read the state file when it has changed, at most
                        this often (default 0: only at start).

Thompson sampling draws each branch's mean reward from its posterior and
routes to the highest draw: Beta(alpha, beta) for binary rewards, as Seldon's
ThompsonSampling router, and for continuous rewards the normal posterior
N(m, s^2 / n) of the pipeline's `prob_best`. A branch without data starts
from a prior worth `new_arm_prior_weight` requests at the pooled reward of the
branches with data (binary: Beta(w p, w (1 - p)), each parameter at least
1/2; continuous: N(m, s^2 / w)), so it is explored without taking most of the
traffic at once. Epsilon-greedy routes to the
branch with the best mean reward, or with probability epsilon to one of the
others, as Seldon's EpsilonGreedy.

Feedback updates the counts in memory, per server process: each gunicorn
worker and the gRPC server keep their own counts. The state file keeps them
in step: every process re-reads it when it starts (`load`) and, with
`reload_interval_s`, when the pipeline has written a new one; the counts in
memory are then replaced by the file's. Feedback whose routing names no
branch of this router (None, as the wrapper passes it when `meta.routing`
has no entry for the router, or out of range) is logged and ignored.
`metrics()` reports each branch's tries and reward sum as Seldon custom
metrics (per process). Needs numpy only, not this package.
"""

import json
import logging
import math
import os
import time

import numpy as np

THOMPSON = "thompson"
EPSILON_GREEDY = "epsilon_greedy"
DEFAULT_NEW_ARM_PRIOR_WEIGHT = 100.0
# The smallest Beta parameter of a new branch's prior (Jeffreys' Beta(½, ½)):
# a pooled rate of 0 or 1 leaves the prior proper.
JEFFREYS = 0.5
# The smallest posterior scale, relative to the mean (as the pipeline's).
_MIN_RELATIVE_SCALE = 1e-9

logger = logging.getLogger(__name__)


def load_state(path: str, experiment_id: str) -> dict:
  """The state of one experiment from a router_state*.json file."""
  with open(path, encoding="utf-8") as lines:
    for line in lines:
      if line.strip():
        state = json.loads(line)
        if state["experiment_id"] == experiment_id:
          return state
  raise KeyError(f"no router state for {experiment_id!r} in {path}")


class BanditRouter:
  """Routes each request to one child (branch) of the router."""

  def __init__(self, state_path, experiment_id, policy=THOMPSON, epsilon=0.1,
               seed=None, branch_names=None,
               new_arm_prior_weight=DEFAULT_NEW_ARM_PRIOR_WEIGHT,
               reload_interval_s=0):
    if policy not in (THOMPSON, EPSILON_GREEDY):
      raise ValueError(f"unknown policy {policy!r}")
    if not float(new_arm_prior_weight) >= 0:
      raise ValueError(
          f"new_arm_prior_weight must be at least 0: {new_arm_prior_weight}")
    self.state_path = state_path
    self.experiment_id = experiment_id
    self.policy = policy
    self.epsilon = float(epsilon)
    self.rng = np.random.default_rng(None if seed is None else int(seed))
    self.branch_names = branch_names.split(":") if branch_names else None
    self.new_arm_prior_weight = float(new_arm_prior_weight)
    self.reload_interval_s = float(reload_interval_s)
    self._read_state()

  def load(self):
    """Called by Seldon's wrapper in every server process once it has
    started: continue from the latest state file, not the parent's copy."""
    self._read_state()

  def _read_state(self):
    state_mtime = os.stat(self.state_path).st_mtime_ns
    state = load_state(self.state_path, self.experiment_id)
    arms = {arm["arm"]: arm for arm in state["arms"]}
    names = self.branch_names or [
        str(i) for i in range(1 + max(int(name) for name in arms))]
    known = [arms.get(name) for name in names]
    binary = state["reward_type"] == "binary"

    def column(field, default):
      """The field of every branch; `default` where the state has none."""
      return np.array([default if arm is None or arm.get(field) is None
                       else arm[field] for arm in known], float)

    tries = column("tries", 0)
    successes = column("successes", 0)
    if binary:
      squares = successes.copy()
    elif any(arm is not None and arm["tries"] and arm.get(
        "reward_sq_sum") is None for arm in known):
      raise ValueError(f"{self.state_path}: a state with continuous rewards "
                       "needs reward_sq_sum (written by a newer pipeline)")
    else:
      squares = column("reward_sq_sum", 0)
    self.binary = binary
    self.tries, self.successes, self.squares = tries, successes, squares
    self._set_priors(column("alpha", 1), column("beta", 1))
    self._state_mtime = state_mtime
    self._checked_at = time.monotonic()

  def _set_priors(self, alpha, beta):
    """Priors of the branches without data: `new_arm_prior_weight` requests
    at the pooled reward of the branches with data."""
    new = self.tries == 0
    pooled_n = self.tries.sum()
    weight = self.new_arm_prior_weight if pooled_n > 0 else 0.0
    pooled_mean = self.successes.sum() / pooled_n if pooled_n else 0.0
    if self.binary:
      if weight > 0:  # Else Seldon's uniform Beta(1, 1), as the state has it.
        alpha[new] = max(weight * pooled_mean, JEFFREYS)
        beta[new] = max(weight * (1 - pooled_mean), JEFFREYS)
      self.alpha, self.beta = alpha, beta
    pooled_variance = math.nan
    if pooled_n > 1:
      pooled_variance = max(0.0, (self.squares.sum() - pooled_n *
                                  pooled_mean**2) / (pooled_n - 1))
    self.prior_n = np.where(new, weight, 0.0)
    self.prior_mean = pooled_mean
    self.pooled_variance = pooled_variance

  def _maybe_reload(self):
    if self.reload_interval_s <= 0:
      return
    now = time.monotonic()
    if now - self._checked_at < self.reload_interval_s:
      return
    self._checked_at = now
    try:
      if os.stat(self.state_path).st_mtime_ns != self._state_mtime:
        self._read_state()
        logger.info("reloaded the router state from %s", self.state_path)
    except (OSError, ValueError, KeyError) as error:
      # Keep serving from the state in memory; the next check tries again.
      logger.error("cannot reload %s: %s", self.state_path, error)

  def route(self, features, feature_names) -> int:
    self._maybe_reload()
    if self.policy == EPSILON_GREEDY:
      return self._epsilon_greedy()
    if self.binary:
      return int(np.argmax(self.rng.beta(self.alpha, self.beta)))
    return self._normal_thompson()

  def normal_posteriors(self):
    """(mean, scale) of each branch's normal posterior (continuous rewards);
    NaN where a branch has neither data nor a prior."""
    n = self.tries + self.prior_n
    with np.errstate(invalid="ignore", divide="ignore"):
      mean = (self.successes + self.prior_n * self.prior_mean) / n
      own_variance = (self.squares - self.tries * (
          self.successes / self.tries)**2) / (self.tries - 1)
    variance = np.where(self.tries > 1, np.maximum(own_variance, 0.0),
                        self.pooled_variance)
    # Seldon's uniform prior has no normal analogue: a branch without data
    # and without a prior weight gets one request's worth of the pooled prior.
    mean = np.where(n > 0, mean, self.prior_mean)
    scale = np.sqrt(variance / np.maximum(n, 1))
    scale = np.maximum(scale, _MIN_RELATIVE_SCALE * np.maximum(
        1.0, np.abs(mean)))
    return mean, scale

  def _normal_thompson(self) -> int:
    mean, scale = self.normal_posteriors()
    if np.isnan(scale).any():  # No variance to draw from yet: explore evenly.
      return int(self.rng.integers(len(mean)))
    return int(np.argmax(self.rng.normal(mean, scale)))

  def _epsilon_greedy(self) -> int:
    values = np.divide(self.successes, self.tries,
                       out=np.full_like(self.tries, -np.inf),
                       where=self.tries > 0)
    best = int(np.argmax(values))
    if len(values) > 1 and self.rng.random() < self.epsilon:
      others = [i for i in range(len(values)) if i != best]
      return int(self.rng.choice(others))
    return best

  def send_feedback(self, features, feature_names, reward, truth,
                    routing=None):
    """Counts the feedback on a batch of `features` routed to `routing`.

    `reward` is the mean reward of the batch, as in Seldon's routers.
    """
    if (isinstance(routing, bool) or
        not isinstance(routing, (int, np.integer)) or
        not 0 <= routing < len(self.tries)):
      logger.warning("feedback ignored: routing %r names no branch of %s",
                     routing, self.experiment_id)
      return None
    n = len(features)
    self.tries[routing] += n
    self.successes[routing] += reward * n
    self.squares[routing] += reward**2 * n
    if self.binary:
      self.alpha[routing] += reward * n
      self.beta[routing] += (1 - reward) * n
    return None

  def metrics(self):
    """Each branch's tries and reward sum in this process (Seldon custom
    metrics: Prometheus gauges, and in responses when the wrapper's
    INCLUDE_METRICS_IN_CLIENT_RESPONSE is true)."""
    return [{"type": "GAUGE", "key": key, "value": float(values[i]),
             "tags": {"branch": str(i)}}
            for key, values in (("branch_tries", self.tries),
                                ("branch_reward_sum", self.successes))
            for i in range(len(values))]

"""A Seldon Core v1 router that continues a bandit from the pipeline's state.

Use it as the ROUTER unit of a SeldonDeployment graph (Python wrapper:
`seldon-core-microservice thompson_router.BanditRouter`), with parameters:

  state_path    a router_state*.json file written by the pipeline: one JSON
                object per line, one line per experiment;
  experiment_id the line to continue from: the router's name, which Seldon
                puts in `meta.routing` and the pipeline records as the
                experiment;
  policy        "thompson" (default) or "epsilon_greedy";
  epsilon       exploration probability of epsilon-greedy (default 0.1);
  seed          random seed, for reproducible routing;
  branch_names  the arm of each child, in order, separated by ":" (as in
                Seldon's own routers). By default child i is arm "i", which is
                how the pipeline names the arms of Seldon feedback.

Thompson sampling draws each arm's success rate from its Beta(alpha, beta)
posterior and routes to the highest draw, as Seldon's ThompsonSampling router.
Continuous rewards have no Beta posterior; there the router routes with the
probabilities `traffic_share`, the split Thompson sampling makes in
expectation (an arm without data gets only the pipeline's --traffic_floor; a
branch the state does not know yet gets an equal share, 1 / branches).
Epsilon-greedy routes to the arm with the best mean reward, or with
probability epsilon to one of the other arms, as Seldon's EpsilonGreedy.

Feedback updates the counts in memory; a restarted router continues from the
latest state file. Needs numpy only, not this package.
"""

import json

import numpy as np

THOMPSON = "thompson"
EPSILON_GREEDY = "epsilon_greedy"


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
               seed=None, branch_names=None):
    if policy not in (THOMPSON, EPSILON_GREEDY):
      raise ValueError(f"unknown policy {policy!r}")
    state = load_state(state_path, experiment_id)
    arms = {arm["arm"]: arm for arm in state["arms"]}
    if branch_names:
      names = branch_names.split(":")
    else:
      names = [str(i) for i in range(1 + max(int(name) for name in arms))]
    known = [arms.get(name) for name in names]

    def column(field, default):
      """The field of every branch; `default` where the state has none."""
      return np.array([default if arm is None or arm[field] is None
                       else arm[field] for arm in known], float)

    self.policy = policy
    self.epsilon = float(epsilon)
    self.rng = np.random.default_rng(None if seed is None else int(seed))
    self.binary = state["reward_type"] == "binary"
    self.tries = column("tries", 0)
    self.successes = column("successes", 0)
    # A branch the state does not know starts from the Beta(1, 1) prior.
    self.alpha = column("alpha", 1)
    self.beta = column("beta", 1)
    # A branch the state does not know gets an equal share of the traffic, to
    # explore it; the others split the rest as the state says.
    shares = column("traffic_share", np.nan)
    new = np.isnan(shares)
    stated = shares[~new]
    shares[new] = 1 / len(shares)
    if stated.size:
      shares[~new] = (1 - new.mean()) * (
          stated / stated.sum() if stated.sum() > 0 else 1 / stated.size)
    self.traffic_share = shares

  def route(self, features, feature_names) -> int:
    if self.policy == EPSILON_GREEDY:
      return self._epsilon_greedy()
    if self.binary:
      return int(np.argmax(self.rng.beta(self.alpha, self.beta)))
    return int(self.rng.choice(len(self.traffic_share), p=self.traffic_share))

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
    n = len(features)
    self.tries[routing] += n
    self.successes[routing] += reward * n
    self.alpha[routing] += reward * n
    self.beta[routing] += (1 - reward) * n

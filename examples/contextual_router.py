"""A Seldon Core v1 router that routes each request by its context.

Use it as the ROUTER unit of a SeldonDeployment graph (Python wrapper:
`seldon-core-microservice contextual_router.ContextualRouter`), with
parameters:

  state_path    a router_state*.json file written by pipelines.reward_batch
                with --contextual_policy: one JSON object per line, one line
                per experiment, with a `contextual` field;
  experiment_id the line to continue from (the router's name);
  policy        "linucb", "linear_thompson" or "greedy" (default: the
                state's policy); alpha, epsilon: default the state's;
  seed          random seed, for reproducible routing;
  branch_names  the arm of each child, in order, separated by ":" (default:
                the state's arms in name order).

The context is read from the request: with context_source "features", the
first row of the request's features (its length must be the state's dim - 1,
the intercept aside); with "attributes", the request's columns named as the
state's context_features. Per arm the state holds theta and the Cholesky
factor L of A + lambda I. LinUCB routes to the arm of highest
x . theta + alpha sqrt(x^T (L L^T)^-1 x); linear Thompson sampling with the
probability that the arm's score drawn from N(x . theta, alpha^2 x^T
(L L^T)^-1 x) is the highest (the same probabilities as
transforms.policy.linear.action_probabilities); `epsilon` of the traffic is
spread evenly. `tags()` returns the propensity of the last decision, which
Seldon adds to the response's meta.tags: log it as the prediction's
`propensity` for off-policy evaluation.

Feedback updates A and b of the routed arm in memory; a restarted router
continues from the latest state file. Needs numpy only, not this package.
"""

import json
import math

import numpy as np

POLICIES = ("greedy", "linucb", "linear_thompson")
# The quadrature of transforms.policy.linear.thompson_probabilities.
_BREAKS = np.array([-6.0, -3.0, -1.5, 0.0, 1.5, 3.0, 6.0])
_NODES, _WEIGHTS = np.polynomial.legendre.leggauss(4)
_normal_cdf = np.vectorize(lambda z: 0.5 * math.erfc(-z / math.sqrt(2)))


def load_contextual_state(path: str, experiment_id: str) -> dict:
  """The state of one experiment from a router_state*.json file."""
  with open(path, encoding="utf-8") as lines:
    for line in lines:
      if line.strip():
        state = json.loads(line)
        if state["experiment_id"] == experiment_id:
          if not state.get("contextual"):
            raise ValueError(f"the state of {experiment_id!r} in {path} has "
                             "no contextual part")
          return state["contextual"]
  raise KeyError(f"no router state for {experiment_id!r} in {path}")


def thompson_probabilities(mean, scale):
  """P(arm k's normal score is the highest), by composite Gauss-Legendre
  quadrature between the breakpoints mean_j + c * scale_j of every arm."""
  scale = np.maximum(scale, 1e-12)
  breaks = np.sort((mean[:, None] + scale[:, None] * _BREAKS).ravel())
  half = (breaks[1:] - breaks[:-1]) / 2
  nodes = ((breaks[:-1] + half)[:, None] + half[:, None] * _NODES).ravel()
  weights = (half[:, None] * _WEIGHTS).ravel()
  z = (nodes[None, :] - mean[:, None]) / scale[:, None]
  cdf = _normal_cdf(z)
  density = np.exp(-0.5 * z * z) / (math.sqrt(2 * math.pi) * scale[:, None])
  probabilities = np.empty(len(mean))
  for k in range(len(mean)):
    integrand = density[k] * weights
    for j in range(len(mean)):
      if j != k:
        integrand = integrand * cdf[j]
    probabilities[k] = integrand.sum()
  return probabilities / probabilities.sum()


class ContextualRouter:
  """Routes each request to one child (branch) of the router by its context."""

  def __init__(self, state_path, experiment_id, policy=None, alpha=None,
               epsilon=None, seed=None, branch_names=None):
    state = load_contextual_state(state_path, experiment_id)
    self.policy = policy or state["policy"]
    if self.policy not in POLICIES:
      raise ValueError(f"unknown policy {self.policy!r}")
    self.alpha = float(state["alpha"] if alpha is None else alpha)
    self.epsilon = float((state.get("epsilon") or 0.0)
                         if epsilon is None else epsilon)
    self.source = state["context_source"]
    self.names = list(state["context_features"])
    self.dim = int(state["dim"])
    arms = {arm["arm"]: arm for arm in state["arms"]}
    self.arms = branch_names.split(":") if branch_names else sorted(arms)
    self.rng = np.random.default_rng(None if seed is None else int(seed))
    # Per branch A + lambda I and b; a branch the state does not know starts
    # from the prior: lambda I, b = 0.
    self.gram, self.b = [], []
    for name in self.arms:
      arm = arms.get(name)
      if arm is None:
        self.gram.append(state["ridge_lambda"] * np.eye(self.dim))
        self.b.append(np.zeros(self.dim))
      else:
        lower = np.reshape(arm["cholesky"], (self.dim, self.dim))
        gram = lower @ lower.T
        self.gram.append(gram)
        self.b.append(gram @ np.asarray(arm["theta"], float))
    self.last_propensity = None

  def context(self, features, feature_names) -> np.ndarray:
    """x = (1, context) of a request's first row."""
    row = np.asarray(features, float).reshape(len(features), -1)[0]
    if self.source == "attributes":
      columns = list(feature_names or [])
      missing = [n for n in self.names if n not in columns]
      if missing:
        raise ValueError(f"the request has no feature {', '.join(missing)}")
      row = row[[columns.index(n) for n in self.names]]
    if len(row) != self.dim - 1:
      raise ValueError(f"a context of {self.dim - 1} numbers is expected, "
                       f"the request has {len(row)}")
    return np.concatenate([[1.0], row])

  def probabilities(self, x: np.ndarray) -> np.ndarray:
    """The probability this router serves each branch for context x."""
    mean = np.empty(len(self.arms))
    spread = np.empty(len(self.arms))
    for k, (gram, b) in enumerate(zip(self.gram, self.b)):
      lower = np.linalg.cholesky(gram)
      z = np.linalg.solve(lower, x)
      mean[k] = x @ np.linalg.solve(gram, b)
      spread[k] = math.sqrt(z @ z)
    if self.policy == "linear_thompson":
      chosen = thompson_probabilities(mean, self.alpha * spread)
    else:
      score = mean + (self.alpha * spread if self.policy == "linucb" else 0)
      chosen = np.zeros(len(self.arms))
      chosen[int(np.argmax(score))] = 1.0
    return (1 - self.epsilon) * chosen + self.epsilon / len(self.arms)

  def route(self, features, feature_names) -> int:
    probabilities = self.probabilities(self.context(features, feature_names))
    branch = int(self.rng.choice(len(probabilities), p=probabilities))
    self.last_propensity = float(probabilities[branch])
    return branch

  def tags(self) -> dict:
    """Seldon adds these to the response's meta.tags."""
    return {"policy": self.policy, "propensity": self.last_propensity}

  def send_feedback(self, features, feature_names, reward, truth,
                    routing=None):
    """Adds the context of the request routed to `routing` and its reward."""
    x = self.context(features, feature_names)
    self.gram[routing] = self.gram[routing] + np.outer(x, x)
    self.b[routing] = self.b[routing] + float(reward) * x

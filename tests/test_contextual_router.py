"""The contextual Seldon router and the closed loop: route -> log -> pipeline -> state."""

import json

import numpy as np
import pytest

from examples.contextual_router import ContextualRouter
from pipelines import reward_batch
from simulation import contextual
from transforms.policy import linear

ENV = contextual.Environment()


def _state_file(tmp_path, policy="linear_thompson", alpha=1.0, epsilon=0.0):
  logged = contextual.route(ENV, np.random.default_rng(3), 600,
                            lambda c: np.full((len(c), 3), 1 / 3))
  state = contextual.state_of(ENV, logged, policy, alpha, epsilon=epsilon)
  path = tmp_path / "router_state-00000-of-00001.json"
  path.write_text(json.dumps(state) + "\n")
  return str(path), state


@pytest.mark.parametrize("policy", linear.POLICIES)
def test_router_probabilities_are_the_pure_cores(tmp_path, policy):
  path, state = _state_file(tmp_path, policy, alpha=0.7, epsilon=0.1)
  router = ContextualRouter(path, ENV.experiment_id, seed=1)
  models = linear.models_from_state(state["contextual"])
  contexts = ENV.contexts(np.random.default_rng(4), 30)
  x = np.hstack([np.ones((30, 1)), contexts])
  expected = linear.action_probabilities(models, x, policy, 0.7, 0.1)
  got = np.array([router.probabilities(row) for row in x])
  np.testing.assert_allclose(got, expected, atol=1e-9)


def test_route_draws_with_the_probabilities_it_tags(tmp_path):
  path, _ = _state_file(tmp_path, alpha=2.0)
  router = ContextualRouter(path, ENV.experiment_id, seed=2)
  features = np.array([[0.2, -0.4]])
  expected = router.probabilities(router.context(features, []))
  draws = []
  for _ in range(6000):
    draws.append(router.route(features, []))
    assert router.tags()["propensity"] == pytest.approx(expected[draws[-1]])
  np.testing.assert_allclose(np.bincount(draws, minlength=3) / 6000, expected,
                             atol=0.02)


def test_feedback_updates_the_arm_as_the_pipeline_would(tmp_path):
  path, state = _state_file(tmp_path)
  router = ContextualRouter(path, ENV.experiment_id, policy="greedy")
  features = np.array([[0.5, 0.25]])
  router.send_feedback(features, [], 1.0, None, routing=1)
  arm = state["contextual"]["arms"][1]
  lower = np.reshape(arm["cholesky"], (3, 3))
  x = np.array([1.0, 0.5, 0.25])
  gram = lower @ lower.T + np.outer(x, x)
  b = lower @ lower.T @ np.asarray(arm["theta"]) + x
  np.testing.assert_allclose(np.linalg.solve(router.gram[1], router.b[1]),
                             np.linalg.solve(gram, b), rtol=1e-9)


def test_requests_without_the_context_are_refused(tmp_path):
  path, _ = _state_file(tmp_path)
  router = ContextualRouter(path, ENV.experiment_id)
  with pytest.raises(ValueError, match="context of 2 numbers"):
    router.route(np.array([[0.1, 0.2, 0.3]]), [])
  other = tmp_path / "plain.json"
  other.write_text(json.dumps({"experiment_id": "x", "arms": []}) + "\n")
  with pytest.raises(ValueError, match="no contextual part"):
    ContextualRouter(str(other), "x")


def test_contextual_routers_reach_lower_regret_than_context_free_thompson(
    tmp_path):
  """20 rounds of route -> log -> state; round 1's state by the real pipeline."""

  def pipeline_then_core(policy):

    def make_state(round_index, logged):
      pure = contextual.state_of(ENV, logged, policy, epsilon=0.02)
      if round_index:
        return pure
      predictions, feedback = contextual.log_records(ENV, logged)
      contextual.write_jsonl(tmp_path / "p.jsonl", predictions)
      contextual.write_jsonl(tmp_path / "f.jsonl", feedback)
      out = tmp_path / f"state-{policy}"
      reward_batch.run([
          f"--predictions={tmp_path / 'p.jsonl'}",
          f"--feedback={tmp_path / 'f.jsonl'}", "--context_dim=2",
          f"--contextual_policy={policy}", "--policy_epsilon=0.02",
          f"--output_dir={out}", "--runner=FnApiRunner"])
      [line] = next(out.glob("router_state*.json")).read_text().splitlines()
      state = json.loads(line)
      for got, want in zip(state["contextual"]["arms"],
                           pure["contextual"]["arms"]):
        np.testing.assert_allclose(got["theta"], want["theta"], rtol=1e-9)
      return state

    return make_state

  free, _ = contextual.run_rounds(ENV, contextual=False, seed=9)
  for policy in ("linucb", "linear_thompson"):
    regret, state = contextual.run_rounds(
        ENV, contextual=True, seed=9, make_state=pipeline_then_core(policy))
    assert state["contextual"]["policy"] == policy
    assert regret < 0.7 * free, (policy, regret, free)

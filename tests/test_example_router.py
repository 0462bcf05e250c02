"""The example Seldon router continues from the pipeline's router state."""

import numpy as np
import pytest

from examples.thompson_router import BanditRouter
from transforms.decisions import router_state, stats
from transforms.decisions.stats import ArmTotals

FEATURES = np.zeros((1, 3))


def write_states(path, experiments, traffic_floor=0.0):
  """A router_state*.json file: one line per experiment."""
  lines = []
  for experiment_id, arms in experiments.items():
    state = router_state.router_state(
        experiment_id, arms, stats.experiment_statistics(arms), traffic_floor)
    lines.append(router_state.to_json(state))
  path.write_text("\n".join(lines) + "\n")
  return str(path)


def binary_arm(name, successes, samples):
  return ArmTotals(name, samples, samples, float(successes), float(successes),
                   True)


def route_counts(router, n):
  counts = np.bincount([router.route(FEATURES, []) for _ in range(n)],
                       minlength=router.tries.size)
  return counts / n


@pytest.fixture
def state_path(tmp_path):
  return write_states(tmp_path / "router_state-00000-of-00001.json", {
      "other": [binary_arm("0", 900, 1000), binary_arm("1", 1, 1000)],
      "router": [binary_arm("0", 100, 1000), binary_arm("1", 110, 1000),
                 binary_arm("2", 60, 1000)],
  })


def test_thompson_routes_in_proportion_to_prob_best(state_path):
  router = BanditRouter(state_path, "router", seed=1)
  shares = route_counts(router, 4000)
  arms = [binary_arm("0", 100, 1000), binary_arm("1", 110, 1000),
          binary_arm("2", 60, 1000)]
  rows = stats.experiment_statistics(arms)
  expected = [rows[name]["prob_best"] for name in "012"]
  assert expected[1] > 0.7
  assert shares == pytest.approx(expected, abs=0.03)


def test_routes_are_reproducible_with_a_seed(state_path):
  first = BanditRouter(state_path, "router", seed=7)
  second = BanditRouter(state_path, "router", seed=7)
  routes = [first.route(FEATURES, []) for _ in range(50)]
  assert routes == [second.route(FEATURES, []) for _ in range(50)]
  assert len(set(routes)) > 1
  assert all(isinstance(branch, int) for branch in routes)


def test_loads_the_line_of_its_experiment(state_path):
  router = BanditRouter(state_path, "other", seed=2)
  assert route_counts(router, 200).tolist() == [1.0, 0.0]
  with pytest.raises(KeyError):
    BanditRouter(state_path, "missing")


def test_epsilon_greedy_exploits_the_best_value(state_path):
  router = BanditRouter(state_path, "router", policy="epsilon_greedy",
                        epsilon=0.2, seed=3)
  shares = route_counts(router, 5000)
  assert shares == pytest.approx([0.1, 0.8, 0.1], abs=0.02)


def test_feedback_updates_the_router(state_path):
  router = BanditRouter(state_path, "router", policy="epsilon_greedy",
                        epsilon=0.0, seed=4)
  assert router.route(FEATURES, []) == 1
  for _ in range(100):
    router.send_feedback(np.zeros((10, 3)), [], reward=1.0, truth=None,
                         routing=2)
  assert router.tries[2] == 2000 and router.successes[2] == 1060
  assert router.route(FEATURES, []) == 2
  thompson = BanditRouter(state_path, "router", seed=5)
  for _ in range(50):
    thompson.send_feedback(np.zeros((10, 3)), [], reward=1.0, truth=None,
                           routing=2)
  assert (thompson.alpha[2], thompson.beta[2]) == (561, 941)
  assert route_counts(thompson, 200)[2] == 1.0


def test_branch_names_map_children_to_arms(tmp_path):
  path = write_states(tmp_path / "state.json", {
      "exp": [binary_arm("canary", 300, 1000), binary_arm("main", 100, 1000)],
  })
  router = BanditRouter(path, "exp", branch_names="main:canary:shadow",
                        seed=6)
  assert router.tries.tolist() == [1000, 1000, 0]
  # The arm the state does not know starts from the uniform prior, which
  # beats a rate of 0.3 about 70% of the time.
  assert route_counts(router, 3000) == pytest.approx([0.0, 0.3, 0.7],
                                                     abs=0.03)


def continuous_state(tmp_path, means, samples, seed, traffic_floor=0.1):
  """A state of experiment "exp" with normal rewards of the arms' `means`;
  its path and the arms' traffic shares."""
  rng = np.random.default_rng(seed)
  arms = []
  for name, mean in means.items():
    rewards = rng.normal(mean, 1.0, samples)
    arms.append(ArmTotals(name, samples, samples, float(rewards.sum()),
                          float((rewards**2).sum()), False))
  path = write_states(tmp_path / "state.json", {"exp": arms}, traffic_floor)
  state = router_state.from_json(open(path).read())
  return path, [arm["traffic_share"] for arm in state["arms"]]


def test_continuous_rewards_route_by_traffic_share(tmp_path):
  path, expected = continuous_state(tmp_path, {"0": 1.0, "1": 1.02}, 2000,
                                    seed=8)
  assert min(expected) > 0.1  # both arms above the floor
  router = BanditRouter(path, "exp", seed=9)
  assert route_counts(router, 4000) == pytest.approx(expected, abs=0.03)


def test_continuous_rewards_explore_a_branch_the_state_does_not_know(tmp_path):
  path, (share_a, share_b) = continuous_state(tmp_path, {"a": 1.0, "b": 1.5},
                                              500, seed=10)
  router = BanditRouter(path, "exp", seed=11, branch_names="a:b:new")
  # The new branch gets an equal share; a and b split the rest as the state.
  assert router.traffic_share == pytest.approx(
      [2 / 3 * share_a, 2 / 3 * share_b, 1 / 3])
  assert route_counts(router, 3000) == pytest.approx(router.traffic_share,
                                                     abs=0.03)


def test_continuous_rewards_with_no_known_branch_split_equally(tmp_path):
  path, _ = continuous_state(tmp_path, {"a": 1.0, "b": 1.5}, 500, seed=10)
  router = BanditRouter(path, "exp", seed=12, branch_names="x:y")
  assert router.traffic_share == pytest.approx([0.5, 0.5])
  assert route_counts(router, 2000) == pytest.approx([0.5, 0.5], abs=0.04)

"""The example Seldon router continues from the pipeline's router state."""

import os

import numpy as np
import pytest
import scipy.stats

from examples import router_simulation
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
                        seed=6, new_arm_prior_weight=0)
  assert router.tries.tolist() == [1000, 1000, 0]
  # With weight 0 the arm the state does not know starts from Seldon's
  # uniform prior, which beats a rate of 0.3 about 70% of the time.
  expected = prob_best([(101, 901), (301, 701), (1, 1)])
  assert expected[2] > 0.65
  assert route_counts(router, 3000) == pytest.approx(expected, abs=0.03)


def prob_best(alpha_beta):
  """The share Thompson sampling gives each of these Beta posteriors."""
  return stats.posterior_prob_best(
      [scipy.stats.beta(a, b) for a, b in alpha_beta])[0]


def test_a_branch_without_data_starts_from_the_pooled_rate(tmp_path):
  path = write_states(tmp_path / "state.json", {
      "exp": [binary_arm("a", 300, 10_000), binary_arm("b", 400, 10_000),
              binary_arm("c", 0, 0)]})
  router = BanditRouter(path, "exp", branch_names="a:b:c:new", seed=13,
                        new_arm_prior_weight=50)
  # 50 requests' worth of the pooled rate 700 / 20,000, for c (in the state
  # without data) and for the branch the state does not know.
  pooled = 700 / 20_000
  assert router.alpha[2:].tolist() == pytest.approx([50 * pooled] * 2)
  assert router.beta[2:].tolist() == pytest.approx([50 * (1 - pooled)] * 2)
  expected = prob_best([(301, 9701), (401, 9601)] + [
      (50 * pooled, 50 * (1 - pooled))] * 2)
  assert expected[2] < 0.35  # Beta(1, 1) would take over 0.95 between them
  assert route_counts(router, 4000) == pytest.approx(expected, abs=0.03)


def test_a_pooled_rate_of_zero_keeps_the_prior_proper(tmp_path):
  path = write_states(tmp_path / "state.json", {
      "exp": [binary_arm("a", 0, 500)]})
  router = BanditRouter(path, "exp", branch_names="a:new", seed=14)
  assert (router.alpha[1], router.beta[1]) == (0.5, 100.0)
  assert 0 < route_counts(router, 2000)[1] < 1


def continuous_arms(means, samples, seed):
  """Arms with normal rewards of the arms' `means` (sd 1)."""
  rng = np.random.default_rng(seed)
  arms = []
  for name, mean in means.items():
    rewards = rng.normal(mean, 1.0, samples)
    arms.append(ArmTotals(name, samples, samples, float(rewards.sum()),
                          float((rewards**2).sum()), False))
  return arms


def normal_posterior(arm):
  """The pipeline's posterior of a continuous arm's mean: N(m, s^2 / n)."""
  mean = arm.reward_sum / arm.samples
  variance = (arm.reward_sq_sum - arm.samples * mean**2) / (arm.samples - 1)
  return scipy.stats.norm(mean, np.sqrt(variance / arm.samples))


def test_continuous_rewards_route_by_the_normal_posteriors(tmp_path):
  arms = continuous_arms({"0": 1.0, "1": 1.0}, 2000, seed=5)
  path = write_states(tmp_path / "state.json", {"exp": arms},
                      traffic_floor=0.1)
  rows = stats.experiment_statistics(arms)
  expected = [rows[name]["prob_best"] for name in "01"]
  assert 0.1 < min(expected)
  router = BanditRouter(path, "exp", seed=9)
  means, scales = router.normal_posteriors()
  assert means.tolist() == pytest.approx([a.reward_sum / 2000 for a in arms])
  assert scales.tolist() == pytest.approx(
      [normal_posterior(a).std() for a in arms])
  assert route_counts(router, 4000) == pytest.approx(expected, abs=0.03)


def test_continuous_feedback_moves_the_split(tmp_path):
  arms = continuous_arms({"0": 1.0, "1": 1.0}, 200, seed=15)
  path = write_states(tmp_path / "state.json", {"exp": arms})
  router = BanditRouter(path, "exp", seed=16)
  before = route_counts(router, 2000)
  assert 0.2 < before[1] < 0.8
  rewards = np.random.default_rng(17).normal(2.0, 1.0, 300)
  for reward in rewards:
    router.send_feedback(FEATURES, [], float(reward), None, routing=1)
  # Arm 1's posterior is now that of all its rewards, the state's and the new.
  totals = ArmTotals("1", 500, 500, arms[1].reward_sum + rewards.sum(),
                     arms[1].reward_sq_sum + (rewards**2).sum(), False)
  means, scales = router.normal_posteriors()
  assert (means[1], scales[1]) == pytest.approx(
      (normal_posterior(totals).mean(), normal_posterior(totals).std()))
  assert route_counts(router, 1000)[1] == 1.0


def test_a_continuous_branch_without_data_starts_from_the_pooled_mean(
    tmp_path):
  arms = continuous_arms({"a": 1.0, "b": 1.5}, 500, seed=10)
  path = write_states(tmp_path / "state.json", {"exp": arms})
  router = BanditRouter(path, "exp", seed=11, branch_names="a:b:new",
                        new_arm_prior_weight=20)
  n = 1000
  pooled_mean = sum(a.reward_sum for a in arms) / n
  pooled_variance = (sum(a.reward_sq_sum for a in arms) -
                     n * pooled_mean**2) / (n - 1)
  means, scales = router.normal_posteriors()
  assert (means[2], scales[2]) == pytest.approx(
      (pooled_mean, np.sqrt(pooled_variance / 20)))
  expected = stats.posterior_prob_best(
      [normal_posterior(a) for a in arms] +
      [scipy.stats.norm(pooled_mean, np.sqrt(pooled_variance / 20))])[0]
  assert route_counts(router, 4000) == pytest.approx(expected, abs=0.03)


def test_continuous_rewards_with_no_data_split_equally(tmp_path):
  path = write_states(tmp_path / "state.json", {
      "exp": continuous_arms({"a": 1.0, "b": 1.5}, 500, seed=10)})
  router = BanditRouter(path, "exp", seed=12, branch_names="x:y")
  assert route_counts(router, 2000) == pytest.approx([0.5, 0.5], abs=0.04)


def test_a_continuous_state_without_squares_fails_fast(tmp_path):
  path = write_states(tmp_path / "state.json", {
      "exp": continuous_arms({"0": 1.0}, 50, seed=1)})
  state = router_state.from_json(open(path).read())
  del state["arms"][0]["reward_sq_sum"]
  (tmp_path / "state.json").write_text(router_state.to_json(state) + "\n")
  with pytest.raises(ValueError, match="reward_sq_sum"):
    BanditRouter(path, "exp")


@pytest.mark.parametrize("routing", [None, -1, 3, True, "1"])
def test_feedback_for_no_branch_of_the_router_is_ignored(state_path, routing,
                                                         caplog):
  router = BanditRouter(state_path, "router", seed=18)
  before = [router.tries.copy(), router.successes.copy(), router.alpha.copy(),
            router.beta.copy()]
  with caplog.at_level("WARNING"):
    assert router.send_feedback(FEATURES, [], 1.0, None, routing=routing) is None
  after = [router.tries, router.successes, router.alpha, router.beta]
  assert all((b == a).all() for b, a in zip(before, after))
  assert "feedback ignored" in caplog.text


def test_metrics_report_each_branchs_counts(state_path):
  router = BanditRouter(state_path, "router", seed=19)
  router.send_feedback(np.zeros((2, 3)), [], 0.5, None, routing=2)
  metrics = {(m["key"], m["tags"]["branch"]): m["value"]
             for m in router.metrics()}
  assert metrics[("branch_tries", "2")] == 1002
  assert metrics[("branch_reward_sum", "2")] == 61
  assert all(m["type"] == "GAUGE" for m in router.metrics())


def test_reload_follows_a_new_state_file(tmp_path):
  path = write_states(tmp_path / "state.json", {
      "exp": [binary_arm("0", 900, 1000), binary_arm("1", 100, 1000)]})
  router = BanditRouter(path, "exp", seed=20, reload_interval_s=1e-9)
  assert route_counts(router, 100).tolist() == [1.0, 0.0]
  write_states(tmp_path / "state.json", {
      "exp": [binary_arm("0", 100, 1000), binary_arm("1", 900, 1000)]})
  os.utime(path, ns=(0, router._state_mtime + 1))  # pylint: disable=protected-access
  assert route_counts(router, 100).tolist() == [0.0, 1.0]
  # A state file being replaced (here: not there) keeps the state in memory.
  os.remove(path)
  assert route_counts(router, 100).tolist() == [0.0, 1.0]
  # Without an interval the file is read at start and on load() only.
  write_states(tmp_path / "state.json", {
      "exp": [binary_arm("0", 900, 1000), binary_arm("1", 100, 1000)]})
  fixed = BanditRouter(path, "exp", seed=21)
  write_states(tmp_path / "state.json", {
      "exp": [binary_arm("0", 100, 1000), binary_arm("1", 900, 1000)]})
  assert route_counts(fixed, 100).tolist() == [1.0, 0.0]
  fixed.load()
  assert route_counts(fixed, 100).tolist() == [0.0, 1.0]


def test_the_simulations_show_the_prior_and_the_continuous_updates():
  rows = {(row["new_rate"], row["weight"]): row
          for row in router_simulation.new_branch_table(
              seeds=2, requests=8000, delay=300)}
  # Before any feedback the uniform prior takes nearly all the traffic, the
  # pooled prior a third at most; both find a better new branch.
  assert rows[(0.02, 0)]["before"] > 0.9
  assert rows[(0.02, 100)]["before"] < 0.4
  assert rows[(0.06, 100)]["last"] > 0.9
  assert rows[(0.02, 100)]["last"] < 0.05
  result = router_simulation.continuous_table(seeds=2, requests=8000,
                                              delay=300)
  assert result["updating_last"] > 0.95 > result["fixed_last"]

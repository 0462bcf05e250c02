"""Tests of transforms.decisions.router_state."""

import json

import pytest

from transforms.decisions import router_state, stats
from transforms.decisions.stats import ArmTotals


def binary_arm(name, successes, samples):
  return ArmTotals(name, samples, samples, float(successes), float(successes),
                   True)


def state_of(arms, traffic_floor=0.0):
  return router_state.router_state(
      "exp", arms, stats.experiment_statistics(arms), traffic_floor)


def test_binary_state():
  arms = [binary_arm("b", 130, 1000), binary_arm("a", 100, 1000),
          binary_arm("c", 0, 0)]
  statistics = stats.experiment_statistics(arms)
  state = router_state.router_state("exp", arms, statistics)
  assert state["experiment_id"] == "exp"
  assert state["reward_type"] == "binary"
  assert [arm["arm"] for arm in state["arms"]] == ["a", "b", "c"]
  a, b, c = state["arms"]
  assert a == dict(arm="a", tries=1000, successes=100.0, value=0.1,
                   alpha=101.0, beta=901.0,
                   prob_best=statistics["a"]["prob_best"],
                   traffic_share=pytest.approx(statistics["a"]["prob_best"]),
                   reward_sq_sum=100.0)
  assert b["value"] == 0.13 and b["alpha"] == 131 and b["beta"] == 871
  assert c["tries"] == 0 and c["value"] is None
  assert (c["alpha"], c["beta"]) == (1, 1)
  # The untried arm's uniform prior is most likely to be the best.
  assert state["best_arm"] == "c"
  assert sum(arm["traffic_share"] for arm in state["arms"]) == pytest.approx(
      1, abs=1e-12)


def test_traffic_floor():
  arms = [binary_arm("a", 100, 1000), binary_arm("b", 160, 1000),
          binary_arm("c", 105, 1000)]
  state = state_of(arms, traffic_floor=0.1)
  shares = {arm["arm"]: arm["traffic_share"] for arm in state["arms"]}
  assert min(shares.values()) >= 0.1
  assert sum(shares.values()) == pytest.approx(1, abs=1e-12)
  for arm in state["arms"]:
    assert arm["traffic_share"] == pytest.approx(0.1 + 0.7 * arm["prob_best"])
  assert state["best_arm"] == "b"
  assert shares["b"] > 0.79


def test_traffic_shares():
  assert router_state.traffic_shares([0.5, 0.3, 0.2]) == pytest.approx(
      [0.5, 0.3, 0.2])
  assert router_state.traffic_shares([1.0, 0.0], 0.05) == pytest.approx(
      [0.95, 0.05])
  assert router_state.traffic_shares([0.9, 0.1], 0.5) == pytest.approx(
      [0.5, 0.5])
  # Arms without prob_best get the floor; without any, the split is equal.
  assert router_state.traffic_shares([0.6, None, 0.4], 0.1) == pytest.approx(
      [0.1 + 0.7 * 0.6, 0.1, 0.1 + 0.7 * 0.4])
  assert router_state.traffic_shares([None, None]) == [0.5, 0.5]
  assert router_state.traffic_shares([]) == []


def test_a_negative_traffic_floor_is_refused():
  with pytest.raises(ValueError):
    router_state.traffic_shares([0.5, 0.5], -0.01)


@pytest.mark.parametrize("floor,prob_best", [
    (0.34, [0.9, 0.1, 0.0]), (0.6, [1.0, 0.0]), (1 / 3, [0.2, 0.7, 0.1])])
def test_a_floor_the_arm_count_cannot_give_is_capped_at_an_equal_split(
    floor, prob_best):
  # The arm count comes from the data: a setting fine for 2 arms must not
  # fail the job when a third arm appears.
  n_arms = len(prob_best)
  assert router_state.traffic_shares(prob_best, floor) == pytest.approx(
      [1 / n_arms] * n_arms)


def test_best_arm_ties_go_to_the_higher_value_then_the_name():
  def record(name, prob_best, value):
    return dict(arm=name, prob_best=prob_best, value=value)

  best = router_state._best_arm
  assert best([record("a", 0.5, 0.1), record("b", 0.5, 0.2)]) == "b"
  assert best([record("b", 0.5, 0.1), record("a", 0.5, 0.1)]) == "a"
  assert best([record("a", None, 0.9), record("b", 0.0, 0.1)]) == "b"
  assert best([]) is None


def test_identical_arms_are_split_evenly():
  state = state_of([binary_arm(name, 20, 200) for name in ("y", "x")])
  assert [arm["traffic_share"] for arm in state["arms"]] == pytest.approx(
      [0.5, 0.5])
  assert state["best_arm"] == "x"


def test_continuous_state():
  arms = [ArmTotals("a", 4, 4, 10.0, 30.0, False),
          ArmTotals("b", 3, 3, 12.0, 50.0, False),
          ArmTotals("c", 1, 1, 9.0, 81.0, False)]
  state = state_of(arms, traffic_floor=0.05)
  assert state["reward_type"] == "continuous"
  a, b, c = state["arms"]
  assert a["alpha"] is None and a["beta"] is None
  assert a["value"] == 2.5 and b["value"] == 4.0 and c["value"] == 9.0
  # A router's normal posterior needs the variance: the sum of squares.
  assert [arm["reward_sq_sum"] for arm in state["arms"]] == [30.0, 50.0, 81.0]
  assert c["prob_best"] is None and c["traffic_share"] == pytest.approx(0.05)
  assert a["prob_best"] + b["prob_best"] == pytest.approx(1)
  assert state["best_arm"] == "b"


def test_empty_experiment():
  state = router_state.router_state("exp", [], {})
  assert state == dict(experiment_id="exp", reward_type=None, best_arm=None,
                       arms=[])


def test_json_round_trip():
  state = state_of([binary_arm("a", 100, 1000), binary_arm("b", 0, 0)])
  line = router_state.to_json(state)
  assert "\n" not in line
  assert json.loads(line)["arms"][1]["value"] is None
  assert router_state.from_json(line) == state
  with pytest.raises(ValueError):
    router_state.to_json(dict(state, extra=float("nan")))
  with pytest.raises(ValueError):
    router_state.from_json("[1, 2]")

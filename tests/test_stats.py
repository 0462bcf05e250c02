"""Known-answer, edge-case and simulation tests of transforms.decisions.stats."""

import math

import numpy as np
import pytest
import scipy.special
import scipy.stats

from transforms.decisions import stats
from transforms.decisions.stats import ArmTotals


def binary_arm(name, successes, samples, impressions=None):
  return ArmTotals(name, samples if impressions is None else impressions,
                   samples, float(successes), float(successes), True)


def continuous_arm(name, rewards, impressions=None):
  rewards = np.asarray(rewards, float)
  return ArmTotals(name, len(rewards) if impressions is None else impressions,
                   len(rewards), float(rewards.sum()),
                   float((rewards**2).sum()), False)


def exact_prob_b_beats_a(alpha_a, beta_a, alpha_b, beta_b):
  """P(B > A) for independent Beta posteriors with integer alpha_b."""
  return sum(
      math.exp(scipy.special.betaln(alpha_a + i, beta_a + beta_b)
               - math.log(beta_b + i) - scipy.special.betaln(1 + i, beta_b)
               - scipy.special.betaln(alpha_a, beta_a))
      for i in range(int(alpha_b)))


# Known answers.


def test_every_row_has_exactly_the_columns():
  rows = stats.experiment_statistics(
      [binary_arm("a", 10, 100), binary_arm("b", 12, 100)])
  assert set(rows) == {"a", "b"}
  for row in rows.values():
    assert tuple(row) == stats.COLUMNS
  assert set(stats.COLUMNS) == {
      "reward_type", "reward_mean", "ci_low", "ci_high", "posterior_alpha",
      "posterior_beta", "prob_best", "expected_loss", "control_arm", "lift",
      "lift_ci_low", "lift_ci_high", "p_value", "p_value_adj", "seq_p_value",
      "seq_ci_low", "seq_ci_high", "srm_p_value", "srm_alert"}


@pytest.mark.parametrize("successes,samples", [
    (0, 1), (1, 1), (0, 50), (50, 50), (7, 50), (123, 1000), (3, 100000)])
def test_binary_interval_is_wilson(successes, samples):
  row = stats.experiment_statistics([binary_arm("a", successes, samples)])["a"]
  expected = scipy.stats.binomtest(successes, samples).proportion_ci(
      confidence_level=0.95, method="wilson")
  assert row["reward_type"] == "binary"
  assert row["reward_mean"] == pytest.approx(successes / samples)
  assert row["ci_low"] == pytest.approx(expected.low, abs=1e-12)
  assert row["ci_high"] == pytest.approx(expected.high, abs=1e-12)


def test_wilson_interval_holds_its_mean_at_zero_and_one():
  # At 0 or n successes an end of the interval is the mean itself; rounding
  # used to leave the mean outside (e.g. low = 3.5e-18 at 0 of 100).
  n = np.arange(1, 3001)
  for successes in (np.zeros_like(n), n):
    low, high = stats.wilson_interval(successes, n)
    mean = successes / n
    assert np.all((low <= mean) & (mean <= high))
  assert np.all(stats.wilson_interval(0, n)[0] == 0.0)
  assert np.all(stats.wilson_interval(n, n)[1] == 1.0)


def test_wilson_interval_follows_alpha():
  expected = scipy.stats.binomtest(30, 200).proportion_ci(
      confidence_level=0.9, method="wilson")
  low, high = stats.wilson_interval(30, 200, alpha=0.1)
  assert (low, high) == pytest.approx((expected.low, expected.high))


def test_binary_posterior_is_beta_with_uniform_prior():
  row = stats.experiment_statistics([binary_arm("a", 30, 200)])["a"]
  assert row["posterior_alpha"] == 31
  assert row["posterior_beta"] == 171


def test_continuous_interval_is_student_t():
  rewards = np.random.default_rng(1).exponential(2.0, size=57)
  row = stats.experiment_statistics([continuous_arm("a", rewards)])["a"]
  low, high = scipy.stats.t.interval(0.95, len(rewards) - 1,
                                     loc=rewards.mean(),
                                     scale=scipy.stats.sem(rewards))
  assert row["reward_type"] == "continuous"
  assert row["reward_mean"] == pytest.approx(rewards.mean())
  assert row["ci_low"] == pytest.approx(low, rel=1e-9)
  assert row["ci_high"] == pytest.approx(high, rel=1e-9)
  assert row["posterior_alpha"] is None and row["posterior_beta"] is None


def test_sample_variance_from_sums():
  rewards = np.random.default_rng(2).normal(5.0, 3.0, size=40)
  variance = stats.sample_variance(rewards.sum(), (rewards**2).sum(), 40)
  assert variance == pytest.approx(rewards.var(ddof=1), rel=1e-9)


def test_equal_rewards_have_no_variance_despite_rounding():
  # Summed one reward at a time, as the accumulators do: 13 x 1.1 leaves a
  # residue of about 1e-15 in sum(x^2) - sum(x)^2 / n.
  total = sq_total = 0.0
  for _ in range(13):
    total, sq_total = total + 1.1, sq_total + 1.1 * 1.1
  assert stats.sample_variance(total, sq_total, 13) == 0.0
  # Neither arm varies: the comparison has no standard error, no p-value.
  rows = stats.experiment_statistics(
      [ArmTotals("a", 13, 13, total, sq_total, False),
       continuous_arm("b", [0.7] * 7)], control_arm="a")
  assert rows["b"]["p_value"] is None and rows["b"]["seq_p_value"] is None
  # A real spread far below the rewards' size is kept.
  rewards = 1000.0 + np.random.default_rng(3).normal(0.0, 0.01, size=50)
  assert stats.sample_variance(rewards.sum(), (rewards**2).sum(), 50) == (
      pytest.approx(rewards.var(ddof=1), rel=1e-3))


def test_binary_p_value_is_pooled_two_proportion_z_test():
  rows = stats.experiment_statistics(
      [binary_arm("control", 100, 1000), binary_arm("b", 120, 1000)],
      control_arm="control")
  pooled = 220 / 2000
  z = (0.12 - 0.10) / math.sqrt(pooled * (1 - pooled) * (2 / 1000))
  assert rows["b"]["p_value"] == pytest.approx(math.erfc(z / math.sqrt(2)))
  # The pooled z-test is the uncorrected chi-square test of the 2x2 table.
  table = [[120, 880], [100, 900]]
  chi2 = scipy.stats.chi2_contingency(table, correction=False)
  assert rows["b"]["p_value"] == pytest.approx(chi2.pvalue)
  assert rows["b"]["p_value_adj"] == rows["b"]["p_value"]


def test_continuous_p_value_is_welch_t_test():
  rng = np.random.default_rng(3)
  control, candidate = rng.normal(1.0, 1.0, 80), rng.normal(1.4, 2.5, 35)
  rows = stats.experiment_statistics(
      [continuous_arm("control", control), continuous_arm("b", candidate)],
      control_arm="control")
  expected = scipy.stats.ttest_ind_from_stats(
      candidate.mean(), candidate.std(ddof=1), len(candidate),
      control.mean(), control.std(ddof=1), len(control), equal_var=False)
  assert rows["b"]["p_value"] == pytest.approx(expected.pvalue, rel=1e-9)
  assert expected.pvalue < 0.5


def test_welch_z_has_the_p_value_of_welch_t():
  p_value, z, _ = stats.welch_test(1.3, 4.0, 12, 1.0, 1.0, 9)
  assert 2 * scipy.stats.norm.sf(abs(z)) == pytest.approx(p_value, rel=1e-9)
  assert z > 0


def test_lift_and_delta_method_interval():
  rows = stats.experiment_statistics(
      [binary_arm("control", 100, 1000), binary_arm("b", 120, 1000)],
      control_arm="control")
  # Var(p_b / p_c) ~ var_b / p_c^2 + p_b^2 var_c / p_c^4.
  variance = ((0.12 * 0.88 / 1000) / 0.1**2
              + 0.12**2 * (0.1 * 0.9 / 1000) / 0.1**4)
  half_width = 1.959963984540054 * math.sqrt(variance)
  assert rows["b"]["lift"] == pytest.approx(0.2)
  assert rows["b"]["lift_ci_low"] == pytest.approx(0.2 - half_width)
  assert rows["b"]["lift_ci_high"] == pytest.approx(0.2 + half_width)
  assert rows["b"]["lift_ci_low"] == pytest.approx(-0.10058, abs=1e-4)


def test_lift_is_relative_to_the_size_of_a_negative_control():
  lift, _ = stats.relative_lift(-0.5, 0.01, -1.0, 0.01)
  assert lift == pytest.approx(0.5)


def test_control_row_has_no_comparison():
  rows = stats.experiment_statistics(
      [binary_arm("control", 100, 1000), binary_arm("b", 120, 1000)],
      control_arm="control")
  control = rows["control"]
  assert control["control_arm"] == "control"
  assert rows["b"]["control_arm"] == "control"
  for column in ("lift", "lift_ci_low", "lift_ci_high", "p_value",
                 "p_value_adj", "seq_p_value", "seq_ci_low", "seq_ci_high"):
    assert control[column] is None


def test_control_defaults_to_most_impressions_then_name():
  arms = [binary_arm("b", 10, 100, impressions=500),
          binary_arm("a", 10, 100, impressions=500),
          binary_arm("c", 10, 100, impressions=499)]
  assert stats.experiment_statistics(arms)["c"]["control_arm"] == "a"
  rows = stats.experiment_statistics(arms, control_arm="missing")
  assert rows["c"]["control_arm"] == "a"
  rows = stats.experiment_statistics(arms, control_arm="c")
  assert rows["a"]["control_arm"] == "c"


def test_holm_by_hand():
  assert stats.holm_adjust([0.01, 0.04, 0.03]) == pytest.approx(
      [0.03, 0.06, 0.06])
  assert stats.holm_adjust([0.2, 0.01, 0.6, 0.4]) == pytest.approx(
      [0.6, 0.04, 0.8, 0.8])
  assert stats.holm_adjust([0.7, 0.9]) == pytest.approx([1.0, 1.0])
  assert stats.holm_adjust([0.3]) == [0.3]
  assert stats.holm_adjust([]) == []


def test_holm_across_candidate_arms():
  arms = [binary_arm("control", 100, 1000), binary_arm("b", 125, 1000),
          binary_arm("c", 135, 1000), binary_arm("d", 101, 1000)]
  rows = stats.experiment_statistics(arms, control_arm="control")
  p = {name: rows[name]["p_value"] for name in "bcd"}
  assert p["c"] < p["b"] < p["d"]
  assert rows["c"]["p_value_adj"] == pytest.approx(3 * p["c"])
  assert rows["b"]["p_value_adj"] == pytest.approx(max(3 * p["c"], 2 * p["b"]))
  assert rows["d"]["p_value_adj"] == pytest.approx(
      min(1.0, max(2 * p["b"], p["d"])))


def test_srm_is_chi_square_goodness_of_fit():
  arms = [binary_arm("a", 10, 100, impressions=5100),
          binary_arm("b", 10, 100, impressions=2900),
          binary_arm("c", 10, 100, impressions=2000)]
  allocation = {"a": 5, "b": 3, "c": 2, "gone": 4}  # weights, normalized
  rows = stats.experiment_statistics(arms, expected_allocation=allocation)
  expected = scipy.stats.chisquare([5100, 2900, 2000], [5000, 3000, 2000])
  for row in rows.values():
    assert row["srm_p_value"] == pytest.approx(expected.pvalue)
    assert row["srm_alert"] is False


def test_srm_defaults_to_equal_split_and_alerts_below_0_001():
  arms = [binary_arm("a", 10, 100, impressions=5200),
          binary_arm("b", 10, 100, impressions=4800)]
  rows = stats.experiment_statistics(arms)
  expected = scipy.stats.chisquare([5200, 4800])
  assert expected.pvalue < 0.001
  assert rows["a"]["srm_p_value"] == pytest.approx(expected.pvalue)
  assert rows["a"]["srm_alert"] is True and rows["b"]["srm_alert"] is True


def test_srm_traffic_to_an_arm_outside_the_allocation_is_a_mismatch():
  impressions = {"a": 500, "b": 500, "c": 3}
  assert stats.srm_p_value(impressions, {"a": 1, "b": 1}) == 0.0
  impressions = {"a": 500, "b": 500, "c": 0}
  assert stats.srm_p_value(impressions, {"a": 1, "b": 1}) == pytest.approx(1.0)


def test_srm_undefined_without_two_arms_or_impressions():
  assert stats.srm_p_value({"a": 100}) is None
  assert stats.srm_p_value({"a": 0, "b": 0}) is None
  with pytest.raises(ValueError):
    stats.srm_p_value({"a": 1, "b": 1}, {"a": -1, "b": 1})


def test_prob_best_two_arms_matches_closed_form():
  rows = stats.experiment_statistics(
      [binary_arm("a", 30, 300), binary_arm("b", 45, 310)])
  exact = exact_prob_b_beats_a(31, 271, 46, 266)
  assert rows["b"]["prob_best"] == pytest.approx(exact, abs=1e-5)
  assert rows["a"]["prob_best"] == pytest.approx(1 - exact, abs=1e-5)
  # Beta(1, 1) against Beta(3, 1): P(U > X) = 1 - E[X] = 1/4.
  rows = stats.experiment_statistics(
      [binary_arm("prior", 0, 0), binary_arm("lucky", 2, 2)])
  assert rows["prior"]["prob_best"] == pytest.approx(0.25, abs=1e-6)


@pytest.mark.parametrize("arms", [
    [(30, 300), (45, 310), (38, 290)],
    [(2, 30), (3, 40), (4, 35), (0, 0)],
    # Very peaked posteriors next to a wide one.
    [(50000, 1000000), (50300, 1000000), (49800, 1000000), (1, 12)],
    [(5, 8), (100000, 1100000)],
])
def test_prob_best_and_expected_loss_match_monte_carlo(arms):
  rows = stats.experiment_statistics(
      [binary_arm(str(i), s, n) for i, (s, n) in enumerate(arms)])
  rng = np.random.default_rng(4)
  draws = np.array([rng.beta(1 + s, 1 + n - s, size=1_000_000)
                    for s, n in arms])
  wins = np.bincount(draws.argmax(axis=0), minlength=len(arms)) / 1e6
  loss = draws.max(axis=0).mean() - draws.mean(axis=1)
  for i in range(len(arms)):
    assert rows[str(i)]["prob_best"] == pytest.approx(wins[i], abs=0.005)
    assert rows[str(i)]["expected_loss"] == pytest.approx(
        loss[i], abs=1e-3 * max(1.0, loss[i]))
  assert sum(row["prob_best"] for row in rows.values()) == pytest.approx(1.0)


def test_continuous_prob_best_matches_monte_carlo_of_normal_approximation():
  rng = np.random.default_rng(5)
  data = {"a": rng.normal(1.0, 1.0, 100), "b": rng.normal(1.1, 2.0, 150),
          "c": rng.normal(1.05, 0.5, 60)}
  rows = stats.experiment_statistics(
      [continuous_arm(name, x) for name, x in data.items()])
  draws = np.array([rng.normal(x.mean(), x.std(ddof=1) / math.sqrt(len(x)),
                               size=1_000_000) for x in data.values()])
  wins = np.bincount(draws.argmax(axis=0), minlength=3) / 1e6
  loss = draws.max(axis=0).mean() - draws.mean(axis=1)
  for i, name in enumerate(data):
    assert rows[name]["prob_best"] == pytest.approx(wins[i], abs=0.005)
    assert rows[name]["expected_loss"] == pytest.approx(loss[i], abs=1e-3)


def test_monte_carlo_option_agrees_with_integration():
  arms = [binary_arm("a", 30, 300), binary_arm("b", 45, 310),
          binary_arm("c", 38, 290)]
  integrated = stats.experiment_statistics(arms)
  sampled = stats.experiment_statistics(arms, mc_draws=200_000, seed=7)
  again = stats.experiment_statistics(arms, mc_draws=200_000, seed=7)
  for name in "abc":
    assert sampled[name]["prob_best"] == pytest.approx(
        integrated[name]["prob_best"], abs=0.005)
    assert sampled[name]["prob_best"] == again[name]["prob_best"]


def test_sequential_p_value_by_hand():
  rows = stats.experiment_statistics(
      [binary_arm("control", 100, 1000), binary_arm("b", 120, 1000)],
      control_arm="control")
  se = math.sqrt(0.11 * 0.89 * 2 / 1000)
  z = 0.02 / se
  r = (stats.DEFAULT_SEQ_TUNING * 0.11 / se)**2
  expected = math.sqrt(1 + r) * math.exp(-z**2 * r / (2 * (1 + r)))
  assert rows["b"]["seq_p_value"] == pytest.approx(expected)
  assert rows["b"]["seq_p_value"] == pytest.approx(0.8611, abs=1e-3)


def test_confidence_sequence_by_hand():
  low, high = stats.confidence_sequence(0.2, 0.05, alpha=0.05, tuning=0.1)
  v, tau2 = 0.05**2, 0.1**2
  half_width = math.sqrt((v + tau2) * v / tau2 * (
      2 * math.log(1 / 0.05) + math.log((v + tau2) / v)))
  assert (low, high) == pytest.approx((0.2 - half_width, 0.2 + half_width))


@pytest.mark.parametrize("successes,samples", [
    ((100, 120), (1000, 1000)), ((5, 15), (100, 120)),
    ((500, 560), (10000, 10000)), ((2000, 2150), (20000, 20000)),
    ((40, 20), (400, 400))])
def test_sequential_is_more_conservative_than_fixed_horizon(successes,
                                                            samples):
  rows = stats.experiment_statistics(
      [binary_arm("control", successes[0], samples[0]),
       binary_arm("b", successes[1], samples[1])], control_arm="control")
  b = rows["b"]
  assert b["seq_p_value"] >= b["p_value"]
  assert b["seq_ci_low"] < b["lift_ci_low"] < b["lift"]
  assert b["lift"] < b["lift_ci_high"] < b["seq_ci_high"]


def test_sequential_on_continuous_rewards():
  rng = np.random.default_rng(6)
  control, candidate = rng.normal(10, 3, 4000), rng.normal(10.6, 3, 4000)
  rows = stats.experiment_statistics(
      [continuous_arm("control", control), continuous_arm("b", candidate)],
      control_arm="control")
  b = rows["b"]
  assert b["p_value"] <= b["seq_p_value"] < 1e-6
  assert b["seq_ci_low"] < b["lift_ci_low"] < b["lift"] < b["lift_ci_high"]
  assert b["lift_ci_high"] < b["seq_ci_high"]
  assert 0 < b["seq_ci_low"]


def test_alpha_and_seq_tuning_change_the_intervals():
  arms = [binary_arm("control", 500, 10000), binary_arm("b", 560, 10000)]
  base = stats.experiment_statistics(arms, control_arm="control")["b"]
  wider = stats.experiment_statistics(arms, control_arm="control",
                                      alpha=0.01)["b"]
  tuned = stats.experiment_statistics(arms, control_arm="control",
                                      seq_tuning=0.5)["b"]
  assert wider["ci_low"] < base["ci_low"]
  assert wider["lift_ci_low"] < base["lift_ci_low"]
  assert wider["seq_ci_low"] < base["seq_ci_low"]
  assert tuned["seq_p_value"] != base["seq_p_value"]
  assert tuned["p_value"] == base["p_value"]


def test_invalid_arguments_raise():
  arms = [binary_arm("a", 1, 10)]
  with pytest.raises(ValueError):
    stats.experiment_statistics(arms, alpha=1.5)
  with pytest.raises(ValueError):
    stats.experiment_statistics(arms, seq_tuning=0)
  with pytest.raises(ValueError):
    stats.experiment_statistics(arms + arms)


# Edge cases.


def test_no_arms():
  assert stats.experiment_statistics([]) == {}


def test_arm_with_zero_samples():
  rows = stats.experiment_statistics(
      [binary_arm("control", 10, 100), binary_arm("new", 0, 0, impressions=0)])
  new = rows["new"]
  assert new["reward_mean"] is None
  assert new["ci_low"] is None and new["ci_high"] is None
  assert (new["posterior_alpha"], new["posterior_beta"]) == (1, 1)
  # The uniform prior still beats a rate near 0.1 most of the time.
  assert new["prob_best"] == pytest.approx(
      exact_prob_b_beats_a(11, 91, 1, 1), abs=1e-5)
  assert new["expected_loss"] >= 0
  for column in ("lift", "lift_ci_low", "p_value", "p_value_adj",
                 "seq_p_value", "seq_ci_low"):
    assert new[column] is None
  # The new arm was planned half of the traffic and got none of it.
  assert rows["control"]["srm_p_value"] < 1e-20
  assert rows["new"]["srm_alert"] is True


def test_control_with_zero_samples():
  rows = stats.experiment_statistics(
      [binary_arm("control", 0, 0, impressions=10), binary_arm("b", 5, 10)],
      control_arm="control")
  assert rows["b"]["lift"] is None and rows["b"]["p_value"] is None
  assert rows["b"]["prob_best"] > 0.5


def test_all_successes_and_all_failures():
  rows = stats.experiment_statistics(
      [binary_arm("control", 0, 200), binary_arm("b", 200, 200)],
      control_arm="control")
  control, b = rows["control"], rows["b"]
  assert b["reward_mean"] == 1.0 and b["ci_high"] == pytest.approx(1.0)
  assert control["reward_mean"] == 0.0 and control["ci_low"] == pytest.approx(0)
  assert b["prob_best"] == pytest.approx(1.0)
  assert b["p_value"] < 1e-80
  # The lift over a zero control rate is undefined.
  assert b["lift"] is None and b["seq_p_value"] is not None


def test_both_arms_all_successes_has_nothing_to_test():
  rows = stats.experiment_statistics(
      [binary_arm("control", 50, 50), binary_arm("b", 80, 80)],
      control_arm="control")
  b = rows["b"]
  assert b["lift"] == 0.0
  assert b["p_value"] is None and b["p_value_adj"] is None
  assert b["seq_p_value"] is None and b["lift_ci_low"] is None
  assert b["prob_best"] == pytest.approx(
      exact_prob_b_beats_a(51, 1, 81, 1), abs=1e-5)


def test_single_arm():
  row = stats.experiment_statistics([binary_arm("only", 30, 100)])["only"]
  assert row["prob_best"] == 1.0
  assert row["expected_loss"] == 0.0
  assert row["control_arm"] == "only"
  assert row["lift"] is None and row["p_value"] is None
  assert row["srm_p_value"] is None and row["srm_alert"] is None


def test_identical_arms_are_equally_likely_best():
  rows = stats.experiment_statistics(
      [binary_arm(name, 40, 400) for name in "abc"])
  for name in "abc":
    assert rows[name]["prob_best"] == pytest.approx(1 / 3, abs=1e-9)
    assert rows[name]["expected_loss"] == pytest.approx(
        rows["a"]["expected_loss"], abs=1e-12)
    assert rows[name]["srm_p_value"] == 1.0
  assert rows["b"]["p_value"] == 1.0 and rows["b"]["lift"] == 0.0


def test_zero_variance_continuous_arms():
  rows = stats.experiment_statistics(
      [continuous_arm("a", [2.0] * 20), continuous_arm("b", [2.0] * 30),
       continuous_arm("c", [1.5] * 25)], control_arm="a")
  assert rows["a"]["ci_low"] == rows["a"]["ci_high"] == 2.0
  assert rows["a"]["prob_best"] == pytest.approx(0.5, abs=1e-6)
  assert rows["b"]["prob_best"] == pytest.approx(0.5, abs=1e-6)
  assert rows["c"]["prob_best"] == pytest.approx(0.0, abs=1e-9)
  assert rows["c"]["expected_loss"] == pytest.approx(0.5, rel=1e-6)
  assert rows["c"]["lift"] == pytest.approx(-0.25)
  assert rows["c"]["p_value"] is None and rows["c"]["seq_p_value"] is None


def test_zero_variance_arm_against_a_noisy_one():
  rewards = np.random.default_rng(8).normal(0.0, 1.0, 400)
  rows = stats.experiment_statistics(
      [continuous_arm("noisy", rewards), continuous_arm("flat", [0.05] * 50)])
  se = rewards.std(ddof=1) / math.sqrt(400)
  expected = scipy.stats.norm.cdf((0.05 - rewards.mean()) / se)
  assert rows["flat"]["prob_best"] == pytest.approx(expected, abs=1e-4)


def test_continuous_arms_with_too_few_samples():
  rows = stats.experiment_statistics(
      [continuous_arm("a", [1.0, 2.0, 4.0]), continuous_arm("one", [3.0]),
       ArmTotals("none", 5, 0, 0.0, 0.0, False)], control_arm="a")
  one, none = rows["one"], rows["none"]
  assert one["reward_mean"] == 3.0 and one["ci_low"] is None
  assert one["prob_best"] is None and none["prob_best"] is None
  assert one["lift"] == pytest.approx(3.0 / (7 / 3) - 1)
  assert one["p_value"] is None and one["lift_ci_low"] is None
  assert none["reward_mean"] is None
  assert rows["a"]["prob_best"] == 1.0


def test_reward_type_is_binary_only_if_every_arm_with_samples_is():
  mixed = stats.experiment_statistics(
      [binary_arm("a", 3, 10), continuous_arm("b", [0.5, 1.0, 0.0])])
  assert {row["reward_type"] for row in mixed.values()} == {"continuous"}
  assert mixed["a"]["posterior_alpha"] is None
  empty_continuous = ArmTotals("new", 0, 0, 0.0, 0.0, False)
  rows = stats.experiment_statistics([binary_arm("a", 3, 10), empty_continuous])
  assert rows["new"]["reward_type"] == "binary"
  assert rows["new"]["posterior_alpha"] == 1


# Simulations.


def test_clearly_better_arm_is_found():
  rng = np.random.default_rng(9)
  rates = {"a": 0.10, "b": 0.13, "c": 0.105}
  for _ in range(20):
    arms = [binary_arm(name, rng.binomial(20000, rate), 20000)
            for name, rate in rates.items()]
    rows = stats.experiment_statistics(arms, control_arm="a")
    assert rows["b"]["prob_best"] > 0.95
    assert rows["b"]["expected_loss"] < rows["c"]["expected_loss"]


def test_fixed_horizon_p_value_is_uniform_under_the_null():
  rng = np.random.default_rng(10)
  p_values = []
  for _ in range(300):
    arms = [continuous_arm(name, rng.exponential(2.0, size=150))
            for name in ("control", "b")]
    rows = stats.experiment_statistics(arms, control_arm="control")
    p_values.append(rows["b"]["p_value"])
  assert scipy.stats.kstest(p_values, "uniform").pvalue > 0.001


def test_binary_fixed_horizon_rejection_rate_under_the_null():
  rng = np.random.default_rng(11)
  rejections = 0
  for _ in range(300):
    arms = [binary_arm(name, rng.binomial(2000, 0.1), 2000)
            for name in ("control", "b")]
    rows = stats.experiment_statistics(arms, control_arm="control")
    rejections += rows["b"]["p_value"] < 0.05
  assert scipy.stats.binomtest(rejections, 300, 0.05).pvalue > 0.001


def peeking_rejections(p_fixed, p_sequential, alpha=0.05):
  """Share of experiments that some look declares significant."""
  fixed = (p_fixed < alpha).any(axis=1).mean()
  sequential = (np.nan_to_num(p_sequential, nan=1.0) < alpha).any(axis=1).mean()
  return fixed, sequential


def test_sequential_p_value_survives_peeking_binary():
  """20 looks at each of 1000 A/A experiments, 200 requests per arm apart."""
  rng = np.random.default_rng(12)
  looks = 200 * np.arange(1, 21)
  control = rng.binomial(200, 0.1, size=(1000, 20)).cumsum(axis=1)
  candidate = rng.binomial(200, 0.1, size=(1000, 20)).cumsum(axis=1)
  p_fixed, z, se = stats.two_proportion_test(candidate, looks, control, looks)
  pooled_mean = (candidate + control) / (2 * looks)
  p_sequential = stats.sequential_p_value(z, se, pooled_mean)
  fixed, sequential = peeking_rejections(p_fixed, p_sequential)
  assert sequential <= 0.05
  assert fixed > 0.12  # peeking at the fixed p-value inflates it well past 5%
  # Valid at every level, not only 5%: under the null, P(some look's
  # sequential p-value < alpha) <= alpha (it is conservative, not uniform).
  for alpha in (0.01, 0.1, 0.2, 0.5):
    assert peeking_rejections(p_fixed, p_sequential, alpha)[1] <= alpha
  # Each single look alone is still a valid 5% test.
  assert abs((p_fixed[:, -1] < 0.05).mean() - 0.05) < 0.025
  # The row's sequential p-value is the one simulated here.
  rows = stats.experiment_statistics(
      [binary_arm("control", control[0, -1], 4000),
       binary_arm("b", candidate[0, -1], 4000)], control_arm="control")
  assert rows["b"]["seq_p_value"] == pytest.approx(p_sequential[0, -1])


def test_confidence_sequence_survives_peeking_binary():
  rng = np.random.default_rng(13)
  looks = 200 * np.arange(1, 21)
  control = rng.binomial(200, 0.1, size=(1000, 20)).cumsum(axis=1) / looks
  candidate = rng.binomial(200, 0.1, size=(1000, 20)).cumsum(axis=1) / looks
  lift, se = stats.relative_lift(candidate, candidate * (1 - candidate) / looks,
                                 control, control * (1 - control) / looks)
  low, high = stats.confidence_sequence(lift, se)
  fixed_low, fixed_high = stats.wald_interval(lift, se)
  sequential_misses = ((low > 0) | (high < 0)).any(axis=1).mean()
  fixed_misses = ((fixed_low > 0) | (fixed_high < 0)).any(axis=1).mean()
  assert sequential_misses <= 0.05
  assert fixed_misses > 0.12


def test_sequential_p_value_survives_peeking_continuous():
  rng = np.random.default_rng(14)
  looks = 100 * np.arange(1, 21)
  # Skewed rewards, e.g. revenue per request.
  control = rng.exponential(3.0, size=(1000, 2000))
  candidate = rng.exponential(3.0, size=(1000, 2000))

  def totals(rewards):
    sums = rewards.cumsum(axis=1)[:, looks - 1]
    sq_sums = (rewards**2).cumsum(axis=1)[:, looks - 1]
    return sums / looks, stats.sample_variance(sums, sq_sums, looks), sums

  control_mean, control_var, control_sum = totals(control)
  mean, var, total = totals(candidate)
  p_fixed, z, se = stats.welch_test(mean, var, looks, control_mean,
                                    control_var, looks)
  p_sequential = stats.sequential_p_value(z, se, (total + control_sum)
                                          / (2 * looks))
  fixed, sequential = peeking_rejections(p_fixed, p_sequential)
  assert sequential <= 0.05
  assert fixed > 0.12
  assert np.all(p_sequential >= p_fixed)


def test_sequential_test_detects_a_real_lift():
  rng = np.random.default_rng(15)
  looks = 1000 * np.arange(1, 21)
  control = rng.binomial(1000, 0.10, size=(500, 20)).cumsum(axis=1)
  candidate = rng.binomial(1000, 0.12, size=(500, 20)).cumsum(axis=1)
  _, z, se = stats.two_proportion_test(candidate, looks, control, looks)
  p_sequential = stats.sequential_p_value(
      z, se, (candidate + control) / (2 * looks))
  assert (p_sequential < 0.05).any(axis=1).mean() > 0.9

"""Contextual bandit statistics and off-policy estimators: known answers, merges, coverage."""

import itertools
import json
import math

import numpy as np
import pyarrow as pa
import pytest
import scipy.special

from simulation import contextual
from transforms.logs import contract
from transforms.policy import estimators
from transforms.policy import linear
from transforms.policy import requests as policy_requests
from transforms.policy import targets


def _random_logs(rng, n=500, arms=3):
  propensity_table = rng.dirichlet(np.ones(arms), n) * 0.9 + 0.1 / arms
  logged = np.array([rng.choice(arms, p=p) for p in propensity_table])
  propensity = propensity_table[np.arange(n), logged]
  target = rng.dirichlet(np.ones(arms), n)
  model = rng.random((n, arms))
  reward = rng.random(n) * 2 - 0.5
  return reward, logged, propensity, target, model


def _brute_force(reward, logged, propensity, target, model):
  """The published formulas, one record at a time."""
  n = len(reward)
  w = [target[i, logged[i]] / propensity[i] for i in range(n)]
  dm = [sum(target[i, a] * model[i, a] for a in range(target.shape[1]))
        for i in range(n)]
  dr_terms = [dm[i] + w[i] * (reward[i] - model[i, logged[i]])
              for i in range(n)]
  return {
      "ips": sum(w[i] * reward[i] for i in range(n)) / n,
      "snips": sum(w[i] * reward[i] for i in range(n)) / sum(w),
      "dm": sum(dm) / n,
      "dr": sum(dr_terms) / n,
      "sndr": sum(dm) / n + sum(w[i] * (reward[i] - model[i, logged[i]])
                                for i in range(n)) / sum(w),
  }, w, dm, dr_terms


def _accumulate(reward, logged, propensity, target, model, splits,
                replicates=0, ids=None):
  parts = []
  for rows in np.array_split(np.arange(len(reward)), splits):
    t = estimators.terms(reward[rows], logged[rows], propensity[rows],
                         target[rows], model[rows])
    seeds = None if ids is None else estimators.request_seeds(
        pa.array([ids[i] for i in rows]))
    parts.append(estimators.ValueAccumulator(target.shape[1], replicates).add(
        logged[rows], t, target[rows], seeds))
  return parts


@pytest.mark.parametrize("seed", range(5))
def test_estimators_equal_the_published_formulas(seed):
  rng = np.random.default_rng(seed)
  data = _random_logs(rng)
  expected, w, dm, dr_terms = _brute_force(*data)
  parts = _accumulate(*data, splits=7)
  total = parts[0]
  for part in parts[1:]:
    total = total.merge(part)
  rows = {r["estimator"]: r for r in total.estimates()}
  n = len(w)
  reward, logged = data[0], data[1]
  for name, value in expected.items():
    assert rows[name]["value"] == pytest.approx(value, rel=1e-9, abs=1e-12)
  # Normal intervals: the standard error of each estimator's per-record
  # terms (IPS, DM, DR) or of its influence terms (SNIPS, SNDR).
  ips_terms = np.array(w) * reward
  snips = expected["snips"]
  mean_w = np.mean(w)
  model_logged = data[4][np.arange(n), logged]
  residual = reward - model_logged
  correction = np.sum(np.array(w) * residual) / np.sum(w)
  influence = {
      "ips": ips_terms, "dm": np.array(dm), "dr": np.array(dr_terms)}
  for name, values in influence.items():
    se = np.std(values, ddof=1) / math.sqrt(n)
    assert rows[name]["ci_high"] - rows[name]["value"] == pytest.approx(
        estimators.Z_95 * se, rel=1e-9)
  snips_influence = np.array(w) * (reward - snips) / mean_w
  sndr_influence = (np.array(dm) - np.mean(dm) +
                    np.array(w) * (residual - correction) / mean_w)
  for name, values in (("snips", snips_influence), ("sndr", sndr_influence)):
    se = math.sqrt(np.sum(values ** 2)) / n
    assert rows[name]["ci_high"] - rows[name]["value"] == pytest.approx(
        estimators.Z_95 * se, rel=1e-9)
  assert rows["ips"]["ess"] == pytest.approx(np.sum(w) ** 2 /
                                             np.sum(np.square(w)), rel=1e-9)
  assert rows["ips"]["max_weight"] == pytest.approx(max(w), rel=1e-12)
  assert rows["ips"]["logged_value"] == pytest.approx(np.mean(reward),
                                                      rel=1e-9)


def test_unsupported_share_is_target_mass_on_arms_never_played():
  reward = np.array([1.0, 0.0, 1.0])
  logged = np.array([0, 0, 1])  # arm 2 never played
  propensity = np.array([0.5, 0.5, 0.5])
  target = np.array([[0.5, 0.2, 0.3], [0.1, 0.1, 0.8], [0.0, 1.0, 0.0]])
  t = estimators.terms(reward, logged, propensity, target, np.zeros((3, 3)))
  accumulator = estimators.ValueAccumulator(3).add(logged, t, target)
  assert accumulator.summary()["unsupported_share"] == pytest.approx(1.1 / 3)


def test_an_arm_the_target_does_not_know_has_weight_zero():
  t = estimators.terms(np.array([1.0, 1.0]), np.array([-1, 0]),
                       np.array([0.5, 0.5]), np.array([[1.0], [1.0]]),
                       np.zeros((2, 1)))
  assert list(t.weight) == [0.0, 2.0]


def test_value_sums_and_bootstrap_do_not_depend_on_batching_or_order():
  rng = np.random.default_rng(3)
  data = _random_logs(rng, n=300)
  ids = [f"req-{i}" for i in range(300)]
  one = _accumulate(*data, splits=1, replicates=50, ids=ids)[0]
  parts = _accumulate(*data, splits=6, replicates=50, ids=ids)
  for order in ([0, 1, 2, 3, 4, 5], [5, 3, 1, 0, 2, 4]):
    total = parts[order[0]]
    for i in order[1:]:
      total = total.merge(parts[i])
    np.testing.assert_allclose(total.boot, one.boot, rtol=1e-12)
    np.testing.assert_allclose(total.sums, one.sums, rtol=1e-12)
    np.testing.assert_array_equal(total.played, one.played)
    assert total.max_weight == one.max_weight
  rows = one.estimates()
  assert all(r["boot_ci_low"] < r["value"] < r["boot_ci_high"] for r in rows)


def test_poisson_weights_have_poisson_moments_and_depend_on_the_id_only():
  seeds = estimators.request_seeds(pa.array([f"r{i}" for i in range(20000)]))
  weights = estimators.poisson_weights(seeds, 10)
  assert weights.mean() == pytest.approx(1.0, abs=0.01)
  assert weights.var() == pytest.approx(1.0, abs=0.02)
  assert np.mean(weights == 0) == pytest.approx(math.exp(-1), abs=0.01)
  again = estimators.poisson_weights(seeds[::-1], 10)[::-1]
  np.testing.assert_array_equal(weights, again)


def test_ridge_equals_numpy_solve_and_merge_order_does_not_matter():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(400, 6))
  reward = rng.normal(size=400)
  ts = contextual.START + rng.uniform(0, 10 * linear.DAY_S, 400)
  for decay in (1.0, 0.9):
    parts = [linear.LinearStats.of(x[r], reward[r], ts[r], decay)
             for r in np.array_split(np.arange(400), 8)]
    states = []
    for order in itertools.islice(itertools.permutations(range(8)), 0, 40, 7):
      states.append(linear.merge_all([parts[i] for i in order], decay))
    # A tree of merges, too.
    left = linear.merge_all(parts[:3], decay)
    right = linear.merge_all(parts[3:], decay)
    states.append(right.merge(left, decay))
    weight = decay ** ((ts.max() - ts) / linear.DAY_S)
    a = (x * weight[:, None]).T @ x
    b = (x * weight[:, None]).T @ reward
    for state in states:
      np.testing.assert_allclose(state.a, a, rtol=1e-9)
      np.testing.assert_allclose(state.b, b, rtol=1e-9, atol=1e-12)
      assert state.n == pytest.approx(weight.sum(), rel=1e-12)
      assert state.count == 400
    model = linear.ridge(states[0], 2.0)
    np.testing.assert_allclose(
        model.theta, np.linalg.solve(a + 2.0 * np.eye(6), b), rtol=1e-9)
    np.testing.assert_allclose(model.cholesky @ model.cholesky.T,
                               a + 2.0 * np.eye(6), rtol=1e-12)


def _models(rng, arms=3, dim=4):
  models = []
  for k in range(arms):
    x = rng.normal(size=(50, dim))
    stats = linear.LinearStats.of(x, rng.normal(size=50), np.zeros(50))
    models.append(linear.ridge(stats, 1.0, f"arm{k}"))
  return models


def test_linucb_and_greedy_pick_the_highest_score():
  rng = np.random.default_rng(2)
  models = _models(rng)
  x = rng.normal(size=(100, 4))
  mean = np.stack([x @ m.theta for m in models], axis=1)
  spread = np.stack([
      [math.sqrt(v @ np.linalg.inv(m.cholesky @ m.cholesky.T) @ v) for v in x]
      for m in models], axis=1)
  greedy = linear.action_probabilities(models, x, "greedy")
  linucb = linear.action_probabilities(models, x, "linucb", alpha=2.0,
                                       epsilon=0.3)
  assert (greedy.argmax(axis=1) == mean.argmax(axis=1)).all()
  assert (linucb.argmax(axis=1) == (mean + 2.0 * spread).argmax(axis=1)).all()
  np.testing.assert_allclose(linucb.max(axis=1), 0.7 + 0.1)
  np.testing.assert_allclose(linucb.sum(axis=1), 1.0)


def test_linear_thompson_probabilities_match_sampling():
  rng = np.random.default_rng(4)
  models = _models(rng)
  x = rng.normal(size=(5, 4))
  probabilities = linear.action_probabilities(models, x, "linear_thompson",
                                              alpha=0.8)
  # Sample theta ~ N(theta_k, alpha^2 (A + lambda I)^-1) per arm.
  draws = 200_000
  scores = []
  for m in models:
    noise = rng.standard_normal((draws, 4))
    inverse_t = np.linalg.inv(m.cholesky).T  # L^-T z ~ N(0, (L L^T)^-1)
    thetas = m.theta + 0.8 * noise @ inverse_t.T
    scores.append(thetas @ x.T)
  winners = np.argmax(np.stack(scores), axis=0)  # (draws, contexts)
  sampled = np.stack([(winners == k).mean(axis=0) for k in range(3)], axis=1)
  np.testing.assert_allclose(probabilities, sampled, atol=0.005)


def test_state_fields_round_trip():
  rng = np.random.default_rng(5)
  models = _models(rng)
  fields = linear.state_fields(models, "linucb", 1.5, 1.0, 1.0, 0.0,
                               "features", ["features[0]"])
  text = json.dumps(fields)
  back = linear.models_from_state(json.loads(text))
  x = rng.normal(size=(20, 4))
  np.testing.assert_allclose(
      linear.action_probabilities(back, x, "linear_thompson"),
      linear.action_probabilities(models, x, "linear_thompson"), rtol=1e-12)


def _joined(rows):
  table = pa.Table.from_pylist(rows, schema=pa.schema([
      ("request_id", pa.string()), ("ts", pa.float64()),
      ("experiment_id", pa.dictionary(pa.int32(), pa.string())),
      ("arm", pa.dictionary(pa.int32(), pa.string())),
      ("shadow", pa.bool_()), ("propensity", pa.float64()),
      ("features", pa.list_(pa.float64())),
      ("attributes", pa.map_(pa.string(), pa.string())),
      ("reward", pa.float64())]))
  return table


def _row(i, **fields):
  row = dict(request_id=f"r{i}", ts=1.0 * i, experiment_id="e", arm="a",
             shadow=False, propensity=0.5, features=[1.0, 2.0],
             attributes=[("age", "31"), ("score", "0.5")], reward=1.0)
  row.update(fields)
  return row


def test_unusable_requests_are_rejected_with_their_reason():
  table = _joined([
      _row(0), _row(1, propensity=None), _row(2, propensity=0.0),
      _row(3, propensity=1.5), _row(4, propensity=float("nan")),
      _row(5, features=[1.0]), _row(6, features=None),
      _row(7, reward=None)])
  spec = policy_requests.ContextSpec(policy_requests.FEATURES, length=2)
  usable = policy_requests.policy_requests(table, spec, True)
  assert list(usable.request_id.to_pylist()) == ["r0", "r7"]
  assert list(usable.reward) == [1.0, 0.0]
  np.testing.assert_array_equal(usable.x, [[1, 1, 2], [1, 1, 2]])
  reasons = [(row["request_id"], r.reason) for row, r in usable.rejected]
  assert reasons == [
      ("r1", policy_requests.MISSING_PROPENSITY),
      ("r2", contract.PROPENSITY_OUT_OF_RANGE),
      ("r3", contract.PROPENSITY_OUT_OF_RANGE),
      ("r4", policy_requests.MISSING_PROPENSITY),
      ("r5", policy_requests.CONTEXT_LENGTH),
      ("r6", policy_requests.MISSING_CONTEXT)]
  for row, _ in usable.rejected:
    assert json.loads(policy_requests.raw_record(row))["request_id"] == row[
        "request_id"]


def test_attributes_are_parsed_as_numbers():
  table = _joined([
      _row(0), _row(1, attributes=[("age", "x"), ("score", "1")]),
      _row(2, attributes=[("score", "1")]),
      _row(3, attributes=[("age", "NaN"), ("score", "1")]),
      _row(4, attributes=[("age", "1e3"), ("score", "-2")]),
      _row(5, attributes=[("age", "true"), ("score", "1")])])
  spec = policy_requests.ContextSpec.parse("age,score", None)
  usable = policy_requests.policy_requests(table, spec, False)
  np.testing.assert_array_equal(usable.x, [[1, 31, 0.5], [1, 1000, -2]])
  assert [r.reason for _, r in usable.rejected] == [
      policy_requests.CONTEXT_NOT_NUMERIC, policy_requests.MISSING_CONTEXT,
      policy_requests.CONTEXT_NOT_NUMERIC, policy_requests.CONTEXT_NOT_NUMERIC]


def test_target_specs_and_their_errors():
  spec = targets.parse_spec("even=split:a=1,b=3")
  target = targets.fixed_split(spec.name, spec.argument)
  assert target.arms("any") == ["a", "b"]
  np.testing.assert_allclose(target.probabilities("any", np.ones((2, 1))),
                             [[0.25, 0.75]] * 2)
  for bad in ("nokind", "x=unknown:1", "x=split:"):
    with pytest.raises(ValueError):
      targets.parse_spec(bad)
  with pytest.raises(ValueError, match="names repeat"):
    targets.parse_specs(["a=split:x=1", "a=split:y=1"])
  with pytest.raises(ValueError, match="weights"):
    targets.fixed_split("z", "a=0,b=0")
  state = {"experiment_id": "other", "arms": [
      {"arm": "a", "traffic_share": 0.4}, {"arm": "b", "traffic_share": 0.6}]}
  from_file = targets.from_states(
      targets.parse_spec("rec=router_state:s.json"), [json.dumps(state)], 1)
  with pytest.raises(ValueError, match="no state for experiment mine"):
    targets.check_experiment([from_file], "mine")
  with pytest.raises(ValueError, match="s.json is not a router_state file"):
    targets.from_states(targets.parse_spec("x=router_state:s.json"),
                        ["arm,impressions"], 1)
  with pytest.raises(ValueError, match="no contextual part"):
    targets.from_states(targets.parse_spec("ctx=linucb:s.json"),
                        [json.dumps(state)], 3)


def _fit(env, logged, ridge_lambda=1.0):
  x = np.hstack([np.ones((len(logged.arm), 1)), logged.contexts])
  models = []
  for k, arm in enumerate(env.arms):
    rows = logged.arm == k
    stats = linear.LinearStats.of(x[rows], logged.reward[rows],
                                  np.zeros(rows.sum()))
    models.append(linear.ridge(stats, ridge_lambda, arm))
  return models


def _with_intercept(contexts):
  return np.hstack([np.ones((len(contexts), 1)), contexts])


def test_confidence_intervals_cover_the_true_value():
  """200 seeds: logs of a uniform router, a contextual target policy."""
  env = contextual.Environment()
  uniform = lambda c: np.full((len(c), 3), 1 / 3)  # noqa: E731
  # The target: a model fitted once on separate logs, acting greedily with
  # 10% exploration.
  fitted = _fit(env, contextual.route(env, np.random.default_rng(999), 5000,
                                      uniform))

  def target_policy(contexts):
    return linear.action_probabilities(fitted, _with_intercept(contexts),
                                       "greedy", epsilon=0.1)

  true_value = env.true_value(target_policy)
  covered = {name: 0 for name in ("ips", "snips", "dr")}
  widths = {name: [] for name in covered}
  seeds = 200
  for seed in range(seeds):
    logged = contextual.route(env, np.random.default_rng(seed), 1500, uniform)
    model = linear.expected_rewards(_fit(env, logged),
                                    _with_intercept(logged.contexts))
    target = target_policy(logged.contexts)
    t = estimators.terms(logged.reward, logged.arm, logged.propensity,
                         target, model)
    rows = {r["estimator"]: r for r in estimators.ValueAccumulator(3).add(
        logged.arm, t, target).estimates()}
    for name in covered:
      covered[name] += rows[name]["ci_low"] <= true_value <= rows[name][
          "ci_high"]
      widths[name].append(rows[name]["ci_high"] - rows[name]["ci_low"])
  for name, count in covered.items():
    assert count / seeds >= 0.92, (name, count)
  assert np.mean(widths["dr"]) < np.mean(widths["ips"])


def test_every_dead_letter_reason_is_documented():
  import pathlib
  docs = pathlib.Path(__file__).resolve().parents[1] / "docs" / "policy.md"
  text = docs.read_text()
  assert [r for r in policy_requests.DEAD_LETTER_REASONS
          if f"`{r}`" not in text] == []


def test_arms_are_aged_to_the_experiments_newest_request():
  x = np.ones((2, 1))
  old = linear.LinearStats.of(x, np.ones(2), np.zeros(2), decay=0.5)
  new = linear.LinearStats.of(x, np.ones(2), np.full(2, 2 * linear.DAY_S),
                              decay=0.5)
  models = linear.experiment_models([("new", new), ("old", old)], 1.0, 0.5)
  assert [m.arm for m in models] == ["new", "old"]
  assert models[0].n == pytest.approx(2.0)
  assert models[1].n == pytest.approx(0.5)  # two days old: 0.5^2 each
  np.testing.assert_allclose(models[1].theta, [0.5 / 1.5])


@pytest.mark.parametrize("ratio", [1.5, 10, 100, 1000])
def test_linear_thompson_probabilities_equal_a_fine_integral(ratio):
  """Arms whose score spreads differ by up to `ratio`."""
  rng = np.random.default_rng(int(ratio))
  mean = rng.normal(size=(40, 3)) * 0.05
  scale = 0.01 * np.exp(rng.uniform(0, math.log(ratio), size=(40, 3)))
  got = linear.thompson_probabilities(mean, scale)
  for row in range(40):
    low = np.min(mean[row] - 9 * scale[row])
    high = np.max(mean[row] + 9 * scale[row])
    s = np.linspace(low, high, 400_001)
    densities = [np.exp(-0.5 * ((s - m) / sd) ** 2) / (sd * math.sqrt(2 * math.pi))
                 for m, sd in zip(mean[row], scale[row])]
    cdfs = [0.5 * scipy.special.erfc(-(s - m) / (sd * math.sqrt(2)))
            for m, sd in zip(mean[row], scale[row])]
    expected = []
    for k in range(3):
      integrand = densities[k] * np.prod([cdfs[j] for j in range(3) if j != k],
                                         axis=0)
      expected.append(np.trapezoid(integrand, s))
    np.testing.assert_allclose(got[row], np.array(expected) / sum(expected),
                               atol=2e-6)

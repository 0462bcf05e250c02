"""The off-policy evaluation pipeline and the contextual router state, end to end."""

import collections
import json

import numpy as np
import pytest

from pipelines import policy_evaluation
from pipelines import reward_batch
from simulation import contextual
from transforms.logs import quality
from transforms.policy import estimators
from transforms.policy import linear
from transforms.policy import requests as policy_requests

UNIFORM = "uniform=split:arm-a=1,arm-b=1,arm-c=1"


def _write(path, records):
  path.write_text("".join(
      (r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
  return str(path)


def _read(directory, table):
  return [json.loads(line) for path in sorted(directory.glob(f"{table}-*"))
          for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def logs(tmp_path_factory):
  """Logs of a uniform router, with one bad record of every kind appended."""
  directory = tmp_path_factory.mktemp("logs")
  env = contextual.Environment()
  logged = contextual.route(env, np.random.default_rng(5), 2000,
                            lambda c: np.full((len(c), 3), 1 / 3))
  predictions, feedback = contextual.log_records(env, logged)
  good = dict(predictions[0])
  bad = []
  for i, change in enumerate([
      {"propensity": 0}, {"propensity": 1.5}, {"propensity": None},
      {"propensity": float("nan")}, {"features": [0.1]},
      {"features": [0.1, 0.2, 0.3]}, {"features": None}]):
    record = dict(good, request_id=f"bad{i}", **change)
    bad.append(json.dumps(record))  # NaN: the reader's JSON takes it
  return dict(env=env, logged=logged,
              predictions=_write(directory / "p.jsonl", predictions + bad),
              feedback=_write(directory / "f.jsonl", feedback),
              directory=directory)


def _known_values(logged, target, ridge_lambda=1.0):
  """The estimators on the good records, computed directly with numpy."""
  x = np.hstack([np.ones((len(logged.arm), 1)),
                 np.round(logged.contexts, 6)])
  predicted = np.zeros((len(x), 3))
  for k in range(3):
    rows = logged.arm == k
    a = x[rows].T @ x[rows] + ridge_lambda * np.eye(3)
    predicted[:, k] = x @ np.linalg.solve(a, x[rows].T @ logged.reward[rows])
  terms = estimators.terms(logged.reward, logged.arm, logged.propensity,
                           target, predicted)
  rows = estimators.ValueAccumulator(3).add(logged.arm, terms,
                                            target).estimates()
  return {r["estimator"]: r for r in rows}


def test_policy_values_bad_records_and_balance(logs, tmp_path):
  out = tmp_path / "out"
  policy_evaluation.run([
      f"--predictions={logs['predictions']}", f"--feedback={logs['feedback']}",
      "--context_dim=2", f"--target_policy={UNIFORM}",
      "--target_policy=b=split:arm-b=1", "--bootstrap=20",
      f"--output_dir={out}", "--runner=FnApiRunner"])
  values = {(r["policy"], r["estimator"]): r
            for r in _read(out, "policy_value")}
  assert len(values) == 10
  n = len(logs["logged"].arm)
  for policy, probabilities in (("uniform", [1 / 3] * 3), ("b", [0, 1, 0])):
    target = np.tile(probabilities, (n, 1))
    expected = _known_values(logs["logged"], target)
    for estimator, row in expected.items():
      got = values[(policy, estimator)]
      for field in ("value", "ci_low", "ci_high", "ess", "logged_value"):
        assert got[field] == pytest.approx(row[field], rel=1e-9), (
            policy, estimator, field)
      assert got["n"] == n
      assert got["boot_ci_low"] < got["value"] < got["boot_ci_high"]
  dead = collections.Counter(r["reason"] for r in _read(out, "dead_letter"))
  # 0, 1.5 and NaN are out of (0, 1].
  assert dead == {"propensity_out_of_range": 3,
                  policy_requests.MISSING_PROPENSITY: 1,
                  policy_requests.CONTEXT_LENGTH: 2,
                  policy_requests.MISSING_CONTEXT: 1}
  rows = _read(out, "data_quality")
  assert quality.balance(rows)["prediction"] == (n + 7, n + 7)


def test_contextual_router_state_and_its_evaluation(logs, tmp_path):
  state_dir = tmp_path / "state"
  reward_batch.run([
      f"--predictions={logs['predictions']}", f"--feedback={logs['feedback']}",
      "--context_dim=2", "--contextual_policy=linucb", "--policy_alpha=0.5",
      "--ridge_lambda=2", f"--output_dir={state_dir}", "--runner=FnApiRunner"])
  [state] = _read(state_dir, "router_state")
  fields = state["contextual"]
  assert (fields["policy"], fields["alpha"], fields["dim"]) == ("linucb", 0.5,
                                                                3)
  logged = logs["logged"]
  x = np.hstack([np.ones((len(logged.arm), 1)), np.round(logged.contexts, 6)])
  # The request without a propensity has a context: a reward run uses it
  # (reward 0: no feedback on it).
  x = np.vstack([x, x[:1]])
  served = np.r_[logged.arm, logged.arm[0]]
  reward = np.r_[logged.reward, 0.0]
  for k, arm in enumerate(fields["arms"]):
    rows = served == k
    a = x[rows].T @ x[rows] + 2 * np.eye(3)
    np.testing.assert_allclose(
        arm["theta"], np.linalg.solve(a, x[rows].T @ reward[rows]),
        rtol=1e-9)
    lower = np.reshape(arm["cholesky"], (3, 3))
    np.testing.assert_allclose(lower @ lower.T, a, rtol=1e-9)
  # The contexts balance on their own; the bad ones are dead letters.
  rows = _read(state_dir, "data_quality")
  balance = quality.balance(rows)
  assert balance["context"] == (len(logged.arm) + 4, len(logged.arm) + 4)
  assert balance["prediction"][0] == balance["prediction"][1]

  out = tmp_path / "out"
  state_file = str(state_dir / "router_state*.json")
  policy_evaluation.run([
      f"--predictions={logs['predictions']}", f"--feedback={logs['feedback']}",
      "--context_dim=2", f"--target_policy=ctx=linucb:{state_file}",
      f"--target_policy=free=router_state:{state_file}",
      "--bootstrap=0", f"--output_dir={out}", "--runner=FnApiRunner"])
  values = {(r["policy"], r["estimator"]): r for r in _read(out, "policy_value")}
  env = logs["env"]
  models = linear.models_from_state(fields)
  true_contextual = env.true_value(lambda c: linear.action_probabilities(
      models, np.hstack([np.ones((len(c), 1)), c]), "linucb", 0.5))
  for estimator in ("ips", "snips", "dr"):
    row = values[("ctx", estimator)]
    assert row["ci_low"] <= true_contextual <= row["ci_high"], estimator
    assert row["value"] > values[("free", estimator)]["value"]
  assert values[("ctx", "dr")]["boot_ci_low"] is None


def test_a_target_file_for_another_experiment_is_refused(logs, tmp_path):
  state = tmp_path / "other.json"
  state.write_text(json.dumps({"experiment_id": "other", "arms": [
      {"arm": "arm-a", "traffic_share": 1.0}]}) + "\n")
  with pytest.raises(ValueError, match="no state for experiment "
                     "contextual-ranker"):
    policy_evaluation.run([
        f"--predictions={logs['predictions']}",
        f"--feedback={logs['feedback']}", "--experiment_id=contextual-ranker",
        f"--target_policy=rec=router_state:{state}",
        f"--output_dir={tmp_path / 'out'}", "--runner=FnApiRunner"])
  # Without --experiment_id the run says in data_quality what it left out.
  out = tmp_path / "out2"
  policy_evaluation.run([
      f"--predictions={logs['predictions']}", f"--feedback={logs['feedback']}",
      f"--target_policy=rec=router_state:{state}", "--bootstrap=0",
      f"--output_dir={out}", "--runner=FnApiRunner"])
  assert _read(out, "policy_value") == []
  [row] = [r for r in _read(out, "data_quality")
           if r["record_type"] == "policy_not_evaluated"]
  assert row["metric"] == "rec:contextual-ranker"
  # With no context read, the three records with bad features are usable.
  assert row["count"] == len(logs["logged"].arm) + 3


@pytest.mark.parametrize("argv,message", [
    (["--context_dim=2", "--context_features=a"], "not both"),
    (["--context_dim=3", "--target_policy=u=bogus:1"], "kind must be"),
    (["--missing_reward=ignore"], "missing_reward must be zero"),
    ([f"--target_policy={UNIFORM}"], "names repeat"),
])
def test_bad_options_are_clear_errors(logs, tmp_path, argv, message):
  with pytest.raises(ValueError, match=message):
    policy_evaluation.run([
        f"--predictions={logs['predictions']}",
        f"--feedback={logs['feedback']}", f"--output_dir={tmp_path}",
        "--runner=FnApiRunner", f"--target_policy={UNIFORM}", *argv])


def test_the_demo_estimates_cover_the_true_values(tmp_path, capsys):
  from pipelines import policy_demo
  results = policy_demo.run_policy_demo(str(tmp_path), requests=8000)
  for name, (dr, true_value) in results.items():
    assert dr["ci_low"] <= true_value <= dr["ci_high"], name
  assert results["linucb"][0]["ci_low"] > results["context_free"][0]["ci_high"]
  assert "beats the context-free one" in capsys.readouterr().out


def _keras_model(path, weights, bias, activation):
  import keras
  layer = keras.layers.Dense(len(bias), activation=activation)
  model = keras.Sequential([keras.Input((len(weights),)), layer])
  layer.set_weights([np.asarray(weights, np.float32),
                     np.asarray(bias, np.float32)])
  model.save(path)
  return str(path)


def test_keras_target_policy_and_reward_model(logs, tmp_path):
  policy_weights, policy_bias = [[2.0, -2.0, 0.0], [0.0, 0.0, 2.0]], [0, 0, 0]
  reward_weights = [[0.3, -0.3, 0.0], [0.0, 0.0, 0.35]]
  reward_bias = [0.45, 0.5, 0.4]
  policy = _keras_model(tmp_path / "policy.keras", policy_weights,
                        policy_bias, "softmax")
  # Outputs in the order c, a, b: the arms are matched by name.
  order = [2, 0, 1]
  reward = _keras_model(tmp_path / "reward.keras",
                        np.asarray(reward_weights)[:, order],
                        np.asarray(reward_bias)[order], None)
  out = tmp_path / "out"
  policy_evaluation.run([
      f"--predictions={logs['predictions']}", f"--feedback={logs['feedback']}",
      "--context_dim=2", f"--target_policy=net=keras:{policy}#arm-a,arm-b,arm-c",
      f"--reward_model={reward}#arm-c,arm-a,arm-b", "--bootstrap=0",
      f"--output_dir={out}", "--runner=FnApiRunner"])
  values = {r["estimator"]: r for r in _read(out, "policy_value")}
  logged = logs["logged"]
  contexts = np.round(logged.contexts, 6).astype(np.float32).astype(float)
  logits = contexts @ np.asarray(policy_weights)
  target = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
  predicted = contexts @ np.asarray(reward_weights) + reward_bias
  terms = estimators.terms(logged.reward, logged.arm, logged.propensity,
                           target, predicted)
  expected = {r["estimator"]: r for r in estimators.ValueAccumulator(3).add(
      logged.arm, terms, target).estimates()}
  for estimator, row in expected.items():
    # The models compute in float32.
    assert values[estimator]["value"] == pytest.approx(row["value"],
                                                       abs=1e-6), estimator
  env = logs["env"]
  true_value = env.true_value(lambda c: np.exp(c @ np.asarray(policy_weights))
                              / np.exp(c @ np.asarray(policy_weights)).sum(
                                  axis=1, keepdims=True))
  assert values["dr"]["ci_low"] <= true_value <= values["dr"]["ci_high"]


def test_a_keras_model_of_another_width_is_refused(logs, tmp_path):
  policy = _keras_model(tmp_path / "wide.keras", np.zeros((3, 3)),
                        np.zeros(3), "softmax")
  with pytest.raises(ValueError, match="takes 3 inputs, the context has 2"):
    policy_evaluation.run([
        f"--predictions={logs['predictions']}",
        f"--feedback={logs['feedback']}", "--context_dim=2",
        f"--target_policy=net=keras:{policy}#arm-a,arm-b,arm-c",
        f"--output_dir={tmp_path / 'out'}", "--runner=FnApiRunner"])


def test_contextual_state_and_policy_values_through_the_bigquery_emulator(
    bq_emulator, logs, tmp_path):
  from transforms.io import bigquery
  emulator, project = bq_emulator
  common = [f"--predictions={logs['predictions']}",
            f"--feedback={logs['feedback']}", "--context_dim=2",
            f"--bigquery_emulator_host={emulator.host}",
            "--partition_date=2026-11-21", "--runner=FnApiRunner"]
  reward_batch.run(common + [f"--output_dataset={project}:contextual_it",
                             "--contextual_policy=linear_thompson",
                             f"--output_dir={tmp_path / 'state'}"])
  client = bigquery.bigquery_client(project, emulator.host)
  [state] = bigquery.read_rows(client, project, "contextual_it",
                               "router_state")
  [from_file] = _read(tmp_path / "state", "router_state")
  for got, want in zip(state["contextual"]["arms"],
                       from_file["contextual"]["arms"]):
    assert got["arm"] == want["arm"]
    np.testing.assert_allclose(got["theta"], want["theta"], rtol=1e-12)
    np.testing.assert_allclose(got["cholesky"], want["cholesky"], rtol=1e-12)
  assert state["contextual"]["policy"] == "linear_thompson"

  policy_evaluation.run(common + [
      f"--output_dataset={project}:policy_it", f"--target_policy={UNIFORM}",
      "--bootstrap=10"])
  rows = bigquery.read_rows(client, project, "policy_it", "policy_value")
  assert sorted(r["estimator"] for r in rows) == sorted(
      estimators.ESTIMATORS)
  assert all(r["policy"] == "uniform" and r["n"] == 2000 for r in rows)

"""The Seldon Core v1 round trip with Seldon's own code (seldon-core 1.19 in
.venv-seldon): feedback bodies as its client writes them, and the example
router under the real `seldon-core-microservice` wrapper, routed and fed back
with the real SeldonClient, its feedback shipped to files and counted by the
batch pipeline, and the router restarted on the pipeline's new state."""

import collections
import concurrent.futures
import contextlib
import json

import pytest

import seldon_support
from pipelines import reward_batch
from transforms.decisions import router_state, stats
from transforms.decisions.stats import ArmTotals
from transforms.logs import contract

T0 = 1_795_219_200.0  # 2026-11-21T00:00:00Z


def routed_branch(routing):
  """The branch Seldon's routing names, as the pipeline reads it (entries
  of -1 and -2 are nodes that did not route)."""
  routes = [branch for branch in routing.values() if branch >= 0]
  return str(routes[0]) if routes else None


def test_feedback_of_seldons_client_reads_as_seldon_reads_it():
  cases = [{"puid": f"p{i}", "reward": reward, "routing": routing}
           for i, (reward, routing) in enumerate(
               (reward, routing) for reward in (0.0, 1.0, 0.25, -2.5)
               for routing in ({"router": 0}, {"router": 1, "model-a": -1},
                               None, {"model-a": -1}))]
  out = seldon_support.run_client("bodies", json.dumps(cases))
  assert len(out) == len(cases)
  for case, item in zip(cases, out):
    body = item["body"]
    # Protobuf's JSON leaves out a reward of 0 and an empty routing.
    assert ("reward" in body) == (case["reward"] != 0)
    assert ("routing" in body["response"]["meta"]) == bool(case["routing"])
    for record in ({**body, "timestamp": T0},
                   {"headers": {"Ce-Type": [contract.SELDON_FEEDBACK_TYPE],
                                "Ce-Time": ["2026-11-21T00:00:00Z"],
                                "Content-Type": ["application/json"]},
                    "body": json.dumps(body)}):
      parsed = contract.parse_feedback(json.dumps(record))
      assert parsed == {
          "request_id": case["puid"], "ts": T0,
          "reward": item["seldon_reward"],
          "experiment_id": "router" if routed_branch(
              item["seldon_routing"]) else None,
          "arm": routed_branch(item["seldon_routing"])}
    assert item["seldon_reward"] == case["reward"]


def write_initial_state(path):
  """A binary experiment "router" and a continuous one "scorer", two arms
  each, 50 tries per arm."""
  experiments = {
      "router": [ArmTotals("0", 50, 50, 10.0, 10.0, True),
                 ArmTotals("1", 50, 50, 10.0, 10.0, True)],
      "scorer": [ArmTotals("0", 50, 50, 50.0, 100.0, False),
                 ArmTotals("1", 50, 50, 50.0, 100.0, False)]}
  path.write_text("".join(
      router_state.to_json(router_state.router_state(
          name, arms, stats.experiment_statistics(arms))) + "\n"
      for name, arms in experiments.items()))
  return {name: {a.arm: a for a in arms} for name, arms in experiments.items()}


def parameters(state_path, unit, seed):
  return [{"name": "state_path", "type": "STRING", "value": str(state_path)},
          {"name": "experiment_id", "type": "STRING", "value": unit},
          {"name": "seed", "type": "INT", "value": str(seed)}]


def metrics_by_branch(metrics):
  """branch -> (tries, reward sum) from the router's custom metrics."""
  values = {(m["key"], m["tags"]["branch"]): m["value"] for m in metrics}
  return {branch: (values[("branch_tries", branch)],
                   values[("branch_reward_sum", branch)])
          for _, branch in values}


@contextlib.contextmanager
def routers(tmp_path, state_path, tag):
  with contextlib.ExitStack() as stack:
    yield {unit: stack.enter_context(seldon_support.router_microservice(
        unit, parameters(state_path, unit, seed),
        tmp_path / f"{unit}-{tag}.log"))
           for unit, seed in (("router", 1), ("scorer", 2))}


def in_parallel(calls):
  with concurrent.futures.ThreadPoolExecutor(len(calls)) as pool:
    futures = {key: pool.submit(*call) for key, call in calls.items()}
    return {key: future.result() for key, future in futures.items()}


def ship(sent_by_unit, directory):
  """The feedback bodies as a log shipper writes them: half bare with the
  shipper's timestamp, half as binary-mode CloudEvents (HTTP headers as Go
  writes them, the body as text)."""
  directory.mkdir()
  bare, binary = [], []
  for unit, sent in sent_by_unit.items():
    for i, item in enumerate(sent):
      if i % 2:
        bare.append({**item["body"], "timestamp": T0 + i})
      else:
        binary.append({"headers": {
            "Ce-Id": [f"{unit}-{i}"], "Ce-Specversion": ["1.0"],
            "Ce-Type": [contract.SELDON_FEEDBACK_TYPE],
            "Ce-Source": ["http://0.0.0.0:8000/"], "Ce-Modelid": [unit],
            "Ce-Time": [f"2026-11-21T00:00:{i % 60:02d}Z"],
            "Ce-Requestid": [f"feedback-{unit}-{i}"],
            "Content-Type": ["application/json"]},
            "body": json.dumps(item["body"])})
  for name, records in (("bare", bare), ("binary", binary)):
    (directory / f"{name}.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in records))
  return str(directory / "*.jsonl")


def read_output(out, prefix):
  return [json.loads(line) for path in sorted(out.glob(f"{prefix}*"))
          for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.slow
def test_round_trip_under_seldons_wrapper_and_client(tmp_path):
  state_path = tmp_path / "router_state-initial.json"
  initial = write_initial_state(state_path)
  plans = {"router": {"requests": 150, "seed": 1, "rates": [0.2, 0.7],
                      "unrouted_every": 10},
           "scorer": {"requests": 120, "seed": 2, "means": [1.0, 2.0],
                      "unrouted_every": 10}}
  with routers(tmp_path, state_path, "first") as endpoints:
    results = in_parallel({
        unit: (seldon_support.run_client, "round-trip", endpoints[unit], unit,
               json.dumps(plans[unit])) for unit in endpoints})

  sent_by_unit = {unit: result["sent"] for unit, result in results.items()}
  routed = {unit: collections.defaultdict(lambda: [0, 0.0])
            for unit in sent_by_unit}
  for unit, sent in sent_by_unit.items():
    for item in sent:
      if item["routed"]:
        routed[unit][str(item["branch"])][0] += 1
        routed[unit][str(item["branch"])][1] += item["reward"]
    assert set(routed[unit]) == {"0", "1"}  # both branches were served
  # The router counted every routed feedback, and no feedback without routing
  # (the wrapper passes routing None), on top of the state it started from.
  for unit, result in results.items():
    counted = metrics_by_branch(result["metrics"])
    for branch, (n, reward_sum) in routed[unit].items():
      arm = initial[unit][branch]
      assert counted[branch][0] == arm.samples + n
      # Seldon's reward and metric values are 32-bit floats.
      assert counted[branch][1] == pytest.approx(arm.reward_sum + reward_sum,
                                                 rel=1e-6)
  zero_rewards = sum(1 for item in sent_by_unit["router"]
                     if item["reward"] == 0.0)
  assert zero_rewards > 30
  assert all("reward" not in item["body"] for item in sent_by_unit["router"]
             if item["reward"] == 0.0)

  out = tmp_path / "out"
  # Every tenth feedback has no routing: dead-lettered by design (10 %).
  reward_batch.run([f"--feedback={ship(sent_by_unit, tmp_path / 'logs')}",
                    f"--output_dir={out}", "--runner=FnApiRunner",
                    "--max_dead_letter_fraction=0.15"])

  # Every routed feedback counted on its arm, rewards 0 included.
  arm_stats = {(row["experiment_id"], row["arm"]): row
               for row in read_output(out, "arm_stats")}
  assert set(arm_stats) == {(unit, branch) for unit in routed
                            for branch in routed[unit]}
  for unit in routed:
    for branch, (n, reward_sum) in routed[unit].items():
      row = arm_stats[(unit, branch)]
      assert row["samples"] == row["feedback_count"] == n
      assert row["reward_sum"] == pytest.approx(reward_sum, rel=1e-12)
  assert arm_stats[("router", "0")]["reward_type"] == "binary"
  assert arm_stats[("scorer", "0")]["reward_type"] == "continuous"
  # Feedback without routing has no arm without --predictions: dead-lettered
  # with its reason, and the counts balance.
  unrouted = sum(not item["routed"] for sent in sent_by_unit.values()
                 for item in sent)
  dead = read_output(out, "dead_letter")
  assert len(dead) == unrouted
  assert {(row["reason"], row["detail"]) for row in dead} == {
      (contract.MISSING_FIELD, "experiment_id")}
  quality = {(row["record_type"], row["metric"]): row["count"]
             for row in read_output(out, "data_quality")}
  total = sum(len(sent) for sent in sent_by_unit.values())
  assert quality[("feedback", "read")] == total
  assert quality[("feedback", "counted")] == total - unrouted

  # Restarted on the new state, the routers continue from it and route as
  # it says.
  [new_state] = out.glob("router_state*.json")
  states = {json.loads(line)["experiment_id"]: json.loads(line)
            for line in new_state.read_text().splitlines()}
  with routers(tmp_path, new_state, "restarted") as endpoints:
    results = in_parallel({
        unit: (seldon_support.run_client, "route", endpoints[unit], "300")
        for unit in endpoints})
  for unit, result in results.items():
    arms = {arm["arm"]: arm for arm in states[unit]["arms"]}
    counted = metrics_by_branch(result["metrics"])
    for branch, (n, reward_sum) in routed[unit].items():
      assert counted[branch][0] == arms[branch]["tries"] == n
      assert counted[branch][1] == pytest.approx(reward_sum, rel=1e-6)
    shares = collections.Counter(str(b) for b in result["branches"])
    for branch, arm in arms.items():
      assert shares[branch] / 300 == pytest.approx(arm["prob_best"], abs=0.1)
    assert states[unit]["best_arm"] == "1"
    assert shares["1"] / 300 > 0.9


def test_feedback_without_routing_counts_on_its_predictions_arm(tmp_path):
  # The client's bodies with no routing entry (rewards 0 and 1), and the
  # application's prediction log in our contract: joined by puid.
  cases = [{"puid": f"p{i}", "reward": float(i % 2), "routing": None}
           for i in range(6)]
  bodies = [item["body"] for item in seldon_support.run_client(
      "bodies", json.dumps(cases))]
  feedback = tmp_path / "feedback.jsonl"
  feedback.write_text("".join(
      json.dumps({**body, "timestamp": T0 + 60}) + "\n" for body in bodies))
  predictions = tmp_path / "predictions.jsonl"
  predictions.write_text("".join(json.dumps({
      "request_id": f"p{i}", "timestamp": T0, "experiment_id": "router",
      "arm": str(i % 3)}) + "\n" for i in range(6)))
  out = tmp_path / "out"
  reward_batch.run([f"--predictions={predictions}", f"--feedback={feedback}",
                    f"--output_dir={out}", "--runner=FnApiRunner"])
  rows = {row["arm"]: row for row in read_output(out, "arm_stats")}
  expected = collections.defaultdict(float)
  for case in cases:
    expected[str(int(case["puid"][1:]) % 3)] += case["reward"]
  assert {arm: (row["samples"], row["reward_sum"])
          for arm, row in rows.items()} == {
              arm: (2, reward_sum) for arm, reward_sum in expected.items()}
  assert read_output(out, "dead_letter") == []

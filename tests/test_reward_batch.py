"""The batch reward pipeline on messy logs: TestPipeline with assert_that."""

import collections
import gzip
import json

import apache_beam as beam
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that
from apache_beam.testing.util import equal_to
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines import reward_batch
from transforms.decisions import arm_table
from transforms.io import bigquery
from transforms.logs import contract
from transforms.logs import quality
from transforms.attribution import rewards
from simulation import simulate

T0 = 1_795_219_200.0  # 2026-11-21T00:00:00Z
HOUR = 3600.0


def pipeline():
  return TestPipeline(runner="FnApiRunner")


def write_lines(path, records):
  path.write_text("".join(
      (r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
  return str(path)


def pred(rid, ts, arm, experiment="exp", **extra):
  return {"request_id": rid, "timestamp": T0 + ts, "experiment_id": experiment,
          "arm": arm, **extra}


def fb(rid, ts, reward, **extra):
  return {"request_id": rid, "timestamp": T0 + ts, "reward": reward, **extra}


BAD_PREDICTIONS = [
    "{truncated", "42",
    json.dumps(pred("", 0, "a")),
    json.dumps(pred("p-bad-type", 0, 1)),
    json.dumps({**pred("p-bad-ts", 0, "a"), "timestamp": "noon"}),
    json.dumps(pred("p-bad-prop", 0, "a", propensity=0)),
]
BAD_FEEDBACK = [
    "null-ish text", '{"request_id": "f", "timestamp": 1, "reward": NaN}',
    json.dumps(fb("f2", 0, "1")),
    json.dumps({"timestamp": T0, "reward": 1, "response": {"meta": {
        "puid": "x", "routing": {"r1": 0, "r2": 1}}}}),  # bare Seldon
    json.dumps(fb("ghost", 0, 1)),  # no such prediction: orphan
]
EXPECTED_REASONS = collections.Counter({
    ("prediction", contract.INVALID_JSON): 1,
    ("prediction", contract.NOT_AN_OBJECT): 1,
    ("prediction", contract.MISSING_FIELD): 1,
    ("prediction", contract.WRONG_TYPE): 1,
    ("prediction", contract.BAD_TIMESTAMP): 1,
    ("prediction", contract.PROPENSITY_OUT_OF_RANGE): 1,
    ("feedback", contract.INVALID_JSON): 1,
    ("feedback", contract.NON_FINITE_REWARD): 1,
    ("feedback", contract.WRONG_TYPE): 1,
    ("feedback", contract.AMBIGUOUS_ROUTING): 1,
    ("feedback", contract.ORPHAN_FEEDBACK): 1,
})


@pytest.fixture
def messy_logs(tmp_path):
  predictions = [
      pred("a1", 0, "a"), pred("a2", 1, "a"), pred("a3", 2, "a"),
      pred("a1", 5, "a"),  # duplicate prediction log
      pred("b1", 0, "b"), pred("b2", 1, "b"),
      pred("s1", 0, "shadow-model", shadow=True),
  ] + BAD_PREDICTIONS
  feedback = [
      fb("a1", 10, 1), fb("a1", 11, 1),  # duplicate
      fb("a2", 10, 0),
      fb("a3", 2 * HOUR, 1),  # late for a 1 h window
      fb("b1", 10, 1), fb("s1", 10, 1),  # on a shadow prediction
  ] + BAD_FEEDBACK
  # Seldon feedback for b2, in a CloudEvent, gzip-compressed file.
  seldon = {"specversion": "1.0", "type": contract.SELDON_FEEDBACK_TYPE,
            "id": "ev", "time": "2026-11-21T00:00:30Z",
            "data": {"response": {"meta": {"puid": "b2",
                                           "routing": {"exp": 1}}},
                     "reward": 1.0}}
  with gzip.open(tmp_path / "feedback-2.jsonl.gz", "wt") as f:
    f.write(json.dumps(seldon) + "\n")
  return (write_lines(tmp_path / "predictions-1.jsonl", predictions),
          write_lines(tmp_path / "feedback-1.jsonl", feedback),
          str(tmp_path / "feedback-*"))


def run_aggregation(predictions, feedback, **attribution):
  config = rewards.AttributionConfig(
      with_predictions=predictions is not None, **attribution)
  p = pipeline()
  outputs = p | reward_batch.RewardAggregation(
      predictions, feedback, config, arm_table.StatisticsConfig(
          control_arm="a"), join_shards=4)
  return p, outputs


def project_arm(row):
  return (row["experiment_id"], row["arm"], row["impressions"],
          row["feedback_count"], row["samples"], row["reward_sum"])


@pytest.mark.parametrize("missing,expected_arms", [
    ("zero", [("exp", "a", 3, 2, 3, 1.0), ("exp", "b", 2, 2, 2, 2.0)]),
    ("ignore", [("exp", "a", 3, 2, 2, 1.0), ("exp", "b", 2, 2, 2, 2.0)]),
])
def test_messy_logs_attribution(messy_logs, missing, expected_arms):
  predictions, _, feedback = messy_logs
  p, outputs = run_aggregation(predictions, feedback,
                               attribution_window_s=HOUR,
                               missing_reward=missing)
  assert_that(outputs["arm_stats"] | beam.Map(project_arm),
              equal_to(expected_arms), label="ArmTotals")
  with p:
    pass


@pytest.mark.parametrize("reduce,expected_sum", [
    ("max", 5.0 + 3.0), ("sum", 8.0 + 3.0),
    ("first", 5.0 + 3.0),  # r1's earliest feedback (t=10), not its first line
    ("last", 2.0 + 3.0),   # r1's latest counted feedback (t=30)
])
def test_duplicate_feedback_is_reduced_in_event_time_order(tmp_path, reduce,
                                                           expected_sum):
  predictions = write_lines(tmp_path / "predictions.jsonl",
                            [pred("r1", 0, "a"), pred("r2", 0, "a")])
  write_lines(tmp_path / "feedback-1.jsonl",
              [fb("r1", 30, 2.0), fb("r2", 5, 3.0), fb("r1", 2 * HOUR, 100.0)])
  write_lines(tmp_path / "feedback-2.jsonl", [fb("r1", 20, 1.0)])
  write_lines(tmp_path / "feedback-3.jsonl", [fb("r1", 10, 5.0)])
  p, outputs = run_aggregation(predictions, str(tmp_path / "feedback-*"),
                               attribution_window_s=HOUR, reward_reduce=reduce)
  assert_that(outputs["arm_stats"] | beam.Map(project_arm),
              equal_to([("exp", "a", 2, 2, 2, expected_sum)]),
              label="ArmTotals")
  with p:
    pass


def test_every_dead_letter_reason_and_the_record_balance(messy_logs):
  predictions, _, feedback = messy_logs
  p, outputs = run_aggregation(predictions, feedback,
                               attribution_window_s=HOUR)

  def check_reasons(rows):
    got = collections.Counter((r["record_type"], r["reason"]) for r in rows)
    assert got == EXPECTED_REASONS, got
    assert all(r["raw"] and r["source_file"] for r in rows)

  def check_balance(rows):
    counts = {(r["record_type"], r["metric"]): r["count"] for r in rows}
    dead = collections.Counter()
    for (record_type, metric), count in counts.items():
      if metric.startswith("dead_letter:"):
        dead[record_type] += count
    assert counts[("prediction", "read")] == 7 + len(BAD_PREDICTIONS)
    assert counts[("feedback", "read")] == 7 + len(BAD_FEEDBACK)
    assert counts[("prediction", "read")] == (
        counts[("prediction", "counted")] + counts[("prediction", "duplicate")]
        + counts[("prediction", "shadow")] + dead["prediction"])
    assert counts[("feedback", "read")] == (
        counts[("feedback", "counted")] + counts[("feedback", "duplicate")] +
        counts[("feedback", "late")] + counts[("feedback", "shadow")] +
        dead["feedback"])
    assert quality.balance(rows) == {"feedback": (12, 12),
                                     "prediction": (13, 13)}
    assert counts[("feedback", "late")] == 1
    assert counts[("feedback", "duplicate")] == 1
    assert counts[("feedback", "shadow")] == 1
    assert counts[("prediction", "duplicate")] == 1

  assert_that(outputs["dead_letter"], check_reasons, label="Reasons")
  assert_that(outputs["data_quality"], check_balance, label="Balance")
  with p:
    pass


def test_feedback_only_uses_the_arms_feedback_carries(tmp_path):
  feedback = write_lines(tmp_path / "fb.jsonl", [
      fb("r1", 0, 1, experiment_id="e", arm="x"),
      fb("r1", 1, 0, experiment_id="e", arm="x"),
      fb("r2", 0, 0, experiment_id="e", arm="y"),
      fb("r3", 0, 1)])  # no arm: dead letter
  p, outputs = run_aggregation(None, feedback)
  assert_that(outputs["arm_stats"] | beam.Map(project_arm),
              equal_to([("e", "x", 1, 1, 1, 1.0), ("e", "y", 1, 1, 1, 0.0)]),
              label="Arms")
  assert_that(outputs["dead_letter"] | beam.Map(lambda r: r["detail"]),
              equal_to(["experiment_id"]), label="DeadLetters")
  with p:
    pass


@pytest.mark.parametrize("name", ["p.parquet", "P.PARQUET"])
def test_parquet_input_matches_jsonl(tmp_path, name):
  rows = [pred(f"r{i}", i, "ab"[i % 2]) for i in range(6)]
  pq.write_table(pa.Table.from_pylist(rows), tmp_path / name)
  feedback = write_lines(tmp_path / "fb.jsonl",
                         [fb(f"r{i}", i + 1, 1) for i in range(0, 6, 3)])
  p, outputs = run_aggregation(str(tmp_path / name), feedback)
  assert_that(outputs["arm_stats"] | beam.Map(project_arm),
              equal_to([("exp", "a", 3, 1, 3, 1.0),
                        ("exp", "b", 3, 1, 3, 1.0)]))
  with p:
    pass


def test_large_file_is_read_in_ranges_without_losing_lines(tmp_path, monkeypatch):
  from transforms.logs import read_logs
  monkeypatch.setattr(read_logs, "SPLIT_BYTES", 1000)
  monkeypatch.setattr(read_logs, "BLOCK_BYTES", 300)
  predictions, feedback, _ = simulate.generate(simulate.Scenario(
      requests=300, feedback_rate=1.0, seed=3))
  p, outputs = run_aggregation(
      write_lines(tmp_path / "p.jsonl", predictions),
      write_lines(tmp_path / "f.jsonl", feedback))
  assert_that(outputs["arm_stats"] | beam.Map(lambda r: r["impressions"])
              | beam.CombineGlobally(sum), equal_to([300]), label="Impressions")
  assert_that(outputs["dead_letter"] | beam.combiners.Count.Globally(),
              equal_to([0]), label="NoDeadLetters")
  with p:
    pass


def test_round_trip_through_the_bigquery_emulator(bq_emulator, tmp_path):
  emulator, project = bq_emulator
  predictions, feedback, _ = simulate.generate(simulate.Scenario(
      requests=60, feedback_rate=0.8, malformed=0.05, seed=5))
  args = [f"--predictions={write_lines(tmp_path / 'p.jsonl', predictions)}",
          f"--feedback={write_lines(tmp_path / 'f.jsonl', feedback)}",
          f"--output_dataset={project}:rewards_it",
          f"--bigquery_emulator_host={emulator.host}",
          f"--output_dir={tmp_path / 'out'}", "--partition_date=2026-11-21",
          "--control_arm=control", "--runner=FnApiRunner"]
  reward_batch.run(args)
  reward_batch.run(args)  # A re-run replaces the day partition.

  client = bigquery.bigquery_client(project, emulator.host)
  rows = bigquery.read_rows(client, project, "rewards_it", "arm_stats")
  files = [json.loads(line) for path in (tmp_path / "out").glob("arm_stats*")
           for line in path.read_text().splitlines()]
  assert len(rows) == 3
  assert sorted((r["arm"], r["impressions"], r["reward_sum"]) for r in rows) \
      == sorted((r["arm"], r["impressions"], r["reward_sum"]) for r in files)
  assert sum(r["impressions"] for r in rows) == 60
  assert {r["control_arm"] for r in rows} == {"control"}
  dead = bigquery.read_rows(client, project, "rewards_it", "dead_letter")
  dead_files = list((tmp_path / "out").glob("dead_letter*"))
  assert len(dead) == sum(len(p.read_text().splitlines()) for p in dead_files)
  assert len(dead) >= 5
  state = bigquery.read_rows(client, project, "rewards_it", "router_state")
  assert len(state) == 1
  assert sorted(a["arm"] for a in state[0]["arms"]) == [
      "candidate-a", "candidate-b", "control"]


def test_a_router_continues_from_the_pipelines_router_state(tmp_path):
  from examples import thompson_router
  predictions, feedback, _ = simulate.generate(simulate.Scenario(
      requests=3000, feedback_rate=1.0, seed=8))
  reward_batch.run([
      f"--predictions={write_lines(tmp_path / 'p.jsonl', predictions)}",
      f"--feedback={write_lines(tmp_path / 'f.jsonl', feedback)}",
      f"--output_dir={tmp_path / 'out'}", "--runner=FnApiRunner"])
  arms = [json.loads(line) for path in (tmp_path / "out").glob("arm_stats*")
          for line in path.read_text().splitlines()]
  best = max(arms, key=lambda r: r["reward_mean"])["arm"]
  [state_file] = (tmp_path / "out").glob("router_state*.json")
  names = sorted(r["arm"] for r in arms)
  router = thompson_router.BanditRouter(
      str(state_file), "homepage-ranker", policy="epsilon_greedy",
      epsilon=0.0, branch_names=":".join(names))
  assert {names[router.route([], [])] for _ in range(20)} == {best}


def test_a_pattern_matching_no_file_fails_the_run(tmp_path):
  feedback = write_lines(tmp_path / "fb.jsonl", [fb("r1", 0, 1)])
  p, _ = run_aggregation(str(tmp_path / "no-such-predictions-*.jsonl"),
                         feedback)
  with pytest.raises(Exception, match="Empty match for pattern .*no-such-"):
    p.run().wait_until_finish()

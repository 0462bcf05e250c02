"""Per-request joins with optional fields: what per-request pipelines build on."""

import json
import random

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from transforms.attribution import rewards
from transforms.attribution.attribution import JoinRequests
from transforms.logs import batches
from transforms.logs import contract
from transforms.logs.read_logs import ReadLogs

EXTRAS = ("propensity", "policy", "features", "user_id", "attributes",
          "latency_ms", "status")
HOUR = 3600.0


def _prediction(i, **fields):
  record = {"request_id": f"r{i}", "timestamp": 1_700_000_000 + i,
            "experiment_id": "e", "arm": "ab"[i % 2]}
  record.update(fields)
  return record


def _random_extras(rng, odd_ids):
  fields = {}
  if rng.random() < 0.8:
    fields["propensity"] = rng.choice([0.5, 1, 0.25, None])
  if rng.random() < 0.8:
    fields["features"] = [rng.choice([1, 2.5, -3e10]) for _ in range(3)]
  if rng.random() < 0.8:
    # A numeric id is valid but takes the per-record path.
    fields["user_id"] = rng.choice(["u1", "u2", 17] if odd_ids else ["u1"])
  if rng.random() < 0.8:
    fields["attributes"] = rng.choice([
        {"country": "kr"}, {"country": "us", "platform": "ios"},
        {"version": 3}, {}, None])
  if rng.random() < 0.3:
    fields["policy"] = "thompson"
  if rng.random() < 0.8:
    fields["latency_ms"] = rng.choice([0, 12.5, 3, None])
  if rng.random() < 0.8:
    # An HTTP code is valid but takes the per-record path.
    fields["status"] = rng.choice(["ok", "error", 503] if odd_ids else
                                  ["ok", "error"])
  return fields


@pytest.mark.parametrize("seed", range(20))
def test_fast_and_per_record_paths_agree_on_extras(seed):
  rng = random.Random(seed)
  records = [_prediction(i, **_random_extras(rng, seed % 2))
             for i in range(50)]
  if seed % 2:  # One malformed extra sends part of the block to the contract.
    records[rng.randrange(50)]["features"] = ["x"]
  block = "\n".join(json.dumps(r) for r in records).encode() + b"\n"
  fast = batches.parse_json_block(block, contract.PREDICTION, "f", EXTRAS)
  slow = batches._slow(batches.split_lines(block), contract.PREDICTION, "f",
                       EXTRAS)
  assert fast.table.schema == slow.table.schema
  assert fast.table.to_pylist() == slow.table.to_pylist()
  assert fast.rejected == slow.rejected
  assert fast.table.num_rows + len(fast.rejected) == 50
  if seed % 2 == 0:
    assert fast.fast  # Valid extras of every kind stay on the vectorized path.


@pytest.mark.parametrize("seed", range(4))
def test_raw_lines_agree_on_both_paths(seed):
  rng = random.Random(seed)
  records = [_prediction(i, features=[1.0], request={"text": "hé"})
             for i in range(20)]
  if seed % 2:
    records[rng.randrange(20)]["features"] = ["x"]
  lines = [json.dumps(r, ensure_ascii=bool(seed // 2)) for r in records]
  block = "\r\n".join(lines).encode() + b"\n"
  extras = (contract.RAW, "features")
  fast = batches.parse_json_block(block, contract.PREDICTION, "f", extras)
  slow = batches._slow(batches.split_lines(block), contract.PREDICTION, "f",
                       extras)
  assert fast.table.to_pylist() == slow.table.to_pylist()
  assert [json.loads(raw) for raw in fast.table["raw"].to_pylist()] == [
      r for r in records if r["features"] == [1.0]]
  assert set(fast.table["raw"].to_pylist()) <= set(lines)
  assert fast.fast == (seed % 2 == 0)


def test_parquet_rows_carry_their_json_as_raw():
  records = [_prediction(i, features=[1.0, float(i)],
                         request={"text": f"hi {i}"}) for i in range(5)]
  table = pa.Table.from_pylist(records)
  result = batches.parse_arrow_batch(table, contract.PREDICTION, "p.parquet",
                                     (contract.RAW, "features"))
  assert [json.loads(raw) for raw in result.table["raw"].to_pylist()] == records


def test_extras_are_checked_only_when_asked_for():
  record = json.dumps(_prediction(1, features=[1, "x"], attributes=[1]))
  assert isinstance(contract.parse_prediction(record), dict)
  assert contract.parse_prediction(record, ("features",)) == contract.Rejected(
      contract.WRONG_TYPE, "features")
  assert contract.parse_prediction(record, ("attributes",)) == (
      contract.Rejected(contract.WRONG_TYPE, "attributes"))
  huge = json.dumps(_prediction(1, features=[1.0])).replace("[1.0]",
                                                            "[1e999]")
  assert contract.parse_prediction(huge, ("features",)) == contract.Rejected(
      contract.NON_FINITE_VALUE, "features")


@pytest.mark.parametrize("field,value,expected", [
    ("latency_ms", 12, 12.0), ("latency_ms", -1, contract.Rejected(
        contract.VALUE_OUT_OF_RANGE, "latency_ms")),
    ("latency_ms", "12", contract.Rejected(contract.WRONG_TYPE, "latency_ms")),
    ("status", 503, "503"), ("status", "ok", "ok"),
    ("status", 99, contract.Rejected(contract.VALUE_OUT_OF_RANGE, "status")),
    ("status", "fine", contract.Rejected(contract.WRONG_TYPE, "status")),
])
def test_serving_fields(field, value, expected):
  parsed = contract.parse_prediction(json.dumps(_prediction(1, **{
      field: value})), (field,))
  assert (parsed if isinstance(parsed, contract.Rejected) else
          parsed[field]) == expected


def test_error_statuses():
  assert [contract.is_error_status(s) for s in (
      "ok", "error", "200", "499", "500", "503", None)] == [
          False, True, False, False, True, True, False]


def test_attributes_and_ids_are_read_as_text():
  parsed = contract.parse_prediction(json.dumps(_prediction(
      1, user_id=42, attributes={"country": "kr", "version": 3, "beta": True,
                                 "gone": None})), EXTRAS)
  assert parsed["user_id"] == "42"
  assert parsed["attributes"] == {"country": "kr", "version": "3",
                                  "beta": "true"}
  with pytest.raises(ValueError, match="no optional prediction field"):
    contract.check_extras(contract.PREDICTION, ("feature",))


def test_parquet_extras_match_json():
  records = [_prediction(i, features=[float(i), 1.0], user_id=f"u{i}",
                         propensity=0.5) for i in range(4)]
  table = pa.Table.from_pylist(records)
  extras = ("features", "user_id", "propensity")
  from_parquet = batches.parse_arrow_batch(table, contract.PREDICTION, "f",
                                           extras)
  from_json = batches.parse_json_block(
      "\n".join(map(json.dumps, records)).encode(), contract.PREDICTION, "f",
      extras)
  assert from_parquet.fast and from_json.fast
  assert from_parquet.table.to_pylist() == from_json.table.to_pylist()


def _feedback(*rows):
  return pa.Table.from_pylist(
      [{"request_id": r[0], "ts": r[1], "reward": r[2], "experiment_id": None,
        "arm": None, "raw": "{}", "source_file": "f"} for r in rows],
      schema=batches.FEEDBACK_SCHEMA)


def _predictions_with_features(*rows):
  return pa.Table.from_pylist(
      [{"request_id": r[0], "ts": r[1], "experiment_id": "e", "arm": r[2],
        "shadow": r[3], "features": r[4]} for r in rows],
      schema=batches.schema(contract.PREDICTION, ("features",)))


def test_join_keeps_each_request_once_with_its_prediction_columns():
  predictions = _predictions_with_features(
      ("r1", 0.0, "a", False, [1.0]), ("r1", 5.0, "a", False, [9.0]),
      ("r2", 1.0, "b", False, [2.0]), ("r3", 2.0, "b", True, [3.0]))
  feedback = _feedback(("r1", 10.0, 0.0), ("r1", 11.0, 1.0),
                       ("r2", 2.0 + 2 * HOUR, 1.0), ("r3", 3.0, 1.0),
                       ("x", 1.0, 1.0))
  config = rewards.AttributionConfig(attribution_window_s=HOUR,
                                     reward_reduce="first")
  joined = rewards.join_requests(predictions, feedback, config)
  rows = sorted(joined.requests.to_pylist(), key=lambda r: r["request_id"])
  # r1: the earliest prediction, the first reward; r2: late feedback, no
  # reward; r3: shadow, not a request of its arm.
  assert [(r["request_id"], r["features"], r["reward"]) for r in rows] == [
      ("r1", [1.0], 0.0), ("r2", [2.0], None)]
  assert [orphan[2].reason for orphan in joined.orphans] == [
      contract.ORPHAN_FEEDBACK]
  assert rewards.attribute(predictions, feedback, config).partials == (
      rewards.per_arm(joined.requests, "zero"))


def test_join_requests_in_a_pipeline_carries_extras(tmp_path):
  records = [_prediction(i, features=[float(i)], user_id=f"u{i}")
             for i in range(6)]
  (tmp_path / "p.jsonl").write_text("\n".join(map(json.dumps, records)))
  (tmp_path / "f.jsonl").write_text("\n".join(
      json.dumps({"request_id": f"r{i}", "timestamp": 1_700_000_010 + i,
                  "reward": float(i)}) for i in range(0, 6, 2)))
  options = PipelineOptions(["--runner=FnApiRunner"])
  with TestPipeline(options=options) as pipeline:
    tables = {
        "predictions": pipeline | "P" >> ReadLogs(
            str(tmp_path / "p.jsonl"), contract.PREDICTION,
            ("features", "user_id")),
        "feedback": pipeline | "F" >> ReadLogs(str(tmp_path / "f.jsonl"),
                                               contract.FEEDBACK)}
    joined = {"predictions": tables["predictions"]["records"],
              "feedback": tables["feedback"]["records"]} | JoinRequests(
                  rewards.AttributionConfig(), num_shards=3,
                  extras=("features", "user_id"))
    rows = joined["requests"] | beam.FlatMap(lambda t: [
        (r["request_id"], r["features"], r["user_id"], r["reward"])
        for r in t.to_pylist()])
    assert_that(rows, equal_to([
        (f"r{i}", [float(i)], f"u{i}", float(i) if i % 2 == 0 else None)
        for i in range(6)]))


@pytest.mark.parametrize("statuses,fast", [
    ((200, 503, None, 500), True), ((200, 99), False), ((200, 503.0), False)])
def test_http_status_codes_stay_on_the_vectorized_path(statuses, fast):
  records = [_prediction(i, status=s) for i, s in enumerate(statuses)]
  block = "\n".join(json.dumps(r) for r in records).encode() + b"\n"
  vectorized = batches.parse_json_block(block, contract.PREDICTION, "f",
                                        ("status",))
  per_record = batches._slow(batches.split_lines(block), contract.PREDICTION,
                             "f", ("status",))
  assert vectorized.table.to_pylist() == per_record.table.to_pylist()
  assert vectorized.rejected == per_record.rejected
  assert bool(vectorized.fast) == fast


def _outcome(value=None, label=None, probabilities=None):
  return {"value": value, "label": label, "probabilities": probabilities}


@pytest.mark.parametrize("value,expected", [
    (0.25, _outcome(value=0.25)), (3, _outcome(value=3.0)),
    ("cat", _outcome(label="cat")),
    ([0.2, 0.8], _outcome(probabilities=[0.2, 0.8])),
    ([0.2, 0.7], contract.Rejected(contract.VALUE_OUT_OF_RANGE, "prediction")),
    ([-0.5, 1.5], contract.Rejected(contract.VALUE_OUT_OF_RANGE,
                                    "prediction")),
    ([], contract.Rejected(contract.VALUE_OUT_OF_RANGE, "prediction")),
    (["a"], contract.Rejected(contract.WRONG_TYPE, "prediction")),
    (True, contract.Rejected(contract.WRONG_TYPE, "prediction")),
    ("", contract.Rejected(contract.WRONG_TYPE, "prediction")),
    ({"p": 1}, contract.Rejected(contract.WRONG_TYPE, "prediction")),
])
def test_prediction_field(value, expected):
  parsed = contract.parse_prediction(json.dumps(_prediction(
      1, prediction=value)), ("prediction",))
  assert (parsed if isinstance(parsed, contract.Rejected) else
          parsed["prediction"]) == expected


@pytest.mark.parametrize("value,expected", [
    (1, _outcome(value=1.0)), (2.5, _outcome(value=2.5)),
    ("dog", _outcome(label="dog")),
    ([1], contract.Rejected(contract.WRONG_TYPE, "truth")),
    # Seldon's truth is a SeldonMessage holding one value.
    ({"data": {"ndarray": [[1]]}}, _outcome(value=1.0)),
    ({"data": {"tensor": {"shape": [1], "values": [0.5]}}},
     _outcome(value=0.5)),
    ({"strData": "dog"}, _outcome(label="dog")),
    ({"data": {"ndarray": [1, 0]}}, contract.Rejected(contract.WRONG_TYPE,
                                                      "truth")),
])
def test_truth_field(value, expected):
  record = {"request_id": "r1", "timestamp": 1_700_000_000, "reward": 1,
            "truth": value}
  parsed = contract.parse_feedback(json.dumps(record), ("truth",))
  assert (parsed if isinstance(parsed, contract.Rejected) else
          parsed["truth"]) == expected


def test_seldon_feedback_truth_is_read_from_the_event_data():
  event = {"specversion": "1.0", "type": contract.SELDON_FEEDBACK_TYPE,
           "time": "2026-11-21T00:00:00Z",
           "data": {"response": {"meta": {"puid": "p1",
                                          "routing": {"router": 1}}},
                    "reward": 1, "truth": {"data": {"ndarray": [["cat"]]}}}}
  parsed = contract.parse_feedback(json.dumps(event), ("truth",))
  assert parsed["request_id"] == "p1"
  assert parsed["truth"] == _outcome(label="cat")


@pytest.mark.parametrize("seed", range(10))
def test_fast_and_per_record_paths_agree_on_outcomes(seed):
  rng = random.Random(seed)
  forms = [lambda: round(rng.random(), 3), lambda: rng.choice(["a", "b"]),
           lambda: rng.choice([[0.25, 0.75], [1, 0], [0.5, 0.5]])]
  # A block of one form is vectorized; mixed forms take the contract.
  form = forms[seed % 3]
  values = [form() if seed < 6 else rng.choice(forms)() for _ in range(40)]
  values[rng.randrange(40)] = None
  if seed % 2:
    values[rng.randrange(40)] = rng.choice([[0.5, 0.6], "", 1e999, [-1, 2]])
  records = [_prediction(i, prediction=v) for i, v in enumerate(values)]
  block = "\n".join(json.dumps(r) for r in records).encode() + b"\n"
  fast = batches.parse_json_block(block, contract.PREDICTION, "f",
                                  ("prediction",))
  slow = batches._slow(batches.split_lines(block), contract.PREDICTION, "f",
                       ("prediction",))
  assert fast.table.schema == slow.table.schema
  assert fast.table.to_pylist() == slow.table.to_pylist()
  assert fast.rejected == slow.rejected
  assert fast.table.num_rows + len(fast.rejected) == 40
  if seed < 6 and seed % 2 == 0:
    assert fast.fast


def _predictions_with_outcomes(*rows):
  return pa.Table.from_pylist(
      [{"request_id": r[0], "ts": r[1], "experiment_id": "e", "arm": r[2],
        "shadow": r[3], "prediction": _outcome(value=r[4])} for r in rows],
      schema=batches.schema(contract.PREDICTION, ("prediction",)))


def _feedback_with_truth(*rows):
  return pa.Table.from_pylist(
      [{"request_id": r[0], "ts": r[1], "reward": r[2], "experiment_id": None,
        "arm": None, "raw": "{}", "source_file": "f",
        "truth": None if r[3] is None else _outcome(value=r[3])}
       for r in rows], schema=batches.schema(contract.FEEDBACK, ("truth",)))


def test_join_with_shadow_rows_keeps_the_counts_and_pairs_truth():
  predictions = _predictions_with_outcomes(
      ("r1", 0.0, "live", False, 0.9), ("r1", 0.5, "shadow-m", True, 0.4),
      ("r1", 0.7, "shadow-m", True, 0.1),  # A re-sent shadow prediction.
      ("r2", 1.0, "live", False, 0.2), ("r2", 1.5, "shadow-m", True, 0.3),
      ("r3", 2.0, "live", False, 0.6))
  feedback = _feedback_with_truth(
      ("r1", 10.0, 1.0, 0.0), ("r1", 20.0, 0.0, 1.0),  # The latest truth.
      ("r2", 2.0 + 2 * HOUR, 1.0, 1.0),  # Late: no reward, no truth.
      ("r3", 3.0, 1.0, None))
  config = rewards.AttributionConfig(attribution_window_s=HOUR)
  plain = rewards.join_requests(predictions, feedback, config)
  with_shadow = rewards.join_requests(predictions, feedback, config,
                                      include_shadow=True)
  assert with_shadow.counts == plain.counts
  assert with_shadow.orphans == plain.orphans
  live = with_shadow.requests.filter(pc.invert(
      with_shadow.requests["shadow"]))
  assert live.to_pylist() == plain.requests.to_pylist()
  rows = sorted((r["request_id"], r["arm"], r["prediction"]["value"],
                 r["reward"], r["truth"] and r["truth"]["value"])
                for r in with_shadow.requests.to_pylist())
  assert rows == [("r1", "live", 0.9, 1.0, 1.0),
                  ("r1", "shadow-m", 0.4, 1.0, 1.0),
                  ("r2", "live", 0.2, None, None),
                  ("r2", "shadow-m", 0.3, None, None),
                  ("r3", "live", 0.6, 1.0, None)]
  assert rewards.per_arm(plain.requests, "zero") == rewards.attribute(
      predictions, feedback.drop_columns(["truth"]), config).partials


def _feedback_with_signals(*rows):
  return pa.Table.from_pylist(
      [{"request_id": r[0], "ts": r[1], "reward": r[2], "experiment_id": None,
        "arm": None, "raw": "{}", "source_file": "f", "metric": r[3]}
       for r in rows], schema=batches.schema(contract.FEEDBACK, ("metric",)))


def test_with_signals_the_reward_is_the_reward_signals_for_live_and_shadow():
  predictions = _predictions_with_outcomes(
      ("r1", 0.0, "live", False, 0.9), ("r1", 0.5, "shadow-m", True, 0.4),
      ("r2", 1.0, "live", False, 0.2))
  # A purchase amount and a click on r1 beside its reward; r2 only clicks.
  feedback = _feedback_with_signals(
      ("r1", 5.0, 1.0, None), ("r1", 6.0, 37.5, "revenue"),
      ("r1", 7.0, 1.0, "click"), ("r2", 8.0, 1.0, "click"))
  config = rewards.AttributionConfig(attribution_window_s=HOUR)
  joined = rewards.join_requests(predictions, feedback, config,
                                 signals=(("reward", "max"),),
                                 include_shadow=True)
  rows = sorted((r["request_id"], r["arm"], r["reward"])
                for r in joined.requests.to_pylist())
  assert rows == [("r1", "live", 1.0), ("r1", "shadow-m", 1.0),
                  ("r2", "live", None)]

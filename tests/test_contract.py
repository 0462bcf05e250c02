"""The log contract: one record in, a normalized dict or a reason out."""

import datetime
import json
import pathlib

import pyarrow as pa
import pytest

from transforms.logs import batches
from transforms.logs import contract
from transforms.scoring import features
from transforms.io import sinks

TS = "2026-11-21T10:00:00Z"
EPOCH = datetime.datetime(2026, 11, 21, 10, tzinfo=datetime.timezone.utc
                          ).timestamp()


def prediction(**fields):
  record = {"request_id": "r1", "timestamp": TS, "experiment_id": "exp",
            "arm": "a"}
  record.update(fields)
  return json.dumps({k: v for k, v in record.items() if v is not ...})


def test_prediction_normalized():
  parsed = contract.parse_prediction(prediction(shadow=True, propensity=0.5))
  assert parsed == {"request_id": "r1", "ts": EPOCH, "experiment_id": "exp",
                    "arm": "a", "shadow": True}


@pytest.mark.parametrize("timestamp,expected", [
    ("2026-11-21T10:00:00Z", EPOCH),
    ("2026-11-21T12:00:00+02:00", EPOCH),
    ("2026-11-21T10:00:00.250Z", EPOCH + 0.25),
    ("2026-11-21t10:00:00z", EPOCH),  # RFC 3339 allows lower case
    (EPOCH, EPOCH),
    (int(EPOCH), EPOCH),
])
def test_timestamp_forms(timestamp, expected):
  assert contract.parse_prediction(prediction(timestamp=timestamp))["ts"] == (
      pytest.approx(expected))


@pytest.mark.parametrize("raw,reason,detail", [
    ("{not json", contract.INVALID_JSON, ""),
    ("[1, 2]", contract.NOT_AN_OBJECT, ""),
    (prediction(request_id=...), contract.MISSING_FIELD, "request_id"),
    (prediction(request_id=""), contract.MISSING_FIELD, "request_id"),
    (prediction(timestamp=...), contract.MISSING_FIELD, "timestamp"),
    (prediction(experiment_id=...), contract.MISSING_FIELD, "experiment_id"),
    (prediction(arm=...), contract.MISSING_FIELD, "arm"),
    (prediction(arm=3), contract.WRONG_TYPE, "arm"),
    (prediction(timestamp=True), contract.WRONG_TYPE, "timestamp"),
    (prediction(timestamp="yesterday"), contract.BAD_TIMESTAMP, "timestamp"),
    (prediction(timestamp="2026-11-21T10:00:00"), contract.BAD_TIMESTAMP,
     "timestamp"),
    # Epoch milliseconds, a year BigQuery cannot hold, before the epoch.
    (prediction(timestamp=EPOCH * 1000), contract.BAD_TIMESTAMP, "timestamp"),
    (prediction(timestamp="9999-12-31T23:59:59-01:00"), contract.BAD_TIMESTAMP,
     "timestamp"),
    (prediction(timestamp=-1), contract.BAD_TIMESTAMP, "timestamp"),
    (prediction(timestamp=10**400), contract.BAD_TIMESTAMP, "timestamp"),
    (prediction(propensity=10**400), contract.PROPENSITY_OUT_OF_RANGE,
     "propensity"),
    (prediction(shadow="yes"), contract.WRONG_TYPE, "shadow"),
    (prediction(propensity=0), contract.PROPENSITY_OUT_OF_RANGE, "propensity"),
    (prediction(propensity=1.5), contract.PROPENSITY_OUT_OF_RANGE,
     "propensity"),
    (prediction(propensity="high"), contract.WRONG_TYPE, "propensity"),
])
def test_prediction_rejections(raw, reason, detail):
  assert contract.parse_prediction(raw) == contract.Rejected(reason, detail)


def test_feedback_normalized_and_optional_arm():
  raw = json.dumps({"request_id": "r1", "timestamp": EPOCH, "reward": 2,
                    "arm": "b"})
  assert contract.parse_feedback(raw) == {
      "request_id": "r1", "ts": EPOCH, "reward": 2.0, "experiment_id": None,
      "arm": "b"}


@pytest.mark.parametrize("raw,reason,detail", [
    ('{"request_id": "r", "timestamp": 1, "reward": NaN}',
     contract.NON_FINITE_REWARD, "reward"),
    ('{"request_id": "r", "timestamp": 1, "reward": Infinity}',
     contract.NON_FINITE_REWARD, "reward"),
    # Valid JSON, but no float holds it: it must not raise OverflowError.
    ('{"request_id": "r", "timestamp": 1, "reward": 1%s}' % ("0" * 400),
     contract.NON_FINITE_REWARD, "reward"),
    ('{"request_id": "r", "timestamp": 1%s, "reward": 1}' % ("0" * 400),
     contract.BAD_TIMESTAMP, "timestamp"),
    ('{"request_id": "r", "timestamp": 1, "reward": "1"}', contract.WRONG_TYPE,
     "reward"),
    ('{"request_id": "r", "timestamp": 1, "reward": true}', contract.WRONG_TYPE,
     "reward"),
    ('{"request_id": "r", "timestamp": 1}', contract.MISSING_FIELD, "reward"),
    ('{"request_id": "r", "reward": 1}', contract.MISSING_FIELD, "timestamp"),
])
def test_feedback_rejections(raw, reason, detail):
  assert contract.parse_feedback(raw) == contract.Rejected(reason, detail)


def seldon_body(routing, puid="p-1", reward=1.0):
  return {"request": {"data": {"ndarray": [[1.0]]}},
          "response": {"meta": {"puid": puid, "routing": routing},
                       "data": {"ndarray": [[0.3]]}},
          "reward": reward, "truth": {"data": {"ndarray": [[1]]}}}


def test_seldon_cloud_event_maps_router_branch_and_time():
  event = {"specversion": "1.0", "type": contract.SELDON_FEEDBACK_TYPE,
           "id": "e1", "source": "seldon", "time": TS,
           "data": seldon_body({"eg-router": 2})}
  assert contract.parse_feedback(json.dumps(event)) == {
      "request_id": "p-1", "ts": EPOCH, "reward": 1.0,
      "experiment_id": "eg-router", "arm": "2"}


def test_bare_seldon_feedback_with_shipper_timestamp():
  body = {**seldon_body({"router": 0, "model-a": -1}), "timestamp": EPOCH}
  assert contract.parse_feedback(json.dumps(body)) == {
      "request_id": "p-1", "ts": EPOCH, "reward": 1.0,
      "experiment_id": "router", "arm": "0"}


@pytest.mark.parametrize("body,rejected", [
    ({**seldon_body({"r1": 0, "r2": 1}), "timestamp": 1},
     contract.Rejected(contract.AMBIGUOUS_ROUTING, "r1,r2")),
    (seldon_body({"r1": 0}),  # no time at all
     contract.Rejected(contract.MISSING_FIELD, "timestamp")),
    ({**seldon_body({"r1": 0}, reward="1"), "timestamp": 1},
     contract.Rejected(contract.WRONG_TYPE, "reward")),
    ({**seldon_body({"r1": 0}, reward=True), "timestamp": 1},
     contract.Rejected(contract.WRONG_TYPE, "reward")),
    ({**seldon_body({"r1": "0"}), "timestamp": 1},
     contract.Rejected(contract.WRONG_TYPE, "response.meta.routing")),
    ({**seldon_body([0]), "timestamp": 1},
     contract.Rejected(contract.WRONG_TYPE, "response.meta.routing")),
    ({"response": {"meta": {"routing": {"r1": 0}}}, "timestamp": 1},
     contract.Rejected(contract.MISSING_FIELD, "puid")),
])
def test_seldon_rejections(body, rejected):
  assert contract.parse_feedback(json.dumps(body)) == rejected


def test_seldon_feedback_without_a_reward_is_a_reward_of_zero():
  # Protobuf's JSON leaves out a reward of 0 (and so does Seldon's client);
  # Seldon's parser reads it back as 0.0, and so do we; null too.
  for body in ({"response": {"meta": {"puid": "p-1", "routing": {"r": 1}}}},
               {**seldon_body({"r": 1}), "reward": None}):
    assert contract.parse_feedback(json.dumps({**body, "timestamp": EPOCH})
                                   ) == {"request_id": "p-1", "ts": EPOCH,
                                         "reward": 0.0, "experiment_id": "r",
                                         "arm": "1"}


@pytest.mark.parametrize("routing", [None, {}, {"model-a": -1},
                                     {"router": -2, "model-a": -1}])
def test_seldon_feedback_without_a_route_leaves_the_arm_to_its_prediction(
    routing):
  body = {**seldon_body(routing, reward=0.5), "timestamp": EPOCH}
  if routing is None:
    del body["response"]["meta"]["routing"]
  assert contract.parse_feedback(json.dumps(body)) == {
      "request_id": "p-1", "ts": EPOCH, "reward": 0.5, "experiment_id": None,
      "arm": None}


def test_kserve_response_event_is_a_prediction():
  event = {"specversion": "1.0", "type": contract.KSERVE_RESPONSE_TYPE,
           "id": "req-9", "time": TS, "inferenceservicename": "sklearn-iris",
           "endpoint": "canary", "data": {"predictions": [1]}}
  assert contract.parse_prediction(json.dumps(event)) == {
      "request_id": "req-9", "ts": EPOCH, "experiment_id": "sklearn-iris",
      "arm": "canary", "shadow": False}


def test_pseudonymized_user_id_is_keyed_and_stable():
  raw = prediction(user_id="alice", arm=3)
  redacted = json.loads(contract.redact_raw(raw, b"k1"))
  assert redacted["user_id"] == contract.pseudonymize("alice", b"k1")
  assert redacted["user_id"] != contract.pseudonymize("alice", b"k2")
  assert "alice" not in contract.redact_raw(raw, b"k1")
  assert contract.redact_raw(raw, None) == raw


def test_redaction_keeps_a_record_nested_past_pythons_parser():
  for depth in (900, 5000):  # parsed but deep; beyond the parser
    raw = '{"user_id": "u", "x": ' + "[" * depth + "]" * depth + "}"
    assert contract.redact_raw(raw, b"k") == raw


def test_every_user_id_is_pseudonymized_at_any_depth_and_type():
  raw = json.dumps({"user_id": 424242, "data": {"user_id": {"id": "bob"}},
                    "items": [{"user_id": "carol"}], "note": "keep"})
  redacted = json.loads(contract.redact_raw(raw, b"k"))
  assert redacted == {
      "user_id": contract.pseudonymize("424242", b"k"),
      "data": {"user_id": contract.pseudonymize('{"id": "bob"}', b"k")},
      "items": [{"user_id": contract.pseudonymize("carol", b"k")}],
      "note": "keep"}
  for clear in ("424242", "bob", "carol"):
    assert clear not in contract.redact_raw(raw, b"k")


@pytest.mark.parametrize("record_type,lines", [
    (contract.PREDICTION, [
        prediction(request_id=f"r{i}", timestamp=EPOCH + i,
                   shadow=bool(i % 2), propensity=0.5) for i in range(5)]),
    (contract.PREDICTION, [
        prediction(request_id=f"r{i}", timestamp="2026-11-21T10:00:0%dZ" % i)
        for i in range(5)]),
    (contract.FEEDBACK, [json.dumps({"request_id": f"r{i}",
                                     "timestamp": TS, "reward": i,
                                     "arm": "a" if i % 2 else ""})
                         for i in range(5)]),
])
def test_fast_path_equals_per_record_contract(record_type, lines):
  encoded = [line.encode() for line in lines]
  fast = batches.parse_json_block(b"\n".join(encoded), record_type,
                                  "f.jsonl")
  slow = batches._slow(encoded, record_type, "f.jsonl")  # pylint: disable=protected-access
  assert fast.fast and not slow.fast
  assert fast.table.to_pylist() == slow.table.to_pylist()
  assert fast.table.num_rows == len(lines)


def test_one_bad_record_sends_its_block_to_the_contract():
  lines = [prediction(request_id=f"r{i}").encode() for i in range(3)]
  lines.append(prediction(arm=3).encode())
  result = batches.parse_json_lines(lines, contract.PREDICTION, "f.jsonl")
  assert not result.fast
  assert result.table.num_rows == 3
  assert [r for _, r in result.rejected] == [
      contract.Rejected(contract.WRONG_TYPE, "arm")]


def test_a_bad_record_costs_only_its_part_of_a_large_block():
  lines = [prediction(request_id=f"r{i}").encode() for i in range(4000)]
  lines[1234] = b"{broken"
  result = batches.parse_json_lines(lines, contract.PREDICTION, "f.jsonl")
  assert result.table.num_rows == 3999
  assert [r.reason for _, r in result.rejected] == [contract.INVALID_JSON]
  assert result.fast_rows >= 4000 - batches.MIN_FAST_LINES
  assert result.table["request_id"].to_pylist() == [
      f"r{i}" for i in range(4000) if i != 1234]


@pytest.mark.parametrize("timestamp", [EPOCH * 1000, "9999-12-31T23:59:59-01:00"])
def test_fast_path_never_accepts_a_timestamp_out_of_range(timestamp):
  lines = [prediction(request_id=f"r{i}", timestamp=EPOCH) for i in range(600)]
  lines[42] = prediction(request_id="r42", timestamp=timestamp)
  result = batches.parse_json_lines([line.encode() for line in lines],
                                    contract.PREDICTION, "f.jsonl")
  assert result.table.num_rows == 599
  assert [r for _, r in result.rejected] == [
      contract.Rejected(contract.BAD_TIMESTAMP, "timestamp")]


@pytest.mark.parametrize("missing", ["request_id", "timestamp",
                                     "experiment_id", "arm"])
def test_fast_path_never_accepts_a_missing_required_field(missing):
  lines = [prediction(request_id=f"r{i}") for i in range(600)]
  lines[77] = prediction(**{"request_id": "r77", missing: ...})
  result = batches.parse_json_lines([line.encode() for line in lines],
                                    contract.PREDICTION, "f.jsonl")
  assert result.table.num_rows == 599
  assert [r for _, r in result.rejected] == [
      contract.Rejected(contract.MISSING_FIELD, missing)]
  assert result.table["ts"].null_count == 0


def test_a_block_opening_with_null_is_parsed_record_by_record():
  # pyarrow's JSON reader crashes the process on such a block.
  lines = [b"null"] + [prediction(request_id=f"r{i}").encode()
                       for i in range(3)]
  result = batches.parse_json_block(b"\n".join(lines), contract.PREDICTION,
                                    "f.jsonl")
  assert result.table["request_id"].to_pylist() == ["r0", "r1", "r2"]
  assert [r for _, r in result.rejected] == [
      contract.Rejected(contract.NOT_AN_OBJECT, "")]


def fast_and_slow(record_type, lines):
  encoded = [line.encode() for line in lines]
  fast = batches.parse_json_block(b"\n".join(encoded), record_type, "f.jsonl")
  slow = batches._slow(encoded, record_type, "f.jsonl")  # pylint: disable=protected-access
  return fast, slow


def test_invalid_utf8_is_invalid_json_wherever_it_is():
  # pyarrow's reader does not check UTF-8; the contract does (json.loads).
  good = [prediction(request_id=f"r{i}").encode() for i in range(3)]
  in_arm = prediction(request_id="x1").encode().replace(b'"a"', b'"caf\xe9"')
  in_unused = prediction(request_id="x2", user_id="jos\u00e9").encode(
      ).replace(b"\\u00e9", b"\xe9")
  for bad in (in_arm, in_unused):
    result = batches.parse_json_block(b"\n".join(good + [bad]),
                                      contract.PREDICTION, "f.jsonl")
    assert result.table["request_id"].to_pylist() == ["r0", "r1", "r2"]
    assert [r for _, r in result.rejected] == [
        contract.Rejected(contract.INVALID_JSON, "")]


def test_two_objects_on_one_line_are_invalid_json_despite_a_blank_line():
  lines = [prediction(request_id="a") + prediction(request_id="b"), "",
           prediction(request_id="c")]
  result = batches.parse_json_block("\n".join(lines).encode(),
                                    contract.PREDICTION, "f.jsonl")
  assert result.table["request_id"].to_pylist() == ["c"]
  assert [r for _, r in result.rejected] == [
      contract.Rejected(contract.INVALID_JSON, "")]


def test_far_future_timestamps_parse_as_the_contract_does():
  # Microseconds past 2^53 (after 2255) are not exact as doubles: pyarrow
  # refused the cast, and an unchecked one rounds twice.
  lines = [prediction(request_id=f"r{i}",
                      timestamp="2300-01-01T00:00:0%d.000001Z" % i)
           for i in range(3)]
  fast, slow = fast_and_slow(contract.PREDICTION, lines)
  assert fast.table.to_pylist() == slow.table.to_pylist()
  assert fast.table["ts"][0].as_py() == datetime.datetime(
      2300, 1, 1, 0, 0, 0, 1, tzinfo=datetime.timezone.utc).timestamp()


def test_empty_and_blank_blocks_have_no_records():
  for block in (b"", b"\n", b" ", b"\r\n\n\t"):
    result = batches.parse_json_block(block, contract.PREDICTION, "f.jsonl")
    assert result.table.num_rows == 0 and result.rejected == []


def test_a_null_specversion_is_no_cloud_event():
  lines = [json.dumps({"request_id": f"r{i}", "timestamp": EPOCH, "reward": 1,
                       "specversion": None, "data": {}}) for i in range(3)]
  fast, slow = fast_and_slow(contract.FEEDBACK, lines)
  assert fast.fast
  assert fast.table.to_pylist() == slow.table.to_pylist()
  assert slow.table.num_rows == 3


def test_nesting_deeper_than_pythons_parser_is_invalid_json():
  deep = prediction(x=...)[:-1] + ', "x": ' + "[" * 5000 + "]" * 5000 + "}"
  assert contract.parse_prediction(deep) == contract.Rejected(
      contract.INVALID_JSON, "")


def test_parquet_integers_past_two_to_the_53_are_read_as_the_contract_does():
  table = pa.table({"request_id": ["r0", "r1"], "timestamp": [EPOCH, EPOCH],
                    "reward": pa.array([2**53 + 1, 1], pa.int64())})
  result = batches.parse_arrow_batch(table, contract.FEEDBACK, "f")
  assert result.table["reward"].to_pylist() == [float(2**53 + 1), 1.0]
  huge_ts = pa.table({"request_id": ["r0"], "timestamp": pa.array(
      [2**53 + 1], pa.int64()), "reward": [1.0]})
  result = batches.parse_arrow_batch(huge_ts, contract.FEEDBACK, "f")
  assert [r for _, r in result.rejected] == [
      contract.Rejected(contract.BAD_TIMESTAMP, "timestamp")]


def test_parquet_timestamps_out_of_range_in_any_unit_are_bad_timestamps():
  # Far past 9999 in seconds, and in microseconds it would wrap around 2^64
  # into 2023: an unchecked unit conversion made it a valid time.
  wraps_into_2023 = (2**64 + 1_700_000_000 * 10**6) // 10**6
  table = pa.table({
      "request_id": ["r0", "r1"], "experiment_id": ["e", "e"],
      "arm": ["a", "a"],
      "timestamp": pa.array([wraps_into_2023, 1_795_219_200],
                            pa.timestamp("s"))})
  result = batches.parse_arrow_batch(table, contract.PREDICTION, "f")
  assert result.table["ts"].to_pylist() == [1_795_219_200.0]
  assert [r for _, r in result.rejected] == [
      contract.Rejected(contract.BAD_TIMESTAMP, "timestamp")]


def test_an_empty_parquet_batch_has_no_records():
  table = pa.table({"request_id": pa.array([], pa.string()),
                    "timestamp": pa.array([], pa.string()),
                    "reward": pa.array([], pa.float64())})
  result = batches.parse_arrow_batch(table, contract.FEEDBACK, "f")
  assert result.table.num_rows == 0 and result.rejected == []


def test_parquet_with_a_duplicated_column_is_judged_row_by_row():
  table = pa.Table.from_arrays(
      [pa.array(["r0"]), pa.array([EPOCH]), pa.array([1.0]), pa.array([2.0])],
      names=["request_id", "timestamp", "reward", "reward"])
  result = batches.parse_arrow_batch(table, contract.FEEDBACK, "f")
  assert result.table["reward"].to_pylist() == [2.0]  # as json.loads: the last


def test_a_contract_record_in_a_cloud_event_envelope_is_judged_as_the_contract_does():
  lines = [json.dumps({"request_id": f"r{i}", "timestamp": EPOCH, "reward": 1,
                       "specversion": "1.0", "data": {}}) for i in range(3)]
  fast, slow = fast_and_slow(contract.FEEDBACK, lines)
  assert fast.table.to_pylist() == slow.table.to_pylist()
  assert fast.rejected == slow.rejected and len(slow.rejected) == 3


def test_crlf_lines_keep_the_same_raw_on_both_paths():
  lines = [json.dumps({"request_id": f"r{i}", "timestamp": EPOCH,
                       "reward": 1}) + "\r" for i in range(3)]
  fast, slow = fast_and_slow(contract.FEEDBACK, lines)
  assert fast.fast
  assert fast.table["raw"].to_pylist() == slow.table["raw"].to_pylist()


@pytest.mark.parametrize("raw,detail", [
    ('{"request_id": "\\ud800", "timestamp": 1, "experiment_id": "e", '
     '"arm": "a"}', "request_id"),
    ('{"request_id": "r", "timestamp": 1, "experiment_id": "e", '
     '"arm": "\\udfff"}', "arm"),
])
def test_a_lone_surrogate_is_not_text(raw, detail):
  # json.loads accepts the escape; Arrow and Beam's coders cannot encode it.
  assert contract.parse_prediction(raw) == contract.Rejected(
      contract.WRONG_TYPE, detail)
  result = batches.parse_json_lines([raw.encode()], contract.PREDICTION, "f")
  assert result.table.num_rows == 0 and len(result.rejected) == 1


def parquet_predictions(**columns):
  base = {"request_id": ["r0", "r1"], "experiment_id": ["e", "e"],
          "arm": ["a", "b"], "timestamp": [EPOCH, EPOCH + 1]}
  return pa.table({**base, **columns})


@pytest.mark.parametrize("column,values,detail", [
    ("propensity", ["0.5", "high"], "propensity"),
    ("shadow", [0, 1], "shadow"),
])
def test_parquet_columns_of_a_wrong_type_are_dead_lettered(column, values,
                                                          detail):
  result = batches.parse_arrow_batch(
      parquet_predictions(**{column: values}), contract.PREDICTION, "f")
  assert result.table.num_rows == 0
  assert {r for _, r in result.rejected} == {
      contract.Rejected(contract.WRONG_TYPE, detail)}


def test_parquet_timestamps_without_zone_are_utc_whatever_the_neighbours():
  naive = pa.array([1_795_219_200_000_000_123, 1_795_219_201_000_000_000],
                   pa.timestamp("ns"))
  clean = batches.parse_arrow_batch(parquet_predictions(timestamp=naive),
                                    contract.PREDICTION, "f")
  mixed = batches.parse_arrow_batch(
      parquet_predictions(timestamp=naive, arm=["a", None]),
      contract.PREDICTION, "f")
  assert clean.table["ts"].to_pylist() == [1_795_219_200.0, 1_795_219_201.0]
  assert mixed.table["ts"].to_pylist() == [1_795_219_200.0]
  assert [r for _, r in mixed.rejected] == [
      contract.Rejected(contract.MISSING_FIELD, "arm")]


def test_every_dead_letter_reason_is_documented():
  docs = pathlib.Path(__file__).resolve().parents[1] / "docs"
  readme = "".join(path.read_text() for path in docs.glob("*.md"))
  reasons = {*contract.DEAD_LETTER_REASONS, *features.DEAD_LETTER_REASONS,
             sinks.INSERT_FAILED}
  assert {reason for reason in reasons if f"`{reason}`" not in readme} == set()

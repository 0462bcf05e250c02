"""Binary-mode CloudEvents (headers and body, as a shipper keeps them) read as
the structured mode, by the contract and by both parsing paths."""

import datetime
import json

import pyarrow as pa
import pytest

from transforms.logs import batches
from transforms.logs import cloudevents
from transforms.logs import contract

TS = "2026-11-21T10:00:00Z"
EPOCH = datetime.datetime(2026, 11, 21, 10, tzinfo=datetime.timezone.utc
                          ).timestamp()


def seldon_feedback_body(puid="p-1", routing=None, reward=None):
  meta = {"puid": puid}
  if routing is not None:
    meta["routing"] = routing
  body = {"request": {"data": {"ndarray": [[1.0]]}},
          "response": {"meta": meta, "data": {"ndarray": [[0.3]]}}}
  if reward is not None:
    body["reward"] = reward
  return body


def seldon_http_headers(**extra):
  """The headers of Seldon's executor logger (HTTP, binary mode), as a Go
  shipper writes http.Header: every value a list of one string."""
  headers = {"Ce-Id": "e-1", "Ce-Specversion": "1.0",
             "Ce-Type": contract.SELDON_FEEDBACK_TYPE,
             "Ce-Source": "http://0.0.0.0:8000/", "Ce-Time": TS,
             "Ce-Modelid": "router", "Ce-Requestid": "feedback-puid",
             "Ce-Inferenceservicename": "bandit", "Ce-Namespace": "default",
             "Ce-Endpoint": "default", "Ce-Protocol": "seldon",
             "Content-Type": "application/json", "User-Agent": "Go-http-client",
             **extra}
  return {name: [value] for name, value in headers.items()}


def test_seldon_http_headers_become_the_structured_event():
  body = seldon_feedback_body(routing={"router": 1}, reward=1.0)
  record = {"headers": seldon_http_headers(), "body": json.dumps(body)}
  assert cloudevents.is_binary(record)
  assert cloudevents.to_structured(record) == {
      "id": "e-1", "specversion": "1.0", "type": contract.SELDON_FEEDBACK_TYPE,
      "source": "http://0.0.0.0:8000/", "time": TS, "modelid": "router",
      "requestid": "feedback-puid", "inferenceservicename": "bandit",
      "namespace": "default", "endpoint": "default", "protocol": "seldon",
      "datacontenttype": "application/json", "data": body}


def test_header_names_are_case_insensitive_and_values_percent_decoded():
  record = {"headers": {"ce-type": "t", "CE-TIME": TS, "ce-endpoint": "a%20b",
                        "ce_modelid": "m"}, "data": {"x": 1}}
  assert cloudevents.to_structured(record) == {
      "type": "t", "time": TS, "endpoint": "a b", "modelid": "m",
      "specversion": "1.0", "data": {"x": 1}}


def test_seldon_kafka_headers_and_the_shippers_timestamp():
  # Seldon's Kafka logger writes attributes without a prefix and no time.
  record = {"headers": {"type": contract.SELDON_FEEDBACK_TYPE,
                        "content-type": "application/json",
                        "requestid": "x", "modelid": "router"},
            "timestamp": EPOCH,
            "data": seldon_feedback_body(routing={"router": 0}, reward=0.5)}
  event = cloudevents.to_structured(record)
  assert event["time"] == EPOCH and event["requestid"] == "x"
  assert contract.parse_feedback(json.dumps(record)) == {
      "request_id": "p-1", "ts": EPOCH, "reward": 0.5,
      "experiment_id": "router", "arm": "0"}


def test_a_body_that_is_not_json_by_its_content_type_stays_text():
  record = {"headers": {"Ce-Type": "t", "Content-Type": "text/plain"},
            "body": "{not json"}
  assert cloudevents.to_structured(record)["data"] == "{not json"


def test_a_structured_event_or_a_record_without_body_is_not_binary():
  assert not cloudevents.is_binary({"specversion": "1.0", "headers": {},
                                    "data": {}})
  assert not cloudevents.is_binary({"headers": {"Ce-Type": "t"}})
  assert not cloudevents.is_binary({"headers": None, "data": {}})


@pytest.mark.parametrize("record,rejected", [
    ({"headers": ["Ce-Type", "t"], "data": {}},
     contract.Rejected(contract.WRONG_TYPE, "headers")),
    ({"headers": {"Ce-Id": "1", "Ce-Time": TS}, "data": {}},
     contract.Rejected(contract.MISSING_FIELD, "headers.ce-type")),
    ({"headers": {"Ce-Type": "t", "ce-type": "u"}, "data": {}},
     contract.Rejected(contract.WRONG_TYPE, "headers.ce-type")),
    ({"headers": {"Ce-Type": ["t", "u"]}, "data": {}},
     contract.Rejected(contract.WRONG_TYPE, "headers.ce-type")),
    ({"headers": {"Ce-Type": "t", "Ce-Time": 5}, "data": {}},
     contract.Rejected(contract.WRONG_TYPE, "headers.ce-time")),
    ({"headers": {"Ce-Type": "t", "Ce-Time": TS}, "body": "{not json"},
     contract.Rejected(contract.INVALID_JSON, "data")),
    ({"headers": {"Ce-Type": "t", "Ce-Time": TS}, "body": "{}", "data": {}},
     contract.Rejected(contract.WRONG_TYPE, "data")),
    ({"headers": {"Ce-Type": "t", "Ce-Time": TS}, "body": "[1]"},
     contract.Rejected(contract.WRONG_TYPE, "data")),
])
def test_malformed_binary_events_are_dead_lettered_with_a_reason(record,
                                                                 rejected):
  assert contract.parse_feedback(json.dumps(record)) == rejected


def test_binary_and_structured_seldon_feedback_read_the_same():
  body = seldon_feedback_body(routing={"router": 2})  # reward 0: left out
  structured = {"specversion": "1.0", "type": contract.SELDON_FEEDBACK_TYPE,
                "id": "e-1", "time": TS, "data": body}
  binary = {"headers": seldon_http_headers(), "body": json.dumps(body)}
  expected = {"request_id": "p-1", "ts": EPOCH, "reward": 0.0,
              "experiment_id": "router", "arm": "2"}
  assert contract.parse_feedback(json.dumps(structured)) == expected
  assert contract.parse_feedback(json.dumps(binary)) == expected


def test_a_binary_kserve_response_event_is_a_prediction():
  record = {"headers": {"Ce-Id": "req-9", "Ce-Specversion": "1.0",
                        "Ce-Type": contract.KSERVE_RESPONSE_TYPE,
                        "Ce-Time": TS, "Ce-Inferenceservicename": "iris",
                        "Ce-Endpoint": "canary", "Ce-Component": "predictor",
                        "Content-Type": "application/json"},
            "body": '{"predictions": [1]}'}
  assert contract.parse_prediction(json.dumps(record)) == {
      "request_id": "req-9", "ts": EPOCH, "experiment_id": "iris",
      "arm": "canary", "shadow": False}


def test_both_parsing_paths_agree_on_a_block_with_binary_events():
  contract_lines = [json.dumps({"request_id": f"r{i}", "timestamp": EPOCH,
                                "reward": 1}) for i in range(300)]
  body = seldon_feedback_body(routing={"router": 1}, reward=1.0)
  binary = [json.dumps({"headers": seldon_http_headers(), "body": json.dumps(
      {**body, "response": {**body["response"], "meta": {
          "puid": f"p{i}", "routing": {"router": 1}}}})}) for i in range(3)]
  # A contract record with a headers object but no body is still a contract
  # record; the fast path leaves any record with headers to the contract.
  with_headers = json.dumps({"request_id": "h", "timestamp": EPOCH,
                             "reward": 0.25, "headers": {"Host": "x"}})
  bad = json.dumps({"headers": {"Ce-Time": TS}, "data": body})
  lines = contract_lines + binary + [with_headers, bad]
  encoded = [line.encode() for line in lines]
  fast = batches.parse_json_block(b"\n".join(encoded), contract.FEEDBACK, "f")
  slow = batches._slow(encoded, contract.FEEDBACK, "f")  # pylint: disable=protected-access
  assert fast.table.to_pylist() == slow.table.to_pylist()
  assert fast.rejected == slow.rejected == [
      (bad, contract.Rejected(contract.MISSING_FIELD, "headers.ce-type"))]
  rows = {row["request_id"]: row for row in slow.table.to_pylist()}
  assert len(rows) == 304
  assert [rows[f"p{i}"]["arm"] for i in range(3)] == ["1"] * 3
  assert rows["h"]["reward"] == 0.25
  assert fast.fast_rows > 0  # the clean parts stay on the fast path


def test_the_fast_path_leaves_a_headers_object_to_the_contract():
  lines = [json.dumps({"request_id": f"r{i}", "timestamp": EPOCH, "reward": 1,
                       "headers": {"Ce-Type": "t"}, "data": {}}).encode()
           for i in range(3)]
  result = batches.parse_json_block(b"\n".join(lines), contract.FEEDBACK, "f")
  assert not result.fast
  assert [r for _, r in result.rejected] == [
      contract.Rejected(contract.MISSING_FIELD, "response.meta")] * 3


def test_parquet_rows_with_headers_are_read_as_binary_events():
  body = seldon_feedback_body(routing={"router": 1}, reward=0.5)
  table = pa.table({
      "headers": [{"Ce-Type": contract.SELDON_FEEDBACK_TYPE, "Ce-Time": TS}] * 2,
      "body": [json.dumps(body), "{broken"]})
  result = batches.parse_arrow_batch(table, contract.FEEDBACK, "f.parquet")
  assert [(row["request_id"], row["reward"], row["arm"])
          for row in result.table.to_pylist()] == [("p-1", 0.5, "1")]
  assert [r for _, r in result.rejected] == [
      contract.Rejected(contract.INVALID_JSON, "data")]


def test_a_user_id_in_a_binary_events_body_text_is_redacted():
  body = {"user_id": "alice", "response": {"meta": {}}}
  raw = json.dumps({"headers": {"Ce-Type": "t"}, "body": json.dumps(body)})
  redacted = json.loads(contract.redact_raw(raw, b"k"))
  assert "alice" not in json.dumps(redacted)
  assert json.loads(redacted["body"])["user_id"] == contract.pseudonymize(
      "alice", b"k")
  assert redacted["headers"] == {"Ce-Type": "t"}
  text = json.dumps({"note": "user_id is not JSON here"})
  assert contract.redact_raw(text, b"k") == text

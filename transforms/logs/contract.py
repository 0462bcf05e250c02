"""The serving-log contract: parse and validate one prediction or feedback record.

Pure Python, no Beam. Each parser takes the raw bytes of one record and returns
either a normalized dict or a `Rejected` with a machine-readable reason. The
batched readers in `transforms.logs.batches` only accelerate the common case; this
module stays the authority on what is valid and why a record is not.

Accepted formats, detected per record:
- our JSON contract (predictions and feedback, see README "Log contract");
- Seldon Core v1 feedback (`/api/v1.0/feedback` body), bare or wrapped in a
  CloudEvent of type `io.seldon.serving.feedback`;
- KServe inference-logger response events (CloudEvent of type
  `org.kubeflow.serving.inference.response`, v1 or v2 body) as predictions;
- Vertex AI request-response logging rows and Open Inference Protocol
  responses (KServe v2, Seldon Core v2 / MLServer) as predictions, their
  fields mapped by `transforms.logs.formats`.
CloudEvents are read in the structured mode, and in the binary mode as a log
shipper keeps them (headers and body, see `transforms.logs.cloudevents`).
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import hmac
import json
import math
from typing import Any

from transforms.logs import cloudevents
from transforms.logs import formats

PREDICTION = "prediction"
FEEDBACK = "feedback"

# Dead-letter reasons (the `reason` column).
INVALID_JSON = "invalid_json"
NOT_AN_OBJECT = "not_an_object"
MISSING_FIELD = "missing_field"
WRONG_TYPE = "wrong_type"
BAD_TIMESTAMP = "bad_timestamp"
NON_FINITE_REWARD = "non_finite_reward"
PROPENSITY_OUT_OF_RANGE = "propensity_out_of_range"
AMBIGUOUS_ROUTING = "ambiguous_routing"
ORPHAN_FEEDBACK = "orphan_feedback"
NON_FINITE_VALUE = "non_finite_value"
VALUE_OUT_OF_RANGE = "value_out_of_range"
DEAD_LETTER_REASONS = (
    INVALID_JSON, NOT_AN_OBJECT, MISSING_FIELD, WRONG_TYPE, BAD_TIMESTAMP,
    NON_FINITE_REWARD, PROPENSITY_OUT_OF_RANGE, AMBIGUOUS_ROUTING,
    ORPHAN_FEEDBACK, NON_FINITE_VALUE, VALUE_OUT_OF_RANGE)

# Timestamps a log may carry: from the Unix epoch to the last second BigQuery's
# TIMESTAMP holds (9999-12-31T23:59:59Z).
EARLIEST_TIMESTAMP = 0.0
LATEST_TIMESTAMP = 253_402_300_799.0

SELDON_FEEDBACK_TYPE = "io.seldon.serving.feedback"
KSERVE_RESPONSE_TYPE = "org.kubeflow.serving.inference.response"

# Normalized columns, in order. `ts` is epoch seconds (float, UTC).
PREDICTION_FIELDS = ("request_id", "ts", "experiment_id", "arm", "shadow")
FEEDBACK_FIELDS = ("request_id", "ts", "reward", "experiment_id", "arm")
FIELDS = {PREDICTION: PREDICTION_FIELDS, FEEDBACK: FEEDBACK_FIELDS}


@dataclasses.dataclass(frozen=True)
class Rejected:
  """Why a record was not accepted."""
  reason: str
  detail: str = ""


class _Invalid(Exception):

  def __init__(self, reason: str, detail: str = ""):
    super().__init__(reason, detail)
    self.rejected = Rejected(reason, detail)


def parse_timestamp(value: Any) -> float:
  """RFC 3339 string (with a zone offset) or epoch seconds -> epoch seconds,
  between EARLIEST_TIMESTAMP and LATEST_TIMESTAMP."""
  if isinstance(value, bool):
    raise _Invalid(WRONG_TYPE, "timestamp")
  if isinstance(value, (int, float)):
    seconds = _number(value, "timestamp")
  elif isinstance(value, str):
    try:
      # RFC 3339 allows a lower-case "t" and "z".
      parsed = datetime.datetime.fromisoformat(value.upper())
    except ValueError:
      raise _Invalid(BAD_TIMESTAMP, "timestamp") from None
    if parsed.tzinfo is None:
      raise _Invalid(BAD_TIMESTAMP, "timestamp")
    seconds = parsed.timestamp()
  else:
    raise _Invalid(WRONG_TYPE, "timestamp")
  # Also rejects NaN, and epoch milliseconds (beyond the year 9999 as seconds).
  if not EARLIEST_TIMESTAMP <= seconds <= LATEST_TIMESTAMP:
    raise _Invalid(BAD_TIMESTAMP, "timestamp")
  return seconds


def is_text(value: str) -> bool:
  """Whether a string is Unicode text: JSON's `\\ud800` escape decodes to a
  lone surrogate, which no UTF-8 output (Arrow, Beam's coders) can hold."""
  if value.isascii():
    return True
  try:
    value.encode("utf-8")
  except UnicodeEncodeError:
    return False
  return True


def _text(value: Any, field: str) -> str:
  if not isinstance(value, str) or not is_text(value):
    raise _Invalid(WRONG_TYPE, field)
  return value


def _required_str(obj: dict, field: str) -> str:
  value = obj.get(field)
  if value is None or value == "":
    raise _Invalid(MISSING_FIELD, field)
  return _text(value, field)


def _optional_str(obj: dict, field: str) -> str | None:
  value = obj.get(field)
  if value is None or value == "":
    return None
  return _text(value, field)


def _required_timestamp(obj: dict, field: str = "timestamp") -> float:
  value = obj.get(field)
  if value is None:
    raise _Invalid(MISSING_FIELD, "timestamp")
  return parse_timestamp(value)


def _number(value: Any, field: str) -> float:
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    raise _Invalid(WRONG_TYPE, field)
  try:
    return float(value)
  except OverflowError:  # An integer of hundreds of digits is valid JSON.
    return math.inf if value > 0 else -math.inf


def _reward(obj: dict, default: float | None = None) -> float:
  value = obj.get("reward")
  if value is None:
    if default is None:
      raise _Invalid(MISSING_FIELD, "reward")
    return default
  reward = _number(value, "reward")
  if not math.isfinite(reward):
    raise _Invalid(NON_FINITE_REWARD, "reward")
  return reward


def _load_object(raw: bytes | str) -> dict:
  try:
    obj = json.loads(raw)
  except (ValueError, UnicodeDecodeError, RecursionError):
    # RecursionError: nested deeper than Python's parser goes (~1000 levels).
    raise _Invalid(INVALID_JSON) from None
  if not isinstance(obj, dict):
    raise _Invalid(NOT_AN_OBJECT)
  return obj


def _contract_prediction(obj: dict) -> dict:
  request_id = _required_str(obj, "request_id")
  ts = _required_timestamp(obj)
  experiment_id = _required_str(obj, "experiment_id")
  arm = _required_str(obj, "arm")
  _optional_str(obj, "policy")
  propensity = obj.get("propensity")
  if propensity is not None:
    propensity = _number(propensity, "propensity")
    if not 0.0 < propensity <= 1.0:
      raise _Invalid(PROPENSITY_OUT_OF_RANGE, "propensity")
  shadow = obj.get("shadow")
  if shadow is None:
    shadow = False
  elif not isinstance(shadow, bool):
    raise _Invalid(WRONG_TYPE, "shadow")
  return dict(request_id=request_id, ts=ts, experiment_id=experiment_id,
              arm=arm, shadow=shadow)


def _kserve_prediction(event: dict) -> dict:
  """A KServe logger response event: the service is the experiment, the
  endpoint (default or canary) the arm."""
  request_id = _required_str(event, "id")
  ts = _required_timestamp(event, "time")
  experiment_id = _required_str(event, "inferenceservicename")
  arm = _optional_str(event, "endpoint") or _optional_str(event, "component")
  if arm is None:
    raise _Invalid(MISSING_FIELD, "arm")
  return dict(request_id=request_id, ts=ts, experiment_id=experiment_id,
              arm=arm, shadow=False)


def _contract_feedback(obj: dict) -> dict:
  return dict(request_id=_required_str(obj, "request_id"),
              ts=_required_timestamp(obj),
              reward=_reward(obj),
              experiment_id=_optional_str(obj, "experiment_id"),
              arm=_optional_str(obj, "arm"))


def _seldon_feedback(body: dict, ts: float) -> dict:
  """Seldon's client writes feedback with protobuf's JSON rules, which leave
  out a field equal to its default: no `reward` is a reward of 0, as Seldon's
  own parser reads it, and no `routing` (or only branches -1 and -2, nodes that
  did not route) leaves the arm to the prediction the puid joins."""
  response = body.get("response")
  meta = response.get("meta") if isinstance(response, dict) else None
  if not isinstance(meta, dict):
    raise _Invalid(MISSING_FIELD, "response.meta")
  request_id = _required_str(meta, "puid")
  routing = meta.get("routing")
  if routing is None:
    routing = {}
  if not isinstance(routing, dict):
    raise _Invalid(WRONG_TYPE, "response.meta.routing")
  branches = list(routing.values())
  if not all(isinstance(branch, int) and not isinstance(branch, bool)
             for branch in branches):
    raise _Invalid(WRONG_TYPE, "response.meta.routing")
  routes = {name: branch for name, branch in routing.items() if branch >= 0}
  if len(routes) > 1:
    raise _Invalid(AMBIGUOUS_ROUTING, ",".join(sorted(routes)))
  experiment_id = arm = None
  if routes:
    (router, branch), = routes.items()
    experiment_id, arm = _text(router, "response.meta.routing"), str(branch)
  return dict(request_id=request_id, ts=ts, reward=_reward(body, default=0.0),
              experiment_id=experiment_id, arm=arm)


# Optional fields a pipeline may ask to carry beside the normalized columns
# (`extras`). Each is validated only when asked for: a reward run does not
# dead-letter a record for a malformed field it never reads. Absent -> None.


def _propensity(value: Any) -> float:
  propensity = _number(value, "propensity")
  if not 0.0 < propensity <= 1.0:
    raise _Invalid(PROPENSITY_OUT_OF_RANGE, "propensity")
  return propensity


def _finite_numbers(value: Any, field: str) -> list[float]:
  if not isinstance(value, list):
    raise _Invalid(WRONG_TYPE, field)
  numbers = [_number(item, field) for item in value]
  if not all(map(math.isfinite, numbers)):
    raise _Invalid(NON_FINITE_VALUE, field)
  return numbers


def _identifier(value: Any) -> str:
  """An id of any JSON type, as text (a number keeps its JSON spelling)."""
  if isinstance(value, str):
    return _text(value, "user_id")
  return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _attributes(value: Any) -> dict[str, str]:
  """An object of scalar values -> {name: text}: strings as they are,
  numbers and booleans in their JSON spelling (segments compare text;
  numeric context features parse it back)."""
  if not isinstance(value, dict):
    raise _Invalid(WRONG_TYPE, "attributes")
  attributes = {}
  for name, item in value.items():
    if item is None:
      continue
    if isinstance(item, (dict, list)) or not is_text(name):
      raise _Invalid(WRONG_TYPE, "attributes")
    attributes[name] = (_text(item, "attributes") if isinstance(item, str)
                        else json.dumps(item))
  return attributes


def _latency_ms(value: Any) -> float:
  latency = _number(value, "latency_ms")
  if not math.isfinite(latency):
    raise _Invalid(NON_FINITE_VALUE, "latency_ms")
  if latency < 0:
    raise _Invalid(VALUE_OUT_OF_RANGE, "latency_ms")
  return latency


STATUS_OK = "ok"
STATUS_ERROR = "error"


def _status(value: Any) -> str:
  """`ok`, `error`, or an HTTP status code (kept as its digits)."""
  if isinstance(value, str) and value in (STATUS_OK, STATUS_ERROR):
    return value
  if isinstance(value, int) and not isinstance(value, bool):
    if 100 <= value <= 599:
      return str(value)
    raise _Invalid(VALUE_OUT_OF_RANGE, "status")
  raise _Invalid(WRONG_TYPE, "status")


def is_error_status(status: str | None) -> bool:
  """An error: `error`, or an HTTP status of 500 or more."""
  return status == STATUS_ERROR or (status is not None and status.isdigit()
                                    and int(status) >= 500)


# The record itself as a line of text (no line ending), for pipelines that
# read fields at arbitrary paths (the training export's free-text fields).
RAW = "raw"

# What a model answered (`prediction`) and what turned out true (`truth`):
# {"value": number, "label": text, "probabilities": [numbers]}, one of them
# set. A number is a score (a binary classifier's probability of class "1", a
# regression value), a string a class label, a list the probabilities of
# classes "0", "1", ... A Seldon feedback's truth is a SeldonMessage holding
# one value.
PROBABILITY_SUM_TOLERANCE = 1e-3


def _outcome(value: Any, field: str, probabilities: bool) -> dict:
  if isinstance(value, str):
    if value == "":
      raise _Invalid(WRONG_TYPE, field)
    return {"value": None, "label": _text(value, field),
            "probabilities": None}
  if isinstance(value, list) and probabilities:
    numbers = _finite_numbers(value, field)
    if not numbers or min(numbers) < 0.0 or max(numbers) > 1.0 or abs(
        sum(numbers) - 1.0) > PROBABILITY_SUM_TOLERANCE:
      raise _Invalid(VALUE_OUT_OF_RANGE, field)
    return {"value": None, "label": None, "probabilities": numbers}
  number = _number(value, field)
  if not math.isfinite(number):
    raise _Invalid(NON_FINITE_VALUE, field)
  return {"value": number, "label": None, "probabilities": None}


def _seldon_truth(value: Any) -> Any:
  """A SeldonMessage's one value: {"data": {"ndarray": [[v]]}} (or
  "tensor": {"values": [v]}), {"strData": v} or {"jsonData": v}."""
  if not isinstance(value, dict):
    return value
  if "strData" in value or "jsonData" in value:
    return value.get("strData", value.get("jsonData"))
  data = value.get("data")
  values = None
  if isinstance(data, dict):
    values = data.get("ndarray")
    tensor = data.get("tensor")
    if values is None and isinstance(tensor, dict):
      values = tensor.get("values")
  while isinstance(values, list) and len(values) == 1:
    values = values[0]
  if values is None or isinstance(values, (list, dict)):
    raise _Invalid(WRONG_TYPE, "truth")
  return values


PREDICTION_EXTRAS = {
    RAW: None,  # Not a field of the record: set by `parse_prediction`.
    "propensity": _propensity,
    "policy": lambda value: _text(value, "policy"),
    "features": lambda value: _finite_numbers(value, "features"),
    "user_id": _identifier,
    "attributes": _attributes,
    "latency_ms": _latency_ms,
    "status": _status,
    "prediction": lambda value: _outcome(value, "prediction", True),
}
FEEDBACK_EXTRAS = {
    # Which signal a feedback record measures (a click, a purchase, ...);
    # absent means the reward.
    "metric": lambda value: _text(value, "metric"),
    "truth": lambda value: _outcome(_seldon_truth(value), "truth", False),
}
EXTRAS = {PREDICTION: PREDICTION_EXTRAS, FEEDBACK: FEEDBACK_EXTRAS}


def check_extras(record_type: str, extras) -> tuple:
  """The extras a pipeline asks for, checked against what the contract knows."""
  unknown = sorted(set(extras) - set(EXTRAS[record_type]))
  if unknown:
    raise ValueError(f"no optional {record_type} field {', '.join(unknown)}; "
                     f"known: {', '.join(EXTRAS[record_type])}")
  return tuple(extras)


def _with_extras(parsed: dict, obj: dict, record_type: str, extras) -> dict:
  fields = EXTRAS[record_type]
  for name in extras:
    if name == RAW:
      continue
    value = obj.get(name)
    parsed[name] = None if value is None else fields[name](value)
  return parsed


def _is_cloud_event(obj: dict) -> bool:
  return obj.get("specversion") is not None and "data" in obj


def _mapped_prediction(mapping, sources: dict, obj: dict) -> dict:
  """A serving stack's record, its fields mapped by `formats`, then held to
  the contract's rules; a dead letter names the record's own field."""
  try:
    fields = mapping(obj)
  except formats.FormatError as error:
    raise _Invalid(MISSING_FIELD if error.kind == "missing" else WRONG_TYPE,
                   error.field) from None
  try:
    return _contract_prediction(
        {name: value for name, value in fields.items() if value is not None})
  except _Invalid as invalid:
    reason, detail = invalid.rejected.reason, invalid.rejected.detail
    raise _Invalid(reason, sources.get(detail, detail)) from None


def _vertex_prediction(obj: dict) -> dict:
  return _mapped_prediction(formats.vertex_fields, formats.VERTEX_SOURCES, obj)




def _structured(obj: dict) -> dict:
  """The record itself, or the structured-mode event of a binary-mode one."""
  if not cloudevents.is_binary(obj):
    return obj
  try:
    return cloudevents.to_structured(obj)
  except cloudevents.MalformedEvent as malformed:
    raise _Invalid(_EVENT_REASONS[malformed.reason], malformed.field) from None


_EVENT_REASONS = {cloudevents.MISSING: MISSING_FIELD,
                  cloudevents.WRONG_TYPE: WRONG_TYPE,
                  cloudevents.INVALID_JSON: INVALID_JSON}


def parse_prediction(raw: bytes | str, extras=()) -> dict | Rejected:
  """One prediction record -> normalized dict (PREDICTION_FIELDS and the
  asked-for `extras`) or Rejected."""
  try:
    obj = _structured(_load_object(raw))
    if _is_cloud_event(obj) and obj.get("type") == KSERVE_RESPONSE_TYPE:
      parsed = _with_extras(_kserve_prediction(obj), {}, PREDICTION, extras)
    elif formats.is_vertex_row(obj):
      parsed = _with_extras(_vertex_prediction(obj), {}, PREDICTION, extras)
    elif formats.is_inference_response(obj):
      parsed = _with_extras(_mapped_prediction(
          formats.inference_response_fields,
          formats.INFERENCE_RESPONSE_SOURCES, obj), {}, PREDICTION, extras)
    else:
      parsed = _with_extras(_contract_prediction(obj), obj, PREDICTION,
                            extras)
  except _Invalid as invalid:
    return invalid.rejected
  if RAW in extras:
    parsed[RAW] = raw_text(raw)
  return parsed


def raw_text(raw: bytes | str) -> str:
  """A raw record as the text kept of it: UTF-8 (invalid bytes replaced),
  without its line ending."""
  text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
  return text.rstrip("\r\n")


def parse_vertex_prediction(raw: bytes | str, extras=()) -> dict | Rejected:
  """One Vertex AI request-response row (`--log_format vertex`) -> normalized
  dict or Rejected; a record without its fields is missing them."""
  try:
    parsed = _with_extras(_vertex_prediction(_load_object(raw)), {},
                          PREDICTION, extras)
  except _Invalid as invalid:
    return invalid.rejected
  if RAW in extras:
    parsed[RAW] = raw_text(raw)
  return parsed


def parse_feedback(raw: bytes | str, extras=()) -> dict | Rejected:
  """One feedback record -> normalized dict (FEEDBACK_FIELDS and the
  asked-for `extras`) or Rejected."""
  try:
    obj = _structured(_load_object(raw))
    parsed = _feedback(obj)
    if _is_cloud_event(obj):  # A Seldon feedback's fields are its data's.
      obj = obj["data"]
    return _with_extras(parsed, obj, FEEDBACK, extras)
  except _Invalid as invalid:
    return invalid.rejected


def _feedback(obj: dict) -> dict:
  if _is_cloud_event(obj):
    data = obj["data"]
    if not isinstance(data, dict):
      raise _Invalid(WRONG_TYPE, "data")
    return _seldon_feedback(data, _required_timestamp(obj, "time"))
  if "response" in obj and "request_id" not in obj:
    # A bare Seldon Feedback carries no time of its own; log shippers add one.
    return _seldon_feedback(obj, _required_timestamp(obj))
  return _contract_feedback(obj)


PARSERS = {PREDICTION: parse_prediction, FEEDBACK: parse_feedback}

# `--log_format`: AUTO detects each record's format; VERTEX reads predictions
# as Vertex AI request-response rows only (feedback keeps the contract).
AUTO = "auto"
LOG_FORMATS = (AUTO, formats.VERTEX)


def parser(record_type: str, log_format: str = AUTO):
  """The per-record parser of a record type in a log format."""
  if log_format == formats.VERTEX and record_type == PREDICTION:
    return parse_vertex_prediction
  return PARSERS[record_type]


def pseudonymize(value: str, key: bytes) -> str:
  """Keyed hash of an identifier (HMAC-SHA256, hex): stable, not reversible."""
  return hmac.new(key, value.encode("utf-8"), hashlib.sha256).hexdigest()


def redact_raw(raw: str, key: bytes | None) -> str:
  """The raw record as stored in the dead-letter table: every `user_id`, at
  any depth (a CloudEvent's data too) and of any type, pseudonymized when a
  key is configured, also in JSON held as text (a binary-mode CloudEvent's
  body). Records that are not JSON, or nest deeper than Python's parser goes,
  are kept as they are."""
  if key is None or "user_id" not in raw:
    return raw
  try:
    obj = json.loads(raw)
    redacted = _redact(obj, key)
  except (ValueError, RecursionError):
    return raw
  return raw if redacted == obj else json.dumps(redacted,
                                                separators=(",", ":"))


def _redact(value: Any, key: bytes) -> Any:
  if isinstance(value, list):
    return [_redact(item, key) for item in value]
  if isinstance(value, str) and "user_id" in value:
    return _redact_json_text(value, key)
  if not isinstance(value, dict):
    return value
  redacted = {}
  for name, item in value.items():
    if name == "user_id" and item is not None:
      text = item if isinstance(item, str) else json.dumps(item,
                                                           sort_keys=True)
      redacted[name] = pseudonymize(text, key)
    else:
      redacted[name] = _redact(item, key)
  return redacted


def _redact_json_text(text: str, key: bytes) -> str:
  """A JSON document held as text (a binary-mode CloudEvent's body),
  redacted; other text as it is."""
  try:
    parsed = json.loads(text)
  except ValueError:
    return text
  if not isinstance(parsed, (dict, list)):
    return text
  redacted = _redact(parsed, key)
  return text if redacted == parsed else json.dumps(redacted,
                                                     separators=(",", ":"))

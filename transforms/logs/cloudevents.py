"""Binary-mode CloudEvents, as a log shipper keeps them, in the structured mode.

Pure Python, no Beam. An inference logger sends each event in the binary mode:
the attributes as headers, the payload as the body. Seldon Core v1's executor
posts `Ce-Id`, `Ce-Type`, `Ce-Source`, `Ce-Specversion`, `Ce-Time` and its
extensions `Ce-Requestid`, `Ce-Modelid`, `Ce-Inferenceservicename`,
`Ce-Namespace`, `Ce-Endpoint`, `Ce-Protocol` over HTTP; to Kafka it writes the
same attributes as headers without a prefix (`type`, `requestid`, `modelid`,
...) and no time. KServe's logger posts `Ce-*` headers the same way. A shipper
that keeps such an event writes one record

  {"headers": {"Ce-Type": "...", "Ce-Time": "...", ...}, "data": <body>}

(`body` instead of `data` is read too), which `to_structured` turns into the
structured-mode event `{"specversion": ..., "type": ..., "time": ..., "data":
...}` the contract reads. Header names are case-insensitive. A header value
may be a string or a list of one string (Go's `http.Header` as JSON). The
body may be JSON already or the body's text, which is parsed when its content
type is JSON (or not given). Without a `time` header, the record's own
`time` or `timestamp` (the shipper's) is the event time.
"""

from __future__ import annotations

import json
import urllib.parse
from typing import Any

HEADERS = "headers"
BODY_KEYS = ("data", "body")
HTTP_PREFIX = "ce-"  # CloudEvents HTTP binding (percent-encoded values).
KAFKA_PREFIX = "ce_"  # CloudEvents Kafka binding.
CONTENT_TYPE = "content-type"
DEFAULT_SPECVERSION = "1.0"

# What is wrong with a malformed event (the contract's dead-letter reasons).
MISSING = "missing_field"
WRONG_TYPE = "wrong_type"
INVALID_JSON = "invalid_json"


class MalformedEvent(ValueError):
  """A binary-mode record that is no usable event: `reason` and `field`."""

  def __init__(self, reason: str, field: str):
    super().__init__(reason, field)
    self.reason = reason
    self.field = field


def is_binary(record: dict) -> bool:
  """Whether a record is a binary-mode event as a shipper keeps it: headers
  and a body, and no structured-mode `specversion` of its own."""
  return (record.get(HEADERS) is not None and "specversion" not in record
          and any(key in record for key in BODY_KEYS))


def to_structured(record: dict) -> dict:
  """The structured-mode event of a binary-mode record (see the module doc).

  Raises MalformedEvent when the headers are not an object of strings, two
  headers name one attribute, the event has no `type`, or a JSON body is not
  JSON.
  """
  headers = record[HEADERS]
  if not isinstance(headers, dict):
    raise MalformedEvent(WRONG_TYPE, HEADERS)
  event = _attributes(headers)
  if "type" not in event:
    raise MalformedEvent(MISSING, "headers.ce-type")
  event.setdefault("specversion", DEFAULT_SPECVERSION)
  if "time" not in event:
    for key in ("time", "timestamp"):
      if record.get(key) is not None:
        event["time"] = record[key]
        break
  bodies = [key for key in BODY_KEYS if key in record]
  if len(bodies) > 1:
    raise MalformedEvent(WRONG_TYPE, "data")
  event["data"] = _data(record[bodies[0]], event.get("datacontenttype"))
  return event


def _attributes(headers: dict) -> dict:
  names = {name.lower() for name in headers}
  prefixed = any(name.startswith((HTTP_PREFIX, KAFKA_PREFIX))
                 for name in names)
  attributes = {}
  for name, value in headers.items():
    lower = name.lower()
    if lower == CONTENT_TYPE:
      attribute = "datacontenttype"
    elif lower.startswith((HTTP_PREFIX, KAFKA_PREFIX)):
      attribute = lower[len(HTTP_PREFIX):]
    elif prefixed:
      continue  # Another HTTP header (Host, User-Agent, ...).
    else:
      attribute = lower  # Seldon's Kafka headers: attributes by their names.
    if isinstance(value, list) and len(value) == 1:
      value = value[0]
    if not isinstance(value, str) or attribute in attributes:
      raise MalformedEvent(WRONG_TYPE, f"headers.{lower}")
    if lower.startswith(HTTP_PREFIX):
      value = urllib.parse.unquote(value)
    attributes[attribute] = value
  return attributes


def _data(body: Any, content_type: str | None) -> Any:
  if not isinstance(body, str) or not _is_json(content_type):
    return body
  try:
    return json.loads(body)
  except (ValueError, RecursionError):
    raise MalformedEvent(INVALID_JSON, "data") from None


def _is_json(content_type: str | None) -> bool:
  if content_type is None:
    return True
  media_type = content_type.split(";")[0].strip().lower()
  return media_type == "application/json" or media_type.endswith("+json")

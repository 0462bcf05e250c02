"""Serving stacks' own prediction logs, mapped onto the contract's columns.

Pure Python, no Beam. `transforms.logs.contract` detects these per record and
applies its dead-letter rules; this module knows each format's fields:

- Vertex AI request-response logging: one row of the BigQuery table an
  endpoint logs sampled requests to (`endpoint`, `deployed_model_id`,
  `logging_time`, `request_id` NUMERIC, `request_payload`,
  `response_payload`), read from BigQuery or exported as JSON lines;
- Open Inference Protocol (KServe v2, Seldon Core v2 / MLServer, Triton)
  inference responses (`id`, `model_name`, `model_version`, `outputs`), with
  the HTTP headers a log shipper kept under `headers` (Seldon Core v2's
  `x-seldon-route` names the model an experiment routed to).
"""

from __future__ import annotations

import re
from typing import Any

VERTEX = "vertex"
VERTEX_COLUMNS = ("endpoint", "deployed_model_id", "logging_time", "request_id")
# Each format's field behind a contract field, as dead letters name it.
VERTEX_SOURCES = {"timestamp": "logging_time", "experiment_id": "endpoint",
                  "arm": "deployed_model_id"}
INFERENCE_RESPONSE_SOURCES = {"request_id": "id"}

SELDON_ROUTE_HEADER = "x-seldon-route"
SELDON_MODEL_HEADER = "seldon-model"
# What a Seldon Core v2 client appends to an experiment's or pipeline's name
# in the `seldon-model` request header.
_SELDON_KIND_SUFFIXES = (".experiment", ".pipeline")

# A BigQuery NUMERIC as text: read exactly, never through a float.
_DECIMAL = re.compile(r"^-?[0-9]+(\.[0-9]+)?$")


class FormatError(ValueError):
  """A record of a known format that breaks it: (reason kind, field)."""

  def __init__(self, kind: str, field: str):
    super().__init__(kind, field)
    self.kind = kind  # "missing" or "wrong_type"
    self.field = field


def is_vertex_row(obj: dict) -> bool:
  return "logging_time" in obj and (
      "deployed_model_id" in obj or "endpoint" in obj)


def is_vertex_table(columns) -> bool:
  """Whether a table (BigQuery, Parquet) holds Vertex AI rows, by its columns."""
  return set(VERTEX_COLUMNS) <= set(columns) and "arm" not in columns


def is_inference_response(obj: dict) -> bool:
  """An Open Inference Protocol response: `model_name` and `outputs`, and
  none of our contract's own fields."""
  return ("model_name" in obj and "outputs" in obj and
          "request_id" not in obj)


def decimal_text(value: Any, field: str = "request_id") -> str:
  """A NUMERIC request id (JSON integer, decimal text, or BigQuery's
  9-digit-scale text) -> its exact decimal text without trailing zeros:
  12 and "12.000000000" are both "12"."""
  if isinstance(value, bool):
    raise FormatError("wrong_type", field)
  if isinstance(value, int):
    return str(value)
  if not isinstance(value, str) or not _DECIMAL.match(value):
    raise FormatError("wrong_type", field)
  if "." in value:
    value = value.rstrip("0").rstrip(".")
  return "0" if value == "-0" else value


def bigquery_timestamp_text(value: str) -> str:
  """BigQuery's JSON export writes TIMESTAMPs as "2026-12-01 10:00:00 UTC";
  as RFC 3339 text that is "...+00:00"."""
  if value.endswith(" UTC"):
    return value[:-len(" UTC")] + "+00:00"
  return value


def vertex_fields(row: dict) -> dict:
  """A Vertex AI request-response row -> contract fields (timestamp as given):
  the endpoint is the experiment, the deployed model the arm."""
  fields = {"request_id": row.get("request_id"),
            "timestamp": row.get("logging_time"),
            "experiment_id": row.get("endpoint"),
            "arm": row.get("deployed_model_id")}
  if fields["request_id"] is not None:
    fields["request_id"] = decimal_text(fields["request_id"])
  if isinstance(fields["timestamp"], str):
    fields["timestamp"] = bigquery_timestamp_text(fields["timestamp"])
  return fields


def header(headers: Any, name: str) -> str | None:
  """One header's value from a shipped `headers` object (names in any case;
  a value may be a string or a list of one, as proxies log them)."""
  if not isinstance(headers, dict):
    return None
  for key, value in headers.items():
    if isinstance(key, str) and key.lower() == name:
      if isinstance(value, list) and len(value) == 1:
        value = value[0]
      if not isinstance(value, str):
        raise FormatError("wrong_type", f"headers.{name}")
      return value or None
  return None


def seldon_route_arm(route: str) -> str:
  """`x-seldon-route: :iris2_1:` -> "iris2_1" (the model, with its version,
  that served the request; a pipeline's route keeps its inner colons)."""
  arm = route.strip().strip(":")
  if not arm:
    raise FormatError("wrong_type", f"headers.{SELDON_ROUTE_HEADER}")
  return arm


def inference_response_fields(obj: dict) -> dict:
  """An Open Inference Protocol response -> contract fields (timestamp as
  given, from `timestamp`, which the log shipper adds).

  arm: the `x-seldon-route` header if kept, else `model_name`, with
  `:model_version` when the response has one. experiment_id: a shipped
  `experiment_id`, else the `seldon-model` request header (without its
  `.experiment` suffix), else `model_name` (its versions compared).
  """
  model_name = obj.get("model_name")
  if not isinstance(model_name, str) or not model_name:
    raise FormatError("missing" if model_name in (None, "") else "wrong_type",
                      "model_name")
  if not isinstance(obj.get("outputs"), list):
    raise FormatError("wrong_type", "outputs")
  version = obj.get("model_version")
  if version is not None and not isinstance(version, str):
    raise FormatError("wrong_type", "model_version")
  headers = obj.get("headers")
  if headers is not None and not isinstance(headers, dict):
    raise FormatError("wrong_type", "headers")
  route = header(headers, SELDON_ROUTE_HEADER)
  if route is not None:
    arm = seldon_route_arm(route)
  else:
    arm = f"{model_name}:{version}" if version else model_name
  experiment_id = obj.get("experiment_id")
  if experiment_id is None:
    called = header(headers, SELDON_MODEL_HEADER)
    if called is not None:
      for suffix in _SELDON_KIND_SUFFIXES:
        called = called.removesuffix(suffix)
    experiment_id = called or model_name
  return {"request_id": obj.get("id"), "timestamp": obj.get("timestamp"),
          "experiment_id": experiment_id, "arm": arm}


def allocation_from_traffic_split(traffic_split: dict) -> str:
  """A Vertex AI endpoint's `traffic_split` ({deployed model id: percent})
  -> the `--expected_allocation` text (deployed model id=share,...).

  The endpoint samples logged requests at one rate for all its deployed
  models, so the logged rows keep the split. Models at 0% get no traffic
  and are left out (an arm expected at 0 is no sample-ratio test).
  """
  if not traffic_split:
    raise ValueError("empty traffic split")
  shares = {}
  for model_id, percent in traffic_split.items():
    if isinstance(percent, bool) or not isinstance(percent, (int, float)) or (
        percent < 0):
      raise ValueError(f"bad traffic share for {model_id}: {percent!r}")
    if percent > 0:
      shares[str(model_id)] = percent
  total = sum(shares.values())
  if not total:
    raise ValueError("traffic split sends no traffic")
  return ",".join(f"{model_id}={percent / total:.6g}"
                  for model_id, percent in sorted(shares.items()))

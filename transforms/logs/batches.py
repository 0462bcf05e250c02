"""Turn a block of raw log records into a validated Arrow table, batch-wise.

Pure (pyarrow and numpy, no Beam). The fast path lets pyarrow parse a whole
block of JSON lines and validates it with vectorized checks; a block where any
record is not clean (malformed, mistyped, another format such as Seldon) falls
back to the per-record parsers of `transforms.logs.contract`, which decide every
dead-letter reason. Both paths produce the same normalized columns.
"""

from __future__ import annotations

import decimal
import io
import json
from typing import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json

from transforms.logs import contract
from transforms.logs import formats

# Experiments and arms are few: as dictionaries they cost 4 bytes a row
# instead of their text, in every table that crosses the shuffle.
_LABEL = pa.dictionary(pa.int32(), pa.string())

PREDICTION_SCHEMA = pa.schema([
    ("request_id", pa.string()),
    ("ts", pa.float64()),
    ("experiment_id", _LABEL),
    ("arm", _LABEL),
    ("shadow", pa.bool_()),
])

FEEDBACK_SCHEMA = pa.schema([
    ("request_id", pa.string()),
    ("ts", pa.float64()),
    ("reward", pa.float64()),
    ("experiment_id", _LABEL),
    ("arm", _LABEL),
    ("raw", pa.string()),
    ("source_file", _LABEL),
])

SCHEMAS = {contract.PREDICTION: PREDICTION_SCHEMA,
           contract.FEEDBACK: FEEDBACK_SCHEMA}

# Arrow types of the optional fields a pipeline may carry
# (`contract.EXTRAS`), appended after the normalized columns.
EXTRA_TYPES = {
    "propensity": pa.float64(),
    "policy": pa.string(),
    "features": pa.list_(pa.float64()),
    "user_id": pa.string(),
    "attributes": pa.map_(pa.string(), pa.string()),
    "latency_ms": pa.float64(),
    "status": pa.string(),
    "metric": pa.string(),
    contract.RAW: pa.string(),
    "prediction": pa.struct([("value", pa.float64()), ("label", pa.string()),
                             ("probabilities", pa.list_(pa.float64()))]),
    "truth": pa.struct([("value", pa.float64()), ("label", pa.string()),
                        ("probabilities", pa.list_(pa.float64()))]),
}
# Extras of more than one JSON type: pyarrow infers their column per block
# (a block mixing types falls back to the contract).
_INFERRED_EXTRAS = ("attributes", "status", "prediction", "truth")


def schema(record_type: str, extras=()) -> pa.Schema:
  """The columns of a record type's tables, with the asked-for extras."""
  base = SCHEMAS[record_type]
  for name in extras:
    base = base.append(pa.field(name, EXTRA_TYPES[name]))
  return base

# What pyarrow reads of our contract; other fields are ignored on the fast path.
# `specversion` and `headers` only tell CloudEvents (structured and binary
# mode) apart, for the contract to read; `headers` is read as an empty struct.
_CLOUD_EVENT_FIELDS = [("specversion", pa.string()),
                       ("headers", pa.struct([]))]
_JSON_FIELDS = {
    contract.PREDICTION: [("request_id", pa.string()),
                          ("experiment_id", pa.string()),
                          ("arm", pa.string()), ("shadow", pa.bool_()),
                          ("propensity", pa.float64()),
                          ("policy", pa.string())] + _CLOUD_EVENT_FIELDS,
    contract.FEEDBACK: [("request_id", pa.string()), ("reward", pa.float64()),
                        ("experiment_id", pa.string()), ("arm", pa.string())
                       ] + _CLOUD_EVENT_FIELDS,
}

# A Vertex AI request-response row (`--log_format vertex`), fast path: its
# columns read under the contract's names.
_VERTEX_JSON_FIELDS = [("request_id", pa.string()), ("endpoint", pa.string()),
                       ("deployed_model_id", pa.string())]

_TIMESTAMP_TYPES = (pa.string(), pa.float64())
# pyarrow parses a block's 1 MiB chunks on parallel threads.
_READ_OPTIONS = pa_json.ReadOptions(block_size=1 << 20, use_threads=True)


# A block that fails the fast path is retried in this many parts, down to
# parts of MIN_FAST_LINES lines; only the parts that still fail are parsed
# record by record.
FAST_SPLIT = 16
MIN_FAST_LINES = 256


class BlockResult:
  """What one block yields: the valid records and the rejected ones."""
  __slots__ = ("table", "rejected", "fast_rows")

  def __init__(self, table: pa.Table, rejected: list, fast_rows: int):
    self.table = table
    self.rejected = rejected  # [(raw: str, contract.Rejected)]
    self.fast_rows = fast_rows  # rows that took the vectorized path

  @property
  def fast(self) -> bool:
    return self.fast_rows == self.table.num_rows and not self.rejected


def split_lines(block: bytes) -> list[bytes]:
  """The non-blank lines of a block (blank lines are not records)."""
  return [line for line in block.split(b"\n") if line.strip()]


def parse_json_block(block: bytes, record_type: str, source_file: str,
                     extras=(), log_format: str = contract.AUTO) -> BlockResult:
  """Parse and validate a block of whole JSON lines of one record type,
  with the optional fields `extras` (see `contract.EXTRAS`)."""
  result = _fast_block(block, record_type, source_file, extras, log_format)
  if result is not None:
    return result
  return parse_json_lines(split_lines(block), record_type, source_file,
                          extras, log_format)


def parse_json_lines(lines: list[bytes], record_type: str, source_file: str,
                     extras=(), log_format: str = contract.AUTO) -> BlockResult:
  """Parse and validate non-blank JSON lines of one record type."""
  result = _fast_block(b"\n".join(lines), record_type, source_file, extras,
                       log_format)
  if result is not None:
    return result
  if len(lines) <= MIN_FAST_LINES:
    return _slow(lines, record_type, source_file, extras, log_format)
  step = -(-len(lines) // FAST_SPLIT)
  parts = [parse_json_lines(lines[i:i + step], record_type, source_file,
                            extras, log_format)
           for i in range(0, len(lines), step)]
  return BlockResult(pa.concat_tables([part.table for part in parts]),
                     [r for part in parts for r in part.rejected],
                     sum(part.fast_rows for part in parts))


def _fast_block(data: bytes, record_type: str, source_file: str,
                extras, log_format: str) -> BlockResult | None:
  """The block parsed by pyarrow as a whole, or None where only the contract,
  record by record, can tell (or the block is invalid somewhere)."""
  if not data:
    return None
  buffer = np.frombuffer(data, np.uint8)
  ends = np.flatnonzero(buffer == ord("\n")) + 1
  if not data.endswith(b"\n"):
    ends = np.append(ends, len(data))
  # pyarrow's reader skips blank lines, takes two objects on one line as two
  # rows, does not check UTF-8, and crashes the process on a block that opens
  # with `null`: the fast path takes blocks of which every line opens with an
  # object and that are UTF-8, and then one row per line.
  starts = np.concatenate([[0], ends[:-1]])
  if not len(ends) or not (buffer[starts] == ord("{")).all() or not (
      _is_utf8(data)):
    return None
  table = _fast_json(data, len(ends), record_type, extras, log_format)
  if table is not None and _is_vertex(record_type, log_format):
    table = vertex_columns(table)
  if table is None:
    return None
  normalized = _normalize(table, record_type, extras)
  if normalized is None:
    return None
  raws = _lines_array(data, ends) if (
      record_type == contract.FEEDBACK or contract.RAW in extras) else None
  return BlockResult(_finish(normalized, record_type, raws, source_file,
                             extras), [], len(ends))


def _is_utf8(data: bytes) -> bool:
  offsets = pa.py_buffer(np.array([0, len(data)], np.int32))
  try:
    pa.StringArray.from_buffers(1, offsets, pa.py_buffer(data)).validate(
        full=True)
  except pa.ArrowInvalid:
    return False
  return True


def _lines_array(data: bytes, ends: np.ndarray) -> pa.Array:
  """Each line of `data` as a string, built from the block's own buffer."""
  offsets = np.concatenate([[0], ends]).astype(np.int32)
  lines = pa.StringArray.from_buffers(len(ends), pa.py_buffer(offsets),
                                      pa.py_buffer(data))
  return pc.utf8_rtrim(lines, characters="\r\n")


def parse_arrow_batch(batch: pa.RecordBatch | pa.Table, record_type: str,
                      source_file: str, extras=(),
                      log_format: str = contract.AUTO) -> BlockResult:
  """Validate rows already in Arrow form (Parquet, BigQuery); bad rows become
  JSON raws. Vertex AI request-response rows are told by their columns."""
  table = pa.Table.from_batches([batch]) if isinstance(
      batch, pa.RecordBatch) else batch
  if len(set(table.column_names)) < table.num_columns:  # Which one counts?
    return _slow([_row_json(row) for row in table.to_pylist()], record_type,
                 source_file, extras, log_format)
  time_column = "timestamp"
  if record_type == contract.PREDICTION and (
      log_format == formats.VERTEX or formats.is_vertex_table(
          table.column_names)):
    log_format, time_column = formats.VERTEX, "logging_time"
  # Both paths read a timestamp column as epoch seconds (UTC when it has no
  # zone), so a row's fate does not depend on its neighbours.
  original = table = _request_ids_as_text(
      _with_timestamp_column(table, time_column))
  if log_format == formats.VERTEX:
    table = vertex_columns(table)
  normalized = None
  if table is not None:
    normalized = _normalize(table, record_type, extras)
  if normalized is not None:
    raws = None
    if record_type == contract.FEEDBACK or contract.RAW in extras:
      raws = [_row_json(row) for row in table.to_pylist()]
    return BlockResult(_finish(normalized, record_type, raws, source_file,
                               extras), [], table.num_rows)
  return _slow([_row_json(row) for row in original.to_pylist()], record_type,
               source_file, extras, log_format)


def _is_vertex(record_type: str, log_format: str) -> bool:
  return record_type == contract.PREDICTION and log_format == formats.VERTEX


def vertex_columns(table: pa.Table) -> pa.Table | None:
  """Vertex AI request-response columns under the contract's names, the
  NUMERIC request id as its exact decimal text; None where only the
  per-record parser can tell."""
  if not set(formats.VERTEX_COLUMNS) <= set(table.column_names):
    return None
  request_id = table["request_id"]
  if pa.types.is_integer(request_id.type):
    request_id = pc.cast(request_id, pa.string())
  if not pa.types.is_string(request_id.type) or not _all(
      pc.or_kleene(pc.is_null(request_id), pc.match_substring_regex(
          request_id, _DECIMAL_PATTERN))):
    return None
  logging_time = table["logging_time"]
  if pa.types.is_string(logging_time.type):
    logging_time = pc.replace_substring_regex(logging_time, " UTC$", "+00:00")
  columns = {"request_id": _without_trailing_zeros(request_id),
             "timestamp": logging_time, "experiment_id": table["endpoint"],
             "arm": table["deployed_model_id"]}
  return pa.table(columns)


_DECIMAL_PATTERN = r"^-?[0-9]+(\.[0-9]+)?$"


def _without_trailing_zeros(decimals):
  """As formats.decimal_text: no trailing zeros after the point, no "-0"."""
  decimals = pc.replace_substring_regex(decimals, r"\.0+$", "")
  decimals = pc.replace_substring_regex(decimals, r"(\.[0-9]*[1-9])0+$",
                                        r"\1")
  return pc.replace_substring_regex(decimals, r"^-0$", "0")


def _request_ids_as_text(table: pa.Table) -> pa.Table:
  """A NUMERIC request_id column (BigQuery) -> its exact decimal text, as
  prediction and feedback tables must agree on it whatever their types."""
  if "request_id" not in table.column_names or not pa.types.is_decimal(
      table.schema.field("request_id").type):
    return table
  column = table["request_id"]
  text = pc.cast(column, pa.string())
  if _all(pc.or_kleene(pc.is_null(text),
                       pc.match_substring_regex(text, _DECIMAL_PATTERN))):
    text = _without_trailing_zeros(text)
  else:  # Arrow writes values below 1e-6 as "1E-9".
    text = pa.array([None if value is None else
                     formats.decimal_text(format(value, "f"))
                     for value in column.to_pylist()], pa.string())
  return table.set_column(table.column_names.index("request_id"),
                          "request_id", text)


def _row_json(row: dict) -> str:
  return json.dumps(row, default=_json_value, separators=(",", ":"))


def _json_value(value) -> str:
  if isinstance(value, decimal.Decimal):
    return format(value, "f")  # Plain digits (BigQuery NUMERIC), never 1E-9.
  return str(value)


def _with_timestamp_column(table: pa.Table,
                           name: str = "timestamp") -> pa.Table:
  if name in table.column_names and pa.types.is_timestamp(
      table.schema.field(name).type):
    # The stored integers in the column's unit (UTC, or read as UTC): no
    # unit conversion that could overflow; out-of-range values stay so.
    column = table[name]
    units = pc.cast(column, pa.int64())
    per_second = _UNITS_PER_SECOND[column.type.unit]
    seconds = pc.divide(pc.cast(units, pa.float64(), safe=False), per_second)
    return table.set_column(table.column_names.index(name), name, seconds)
  return table


_UNITS_PER_SECOND = {"s": 1.0, "ms": 1e3, "us": 1e6, "ns": 1e9}


def _epoch_seconds(micros) -> pa.Array:
  # Microseconds past 2^53 (after 2255) are not exact as doubles; seconds are.
  return pc.divide(pc.cast(micros, pa.float64(), safe=False), 1e6)


# Below this many microseconds (2^53, in 2255) micros / 1e6 rounds once, as
# Python's datetime.timestamp() does; later text timestamps take the contract.
_EXACT_MICROS = 2**53


def _json_fields(record_type: str, log_format: str):
  """(fields, name of the timestamp field) the fast path reads."""
  if _is_vertex(record_type, log_format):
    return _VERTEX_JSON_FIELDS, "logging_time"
  return _JSON_FIELDS[record_type], "timestamp"


def _fast_json(data: bytes, n_lines: int, record_type: str, extras,
               log_format: str) -> pa.Table | None:
  fields, timestamp = _json_fields(record_type, log_format)
  known = dict(fields)
  # pyarrow reads no map: an attributes object is inferred as a struct; a
  # status is inferred too (text, or HTTP codes as integers), and so are the
  # outcomes (a number, a label or a list).
  extra_fields = [(name, EXTRA_TYPES[name]) for name in extras
                  if name not in known and name not in _INFERRED_EXTRAS]
  behavior = "infer" if set(extras) & set(_INFERRED_EXTRAS) else "ignore"
  for ts_type in _TIMESTAMP_TYPES:
    json_schema = pa.schema(fields + extra_fields + [(timestamp, ts_type)])
    options = pa_json.ParseOptions(explicit_schema=json_schema,
                                   unexpected_field_behavior=behavior)
    try:
      table = pa_json.read_json(io.BytesIO(data), read_options=_READ_OPTIONS,
                                parse_options=options)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
      continue
    if table.num_rows == n_lines:  # Not two objects on one line.
      return table
    return None
  return None


def _all(mask) -> bool:
  return bool(pc.all(pc.fill_null(mask, False)).as_py())


def _present_strings(table: pa.Table, name: str):
  if name not in table.column_names:
    return None
  column = table[name]
  if not pa.types.is_string(column.type) or not _all(
      pc.greater(pc.utf8_length(column), 0)):
    return None
  return column


def _timestamps(table: pa.Table):
  if "timestamp" not in table.column_names:
    return None
  column = table["timestamp"]
  if column.null_count:
    return None
  if pa.types.is_string(column.type):
    try:
      micros = pc.cast(pc.cast(column, pa.timestamp("us", "UTC")), pa.int64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
      return None
    largest = pc.max(pc.abs(micros)).as_py()
    if largest is not None and largest >= _EXACT_MICROS:
      return None
    seconds = _epoch_seconds(micros)
  elif _is_number(column.type):
    # Integers past 2^53 round to the nearest double, as Python's float().
    seconds = pc.cast(column, pa.float64(), safe=False)
  else:
    return None
  # Out of range (or NaN): the slow path dead-letters those rows alone.
  in_range = pc.and_(pc.greater_equal(seconds, contract.EARLIEST_TIMESTAMP),
                     pc.less_equal(seconds, contract.LATEST_TIMESTAMP))
  return seconds if _all(in_range) else None


def _is_number(kind: pa.DataType) -> bool:
  return pa.types.is_floating(kind) or pa.types.is_integer(kind)


def _normalize(table: pa.Table, record_type: str,
               extras=()) -> pa.Table | None:
  """Normalized columns and extras if every row is valid by the contract,
  else None."""
  normalized = _normalize_base(table, record_type)
  if normalized is None:
    return None
  for name in extras:
    if name == contract.RAW:
      continue  # Appended by _finish from the block's lines.
    column = _extra(table, name)
    if column is None:
      return None
    normalized = normalized.append_column(name, column)
  return normalized


def _extra(table: pa.Table, name: str):
  """An optional column, typed and valid on every row, or None (the contract
  decides record by record)."""
  kind = EXTRA_TYPES[name]
  if name not in table.column_names:
    return pa.nulls(table.num_rows, kind)
  column = table[name]
  if pa.types.is_null(column.type):
    return pa.nulls(table.num_rows, kind)
  if name == "attributes":
    return _attributes_map(column)
  if name in ("prediction", "truth"):
    return _outcome(column, kind, probabilities=name == "prediction")
  if name == "propensity":
    if not _is_number(column.type):
      return None
    in_range = pc.and_kleene(pc.greater(column, 0.0),
                             pc.less_equal(column, 1.0))
    ok = _all(pc.or_kleene(pc.is_null(column), in_range))
    return pc.cast(column, kind) if ok else None
  if name == "latency_ms":
    if not _is_number(column.type):
      return None
    latency = pc.cast(column, pa.float64(), safe=False)
    valid = pc.and_(pc.is_finite(latency), pc.greater_equal(latency, 0.0))
    return latency if _all(pc.or_kleene(pc.is_null(latency), valid)) else None
  if name == "status":
    if pa.types.is_integer(column.type):  # HTTP codes, kept as their digits
      in_range = pc.and_(pc.greater_equal(column, 100),
                         pc.less_equal(column, 599))
      if not _all(pc.or_kleene(pc.is_null(column), in_range)):
        return None
      return pc.cast(column, pa.string())
    # Text must be ok/error; other types take the contract.
    if not pa.types.is_string(column.type) or not _all(pc.or_kleene(
        pc.is_null(column), pc.is_in(column, pa.array(
            [contract.STATUS_OK, contract.STATUS_ERROR])))):
      return None
    return column
  if name == "features":
    if not (pa.types.is_list(column.type) or pa.types.is_large_list(
        column.type)) or not _is_number(column.type.value_type):
      return None
    values = pc.list_flatten(column)
    if values.null_count or not _all(pc.is_finite(
        pc.cast(values, pa.float64(), safe=False))):
      return None
    return pc.cast(column, kind, safe=False)
  if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
    return pc.cast(column, kind)
  return None


def _outcome(column, kind: pa.DataType, probabilities: bool):
  """A column of numbers, of non-empty labels or (predictions) of
  probability lists -> the outcome struct, or None."""
  column = column.combine_chunks() if isinstance(
      column, pa.ChunkedArray) else column
  n = len(column)
  nulls = {"value": pa.nulls(n, pa.float64()),
           "label": pa.nulls(n, pa.string()),
           "probabilities": pa.nulls(n, pa.list_(pa.float64()))}
  if _is_number(column.type):
    values = pc.cast(column, pa.float64(), safe=False)
    if not _all(pc.or_kleene(pc.is_null(values), pc.is_finite(values))):
      return None
    nulls["value"] = values
  elif pa.types.is_string(column.type):
    if not _all(pc.or_kleene(pc.is_null(column),
                             pc.greater(pc.utf8_length(column), 0))):
      return None
    nulls["label"] = column
  elif probabilities and pa.types.is_list(column.type) and _is_number(
      column.type.value_type):
    lists = pc.cast(column, pa.list_(pa.float64()), safe=False)
    values = pc.list_flatten(lists)
    if values.null_count or not _all(pc.and_(
        pc.greater_equal(values, 0.0), pc.less_equal(values, 1.0))):
      return None
    lengths = _numpy(pc.fill_null(pc.list_value_length(lists), 0))
    totals = np.bincount(_numpy(pc.list_parent_indices(lists)),
                         weights=_numpy(values), minlength=n)
    sums_to_one = (lengths > 0) & (np.abs(totals - 1.0) <= (
        contract.PROBABILITY_SUM_TOLERANCE))
    if not (sums_to_one | _numpy_mask(lists)).all():
      return None
    nulls["probabilities"] = lists
  else:
    return None
  return pa.StructArray.from_arrays(
      list(nulls.values()), fields=list(kind), mask=pc.is_null(column))


def _attributes_map(column):
  """A struct column of scalar children (pyarrow's inference of JSON
  objects), or a string map (Parquet) -> map<string, string>."""
  if pa.types.is_map(column.type):
    if not (pa.types.is_string(column.type.key_type)
            and pa.types.is_string(column.type.item_type)):
      return None
    return column
  if not pa.types.is_struct(column.type):
    return None
  column = column.combine_chunks() if isinstance(
      column, pa.ChunkedArray) else column
  names = [column.type.field(i).name for i in range(column.type.num_fields)]
  texts = []
  for i in range(len(names)):
    child = column.field(i)
    if pa.types.is_string(child.type):
      texts.append(child)
    elif pa.types.is_null(child.type):
      texts.append(pa.nulls(len(column), pa.string()))
    elif _is_number(child.type) and not pa.types.is_floating(child.type):
      texts.append(pc.cast(child, pa.string()))
    else:
      # Floats and booleans: Arrow's spelling differs from JSON's.
      return None
  present = np.stack([~_numpy_mask(text) for text in texts], axis=1) if texts \
      else np.zeros((len(column), 0), bool)
  valid = column.is_valid().to_numpy(zero_copy_only=False)
  present &= valid[:, None]
  ends = np.cumsum(present.sum(axis=1))
  # A null offset makes its row a null map (the record had no attributes).
  offsets = pa.array(np.concatenate([[0], ends]), pa.int32(),
                     mask=np.concatenate([~valid, [False]]))
  rows, cols = np.nonzero(present)
  keys = pa.array(np.array(names, dtype=object)[cols] if len(cols) else [],
                  pa.string())
  values = pa.concat_arrays(texts).take(pa.array(
      cols * len(column) + rows, pa.int64())) if len(cols) else pa.array(
          [], pa.string())
  return pa.MapArray.from_arrays(offsets, keys, values)


def _numpy(array) -> np.ndarray:
  return array.to_numpy(zero_copy_only=False)


def _numpy_mask(array) -> np.ndarray:
  return array.is_null().to_numpy(zero_copy_only=False)


def _normalize_base(table: pa.Table, record_type: str) -> pa.Table | None:
  request_id = _present_strings(table, "request_id")
  ts = _timestamps(table)
  if request_id is None or ts is None:
    return None
  if any(name in table.column_names and table[name].null_count < table.num_rows
         for name in ("specversion", "headers")):
    return None  # CloudEvents: the contract tells their kind record by record.
  if record_type == contract.PREDICTION:
    experiment_id = _present_strings(table, "experiment_id")
    arm = _present_strings(table, "arm")
    if experiment_id is None or arm is None:
      return None
    if "propensity" in table.column_names:
      propensity = table["propensity"]
      if not (_is_number(propensity.type) or pa.types.is_null(
          propensity.type)):
        return None
      in_range = pc.and_kleene(pc.greater(propensity, 0.0),
                         pc.less_equal(propensity, 1.0))
      if not _all(pc.or_kleene(pc.is_null(propensity), in_range)):
        return None
    if "policy" in table.column_names and not pa.types.is_string(
        table["policy"].type):
      return None
    if "shadow" not in table.column_names or pa.types.is_null(
        table["shadow"].type):
      shadow = pa.repeat(False, table.num_rows)
    elif pa.types.is_boolean(table["shadow"].type):
      shadow = pc.fill_null(table["shadow"], False)
    else:
      return None
    return pa.table([request_id, ts, experiment_id, arm, shadow],
                    names=list(contract.PREDICTION_FIELDS))
  if "reward" not in table.column_names:
    return None
  reward = table["reward"]
  if not _is_number(reward.type):
    return None
  reward = pc.cast(reward, pa.float64(), safe=False)
  if not _all(pc.is_finite(reward)):
    return None
  optional = []
  for name in ("experiment_id", "arm"):
    column = table[name] if name in table.column_names else pa.nulls(
        table.num_rows, pa.string())
    if not pa.types.is_string(column.type):
      return None
    # The contract reads an empty string as absent.
    optional.append(pc.if_else(pc.equal(column, ""), None, column))
  return pa.table([request_id, ts, reward] + optional,
                  names=list(contract.FEEDBACK_FIELDS))


def _finish(normalized: pa.Table, record_type: str, raws, source_file: str,
            extras=()) -> pa.Table:
  columns = normalized.select(list(contract.FIELDS[record_type]))
  if raws is not None and not isinstance(raws, pa.Array):
    raws = pa.array(raws, pa.string())
  if record_type == contract.FEEDBACK:
    n = normalized.num_rows
    columns = columns.append_column("raw", raws)
    columns = columns.append_column(
        "source_file", pa.DictionaryArray.from_arrays(
            np.zeros(n, np.int32), pa.array([source_file])))
  for name in extras:
    columns = columns.append_column(
        name, raws if name == contract.RAW else normalized[name])
  return columns.cast(schema(record_type, extras))


def _slow(raws: Iterable, record_type: str, source_file: str,
          extras=(), log_format: str = contract.AUTO) -> BlockResult:
  parse = contract.parser(record_type, log_format)
  rows, rejected = [], []
  for raw in raws:
    text = contract.raw_text(raw)  # As the fast path's raws.
    parsed = parse(raw, extras)
    if isinstance(parsed, contract.Rejected):
      rejected.append((text, parsed))
      continue
    if record_type == contract.FEEDBACK:
      parsed["raw"] = text
      parsed["source_file"] = source_file
    rows.append(parsed)
  table = pa.Table.from_pylist(rows, schema=schema(record_type, extras))
  return BlockResult(table, rejected, 0)

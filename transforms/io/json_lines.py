"""Encode a whole Arrow table as JSON lines with vectorized Arrow kernels.

Pure (pyarrow). Large outputs (predictions) are written batch-wise: building a
dict and calling json.dumps per row costs microseconds a row, more than the
model does. Strings that need escaping and nested values fall back to
json.dumps for their column only.
"""

from __future__ import annotations

import json
import math
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

_NEEDS_ESCAPING = r'["\\\x00-\x1f]'


class RowBatch(NamedTuple):
  """Rows of one table as columns, plus values every row shares."""
  constants: dict
  table: pa.Table

  def rows(self) -> list[dict]:
    return [{**self.constants, **row} for row in self.table.to_pylist()]


def dumps(value, sort_keys: bool = False) -> str:
  """JSON text of a value; JSON has no NaN or infinity: those become null."""
  options = dict(default=str, separators=(",", ":"), sort_keys=sort_keys)
  try:
    return json.dumps(value, allow_nan=False, **options)
  except ValueError:
    return json.dumps(_without_non_finite(value), **options)


def _without_non_finite(value):
  if isinstance(value, float) and not math.isfinite(value):
    return None
  if isinstance(value, (list, tuple)):
    return [_without_non_finite(item) for item in value]
  if isinstance(value, dict):
    return {key: _without_non_finite(item) for key, item in value.items()}
  return value


def _per_value(column: pa.Array) -> pa.Array:
  return pa.array([None if value is None else dumps(value)
                   for value in column.to_pylist()], pa.string())


def _json_values(column: pa.Array) -> pa.Array:
  """The JSON text of every value of a column (nulls stay null)."""
  kind = column.type
  if pa.types.is_large_string(kind):  # Lines are joined with 32-bit offsets.
    return _json_values(column.cast(pa.string()))
  if pa.types.is_string(kind):
    if pc.any(pc.match_substring_regex(column, _NEEDS_ESCAPING)).as_py():
      return _per_value(column)
    return pc.binary_join_element_wise('"', column, '"', "")
  if pa.types.is_dictionary(kind):
    return _json_values(column.cast(kind.value_type))
  if pa.types.is_boolean(kind) or pa.types.is_integer(kind):
    return pc.cast(column, pa.string())
  if pa.types.is_floating(kind):
    # JSON has no NaN or infinity: those become null, as json.dumps can't do.
    return pc.if_else(pc.is_finite(column), pc.cast(column, pa.string()), None)
  if pa.types.is_null(kind):
    return pa.nulls(len(column), pa.string())
  return _per_value(column)


def _concatenated(lines: pa.Array, drop_last: int = 0) -> bytes:
  """The bytes of every string of `lines`, back to back, from its buffer,
  less the last `drop_last` bytes (sliced before the one copy)."""
  offsets = np.frombuffer(lines.buffers()[1], np.int32, len(lines) + 1,
                          lines.offset * 4)
  return lines.buffers()[2].slice(
      offsets[0], offsets[-1] - offsets[0] - drop_last).to_pybytes()


def encode(batch: RowBatch) -> bytes:
  """Every row as one JSON object per line, UTF-8, without the last newline.

  Constants are encoded once, into the text every line shares.
  """
  table = batch.table
  if table.num_rows == 0:
    return b""
  prefix = dumps(batch.constants)
  pieces, opening = [], prefix[:-1] if batch.constants else "{"
  for name in table.column_names:
    separator = "," if pieces or batch.constants else ""
    pieces.append(opening + separator + json.dumps(name) + ":")
    pieces.append(pc.fill_null(_json_values(table[name].combine_chunks()),
                               "null"))
    opening = ""
  pieces.append("}\n")
  lines = pc.binary_join_element_wise(*pieces, "")
  return _concatenated(lines, drop_last=1)

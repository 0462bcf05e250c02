"""An Arrow table -> serialized `tf.train.Example`s, a whole block at once.

Pure (numpy and pyarrow; TensorFlow only to parse, in `parse_spec`). The
protobuf wire format of an Example is written column by column with
vectorized operations instead of building one message per row: each feature
column becomes one map entry per row, the entries are concatenated per row
in key order, and the rows framed as Examples. The bytes are those of
protobuf's deterministic serialization (tests check both the bytes and
`tf.io.parse_single_example`).

  Example  { Features features = 1; }
  Features { map<string, Feature> feature = 1; }   entry: key = 1, value = 2
  Feature  { oneof: BytesList = 1, FloatList = 2, Int64List = 3 }
  *List    { repeated value = 1; }  (floats and ints packed)
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

BYTES = "bytes"
FLOAT = "float"
INT64 = "int64"
KINDS = (BYTES, FLOAT, INT64)
_LIST_TAGS = {BYTES: 0x0A, FLOAT: 0x12, INT64: 0x1A}


@dataclasses.dataclass(frozen=True)
class Feature:
  """One feature of the written Examples, as schema.json declares it."""
  name: str
  kind: str
  length: int = 1  # Values per example (floats only may have more than one).
  # Written instead when a row has no value; None: every row has one.
  default: float | str | None = None
  description: str = ""

  def to_json(self) -> dict:
    shape = [self.length] if self.length != 1 else []
    entry = {"name": self.name, "type": self.kind, "shape": shape}
    if self.default is not None:
      entry["default"] = self.default
    if self.description:
      entry["description"] = self.description
    return entry

  @classmethod
  def from_json(cls, entry: dict) -> "Feature":
    shape = entry.get("shape") or [1]
    return cls(entry["name"], entry["type"], shape[0], entry.get("default"),
               entry.get("description", ""))


def schema_json(features) -> str:
  return json.dumps({"features": [f.to_json() for f in features]}, indent=2,
                    sort_keys=True) + "\n"


def load_schema(text: str) -> list[Feature]:
  return [Feature.from_json(entry) for entry in json.loads(text)["features"]]


def parse_spec(features) -> dict:
  """The `tf.io.parse_example` spec of the written features."""
  import tensorflow as tf  # Only the readers of the export need it.
  dtypes = {BYTES: tf.string, FLOAT: tf.float32, INT64: tf.int64}
  spec = {}
  for feature in features:
    shape = [feature.length] if feature.length != 1 else []
    spec[feature.name] = tf.io.FixedLenFeature(shape, dtypes[feature.kind],
                                               default_value=feature.default)
  return spec


def encode(columns: list[tuple[Feature, pa.Array]]) -> pa.Array:
  """(feature, column) pairs of equal length -> one serialized Example per row
  (a binary array). Columns: strings or binary (BYTES), numbers (FLOAT,
  INT64 scalars) or fixed-length lists of numbers (FLOAT with length > 1).
  A null is written as the feature's default, or leaves the feature out of
  that row when it has none."""
  if not columns:
    raise ValueError("no feature to write")
  rows = len(columns[0][1])
  entries = []
  for feature, column in sorted(columns, key=lambda pair: pair[0].name):
    if len(column) != rows:
      raise ValueError(f"{feature.name}: {len(column)} rows, expected {rows}")
    entries.append(_entry(feature, _combined(column)))
  features = pc.binary_join_element_wise(*entries, b"",
                                         null_handling="skip")
  return _frame(0x0A, features)


def _combined(column):
  return column.combine_chunks() if isinstance(column, pa.ChunkedArray) \
      else column


def _entry(feature: Feature, column: pa.Array) -> pa.Array:
  """Map entries (key, Feature) of one column; null where a row leaves it out."""
  if feature.default is not None:
    column = pc.fill_null(column, feature.default)
  if feature.kind == BYTES:
    values = _frame(0x0A, pc.cast(column, pa.binary()))
  elif feature.kind == FLOAT:
    values = _frame(0x0A, _packed_floats(column, feature.length))
  elif feature.kind == INT64:
    values = _frame(0x0A, _varints(_numpy(pc.cast(column, pa.int64()))))
  else:
    raise ValueError(f"{feature.name}: no feature type {feature.kind}")
  value = _frame(0x12, _frame(_LIST_TAGS[feature.kind], values))
  key = _key_prefix(feature.name)
  entries = _frame(0x0A, pc.binary_join_element_wise(
      pa.array([key] * len(column), pa.binary()), value, b""))
  if column.null_count:
    entries = pc.if_else(column.is_null(), pa.scalar(None, pa.binary()),
                         entries)
  return entries


def _key_prefix(name: str) -> bytes:
  key = name.encode("utf-8")
  return bytes([0x0A]) + _varint_bytes(len(key)) + key


def _varint_bytes(value: int) -> bytes:
  out = bytearray()
  while True:
    byte = value & 0x7F
    value >>= 7
    if value:
      out.append(byte | 0x80)
    else:
      out.append(byte)
      return bytes(out)


def _numpy(column: pa.Array) -> np.ndarray:
  return column.to_numpy(zero_copy_only=False)


def _packed_floats(column: pa.Array, length: int) -> pa.Array:
  """Each row's float32 values, little-endian, as one binary value."""
  if length == 1:
    values = _numpy(pc.cast(pc.fill_null(column, 0.0), pa.float64()))
  else:
    flat = pc.list_flatten(column)
    if len(flat) != length * (len(column) - column.null_count) or (
        column.null_count):
      raise ValueError(f"every row needs {length} values")
    values = _numpy(pc.cast(flat, pa.float64()))
  matrix = values.astype("<f4").view(np.uint8).reshape(len(column),
                                                       4 * length)
  return _fixed_width(matrix)


def _fixed_width(matrix: np.ndarray) -> pa.Array:
  rows, width = matrix.shape
  offsets = np.arange(rows + 1, dtype=np.int32) * width
  return pa.Array.from_buffers(pa.binary(), rows, [
      None, pa.py_buffer(offsets), pa.py_buffer(np.ascontiguousarray(matrix))])


def _varints(values: np.ndarray) -> pa.Array:
  """Each (non-negative or two's-complement) int64 as its varint bytes."""
  unsigned = values.astype(np.int64).view(np.uint64)
  shifts = np.arange(10, dtype=np.uint64) * np.uint64(7)
  groups = ((unsigned[:, None] >> shifts) & np.uint64(0x7F)).astype(np.uint8)
  # Bytes needed: up to the highest non-zero group, at least one.
  nonzero = groups != 0
  widths = np.where(nonzero.any(axis=1),
                    10 - np.argmax(nonzero[:, ::-1], axis=1), 1)
  used = np.arange(10) < widths[:, None]
  more = np.arange(10) < (widths - 1)[:, None]
  groups = groups | (more.astype(np.uint8) << 7)
  return _ragged(groups, used, widths)


def _ragged(matrix: np.ndarray, used: np.ndarray,
            widths: np.ndarray) -> pa.Array:
  """Row i -> the first widths[i] bytes of matrix[i]."""
  offsets = np.concatenate([[0], np.cumsum(widths)]).astype(np.int32)
  data = matrix[used]
  return pa.Array.from_buffers(pa.binary(), len(widths), [
      None, pa.py_buffer(offsets), pa.py_buffer(data)])


def _frame(tag: int, payloads: pa.Array) -> pa.Array:
  """tag, varint length, payload: a length-delimited protobuf field per row."""
  lengths = _numpy(pc.fill_null(pc.binary_length(payloads), 0)).astype(
      np.int64)
  varints = _varints(lengths)
  header = pc.binary_join_element_wise(
      pa.array([bytes([tag])] * len(payloads), pa.binary()), varints, b"")
  return pc.binary_join_element_wise(header, payloads, b"")

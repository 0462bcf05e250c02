"""Model inputs: parse and validate one record, or a whole Arrow batch at once.

Pure (numpy and pyarrow, no Beam). A valid row has a `request_id` (a
non-empty string, or an integer) and exactly `width` finite numbers: either a
list column `features`, or the numeric columns named by `FeatureSpec.columns`.
Valid rows of a block become one `FeatureBatch` (a float32 matrix: the model
input as is); the others a `contract.Rejected` with one of these reasons:
`contract.INVALID_JSON`, `NOT_AN_OBJECT`, `MISSING_FIELD`, `WRONG_TYPE`,
`WRONG_FEATURE_LENGTH`, `NON_FINITE_FEATURE`.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from transforms.logs import contract

FEATURES = "features"  # record_type of the dead letters and counts.
REQUEST_ID = "request_id"

WRONG_FEATURE_LENGTH = "wrong_feature_length"
NON_FINITE_FEATURE = "non_finite_feature"
INFERENCE_FAILED = "inference_failed"
DEAD_LETTER_REASONS = (contract.INVALID_JSON, contract.NOT_AN_OBJECT,
                       contract.MISSING_FIELD, contract.WRONG_TYPE,
                       WRONG_FEATURE_LENGTH, NON_FINITE_FEATURE,
                       INFERENCE_FAILED)

# The smallest magnitude that rounds to infinity as float32 (max + half a unit
# in the last place): what numpy's cast of a Parquet float64 column makes inf.
_FLOAT32_OVERFLOW = 2**128 - 2**103
_NUMBER_TYPES = (int, float)  # Exact types: a bool is not a feature value.


@dataclasses.dataclass(frozen=True)
class FeatureSpec:
  """What a valid row carries: `width` numbers from `columns`, or from the
  list column `features` when `columns` is empty."""
  width: int
  columns: tuple[str, ...] = ()

  @property
  def input_columns(self) -> tuple[str, ...]:
    return (REQUEST_ID, *(self.columns or (FEATURES,)))


@dataclasses.dataclass
class FeatureBatch:
  """Valid rows of one block, ready for a model."""
  request_ids: pa.Array  # of strings
  features: np.ndarray  # float32 [rows, width]
  source: str | None = None

  def __len__(self) -> int:
    return len(self.request_ids)

  def raw_rows(self) -> list[str]:
    """Each row as a JSON record, for the dead-letter table."""
    return [_row_json({REQUEST_ID: request_id, FEATURES: values})
            for request_id, values in zip(self.request_ids.to_pylist(),
                                          self.features.tolist())]


@dataclasses.dataclass
class ParsedBlock:
  """What one block of input yields: its valid rows and its rejected ones."""
  batch: FeatureBatch
  rejected: list[tuple[str, contract.Rejected]]  # (raw record, why)
  read: int


class _Invalid(Exception):

  def __init__(self, reason: str, detail: str = ""):
    super().__init__(reason, detail)
    self.rejected = contract.Rejected(reason, detail)


def _row_json(row: dict) -> str:
  return json.dumps(row, default=str, separators=(",", ":"))


def _request_id(record: dict) -> str:
  value = record.get(REQUEST_ID)
  if value is None or value == "":
    raise _Invalid(contract.MISSING_FIELD, REQUEST_ID)
  if type(value) is int:
    return str(value)
  if not isinstance(value, str) or not contract.is_text(value):
    raise _Invalid(contract.WRONG_TYPE, REQUEST_ID)
  return value


def _feature_values(record: dict, spec: FeatureSpec) -> list:
  if spec.columns:
    values = []
    for column in spec.columns:
      value = record.get(column)
      if value is None:
        raise _Invalid(contract.MISSING_FIELD, column)
      values.append(value)
    detail = ",".join(spec.columns)
  else:
    values = record.get(FEATURES)
    if values is None:
      raise _Invalid(contract.MISSING_FIELD, FEATURES)
    if not isinstance(values, list):
      raise _Invalid(contract.WRONG_TYPE, FEATURES)
    if len(values) != spec.width:
      raise _Invalid(WRONG_FEATURE_LENGTH, f"{len(values)} != {spec.width}")
    detail = FEATURES
  if not all(type(value) in _NUMBER_TYPES for value in values):
    raise _Invalid(contract.WRONG_TYPE, detail)
  if not all(map(_fits_float32, values)):
    raise _Invalid(NON_FINITE_FEATURE, detail)
  return values


def _fits_float32(value: float | int) -> bool:
  """Finite, also as the model's float32. Python compares an int with a float
  exactly, so an integer of any size (valid JSON) is safe here."""
  return abs(value) < _FLOAT32_OVERFLOW


def parse_record(record: Any,
                 spec: FeatureSpec) -> tuple[str, list] | contract.Rejected:
  """One record (a decoded JSON object, a BigQuery row) -> (request_id,
  feature values) or Rejected."""
  try:
    if not isinstance(record, dict):
      raise _Invalid(contract.NOT_AN_OBJECT)
    return _request_id(record), _feature_values(record, spec)
  except _Invalid as invalid:
    return invalid.rejected


def parse_json_line(line: bytes | str,
                    spec: FeatureSpec) -> tuple[str, list] | contract.Rejected:
  """One JSON line -> (request_id, feature values) or Rejected."""
  try:
    record = json.loads(line)
  except (ValueError, UnicodeDecodeError):
    return contract.Rejected(contract.INVALID_JSON)
  return parse_record(record, spec)


def _block(parsed: Iterable, raws: list[str], spec: FeatureSpec,
           source: str | None) -> ParsedBlock:
  request_ids, rows, rejected = [], [], []
  for result, raw in zip(parsed, raws):
    if isinstance(result, contract.Rejected):
      rejected.append((raw, result))
    else:
      request_ids.append(result[0])
      rows.append(result[1])
  features = np.array(rows, dtype=np.float32).reshape(len(rows), spec.width)
  return ParsedBlock(
      FeatureBatch(pa.array(request_ids, pa.string()), features, source),
      rejected, len(raws))


def parse_json_lines(lines: list[bytes], spec: FeatureSpec,
                     source: str | None) -> ParsedBlock:
  """A block of JSON lines -> its valid rows as a batch, and the rejected."""
  raws = [line.decode("utf-8", errors="replace") for line in lines]
  return _block((parse_json_line(line, spec) for line in lines), raws, spec,
                source)


def parse_records(records: list[dict], spec: FeatureSpec,
                  source: str | None) -> ParsedBlock:
  """A block of row dicts (e.g. from BigQuery) -> valid rows as a batch, and
  the rejected."""
  raws = [_row_json(record) for record in records]
  return _block((parse_record(record, spec) for record in records), raws,
                spec, source)


# Arrow batches are validated column-wise: each check marks the rows it
# rejects, and a row takes the reason of the first check that rejects it.


def _is_number_type(arrow_type: pa.DataType) -> bool:
  return pa.types.is_integer(arrow_type) or pa.types.is_floating(arrow_type)


def _is_list_type(arrow_type: pa.DataType) -> bool:
  return (pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type)
          or pa.types.is_fixed_size_list(arrow_type))


def _everywhere(rows: int) -> np.ndarray:
  return np.ones(rows, dtype=bool)


def _arrow_request_ids(table: pa.Table, checks: list) -> pa.Array:
  rows = table.num_rows
  if REQUEST_ID not in table.column_names:
    checks.append((_everywhere(rows), contract.Rejected(contract.MISSING_FIELD,
                                                        REQUEST_ID)))
    return pa.nulls(rows, pa.string())
  ids = table[REQUEST_ID].combine_chunks()
  if pa.types.is_dictionary(ids.type):  # e.g. written from a pandas category
    ids = ids.dictionary_decode()
  if pa.types.is_integer(ids.type):
    ids = pc.cast(ids, pa.string())
  elif not (pa.types.is_string(ids.type) or pa.types.is_large_string(ids.type)):
    checks.append((_everywhere(rows), contract.Rejected(contract.WRONG_TYPE,
                                                        REQUEST_ID)))
    return pa.nulls(rows, pa.string())
  missing = pc.fill_null(pc.equal(pc.utf8_length(ids), 0), True)
  checks.append((missing.to_numpy(zero_copy_only=False),
                 contract.Rejected(contract.MISSING_FIELD, REQUEST_ID)))
  return ids


def _arrow_feature_list(table: pa.Table, spec: FeatureSpec, checks: list,
                        matrix: np.ndarray) -> None:
  rows = table.num_rows
  if FEATURES not in table.column_names:
    checks.append((_everywhere(rows), contract.Rejected(contract.MISSING_FIELD,
                                                        FEATURES)))
    return
  column = table[FEATURES].combine_chunks()
  if not (_is_list_type(column.type) and
          _is_number_type(column.type.value_type)):
    checks.append((_everywhere(rows), contract.Rejected(contract.WRONG_TYPE,
                                                        FEATURES)))
    return
  missing = column.is_null().to_numpy(zero_copy_only=False)
  lengths = pc.fill_null(pc.list_value_length(column), -1).to_numpy()
  right_length = lengths == spec.width
  checks.append((missing, contract.Rejected(contract.MISSING_FIELD, FEATURES)))
  checks.append((~right_length, contract.Rejected(
      WRONG_FEATURE_LENGTH, f"!= {spec.width}")))
  checks.append((_fill_matrix(column, right_length, matrix),
                 contract.Rejected(contract.WRONG_TYPE, FEATURES)))


def _fill_matrix(column: pa.Array, right_length: np.ndarray,
                 matrix: np.ndarray) -> np.ndarray:
  """Copies the lists of the right length into their rows of `matrix`;
  returns which rows hold a null value."""
  values = pc.list_flatten(column)
  flat = values.to_numpy(zero_copy_only=False)
  null_values = np.zeros(len(column), dtype=bool)
  if values.null_count == 0 and right_length.all():
    matrix[:] = flat.reshape(matrix.shape)  # The usual block: nothing to pick.
    return null_values
  parents = pc.list_parent_indices(column).to_numpy()
  null_values[parents[values.is_null().to_numpy(zero_copy_only=False)]] = True
  matrix[right_length] = flat[right_length[parents]].reshape(
      -1, matrix.shape[1])
  return null_values


def _arrow_feature_columns(table: pa.Table, spec: FeatureSpec, checks: list,
                           matrix: np.ndarray) -> None:
  rows = table.num_rows
  for index, name in enumerate(spec.columns):
    if name not in table.column_names:
      checks.append((_everywhere(rows), contract.Rejected(
          contract.MISSING_FIELD, name)))
      continue
    column = table[name].combine_chunks()
    if not _is_number_type(column.type):
      checks.append((_everywhere(rows), contract.Rejected(contract.WRONG_TYPE,
                                                          name)))
      continue
    checks.append((column.is_null().to_numpy(zero_copy_only=False),
                   contract.Rejected(contract.MISSING_FIELD, name)))
    matrix[:, index] = column.to_numpy(zero_copy_only=False)


def parse_arrow_batch(batch: pa.RecordBatch | pa.Table, spec: FeatureSpec,
                      source: str | None) -> ParsedBlock:
  """Rows already in Arrow form (Parquet) -> valid rows as a batch, and the
  rejected ones as JSON raws; vectorized but for the rejected rows."""
  table = pa.Table.from_batches([batch]) if isinstance(
      batch, pa.RecordBatch) else batch
  checks = []
  request_ids = _arrow_request_ids(table, checks)
  matrix = np.zeros((table.num_rows, spec.width), dtype=np.float32)
  # A value beyond float32 becomes inf in the matrix, then non_finite_feature.
  with np.errstate(over="ignore"):
    if spec.columns:
      _arrow_feature_columns(table, spec, checks, matrix)
    else:
      _arrow_feature_list(table, spec, checks, matrix)
  checks.append((~np.isfinite(matrix).all(axis=1),
                 contract.Rejected(NON_FINITE_FEATURE, ",".join(
                     spec.columns or (FEATURES,)))))

  failed_check = np.zeros(table.num_rows, dtype=np.int32)  # 1 + check index
  for index, (rejects, _) in reversed(list(enumerate(checks))):
    failed_check[rejects] = index + 1
  valid = failed_check == 0
  if valid.all():
    return ParsedBlock(FeatureBatch(request_ids, matrix, source), [],
                       table.num_rows)
  batch = FeatureBatch(request_ids.filter(pa.array(valid)), matrix[valid],
                       source)
  present = [c for c in spec.input_columns if c in table.column_names]
  rejected_rows = np.flatnonzero(~valid)
  records = table.select(present).take(pa.array(rejected_rows)).to_pylist()
  rejected = [(_row_json(record), checks[failed_check[row] - 1][1])
              for row, record in zip(rejected_rows, records)]
  return ParsedBlock(batch, rejected, table.num_rows)

"""Joined requests -> the arrays a policy works on: context, arm, propensity, reward.

Pure (pyarrow and numpy, no Beam). A request this step cannot use is
rejected with a reason (the `DEAD_LETTER_REASONS` below, documented in
docs/policy.md): the pipelines dead-letter it and count it, never drop it.
The context vector of a request is x = (1, c_1, ..., c_d): an intercept,
then either the prediction's `features` list (d numbers) or the named
`attributes` of `--context_features`, each parsed as a number.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import NamedTuple, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from transforms.logs import contract

MISSING_PROPENSITY = "missing_propensity"
MISSING_CONTEXT = "missing_context"
CONTEXT_LENGTH = "context_length"
CONTEXT_NOT_NUMERIC = "context_not_numeric"
DEAD_LETTER_REASONS = (MISSING_PROPENSITY, contract.PROPENSITY_OUT_OF_RANGE,
                       MISSING_CONTEXT, CONTEXT_LENGTH, CONTEXT_NOT_NUMERIC)

FEATURES = "features"
ATTRIBUTES = "attributes"


@dataclasses.dataclass(frozen=True)
class ContextSpec:
  """Where a request's context comes from, and how long it is."""
  source: str  # FEATURES or ATTRIBUTES
  names: tuple = ()  # the attribute names, in vector order
  length: int = 0  # of the features list

  def __post_init__(self):
    if self.source not in (FEATURES, ATTRIBUTES):
      raise ValueError(f"context source must be {FEATURES} or {ATTRIBUTES}")
    if self.source == ATTRIBUTES and not self.names:
      raise ValueError("--context_features names at least one attribute")
    if self.source == FEATURES and self.length < 1:
      raise ValueError("--context_dim must be at least 1")

  @classmethod
  def parse(cls, context_features: str | None,
            context_dim: int | None) -> "ContextSpec | None":
    """From the options: `a,b,c` names attributes; else a features length."""
    if context_features and context_dim:
      raise ValueError("give --context_features or --context_dim, not both")
    if context_features:
      names = tuple(n.strip() for n in context_features.split(","))
      if "" in names or len(set(names)) != len(names):
        raise ValueError(f"--context_features: distinct names, comma-"
                         f"separated: {context_features!r}")
      return cls(ATTRIBUTES, names)
    if context_dim:
      return cls(FEATURES, length=int(context_dim))
    return None

  @property
  def dim(self) -> int:
    """Length of x, the intercept included."""
    return 1 + (len(self.names) if self.source == ATTRIBUTES else self.length)

  @property
  def feature_names(self) -> list[str]:
    if self.source == ATTRIBUTES:
      return list(self.names)
    return [f"features[{i}]" for i in range(self.length)]


class PolicyRequests(NamedTuple):
  """The usable requests of a table, as arrays (one row each)."""
  request_id: pa.Array
  experiment_id: pa.Array  # strings
  arm: pa.Array  # strings
  ts: np.ndarray
  reward: np.ndarray  # no counted feedback: 0
  propensity: np.ndarray | None  # None when not asked for
  x: np.ndarray  # (n, dim): the intercept, then the context if any
  rejected: list  # [(row dict, contract.Rejected)]

  @property
  def size(self) -> int:
    return len(self.ts)

  def take(self, rows: np.ndarray) -> "PolicyRequests":
    indices = pa.array(rows, pa.int64())
    return PolicyRequests(
        self.request_id.take(indices), self.experiment_id.take(indices),
        self.arm.take(indices), self.ts[rows],
        self.reward[rows],
        None if self.propensity is None else self.propensity[rows],
        self.x[rows], [])


def extras(spec: ContextSpec | None, with_propensity: bool) -> tuple:
  """The prediction extras to read for a spec."""
  wanted = ("propensity",) if with_propensity else ()
  return wanted + ((spec.source,) if spec else ())


def _numpy(column) -> np.ndarray:
  return column.to_numpy(zero_copy_only=False)


def _array(column) -> pa.Array:
  return column.combine_chunks() if isinstance(column,
                                               pa.ChunkedArray) else column


def _features(column, length: int):
  """features lists -> (values (n, length), reason per row or None)."""
  column = column.combine_chunks() if isinstance(column,
                                                 pa.ChunkedArray) else column
  n = len(column)
  lengths = _numpy(pc.fill_null(pc.list_value_length(column), -1))
  reasons = np.full(n, None, object)
  reasons[lengths != length] = CONTEXT_LENGTH
  reasons[lengths < 0] = MISSING_CONTEXT
  good = lengths == length
  values = np.zeros((n, length))
  if good.any():
    flat = _numpy(pc.list_flatten(column.filter(pa.array(good))))
    values[good] = flat.reshape(-1, length)
  return values, reasons


def _number(text: str | None) -> float:
  """An attribute's text as a finite number, else NaN."""
  try:
    parsed = json.loads(text)
    if isinstance(parsed, bool):  # true/false are not numbers here
      return math.nan
    value = float(parsed)
  except (TypeError, ValueError, OverflowError, RecursionError):
    return math.nan
  return value if math.isfinite(value) else math.nan


def _attributes(column, names: Sequence[str]):
  """attributes maps -> (values (n, len(names)), reason per row or None)."""
  column = column.combine_chunks() if isinstance(column,
                                                 pa.ChunkedArray) else column
  n = len(column)
  reasons = np.full(n, None, object)
  values = np.zeros((n, len(names)))
  for i, name in enumerate(names):
    texts = pc.map_lookup(column, name, "first")
    absent = ~_numpy(pc.is_valid(texts)).astype(bool)
    try:
      parsed = _numpy(pc.cast(texts, pa.float64())).astype(np.float64)
    except pa.ArrowInvalid:  # Not all numbers: parse them one by one.
      parsed = np.array([_number(t) for t in texts.to_pylist()], np.float64)
    bad = ~absent & ~np.isfinite(parsed)
    reasons[bad & (reasons == None)] = CONTEXT_NOT_NUMERIC  # noqa: E711
    reasons[absent] = MISSING_CONTEXT
    values[:, i] = np.where(absent | bad, 0.0, parsed)
  return values, reasons


def _row(table: pa.Table, i: int) -> dict:
  row = table.slice(i, 1).to_pylist()[0]
  if isinstance(row.get(ATTRIBUTES), list):
    row[ATTRIBUTES] = dict(row[ATTRIBUTES])
  return row


def raw_record(row: dict) -> str:
  """What a dead letter of this step holds: the joined request, as JSON.

  (The prediction's original line is not carried past the reader; its
  normalized fields and the reward are.)
  """
  finite = {key: (repr(value) if isinstance(value, float) and
                  not math.isfinite(value) else value)
            for key, value in row.items()}
  return json.dumps(finite, sort_keys=True, default=str, allow_nan=False)


def policy_requests(table: pa.Table, spec: ContextSpec | None,
                    with_propensity: bool) -> PolicyRequests:
  """Joined requests (`JoinRequests` rows) -> their usable arrays and rejections."""
  n = table.num_rows
  reasons = np.full(n, None, object)
  details = np.full(n, None, object)
  propensity = None
  if with_propensity:
    column = table["propensity"]
    propensity = _numpy(pc.fill_null(column, math.nan)).astype(np.float64)
    missing = np.isnan(propensity)
    # The reader already rejects these; a table from elsewhere may hold them.
    out_of_range = ~missing & ~((propensity > 0) & (propensity <= 1))
    reasons[out_of_range] = contract.PROPENSITY_OUT_OF_RANGE
    reasons[missing] = MISSING_PROPENSITY
    details[missing | out_of_range] = "propensity"
  x = np.ones((n, 1))
  if spec is not None:
    if spec.source == FEATURES:
      values, context_reasons = _features(table[FEATURES], spec.length)
    else:
      values, context_reasons = _attributes(table[ATTRIBUTES], spec.names)
    bad_context = (context_reasons != None) & (reasons == None)  # noqa: E711
    reasons[bad_context] = context_reasons[bad_context]
    details[bad_context] = spec.source
    x = np.hstack([x, values])
  reward = _numpy(pc.fill_null(table["reward"], 0.0)).astype(np.float64)
  requests = PolicyRequests(
      _array(table["request_id"]),
      _array(table["experiment_id"].cast(pa.string())),
      _array(table["arm"].cast(pa.string())),
      _numpy(table["ts"]).astype(np.float64), reward, propensity, x, [])
  bad = np.flatnonzero(reasons != None)  # noqa: E711
  if not len(bad):
    return requests
  good = np.flatnonzero(reasons == None)  # noqa: E711
  rejected = [(_row(table, int(i)),
               contract.Rejected(reasons[i], details[i] or ""))
              for i in bad]
  return requests.take(good)._replace(rejected=rejected)


def to_table(requests: PolicyRequests) -> pa.Table:
  """Usable requests as an Arrow table (x as a fixed-size list column)."""
  dim = requests.x.shape[1]
  columns = {
      "request_id": requests.request_id,
      "ts": pa.array(requests.ts, pa.float64()),
      "experiment_id": requests.experiment_id,
      "arm": requests.arm,
      "reward": pa.array(requests.reward, pa.float64()),
      "x": pa.FixedSizeListArray.from_arrays(
          pa.array(requests.x.ravel(), pa.float64()), dim),
  }
  if requests.propensity is not None:
    columns["propensity"] = pa.array(requests.propensity, pa.float64())
  return pa.table(columns)


def from_table(table: pa.Table) -> PolicyRequests:
  """The inverse of `to_table`."""
  x_column = table["x"].combine_chunks()
  dim = x_column.type.list_size
  x = _numpy(x_column.flatten()).reshape(-1, dim)
  propensity = (_numpy(table["propensity"]).astype(np.float64)
                if "propensity" in table.column_names else None)
  return PolicyRequests(
      _array(table["request_id"]), _array(table["experiment_id"]),
      _array(table["arm"]), _numpy(table["ts"]),
      _numpy(table["reward"]), propensity, x, [])


def codes(names: pa.Array) -> tuple[np.ndarray, list]:
  """Strings -> (an integer code per row, the distinct strings)."""
  encoded = pc.dictionary_encode(names)
  return (_numpy(encoded.indices).astype(np.int64),
          encoded.dictionary.to_pylist())


def groups(*keys: pa.Array):
  """(key tuple, row indices) of each distinct combination of `keys`."""
  if not len(keys[0]):
    return
  combined = np.zeros(len(keys[0]), np.int64)
  names = []
  for key in keys:
    key_codes, key_names = codes(key)
    combined = combined * len(key_names) + key_codes
    names.append(key_names)
  if combined.min() == combined.max():  # One group, as usual: no sort.
    order = np.arange(len(combined))
  else:
    order = np.argsort(combined, kind="stable")
  sorted_codes = combined[order]
  starts = np.flatnonzero(np.r_[True, sorted_codes[1:] != sorted_codes[:-1]])
  for start, stop in zip(starts, np.r_[starts[1:], len(order)]):
    rows = order[start:stop]
    code = int(combined[rows[0]])
    key = []
    for key_names in reversed(names):
      code, index = divmod(code, len(key_names))
      key.append(key_names[index])
    yield tuple(reversed(key)), rows

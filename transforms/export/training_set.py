"""Joined requests -> de-identified training examples, one Arrow block at a time.

Pure (numpy, pyarrow, no Beam). `prepare` takes a block of joined requests
(`rewards.join_requests`: the prediction's columns with the extras
EXTRAS, and `reward`) and returns the serialized Examples of each split, the
export's dead letters, and counts:

- filters: a time range, experiments, rows without reward (`missing_reward`
  ignore), per-arm minimum and maximum counts (given the arm totals);
- checks: a feature vector of the declared length, free-text fields that are
  text; a failing row is dead-lettered with its (scrubbed) raw record;
- `request_id` and `user_id` replaced by their HMAC-SHA256 (keyed);
- the split: eval when the first 52 bits of the user's pseudonym, as a
  fraction of 2**52, fall below `eval_fraction` (a request without user is
  its own user), so a user is in one split only, on every run;
- free-text fields (`request.text`: a path into the raw record) scrubbed by
  `deid.scrub`.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import hmac
import json
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from transforms.export import deid
from transforms.export import examples
from transforms.logs import contract

EXTRAS = (contract.RAW, "features", "user_id", "propensity")
TRAIN = "train"
EVAL = "eval"
SPLITS = (TRAIN, EVAL)
RECORD_TYPE = "export"

# Dead-letter reasons of the export (besides the contract's).
MISSING_FEATURES = "missing_features"
FEATURE_LENGTH = "feature_length"
REASONS = (MISSING_FEATURES, FEATURE_LENGTH, contract.WRONG_TYPE)

# data_quality metrics (record_type "export"): joined = exported + filtered +
# dead-lettered; `deid:<TYPE>` counts replacements in free text.
JOINED = "joined"
EXPORTED = "exported"
FILTERED = "filtered"
DEAD_LETTERED = "dead_letter"
DEID = "deid"
FILTER_REASONS = ("time_range", "experiment", "no_reward", "arm_below_min",
                  "arm_sampled")

_HASH_BITS = 52


@dataclasses.dataclass(frozen=True)
class ExportConfig:
  """What the export writes and which requests it takes."""
  feature_count: int
  text_fields: tuple = ()
  eval_fraction: float = 0.2
  start: float | None = None  # epoch seconds, inclusive
  end: float | None = None  # epoch seconds, exclusive
  experiment_ids: tuple = ()
  missing_reward: str = "zero"
  min_arm_count: int = 0
  max_arm_count: int = 0  # 0: no maximum
  num_shards: int = 4

  def __post_init__(self):
    if self.feature_count < 1:
      raise ValueError("feature_count must be >= 1")
    if not 0.0 <= self.eval_fraction <= 1.0:
      raise ValueError("eval_fraction must be between 0 and 1")
    if self.num_shards < 1:
      raise ValueError("num_shards must be >= 1")
    for path in self.text_fields:
      if not path or any(not part for part in path.split(".")):
        raise ValueError(f"bad text field path {path!r}")
    if len(set(self.text_fields)) < len(self.text_fields):
      raise ValueError("a text field is given twice")
    reserved = {feature.name for feature in self._fixed_features()}
    clashes = sorted(set(self.text_fields) & reserved)
    if clashes:
      raise ValueError(f"text field {', '.join(clashes)} has the name of an "
                       "exported feature")

  def features(self) -> list[examples.Feature]:
    """The features of every written Example (schema.json)."""
    return self._fixed_features() + [
        examples.Feature(path, examples.BYTES, default="",
                         description="free text, de-identified")
        for path in self.text_fields]

  def _fixed_features(self) -> list[examples.Feature]:
    return [
        examples.Feature("features", examples.FLOAT, self.feature_count,
                         description="the context vector"),
        examples.Feature("arm", examples.BYTES),
        examples.Feature("experiment_id", examples.BYTES),
        examples.Feature("propensity", examples.FLOAT, default=-1.0,
                         description="-1: not logged"),
        examples.Feature("reward", examples.FLOAT,
                         description="reduced counted reward; 0 when none "
                         "counted (missing_reward zero)"),
        examples.Feature("timestamp_us", examples.INT64,
                         description="prediction time, epoch microseconds"),
        examples.Feature("request_id", examples.BYTES,
                         description="HMAC-SHA256 of the request id (hex)"),
        examples.Feature("user_id", examples.BYTES, default="",
                         description="HMAC-SHA256 of the user id (hex); "
                         "empty: not logged"),
    ]


class Prepared(NamedTuple):
  """What one block yields."""
  # {(split, shard): table of `key` (the pseudonymized request id, the
  # order in the file) and `example` (serialized)}
  shards: dict
  dead_letters: list  # [(raw, contract.Rejected)]
  counts: collections.Counter  # {metric: n}
  # {(split, experiment_id, arm): (rows, reward_sum, positive_rows)}
  summary: dict


def arm_totals(table: pa.Table) -> dict:
  """{(experiment_id, arm): rows} of a block of joined requests."""
  keys = zip(table["experiment_id"].cast(pa.string()).to_pylist(),
             table["arm"].cast(pa.string()).to_pylist())
  return dict(collections.Counter(keys))


def pseudonymizer(key: bytes):
  """`contract.pseudonymize` under one key, without setting the key up again
  for every value (a copy of the keyed state per value)."""
  keyed = hmac.new(key, digestmod=hashlib.sha256)

  def pseudonymize(value: str) -> str:
    state = keyed.copy()
    state.update(value.encode("utf-8"))
    return state.hexdigest()

  return pseudonymize


def hash_fraction(pseudonyms: list[str]) -> np.ndarray:
  """Hex digests -> uniform fractions in [0, 1) from their first 52 bits."""
  return np.array([int(p[:_HASH_BITS // 4], 16) for p in pseudonyms],
                  np.float64) / float(2**_HASH_BITS)


def prepare(table: pa.Table, config: ExportConfig, key: bytes,
            totals: dict | None = None) -> Prepared:
  """A block of joined requests -> examples per (split, shard), dead letters,
  counts and summary partials. `totals`: rows per (experiment_id, arm) over
  the whole export, for the per-arm filters."""
  counts = collections.Counter({JOINED: table.num_rows})
  table, counts = _filter(table, config, totals or {}, key, counts)
  table, dead_letters = _check(table, config)
  for _, rejected in dead_letters:
    counts[f"{DEAD_LETTERED}:{rejected.reason}"] += 1
  if not table.num_rows:
    return Prepared({}, dead_letters, counts, {})

  pseudonymize = pseudonymizer(key)
  request_ids = [pseudonymize(value)
                 for value in table["request_id"].to_pylist()]
  user_ids = [None if value is None else pseudonymize(value)
              for value in table["user_id"].to_pylist()]
  splitter = [user or request for user, request in zip(user_ids,
                                                       request_ids)]
  is_eval = hash_fraction(splitter) < config.eval_fraction
  texts, replaced = _texts(table, config)
  counts.update({f"{DEID}:{kind}": n for kind, n in replaced.items()})

  reward = pc.fill_null(table["reward"], 0.0)
  columns = {
      "features": table["features"],
      "arm": table["arm"].cast(pa.string()),
      "experiment_id": table["experiment_id"].cast(pa.string()),
      "propensity": table["propensity"],
      "reward": reward,
      "timestamp_us": pc.cast(pc.round(pc.multiply(table["ts"], 1e6)),
                              pa.int64()),
      "request_id": pa.array(request_ids, pa.string()),
      "user_id": pa.array(user_ids, pa.string()),
      **{path: pa.array(values, pa.string())
         for path, values in texts.items()},
  }
  encoded = examples.encode([(feature, columns[feature.name])
                             for feature in config.features()])

  shard = (np.array([int(p[:8], 16) for p in request_ids], np.uint64) %
           np.uint64(config.num_shards)).astype(np.int64)
  keyed = pa.table({"key": pa.array(request_ids, pa.string()),
                    "example": encoded})
  shards = {}
  for split_index, split in enumerate(SPLITS):
    in_split = is_eval if split_index else ~is_eval
    counts[f"{EXPORTED}:{split}"] += int(in_split.sum())
    for s in np.unique(shard[in_split]):
      rows = np.flatnonzero(in_split & (shard == s))
      shards[(split, int(s))] = keyed.take(pa.array(rows))
  return Prepared(shards, dead_letters, counts,
                  _summary(table, reward, is_eval))


def _filter(table, config: ExportConfig, totals: dict, key: bytes, counts):
  ts = table["ts"]
  keep = pa.array(np.ones(table.num_rows, bool))
  reasons = []
  if config.start is not None or config.end is not None:
    in_range = pc.and_(
        pc.greater_equal(ts, config.start if config.start is not None
                         else -np.inf),
        pc.less(ts, config.end if config.end is not None else np.inf))
    reasons.append(("time_range", in_range))
  if config.experiment_ids:
    reasons.append(("experiment", pc.is_in(
        table["experiment_id"].cast(pa.string()),
        pa.array(config.experiment_ids, pa.string()))))
  if config.missing_reward == "ignore":
    reasons.append(("no_reward", pc.is_valid(table["reward"])))
  if (config.min_arm_count or config.max_arm_count) and table.num_rows:
    arm_rows = np.array([totals.get(pair, 0) for pair in zip(
        table["experiment_id"].cast(pa.string()).to_pylist(),
        table["arm"].cast(pa.string()).to_pylist())], np.float64)
    if config.min_arm_count:
      reasons.append(("arm_below_min", pa.array(
          arm_rows >= config.min_arm_count)))
    if config.max_arm_count:
      # Each arm keeps about max_arm_count rows: those whose request hashes
      # below max/total, the same rows on every run.
      keep_rate = config.max_arm_count / np.maximum(arm_rows, 1)
      pseudonymize = pseudonymizer(key)
      fractions = hash_fraction([pseudonymize(value) for value in
                                 table["request_id"].to_pylist()])
      reasons.append(("arm_sampled", pa.array(fractions < keep_rate)))
  for reason, passes in reasons:
    passes = pc.fill_null(passes, False)
    dropped = pc.and_(keep, pc.invert(passes))
    counts[f"{FILTERED}:{reason}"] += pc.sum(pc.cast(dropped, pa.int64())
                                             ).as_py() or 0
    keep = pc.and_(keep, passes)
  return table.filter(keep), counts


def _check(table, config: ExportConfig):
  """Rows with a feature vector of the declared length and text fields that
  are text; the others as (scrubbed raw, Rejected)."""
  features = table["features"]
  lengths = pc.fill_null(pc.list_value_length(features), -1)
  missing = _np(pc.is_null(features))
  wrong = ~missing & (_np(lengths) != config.feature_count)
  bad = missing | wrong
  texts_ok = np.ones(table.num_rows, bool)
  if config.text_fields:
    for i, raw in enumerate(table["raw"].to_pylist()):
      if not bad[i]:
        texts_ok[i] = all(isinstance(v, (str, type(None))) for v in
                          _paths(raw, config.text_fields).values())
  bad |= ~texts_ok
  if not bad.any():
    return table, []
  dead = []
  raws = table["raw"].to_pylist()
  for i in np.flatnonzero(bad):
    if missing[i]:
      why = contract.Rejected(MISSING_FEATURES, "features")
    elif wrong[i]:
      why = contract.Rejected(FEATURE_LENGTH, f"features: "
                              f"{lengths[int(i)].as_py()} values, expected "
                              f"{config.feature_count}")
    else:
      why = contract.Rejected(contract.WRONG_TYPE, ",".join(
          config.text_fields))
    # The raw record may hold free text: only its scrubbed form is kept.
    dead.append((deid.scrub(raws[i] or ""), why))
  return table.filter(pa.array(~bad)), dead


def _paths(raw: str, paths) -> dict:
  record = json.loads(raw)
  found = {}
  for path in paths:
    value = record
    for part in path.split("."):
      value = value.get(part) if isinstance(value, dict) else None
    found[path] = value
  return found


def _texts(table, config: ExportConfig):
  texts = {path: [] for path in config.text_fields}
  replaced = collections.Counter()
  if not config.text_fields:
    return texts, replaced
  for raw in table["raw"].to_pylist():
    for path, value in _paths(raw, config.text_fields).items():
      texts[path].append(None if value is None else deid.scrub(value,
                                                               replaced))
  return texts, replaced


def _summary(table, reward, is_eval) -> dict:
  grouped = pa.table({
      "split": pa.array(np.where(is_eval, EVAL, TRAIN)),
      "experiment_id": table["experiment_id"].cast(pa.string()),
      "arm": table["arm"].cast(pa.string()),
      "reward": reward,
      "positive": pc.cast(pc.greater(reward, 0.0), pa.int64()),
  }).group_by(["split", "experiment_id", "arm"]).aggregate(
      [("reward", "count"), ("reward", "sum"), ("positive", "sum")])
  return {(row["split"], row["experiment_id"], row["arm"]): (
      row["reward_count"], row["reward_sum"], row["positive_sum"])
          for row in grouped.to_pylist()}


def _np(array) -> np.ndarray:
  return np.asarray(array.to_numpy(zero_copy_only=False))

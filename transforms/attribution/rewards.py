"""Attribute feedback to predictions and pre-aggregate rewards per arm, batch-wise.

Pure (numpy and pyarrow, no Beam). `attribute` takes every prediction and
feedback record of a set of request ids (one join shard) as Arrow tables and
returns per-arm partial accumulators, outcome counts and orphan feedback. The
per-arm accumulators merge associatively, so Beam combines them per arm.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from transforms.logs import contract

REDUCERS = ("max", "sum", "first", "last")
MISSING_REWARD_MODES = ("zero", "ignore")

# Outcome metrics (data_quality.metric) besides read/parsed/dead-letter counts.
COUNTED = "counted"
DUPLICATE = "duplicate"
LATE = "late"
SHADOW = "shadow"


@dataclasses.dataclass(frozen=True)
class AttributionConfig:
  """How feedback becomes a reward (see README, "Semantics")."""
  attribution_window_s: float = 86400.0
  reward_reduce: str = "max"
  missing_reward: str = "zero"
  with_predictions: bool = True

  def __post_init__(self):
    if self.reward_reduce not in REDUCERS:
      raise ValueError(f"reward_reduce must be one of {REDUCERS}")
    if self.missing_reward not in MISSING_REWARD_MODES:
      raise ValueError(f"missing_reward must be one of {MISSING_REWARD_MODES}")
    if self.attribution_window_s < 0:
      raise ValueError("attribution_window_s must be >= 0")


class ArmAccumulator(NamedTuple):
  """Mergeable per-arm totals.

  Besides the sums (kept for the output tables), the rewards' mean and centred
  sum of squares (`reward_m2`), merged by Chan's formula, and their min and
  max: the variance does not cancel for a large mean and a small spread, and
  is zero only when every reward was equal.
  """
  impressions: int = 0
  feedback_count: int = 0
  samples: int = 0
  reward_sum: float = 0.0
  reward_sq_sum: float = 0.0
  non_binary: int = 0
  ts_min: float = float("inf")
  ts_max: float = float("-inf")
  reward_mean: float = 0.0
  reward_m2: float = 0.0
  reward_min: float = float("inf")
  reward_max: float = float("-inf")

  def merge(self, other: "ArmAccumulator") -> "ArmAccumulator":
    samples = self.samples + other.samples
    delta = other.reward_mean - self.reward_mean
    if samples:
      mean = self.reward_mean + delta * other.samples / samples
      m2 = (self.reward_m2 + other.reward_m2
            + delta * delta * self.samples * other.samples / samples)
    else:
      mean, m2 = 0.0, 0.0
    return ArmAccumulator(
        self.impressions + other.impressions,
        self.feedback_count + other.feedback_count,
        samples,
        self.reward_sum + other.reward_sum,
        self.reward_sq_sum + other.reward_sq_sum,
        self.non_binary + other.non_binary,
        min(self.ts_min, other.ts_min),
        max(self.ts_max, other.ts_max),
        mean, m2,
        min(self.reward_min, other.reward_min),
        max(self.reward_max, other.reward_max))


def merge_all(accumulators) -> ArmAccumulator:
  total = ArmAccumulator()
  for accumulator in accumulators:
    total = total.merge(accumulator)
  return total


class Attribution(NamedTuple):
  """The result of attributing one shard."""
  partials: list  # [((experiment_id, arm), ArmAccumulator)]
  counts: dict  # {(record_type, metric): int}
  orphans: list  # [(raw, source_file, contract.Rejected)]


def _numpy(column) -> np.ndarray:
  return column.to_numpy(zero_copy_only=False)


def _array(column) -> pa.Array:
  return column.combine_chunks() if isinstance(column,
                                               pa.ChunkedArray) else column


def _reduce_groups(codes: np.ndarray, ts: np.ndarray, rewards: np.ndarray,
                   how: str):
  """Reduce rewards per code (ordered by time): (group codes, group rewards)."""
  if len(codes) == 0:
    return codes, rewards, codes
  order = np.lexsort((ts, codes))
  codes, rewards = codes[order], rewards[order]
  starts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])
  if how == "max":
    reduced = np.maximum.reduceat(rewards, starts)
  elif how == "sum":
    reduced = np.add.reduceat(rewards, starts)
  elif how == "first":
    reduced = rewards[starts]
  else:
    reduced = rewards[np.r_[starts[1:], len(codes)] - 1]
  return codes[starts], reduced, order[starts]


def _per_arm(experiment_ids, arms, rewarded: np.ndarray, rewards: np.ndarray,
             ts: np.ndarray, missing_reward: str) -> list:
  """Pre-aggregate impressions (one per row) into per-arm accumulators."""
  if len(ts) == 0:
    return []
  experiments = pc.dictionary_encode(_array(experiment_ids))
  arm_codes = pc.dictionary_encode(_array(arms))
  n_arms = len(arm_codes.dictionary)
  pair = (_numpy(experiments.indices).astype(np.int64) * n_arms +
          _numpy(arm_codes.indices))
  pairs, group = np.unique(pair, return_inverse=True)
  n_groups = len(pairs)
  rewards = np.where(rewarded, rewards, 0.0)
  non_binary = rewarded & (rewards != 0.0) & (rewards != 1.0)
  impressions = np.bincount(group, minlength=n_groups)
  feedback = np.bincount(group, weights=rewarded, minlength=n_groups)
  sums = np.bincount(group, weights=rewards, minlength=n_groups)
  squares = np.bincount(group, weights=rewards * rewards, minlength=n_groups)
  odd = np.bincount(group, weights=non_binary, minlength=n_groups)
  ts_min = np.full(n_groups, np.inf)
  ts_max = np.full(n_groups, -np.inf)
  np.minimum.at(ts_min, group, ts)
  np.maximum.at(ts_max, group, ts)
  samples = impressions if missing_reward == "zero" else feedback
  # Moments of the rewards each arm counts (unrewarded rows as 0 with "zero").
  counted = np.ones(len(ts), bool) if missing_reward == "zero" else rewarded
  with np.errstate(invalid="ignore", divide="ignore"):
    means = np.where(samples > 0, sums / samples, 0.0)
    # Second pass: what rounding of the sums left off the mean.
    deviation = np.where(counted, rewards - means[group], 0.0)
    means += np.where(samples > 0, np.bincount(
        group, weights=deviation, minlength=n_groups) / samples, 0.0)
  deviation = np.where(counted, rewards - means[group], 0.0)
  m2 = np.bincount(group, weights=deviation * deviation, minlength=n_groups)
  low = np.full(n_groups, np.inf)
  high = np.full(n_groups, -np.inf)
  np.minimum.at(low, group[counted], rewards[counted])
  np.maximum.at(high, group[counted], rewards[counted])
  partials = []
  experiment_names = experiments.dictionary.to_pylist()
  arm_names = arm_codes.dictionary.to_pylist()
  for i, key in enumerate(pairs):
    name = (experiment_names[key // n_arms], arm_names[key % n_arms])
    partials.append((name, ArmAccumulator(
        int(impressions[i]), int(feedback[i]), int(samples[i]),
        float(sums[i]), float(squares[i]), int(odd[i]),
        float(ts_min[i]), float(ts_max[i]), float(means[i]), float(m2[i]),
        float(low[i]), float(high[i]))))
  return partials


def _encode_request_ids(predictions: pa.Table, feedback: pa.Table):
  ids = pa.chunked_array(predictions["request_id"].chunks +
                         feedback["request_id"].chunks, pa.string())
  encoded = pc.dictionary_encode(ids.combine_chunks())
  codes = _numpy(encoded.indices).astype(np.int64)
  return (codes[:predictions.num_rows], codes[predictions.num_rows:],
          len(encoded.dictionary))


class Joined(NamedTuple):
  """The requests of one shard, each with its reward."""
  # One row per attributed request: the served prediction's columns (or, with
  # no predictions, the first counted feedback's), and `reward`: the reduced
  # counted reward, null when no feedback counted.
  requests: pa.Table
  counts: dict  # {(record_type, metric): int}
  orphans: list  # [(raw, source_file, contract.Rejected)]


def _latest_truth(codes: np.ndarray, ts: np.ndarray, feedback: pa.Table,
                  rows: np.ndarray, n_keys: int) -> np.ndarray:
  """Per request code, the feedback row of its latest truth among `rows`
  (-1: none)."""
  latest = np.full(n_keys, -1, dtype=np.int64)
  with_truth = rows[_numpy(pc.is_valid(feedback["truth"])).astype(bool)[rows]]
  order = with_truth[np.lexsort((ts[with_truth], codes[with_truth]))]
  latest[codes[order]] = order  # Later rows of a code overwrite earlier ones.
  return latest


def _take_truth(feedback: pa.Table, rows: np.ndarray) -> pa.Array:
  return _array(feedback["truth"]).take(pa.array(rows, pa.int64(),
                                                 mask=rows < 0))


def join_requests(predictions: pa.Table, feedback: pa.Table,
                  config: AttributionConfig, signals=(),
                  include_shadow: bool = False) -> Joined:
  """Join feedback to predictions by request_id: one row per request.

  With `signals`, ((signal, reduce), ...) and a feedback `metric` column
  (null: "reward"), feedback is deduplicated per (request, signal): `reward`
  is the "reward" signal's, and each pair gets a column
  `signal_column(signal, reduce)` with that signal's feedback reduced by
  `reduce` (null: none counted). Needs predictions.

  With a `truth` column in `feedback`, each request also gets the latest
  truth among its counted feedback. `include_shadow` adds a row per shadow
  model (arm) of each request: its earliest shadow prediction, with the
  request's reward and truth (from its feedback in the attribution window,
  whichever prediction came first); counts stay as without it.
  """
  if signals and not config.with_predictions:
    raise ValueError("feedback signals need the prediction logs")
  counts = collections.Counter()
  predictions = predictions.take(
      np.argsort(_numpy(predictions["ts"]), kind="stable"))
  p_codes, f_codes, n_keys = _encode_request_ids(predictions, feedback)
  f_ts = _numpy(feedback["ts"])
  f_reward = _numpy(feedback["reward"])
  orphans = []

  if config.with_predictions:
    n_pred = predictions.num_rows
    first_row = np.full(n_keys, -1, dtype=np.int64)
    first_row[p_codes[::-1]] = np.arange(n_pred)[::-1]
    is_first = first_row[p_codes] == np.arange(n_pred)
    shadow = _numpy(predictions["shadow"]).astype(bool)
    counts[(contract.PREDICTION, DUPLICATE)] += int(n_pred - is_first.sum())
    counts[(contract.PREDICTION, SHADOW)] += int((is_first & shadow).sum())
    counts[(contract.PREDICTION, COUNTED)] += int((is_first & ~shadow).sum())

    f_row = first_row[f_codes]
    matched = f_row >= 0
    safe_row = np.where(matched, f_row, 0)
    on_shadow = matched & shadow[safe_row] if n_pred else matched
    p_ts = _numpy(predictions["ts"])
    delay = f_ts - (p_ts[safe_row] if n_pred else 0.0)
    late = matched & ~on_shadow & (delay > config.attribution_window_s)
    eligible = matched & ~on_shadow & ~late
    counts[(contract.FEEDBACK, SHADOW)] += int(on_shadow.sum())
    counts[(contract.FEEDBACK, LATE)] += int(late.sum())
    unmatched = np.flatnonzero(~matched)
    reason = contract.Rejected(contract.ORPHAN_FEEDBACK, "request_id")
  else:
    has_arm = pc.and_(pc.is_valid(feedback["experiment_id"]),
                      pc.is_valid(feedback["arm"]))
    eligible = _numpy(has_arm).astype(bool)
    unmatched = np.flatnonzero(~eligible)
    missing = pc.if_else(pc.is_valid(feedback["experiment_id"]), "arm",
                         "experiment_id")
    reason = None

  for i in unmatched:
    why = reason or contract.Rejected(contract.MISSING_FIELD,
                                      missing[int(i)].as_py())
    orphans.append((feedback["raw"][int(i)].as_py(),
                    feedback["source_file"][int(i)].as_py(), why))

  rows = np.flatnonzero(eligible)
  signal_of_row = _signal_codes(feedback) if signals else None
  group_keys = f_codes if not signals else f_codes * (
      int(signal_of_row.max(initial=0)) + 1) + signal_of_row
  group_codes, group_rewards, group_rows = _reduce_groups(
      group_keys[rows], f_ts[rows], f_reward[rows], config.reward_reduce)
  counts[(contract.FEEDBACK, COUNTED)] += len(group_codes)
  counts[(contract.FEEDBACK, DUPLICATE)] += len(rows) - len(group_codes)
  signal_rows = {}
  if signals:
    names = _signal_names(feedback)
    for signal in {s for s, _ in signals} | {DEFAULT_SIGNAL}:
      code = names.index(signal) if signal in names else -1
      signal_rows[signal] = rows[signal_of_row[rows] == code]
    group_codes, group_rewards, _ = _reduce_groups(
        f_codes[signal_rows[DEFAULT_SIGNAL]],
        f_ts[signal_rows[DEFAULT_SIGNAL]],
        f_reward[signal_rows[DEFAULT_SIGNAL]], config.reward_reduce)

  has_truth = "truth" in feedback.column_names
  if config.with_predictions:
    reward_of_code = np.full(n_keys, np.nan)
    reward_of_code[group_codes] = group_rewards
    served = np.flatnonzero(is_first & ~shadow)
    requests = predictions.take(served)
    request_codes = p_codes[served]
    rewards = reward_of_code[request_codes]
    if has_truth:
      truth_rows = _latest_truth(f_codes, f_ts, feedback, rows, n_keys)[
          p_codes[served]]
    if include_shadow:
      shadows = _first_shadow_predictions(predictions, p_codes, shadow)
      in_window = matched & (delay <= config.attribution_window_s)
      if signals:  # The reward is the "reward" signal's, as for live rows.
        in_window &= np.isin(np.arange(len(f_codes)),
                             signal_rows[DEFAULT_SIGNAL])
      in_window = np.flatnonzero(in_window)
      codes, any_rewards, _ = _reduce_groups(
          f_codes[in_window], f_ts[in_window], f_reward[in_window],
          config.reward_reduce)
      any_reward_of_code = np.full(n_keys, np.nan)
      any_reward_of_code[codes] = any_rewards
      requests = pa.concat_tables([requests, predictions.take(shadows)])
      request_codes = np.concatenate([request_codes, p_codes[shadows]])
      rewards = np.concatenate([rewards,
                                any_reward_of_code[p_codes[shadows]]])
      if has_truth:
        truth_rows = np.concatenate([truth_rows, _latest_truth(
            f_codes, f_ts, feedback, in_window, n_keys)[p_codes[shadows]]])
  else:
    # Without predictions every deduplicated feedback is its own request.
    requests = feedback.select(["request_id", "ts", "experiment_id",
                                "arm"]).take(rows[group_rows])
    rewards = group_rewards
    if has_truth:
      truth_rows = _latest_truth(f_codes, f_ts, feedback, rows, n_keys)[
          f_codes[rows[group_rows]]]
  requests = requests.append_column(
      "reward", pa.array(rewards, pa.float64(), mask=np.isnan(rewards)))
  for signal, how in signals:
    chosen = signal_rows[signal]
    codes, values, _ = _reduce_groups(f_codes[chosen], f_ts[chosen],
                                      f_reward[chosen], how)
    value_of_code = np.full(n_keys, np.nan)
    value_of_code[codes] = values
    column = value_of_code[request_codes]
    requests = requests.append_column(
        signal_column(signal, how),
        pa.array(column, pa.float64(), mask=np.isnan(column)))
  if has_truth:
    requests = requests.append_column("truth",
                                      _take_truth(feedback, truth_rows))
  return Joined(requests, dict(counts), orphans)


DEFAULT_SIGNAL = "reward"


def signal_column(signal: str, reduce: str) -> str:
  """Column of joined requests with a feedback signal reduced per request."""
  return f"feedback:{signal}:{reduce}"


def _signal_names(feedback: pa.Table) -> list:
  metric = pc.fill_null(_array(feedback["metric"]), DEFAULT_SIGNAL)
  return pc.unique(metric).sort().to_pylist()


def _signal_codes(feedback: pa.Table) -> np.ndarray:
  """Per feedback row, the index of its signal in `_signal_names`."""
  metric = pc.fill_null(_array(feedback["metric"]), DEFAULT_SIGNAL)
  return _numpy(pc.index_in(metric, value_set=pc.unique(metric).sort())
                ).astype(np.int64)


def _first_shadow_predictions(predictions: pa.Table, p_codes: np.ndarray,
                              shadow: np.ndarray) -> np.ndarray:
  """Rows of the earliest shadow prediction of each (request, arm); the
  predictions are in time order."""
  rows = np.flatnonzero(shadow)
  arms = pc.dictionary_encode(pc.cast(_array(predictions["arm"]).take(rows),
                                      pa.string()))
  arm_codes = _numpy(arms.indices).astype(np.int64)
  pairs = p_codes[rows] * max(len(arms.dictionary), 1) + arm_codes
  _, first = np.unique(pairs, return_index=True)
  return rows[np.sort(first)]


def per_arm(requests: pa.Table, missing_reward: str) -> list:
  """Joined requests -> [((experiment_id, arm), ArmAccumulator)]."""
  reward = requests["reward"]
  rewarded = _numpy(pc.is_valid(reward)).astype(bool)
  return _per_arm(requests["experiment_id"], requests["arm"], rewarded,
                  _numpy(pc.fill_null(reward, 0.0)).astype(np.float64),
                  _numpy(requests["ts"]), missing_reward)


def attribute(predictions: pa.Table, feedback: pa.Table,
              config: AttributionConfig) -> Attribution:
  """Join feedback to predictions by request_id and aggregate per arm."""
  joined = join_requests(predictions, feedback, config)
  return Attribution(per_arm(joined.requests, config.missing_reward),
                     joined.counts, joined.orphans)


# One request at a time (the streaming attribution): the same semantics as
# `attribute`, for the prediction and feedback records of a single request id.


def reduce_rewards(rewards, how: str) -> float:
  """The reward of a request from its counted rewards, in event-time order."""
  if how == "max":
    return max(rewards)
  if how == "sum":
    return sum(rewards)
  if how == "first":
    return rewards[0]
  return rewards[-1]


def request_contribution(prediction_ts: float, reward: float | None,
                         missing_reward: str) -> ArmAccumulator:
  """What a served request adds to its arm; `reward` None: no counted feedback."""
  if reward is None:
    samples = 1 if missing_reward == "zero" else 0
    if samples:
      return ArmAccumulator(1, 0, 1, 0.0, 0.0, 0, prediction_ts,
                            prediction_ts, 0.0, 0.0, 0.0, 0.0)
    return ArmAccumulator(1, 0, 0, 0.0, 0.0, 0, prediction_ts, prediction_ts)
  return ArmAccumulator(1, 1, 1, reward, reward * reward,
                        int(reward not in (0.0, 1.0)), prediction_ts,
                        prediction_ts, reward, 0.0, reward, reward)


class RequestOutcome(NamedTuple):
  """A request once its attribution window has closed."""
  contribution: ArmAccumulator | None  # None for a shadow prediction
  counts: dict  # {(record_type, metric): int}


def attribute_request(prediction_ts: float, shadow: bool, feedback,
                      config: AttributionConfig) -> RequestOutcome:
  """The outcome of one request from its kept (earliest) prediction and every
  feedback on it, [(ts, reward)] in arrival order."""
  counts = collections.Counter()
  if shadow:
    counts[(contract.PREDICTION, SHADOW)] += 1
    counts[(contract.FEEDBACK, SHADOW)] += len(feedback)
    return RequestOutcome(None, dict(+counts))
  counts[(contract.PREDICTION, COUNTED)] += 1
  in_window = sorted(
      (f for f in feedback
       if f[0] - prediction_ts <= config.attribution_window_s),
      key=lambda f: f[0])
  counts[(contract.FEEDBACK, LATE)] += len(feedback) - len(in_window)
  reward = None
  if in_window:
    counts[(contract.FEEDBACK, COUNTED)] += 1
    counts[(contract.FEEDBACK, DUPLICATE)] += len(in_window) - 1
    reward = reduce_rewards([r for _, r in in_window], config.reward_reduce)
  return RequestOutcome(
      request_contribution(prediction_ts, reward, config.missing_reward),
      dict(+counts))


def attribute_request_signals(prediction_ts: float, shadow: bool, feedback,
                              config: AttributionConfig, signals=()):
  """`attribute_request` with feedback [(ts, reward, signal)] deduplicated
  per (request, signal), as `join_requests` with signals does.

  Returns (RequestOutcome of the "reward" signal, {(signal, reduce): value}
  of the `signals` with counted feedback).
  """
  counts = collections.Counter()
  if shadow:
    counts[(contract.PREDICTION, SHADOW)] += 1
    counts[(contract.FEEDBACK, SHADOW)] += len(feedback)
    return RequestOutcome(None, dict(+counts)), {}
  counts[(contract.PREDICTION, COUNTED)] += 1
  in_window = sorted(
      (f for f in feedback
       if f[0] - prediction_ts <= config.attribution_window_s),
      key=lambda f: f[0])
  counts[(contract.FEEDBACK, LATE)] += len(feedback) - len(in_window)
  by_signal = {}
  for _, reward, signal in in_window:
    by_signal.setdefault(signal, []).append(reward)
  counts[(contract.FEEDBACK, COUNTED)] += len(by_signal)
  counts[(contract.FEEDBACK, DUPLICATE)] += len(in_window) - len(by_signal)
  reward = None
  if DEFAULT_SIGNAL in by_signal:
    reward = reduce_rewards(by_signal[DEFAULT_SIGNAL], config.reward_reduce)
  values = {(signal, how): reduce_rewards(by_signal[signal], how)
            for signal, how in signals if signal in by_signal}
  return RequestOutcome(
      request_contribution(prediction_ts, reward, config.missing_reward),
      dict(+counts)), values

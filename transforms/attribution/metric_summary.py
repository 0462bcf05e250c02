"""Mergeable per-arm summaries of metrics, from joined requests.

Pure (numpy, pyarrow, datasketches; no Beam). `MetricSummary` is what one arm
of one experiment (in one segment) accumulated for one metric: the count, the
mean and centred sum of squares merged by Chan's formula (no cancellation, for
any mean), min and max (a variance is zero only when every value was equal),
for a ratio the denominator's moments and the co-moment, and for a quantile
metric an Apache DataSketches KLL sketch. `summarize` turns one shard of
joined requests into ((experiment_id, dimension, segment, arm, metric),
MetricSummary) partials that Beam combines with `MetricSummary.merge_into`.
"""

from __future__ import annotations

import math
from typing import Mapping

import datasketches
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from transforms.attribution import rewards
from transforms.decisions import metrics as metric_defs
from transforms.logs import contract

# KLL accuracy parameter: normalized rank error about 0.35 % (k = 800) with
# 99 % confidence for a single quantile, about 19 kB serialized once full;
# see docs/metrics.md.
KLL_K = 800
ALL = "all"  # the dimension and segment of the overall rows
OTHER = "other"  # values past --max_segment_values
MISSING_VALUE = "(none)"  # the request has no such attribute
# Pseudo-metric counting the served requests of an arm (its impressions);
# its minimum and maximum are the span of their prediction times.
REQUESTS = "*requests*"


class MetricSummary:
  """Per-arm summary of one metric; merge() is associative and commutative.

  n: values counted; mean, m2: their mean and centred sum of squares;
  minimum, maximum; for a ratio (numerator x, denominator y): mean and m2 are
  of x, den_mean and den_m2 of y, comoment = sum (x - mean)(y - den_mean);
  sketch: a KLL sketch of the values (quantile metrics) or None.
  Pickles the sketch as its compact serialized bytes.
  """

  __slots__ = ("n", "mean", "m2", "minimum", "maximum", "den_mean", "den_m2",
               "comoment", "sketch")

  def __init__(self, n=0, mean=0.0, m2=0.0, minimum=math.inf,
               maximum=-math.inf, den_mean=0.0, den_m2=0.0, comoment=0.0,
               sketch=None):
    self.n, self.mean, self.m2 = n, mean, m2
    self.minimum, self.maximum = minimum, maximum
    self.den_mean, self.den_m2, self.comoment = den_mean, den_m2, comoment
    self.sketch = sketch

  def __getstate__(self):
    state = {s: getattr(self, s) for s in self.__slots__}
    if self.sketch is not None:
      state["sketch"] = self.sketch.serialize()
    return state

  def __setstate__(self, state):
    for name, value in state.items():
      setattr(self, name, value)
    if self.sketch is not None:
      self.sketch = datasketches.kll_doubles_sketch.deserialize(self.sketch)

  def __repr__(self):
    return (f"MetricSummary(n={self.n}, mean={self.mean}, m2={self.m2}, "
            f"min={self.minimum}, max={self.maximum})")

  @property
  def variance(self) -> float:
    """Unbiased variance: exactly 0 only when every value was equal."""
    if self.n < 2:
      return math.nan
    if self.minimum == self.maximum:
      return 0.0
    return max(self.m2, 0.0) / (self.n - 1)

  @property
  def sum(self) -> float:
    return self.mean * self.n

  def merge(self, other: "MetricSummary") -> "MetricSummary":
    """Chan et al. (1979) pairwise update of the moments and co-moment."""
    if other.n == 0:
      return self
    if self.n == 0:
      return other
    n = self.n + other.n
    weight = self.n * other.n / n
    delta = other.mean - self.mean
    den_delta = other.den_mean - self.den_mean
    sketch = self.sketch
    if other.sketch is not None:
      if sketch is None:
        sketch = other.sketch
      else:
        sketch = datasketches.kll_doubles_sketch.deserialize(
            sketch.serialize())
        sketch.merge(other.sketch)
    return MetricSummary(
        n, self.mean + delta * other.n / n,
        self.m2 + other.m2 + delta * delta * weight,
        min(self.minimum, other.minimum), max(self.maximum, other.maximum),
        self.den_mean + den_delta * other.n / n,
        self.den_m2 + other.den_m2 + den_delta * den_delta * weight,
        self.comoment + other.comoment + delta * den_delta * weight, sketch)


  def merge_into(self, other: "MetricSummary") -> "MetricSummary":
    """Merge `other` into this summary, in place (a combiner's own
    accumulator); `other` is left as it was. Returns self."""
    if other.n == 0:
      return self
    sketch = self.sketch
    if other.sketch is not None:
      if sketch is None:
        sketch = datasketches.kll_doubles_sketch.deserialize(
            other.sketch.serialize())
      else:
        sketch.merge(other.sketch)
    merged = MetricSummary.merge(
        MetricSummary(self.n, self.mean, self.m2, self.minimum, self.maximum,
                      self.den_mean, self.den_m2, self.comoment),
        MetricSummary(other.n, other.mean, other.m2, other.minimum,
                      other.maximum, other.den_mean, other.den_m2,
                      other.comoment))
    for name in self.__slots__:
      setattr(self, name, getattr(merged, name))
    self.sketch = sketch
    return self


def merge_all(summaries) -> MetricSummary:
  """A new summary of all of `summaries` (which are left as they were)."""
  total = MetricSummary()
  for summary in summaries:
    total.merge_into(summary)
  return total


def summarize_groups(groups: np.ndarray, n_groups: int, values: np.ndarray,
                     denominators: np.ndarray | None = None,
                     with_sketch: bool = False) -> list:
  """One MetricSummary per group code in [0, n_groups) (two-pass moments)."""
  n = np.bincount(groups, minlength=n_groups)
  with np.errstate(invalid="ignore", divide="ignore"):
    mean = np.bincount(groups, values, n_groups) / n
    # Second pass: what rounding of the sum left off the mean.
    mean += np.bincount(groups, values - mean[groups], n_groups) / n
    deviation = values - mean[groups]
    m2 = np.bincount(groups, deviation * deviation, n_groups)
    if denominators is not None:
      den_mean = np.bincount(groups, denominators, n_groups) / n
      den_deviation = denominators - den_mean[groups]
      den_m2 = np.bincount(groups, den_deviation * den_deviation, n_groups)
      comoment = np.bincount(groups, deviation * den_deviation, n_groups)
  minimum = np.full(n_groups, np.inf)
  maximum = np.full(n_groups, -np.inf)
  np.minimum.at(minimum, groups, values)
  np.maximum.at(maximum, groups, values)
  sketches = [None] * n_groups
  if with_sketch:
    order = np.argsort(groups, kind="stable")
    bounds = np.searchsorted(groups[order], np.arange(n_groups + 1))
    for g in range(n_groups):
      if bounds[g + 1] > bounds[g]:
        sketch = datasketches.kll_doubles_sketch(KLL_K)
        sketch.update(np.ascontiguousarray(
            values[order[bounds[g]:bounds[g + 1]]], np.float64))
        sketches[g] = sketch
  summaries = []
  for g in range(n_groups):
    if n[g] == 0:
      summaries.append(MetricSummary())
      continue
    summary = MetricSummary(int(n[g]), float(mean[g]), float(m2[g]),
                            float(minimum[g]), float(maximum[g]),
                            sketch=sketches[g])
    if denominators is not None:
      summary.den_mean = float(den_mean[g])
      summary.den_m2 = float(den_m2[g])
      summary.comoment = float(comoment[g])
    summaries.append(summary)
  return summaries


def _numpy_float(column) -> np.ndarray:
  """A numeric column -> float64 with NaN for null."""
  return pc.fill_null(pc.cast(column, pa.float64()), math.nan).to_numpy(
      zero_copy_only=False)


def _error_values(status) -> np.ndarray:
  encoded = pc.dictionary_encode(
      status.combine_chunks() if isinstance(status, pa.ChunkedArray)
      else status)
  is_error = np.array([float(contract.is_error_status(s))
                       for s in encoded.dictionary.to_pylist()] + [math.nan])
  codes = pc.fill_null(encoded.indices, len(encoded.dictionary))
  return is_error[codes.to_numpy(zero_copy_only=False)]


def metric_values(requests: pa.Table,
                  definition: metric_defs.MetricDefinition,
                  row_caps: np.ndarray | None = None) -> np.ndarray:
  """One value per request (NaN: not counted), after `missing` and `cap`;
  `row_caps`: a cap per request (a percentile cap of its experiment)."""
  kind, name = definition.source_kind, definition.source_name
  if kind == metric_defs.FEEDBACK_SOURCE:
    values = _numpy_float(requests[rewards.signal_column(name, definition.reduce)])
  elif name == metric_defs.ERROR_FIELD:
    values = _error_values(requests["status"])
  else:
    values = _numpy_float(requests[name])
  values = _missing_and_cap(values, definition)
  if row_caps is not None:
    values = np.minimum(values, row_caps)
  return values


def _missing_and_cap(values: np.ndarray, definition) -> np.ndarray:
  if definition.missing == "zero":
    values = np.where(np.isnan(values), 0.0, values)
  if definition.cap is not None:
    values = np.minimum(values, definition.cap)
  return values


def _row_value(row: dict, definition) -> float:
  kind, name = definition.source_kind, definition.source_name
  if kind == metric_defs.FEEDBACK_SOURCE:
    value = row.get(rewards.signal_column(name, definition.reduce))
  elif name == metric_defs.ERROR_FIELD:
    status = row.get("status")
    value = None if status is None else float(contract.is_error_status(status))
  else:
    value = row.get(name)
  value = math.nan if value is None else float(value)
  return float(_missing_and_cap(np.array([value]), definition)[0])


def summarize_row(row: dict, definitions, dimensions=()) -> list:
  """One joined request as a dict (the streaming attribution's rows) -> the
  partials `summarize` would give for it: overall and one segment per
  dimension (values not capped: see `fold_segments`)."""
  values = {d.name: _row_value(row, d) for d in definitions
            if d.type != metric_defs.RATIO}
  attributes = row.get("attributes") or {}
  if isinstance(attributes, list):  # Arrow map values read as pairs
    attributes = dict(attributes)
  segments = [(ALL, ALL)] + [(d, attributes.get(d) or MISSING_VALUE)
                             for d in dimensions]
  experiment_id, arm = row["experiment_id"], row["arm"]
  partials = []
  for dimension, segment in segments:
    key = (experiment_id, dimension, segment, arm)
    partials.append((key + (REQUESTS,), MetricSummary(
        1, 0.0, 0.0, row["ts"], row["ts"])))
    for definition in definitions:
      if not definition.applies_to(experiment_id):
        continue
      if definition.type == metric_defs.RATIO:
        value = values[definition.numerator]
        denominator = values[definition.denominator]
        if math.isnan(value) or math.isnan(denominator):
          continue
      else:
        value, denominator = values[definition.name], 0.0
        if math.isnan(value):
          continue
      sketch = None
      if definition.type == metric_defs.QUANTILE:
        sketch = datasketches.kll_doubles_sketch(KLL_K)
        sketch.update(value)
      partials.append((key + (definition.name,), MetricSummary(
          1, value, 0.0, value, value, denominator, 0.0, 0.0, sketch)))
  return partials


def fold_segments(summaries: Mapping, max_values: int) -> dict:
  """{(dimension, segment, arm, metric): summary} of one experiment with each
  dimension's values past the `max_values` with most requests merged into
  OTHER (exact: summaries merge)."""
  requests = {}
  for (dimension, segment, _, metric), summary in summaries.items():
    if metric == REQUESTS and dimension != ALL:
      requests.setdefault(dimension, {}).setdefault(segment, 0)
      requests[dimension][segment] += summary.n
  kept = {dimension: set(sorted(counts, key=lambda v: (-counts[v], v))
                         [:max_values])
          for dimension, counts in requests.items()}
  folded = {}
  for (dimension, segment, arm, metric), summary in summaries.items():
    if dimension != ALL and segment not in kept.get(dimension, ()):
      segment = OTHER
    key = (dimension, segment, arm, metric)
    folded[key] = (folded[key].merge(summary) if key in folded else summary)
  return folded


def _segment_codes(requests: pa.Table, dimension: str, experiments,
                   experiment_names, segment_values) -> tuple:
  """(codes, names) of each request's segment of `dimension`, values outside
  the experiment's kept ones (`segment_values`) folded into OTHER."""
  values = pc.map_lookup(requests["attributes"], dimension, "first")
  values = pc.fill_null(values, MISSING_VALUE).combine_chunks()
  encoded = pc.dictionary_encode(values)
  value_names = encoded.dictionary.to_pylist()
  value_codes = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
  pair = experiments * len(value_names) + value_codes
  pairs, inverse = np.unique(pair, return_inverse=True)
  names, name_codes, pair_codes = [], {}, []
  for key in pairs:
    experiment = experiment_names[key // len(value_names)]
    value = value_names[key % len(value_names)]
    kept = segment_values.get((experiment, dimension))
    if kept is not None and value not in kept:
      value = OTHER
    pair_codes.append(name_codes.setdefault(value, len(names)))
    if pair_codes[-1] == len(names):
      names.append(value)
  return np.asarray(pair_codes, np.int64)[inverse], names


def segment_counts(requests: pa.Table, dimensions) -> list:
  """[((experiment_id, dimension, value), requests)] of one shard."""
  out = []
  for dimension in dimensions:
    values = pc.fill_null(
        pc.map_lookup(requests["attributes"], dimension, "first"),
        MISSING_VALUE)
    table = pa.table({"e": requests["experiment_id"], "v": values})
    grouped = table.group_by(["e", "v"]).aggregate([([], "count_all")])
    for e, v, count in zip(grouped["e"].to_pylist(), grouped["v"].to_pylist(),
                           grouped["count_all"].to_pylist()):
      out.append(((e, dimension, v), count))
  return out


def top_segment_values(counts: Mapping, max_values: int) -> dict:
  """{(experiment_id, dimension, value): requests} -> {(experiment_id,
  dimension): frozenset of the `max_values` values with most requests}."""
  by_dimension = {}
  for (experiment, dimension, value), count in counts.items():
    by_dimension.setdefault((experiment, dimension), []).append((count, value))
  return {key: frozenset(v for _, v in sorted(
      values, key=lambda cv: (-cv[0], cv[1]))[:max_values])
          for key, values in by_dimension.items()}


def _codes(column) -> tuple:
  encoded = pc.dictionary_encode(column.combine_chunks())
  return (encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64),
          encoded.dictionary.to_pylist())


def cap_sketches(requests: pa.Table, definitions) -> list:
  """[((experiment_id, arm, metric), MetricSummary with a sketch)] of the
  uncapped values of the metrics with a `cap_percentile` (first pass)."""
  capped = [d for d in definitions if d.cap_percentile is not None]
  if not capped or requests.num_rows == 0:
    return []
  experiment_codes, experiment_names = _codes(requests["experiment_id"])
  arm_codes, arm_names = _codes(requests["arm"])
  key = experiment_codes * len(arm_names) + arm_codes
  partials = []
  for definition in capped:
    values = metric_values(requests, definition)
    rows = np.flatnonzero(~np.isnan(values))
    if not len(rows):
      continue
    keys, groups = np.unique(key[rows], return_inverse=True)
    for k, summary in zip(keys, summarize_groups(
        groups, len(keys), values[rows], with_sketch=True)):
      partials.append(((experiment_names[k // len(arm_names)],
                        arm_names[k % len(arm_names)], definition.name),
                       summary))
  return partials


def percentile_caps(sketches: Mapping, definitions,
                    control_arm: str | None = None) -> dict:
  """{(experiment_id, arm, metric): merged summary} -> {(experiment_id,
  metric): cap}: the metric's `cap_percentile` of the control arm's values
  (`control_arm`, else the arm with most values; ties: first name)."""
  by_metric = {}
  for (experiment, arm, metric), summary in sketches.items():
    by_metric.setdefault((experiment, metric), {})[arm] = summary
  percentiles = {d.name: d.cap_percentile for d in definitions}
  caps = {}
  for (experiment, metric), arms in by_metric.items():
    control = control_arm if control_arm in arms else min(
        arms, key=lambda arm: (-arms[arm].n, arm))
    caps[(experiment, metric)] = arms[control].sketch.get_quantile(
        percentiles[metric])
  return caps


def _row_caps(definition, experiment_codes, experiment_names, caps):
  if definition.cap_percentile is None:
    return None
  per_experiment = np.array([caps.get((e, definition.name), math.inf)
                             for e in experiment_names])
  return per_experiment[experiment_codes]


def summarize(requests: pa.Table, definitions, dimensions=(),
              segment_values: Mapping | None = None,
              caps: Mapping | None = None) -> list:
  """Joined requests -> [((experiment_id, dimension, segment, arm, metric),
  MetricSummary)], overall (dimension = segment = "all") and per segment.

  Also one REQUESTS summary per (experiment, segment, arm): its requests.
  `caps`: {(experiment_id, metric): cap} of the percentile caps.
  """
  if requests.num_rows == 0:
    return []
  segment_values = segment_values or {}
  experiments = pc.dictionary_encode(requests["experiment_id"].combine_chunks())
  arms = pc.dictionary_encode(requests["arm"].combine_chunks())
  experiment_names = experiments.dictionary.to_pylist()
  arm_names = arms.dictionary.to_pylist()
  experiment_codes = experiments.indices.to_numpy(
      zero_copy_only=False).astype(np.int64)
  arm_codes = arms.indices.to_numpy(zero_copy_only=False).astype(np.int64)
  values = {d.name: metric_values(
      requests, d, _row_caps(d, experiment_codes, experiment_names,
                             caps or {}))
            for d in definitions if d.type != metric_defs.RATIO}
  ts = _numpy_float(requests["ts"])
  segmentations = [(ALL, np.zeros(requests.num_rows, np.int64), [ALL])]
  for dimension in dimensions:
    codes, names = _segment_codes(requests, dimension, experiment_codes,
                                  experiment_names, segment_values)
    segmentations.append((dimension, codes, names))
  partials = []
  for dimension, segment_codes, segment_names in segmentations:
    key = ((experiment_codes * len(segment_names) + segment_codes)
           * len(arm_names) + arm_codes)
    keys, groups = np.unique(key, return_inverse=True)

    def name_of(k, metric):
      arm = arm_names[k % len(arm_names)]
      rest = k // len(arm_names)
      return (experiment_names[rest // len(segment_names)], dimension,
              segment_names[rest % len(segment_names)], arm, metric)

    ts_min = np.full(len(keys), np.inf)
    ts_max = np.full(len(keys), -np.inf)
    np.minimum.at(ts_min, groups, ts)
    np.maximum.at(ts_max, groups, ts)
    for k, count, low, high in zip(keys, np.bincount(groups), ts_min, ts_max):
      partials.append((name_of(k, REQUESTS), MetricSummary(
          int(count), 0.0, 0.0, float(low), float(high))))
    for definition in definitions:
      applies = np.array([definition.applies_to(e) for e in experiment_names])
      if definition.type == metric_defs.RATIO:
        numerator = values[definition.numerator]
        denominator = values[definition.denominator]
        counted = ~np.isnan(numerator) & ~np.isnan(denominator)
      else:
        numerator, denominator = values[definition.name], None
        counted = ~np.isnan(numerator)
      counted &= applies[experiment_codes]
      rows = np.flatnonzero(counted)
      if len(rows) == 0:
        continue
      present, local = np.unique(groups[rows], return_inverse=True)
      summaries = summarize_groups(
          local, len(present), numerator[rows],
          None if denominator is None else denominator[rows],
          with_sketch=definition.type == metric_defs.QUANTILE)
      for g, summary in zip(present, summaries):
        partials.append((name_of(keys[g], definition.name), summary))
  return partials

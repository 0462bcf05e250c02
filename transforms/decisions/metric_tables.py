"""Joined requests -> metric_stats and decisions rows (Beam).

  requests ─Summarize (per join shard)─CombineExperiment─Statistics─┬ metric_stats
     ├ SegmentCounts ─ top --max_segment_values per dimension ─┘ (side inputs) └ decisions
     └ CapSketches ─ control percentile per cap_percentile metric ┘

Per-arm metric summaries are built per join shard in Arrow/numpy, keyed by
(experiment, dimension, segment, arm, metric), and merged in one combine per
experiment (`MetricSummary.merge_into`); each experiment's summaries then
become its rows (pure: metric_stats.segment_statistics, verdicts.decide).
"""

from __future__ import annotations

import apache_beam as beam
from apache_beam import pvalue

from transforms.attribution import metric_summary
from transforms.decisions import metric_stats
from transforms.decisions import verdicts
from transforms.io import schemas

DECISIONS = "decisions"


class MetricSummaryCombineFn(beam.CombineFn):
  """Merge MetricSummary partials of one key."""

  def create_accumulator(self):
    return metric_summary.MetricSummary()

  def add_input(self, accumulator, partial):
    return accumulator.merge_into(partial)

  def merge_accumulators(self, accumulators):
    return metric_summary.merge_all(accumulators)

  def extract_output(self, accumulator):
    return accumulator


class _SummariesOfExperiment(beam.CombineFn):
  """((dimension, segment, arm, metric), MetricSummary) -> {key: merged}.

  One combine per experiment rather than a combine per key and then a group:
  behind accumulating panes the second step would count earlier panes again.
  """

  def create_accumulator(self):
    return {}

  def add_input(self, merged, keyed):
    key, summary = keyed
    if key not in merged:
      merged[key] = metric_summary.MetricSummary()
    merged[key].merge_into(summary)
    return merged

  def merge_accumulators(self, accumulators):
    accumulators = iter(accumulators)
    merged = next(accumulators)
    for summaries in accumulators:
      for keyed in summaries.items():
        merged = self.add_input(merged, keyed)
    return merged

  def extract_output(self, merged):
    return merged


def experiment_rows(experiment_id: str, summaries: dict, definitions,
                    config: metric_stats.MetricConfig, window=None,
                    max_segment_values: int | None = None):
  """(metric_stats rows, decisions rows) of one experiment, every segment.

  summaries: (dimension, segment, arm, metric) -> merged MetricSummary.
  Every arm seen in the experiment is an arm of each of its segments. With
  `max_segment_values`, values past it are folded into "other" here. `window`
  (start, end) epoch seconds; by default the span of the predictions.
  """
  if max_segment_values is not None:
    summaries = metric_summary.fold_segments(summaries, max_segment_values)
  definitions = [d for d in definitions if d.applies_to(experiment_id)]
  if window is None:  # The span of the experiment's predictions.
    spans = [summary for (d, _, _, metric), summary in summaries.items()
             if metric == metric_summary.REQUESTS and d == metric_summary.ALL]
    if spans:
      window = (min(s.minimum for s in spans), max(s.maximum for s in spans))
  arms = sorted({arm for (_, _, arm, _) in summaries})
  segments = sorted({(d, s) for (d, s, _, _) in summaries},
                    key=lambda ds: (ds[0] != metric_summary.ALL, ds))
  window_fields = {}
  if window is not None:
    window_fields = {"window_start": schemas.format_timestamp(window[0]),
                     "window_end": schemas.format_timestamp(window[1])}
  stats_rows, decision_rows = [], []
  for dimension, segment in segments:
    ids = {"experiment_id": experiment_id, "dimension": dimension,
           "segment": segment, **window_fields}
    impressions = {arm: summaries.get(
        (dimension, segment, arm, metric_summary.REQUESTS),
        metric_summary.MetricSummary()).n for arm in arms}
    by_metric = {}
    for (d, s, arm, metric), summary in summaries.items():
      if (d, s) == (dimension, segment):
        by_metric.setdefault(metric, {})[arm] = summary
    rows = metric_stats.segment_statistics(by_metric, impressions,
                                           definitions, config)
    stats_rows.extend({**ids, **row} for row in rows)
    decision_rows.extend({**ids, **row}
                         for row in verdicts.decide(rows, config))
  return stats_rows, decision_rows


class _ExperimentRows(beam.DoFn):

  def __init__(self, definitions, config, max_segment_values=None):
    self._definitions = definitions
    self._config = config
    self._max_segment_values = max_segment_values

  def process(self, element, window=beam.DoFn.WindowParam):
    experiment_id, summaries = element
    bounds = None
    if isinstance(window, beam.window.IntervalWindow):
      bounds = (float(window.start), float(window.end))
    stats_rows, decision_rows = experiment_rows(
        experiment_id, summaries, self._definitions, self._config, bounds,
        self._max_segment_values)
    yield from stats_rows
    for row in decision_rows:
      yield pvalue.TaggedOutput(DECISIONS, row)


def _by_experiment(key, summary):
  experiment_id, dimension, segment, arm, metric = key
  return experiment_id, ((dimension, segment, arm, metric), summary)


class MetricDecisions(beam.PTransform):
  """Joined request tables -> {"metric_stats": rows, "decisions": rows}.

  `dimensions` are attribute names; each gets its `max_segment_values` values
  with most requests per experiment, the rest as "other".
  """

  def __init__(self, definitions, config: metric_stats.MetricConfig,
               dimensions=(), max_segment_values: int = 20):
    super().__init__()
    if max_segment_values < 1:
      raise ValueError("max_segment_values must be >= 1")
    self._definitions = tuple(definitions)
    self._config = config
    self._dimensions = tuple(dimensions)
    self._max_segment_values = max_segment_values

  def expand(self, requests):
    segment_values = beam.pvalue.AsSingleton(
        requests.pipeline | "NoSegments" >> beam.Create([{}]))
    if self._dimensions:
      segment_values = beam.pvalue.AsSingleton(
          requests
          | "SegmentCounts" >> beam.FlatMap(metric_summary.segment_counts,
                                            self._dimensions)
          | "SumCounts" >> beam.CombinePerKey(sum)
          | "AllCounts" >> beam.combiners.ToDict()
          | "TopValues" >> beam.Map(metric_summary.top_segment_values,
                                    self._max_segment_values))
    caps = beam.pvalue.AsSingleton(
        requests.pipeline | "NoCaps" >> beam.Create([{}]))
    if any(d.cap_percentile is not None for d in self._definitions):
      caps = beam.pvalue.AsSingleton(
          requests
          | "CapSketches" >> beam.FlatMap(metric_summary.cap_sketches,
                                          self._definitions)
          | "CombineCapSketches" >> beam.CombinePerKey(
              MetricSummaryCombineFn())
          | "AllCapSketches" >> beam.combiners.ToDict()
          | "PercentileCaps" >> beam.Map(metric_summary.percentile_caps,
                                         self._definitions,
                                         self._config.control_arm))
    return (requests
            | "Summarize" >> beam.FlatMap(metric_summary.summarize,
                                          self._definitions, self._dimensions,
                                          segment_values, caps)
            | "MetricRows" >> MetricRows(self._definitions, self._config))


class MetricRows(beam.PTransform):
  """Partials ((experiment_id, dimension, segment, arm, metric), summary) ->
  {"metric_stats": rows, "decisions": rows}, per window (IntervalWindow
  bounds on the rows) and pane."""

  def __init__(self, definitions, config: metric_stats.MetricConfig,
               max_segment_values: int | None = None):
    super().__init__()
    self._definitions = tuple(definitions)
    self._config = config
    self._max_segment_values = max_segment_values

  def expand(self, partials):
    rows = (partials
            | "ByExperiment" >> beam.MapTuple(_by_experiment)
            | "CombineExperiment" >> beam.CombinePerKey(
                _SummariesOfExperiment())
            | "Statistics" >> beam.ParDo(_ExperimentRows(
                self._definitions, self._config,
                self._max_segment_values)).with_outputs(
                    DECISIONS, main="metric_stats"))
    return {"metric_stats": rows.metric_stats, "decisions": rows[DECISIONS]}


class StreamedMetricRows(beam.PTransform):
  """Joined request rows (dicts, the streaming attribution's REQUESTS) ->
  metric_stats and decisions of `windowing` (a WindowInto), per pane.

  Segment values are capped when rows are made (`fold_segments`): the
  combine's state holds every value of a dimension, so stream only
  low-cardinality dimensions.
  """

  def __init__(self, definitions, config: metric_stats.MetricConfig,
               windowing: beam.PTransform, dimensions=(),
               max_segment_values: int = 20):
    super().__init__()
    self._definitions = tuple(definitions)
    self._config = config
    self._windowing = windowing
    self._dimensions = tuple(dimensions)
    self._max_segment_values = max_segment_values

  def expand(self, rows):
    return (rows
            | "Summarize" >> beam.FlatMap(metric_summary.summarize_row,
                                          self._definitions, self._dimensions)
            | "Window" >> self._windowing
            | "MetricRows" >> MetricRows(self._definitions, self._config,
                                         self._max_segment_values))

"""Joined requests -> metric_stats and decisions rows (Beam).

  requests ─(per shard) summarize─CombinePerKey(MetricSummary)─ByExperiment─┬ metric_stats
           └ SegmentCounts ─ top --max_segment_values per dimension (side) ┘└ decisions

Per-arm metric summaries are built per join shard in Arrow/numpy and merged
with `MetricSummary.merge` per (experiment, dimension, segment, arm, metric);
each experiment's merged summaries then become its rows (pure:
metric_stats.segment_statistics, verdicts.decide).
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
    return accumulator.merge(partial)

  def merge_accumulators(self, accumulators):
    return metric_summary.merge_all(accumulators)

  def extract_output(self, accumulator):
    return accumulator


class _SummariesOfExperiment(beam.CombineFn):
  """((dimension, segment, arm, metric), MetricSummary) -> {key: merged}."""

  def create_accumulator(self):
    return {}

  def add_input(self, merged, keyed):
    key, summary = keyed
    merged[key] = merged[key].merge(summary) if key in merged else summary
    return merged

  def merge_accumulators(self, accumulators):
    merged = {}
    for summaries in accumulators:
      for keyed in summaries.items():
        merged = self.add_input(merged, keyed)
    return merged

  def extract_output(self, merged):
    return merged


def experiment_rows(experiment_id: str, summaries: dict, definitions,
                    config: metric_stats.MetricConfig, window=None):
  """(metric_stats rows, decisions rows) of one experiment, every segment.

  summaries: (dimension, segment, arm, metric) -> merged MetricSummary.
  Every arm seen in the experiment is an arm of each of its segments.
  """
  definitions = [d for d in definitions if d.applies_to(experiment_id)]
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

  def __init__(self, definitions, config):
    self._definitions = definitions
    self._config = config

  def process(self, element, window=beam.DoFn.WindowParam):
    experiment_id, summaries = element
    bounds = None
    if isinstance(window, beam.window.IntervalWindow):
      bounds = (float(window.start), float(window.end))
    stats_rows, decision_rows = experiment_rows(
        experiment_id, summaries, self._definitions, self._config, bounds)
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
    rows = (requests
            | "Summarize" >> beam.FlatMap(metric_summary.summarize,
                                          self._definitions, self._dimensions,
                                          segment_values)
            | "CombinePerKey" >> beam.CombinePerKey(MetricSummaryCombineFn())
            | "ByExperiment" >> beam.MapTuple(_by_experiment)
            | "CombineExperiment" >> beam.CombinePerKey(
                _SummariesOfExperiment())
            | "Statistics" >> beam.ParDo(_ExperimentRows(
                self._definitions, self._config)).with_outputs(
                    DECISIONS, main="metric_stats"))
    return {"metric_stats": rows.metric_stats, "decisions": rows[DECISIONS]}

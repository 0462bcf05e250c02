"""Join feedback to predictions shard-wise; combine the rewards of each arm.

`JoinRequests` yields the joined requests themselves (Arrow tables, one row
per request with its reward and the prediction's columns) for pipelines that
work per request; `AttributeRewards` combines them per arm.
"""

from __future__ import annotations

import zlib

import apache_beam as beam
from apache_beam import pvalue
from apache_beam import typehints
import numpy as np
import pyarrow as pa

from transforms.io import arrow_coder  # noqa: F401 (registers the coder)
from transforms.logs import batches
from transforms.logs import contract
from transforms.logs import quality
from transforms.attribution import rewards


# (shard, (record_type, table)): declared, so the shuffle encodes the tables
# with arrow_coder.ArrowTableCoder.
_SHARD_TYPE = typehints.Tuple[int, typehints.Tuple[str, pa.Table]]


class _ShardByRequest(beam.DoFn):
  """A table -> (shard, (record_type, sub-table)), sharded by a stable hash of request_id."""

  def __init__(self, record_type: str, num_shards: int):
    self._record_type = record_type
    self._num_shards = num_shards

  def process(self, table: pa.Table):
    ids = table["request_id"].cast(pa.binary()).to_pylist()
    shard = np.fromiter(map(zlib.crc32, ids), np.uint32,
                        table.num_rows) % self._num_shards
    order = np.argsort(shard, kind="stable")
    bounds = np.searchsorted(shard[order], np.arange(self._num_shards + 1))
    for s in range(self._num_shards):
      if bounds[s + 1] > bounds[s]:
        # `take` copies: a slice would drag the whole table into each shard.
        yield int(s), (self._record_type,
                       table.take(order[bounds[s]:bounds[s + 1]]))


class _JoinShard(beam.DoFn):
  """All records of one shard -> joined requests, orphan dead letters, counts."""

  def __init__(self, config: rewards.AttributionConfig, extras: tuple,
               signals: tuple = (), feedback_extras: tuple = (),
               include_shadow: bool = False):
    self._config = config
    self._extras = extras
    self._signals = signals
    self._feedback_extras = feedback_extras
    self._include_shadow = include_shadow

  def process(self, element):
    _, parts = element
    tables = {contract.PREDICTION: [], contract.FEEDBACK: []}
    for record_type, table in parts:
      tables[record_type].append(table)
    result = rewards.join_requests(
        _concat(tables[contract.PREDICTION], contract.PREDICTION,
                self._extras),
        _concat(tables[contract.FEEDBACK], contract.FEEDBACK,
                tuple(sorted({*self._feedback_extras,
                              *(("metric",) if self._signals else ())}))),
        self._config, self._signals, include_shadow=self._include_shadow)
    if result.requests.num_rows:
      yield result.requests
    for key, count in result.counts.items():
      yield pvalue.TaggedOutput(quality.COUNTS, (key, count))
    for raw, source_file, rejected in result.orphans:
      yield pvalue.TaggedOutput(
          quality.DEAD_LETTER,
          quality.dead_letter(contract.FEEDBACK, source_file, raw, rejected))
      yield pvalue.TaggedOutput(quality.COUNTS, (
          (contract.FEEDBACK, quality.dead_letter_metric(rejected.reason)), 1))


def _concat(tables: list, record_type: str, extras: tuple) -> pa.Table:
  if not tables:
    return batches.schema(record_type, extras).empty_table()
  return pa.concat_tables(tables)


class JoinRequests(beam.PTransform):
  """{"predictions", "feedback"} Arrow tables -> joined request tables.

  One row per request: the served prediction's columns (with the `extras`
  the prediction tables carry) and `reward` (null: no counted feedback).
  Without "predictions", feedback carries its own experiment and arm.
  With `signals` ((signal, reduce), ...; feedback tables with the `metric`
  extra) each request also gets one column per pair (see
  rewards.join_requests).
  `truth` too when the feedback tables carry it (`feedback_extras`).
  `include_shadow` adds a row per shadow model of a request
  (`rewards.join_requests`).
  Tagged outputs: `quality.DEAD_LETTER` (orphan feedback), `quality.COUNTS`.
  """

  def __init__(self, config: rewards.AttributionConfig, num_shards: int = 32,
               extras=(), signals=(), feedback_extras=(),
               include_shadow: bool = False):
    super().__init__()
    self._config = config
    self._num_shards = num_shards
    self._extras = tuple(extras)
    self._signals = tuple(signals)
    self._feedback_extras = tuple(feedback_extras)
    self._include_shadow = include_shadow

  def expand(self, tables):
    predictions, feedback = tables.get("predictions"), tables["feedback"]
    sharded = [feedback | "ShardFeedback" >> beam.ParDo(
        _ShardByRequest(contract.FEEDBACK, self._num_shards)
    ).with_output_types(_SHARD_TYPE)]
    if predictions is not None:
      sharded.append(predictions | "ShardPredictions" >> beam.ParDo(
          _ShardByRequest(contract.PREDICTION, self._num_shards)
      ).with_output_types(_SHARD_TYPE))
    joined = (sharded
              | "FlattenShards" >> beam.Flatten()
              | "GroupShards" >> beam.GroupByKey()
              | "Join" >> beam.ParDo(_JoinShard(
                  self._config, self._extras, self._signals,
                  self._feedback_extras, self._include_shadow)).with_outputs(
                      quality.DEAD_LETTER, quality.COUNTS, main="requests"))
    return {"requests": joined.requests,
            quality.DEAD_LETTER: joined[quality.DEAD_LETTER],
            quality.COUNTS: joined[quality.COUNTS]}


class ArmCombineFn(beam.CombineFn):
  """Merge per-arm partial accumulators."""

  def create_accumulator(self):
    return rewards.ArmAccumulator()

  def add_input(self, accumulator, partial):
    return accumulator.merge(partial)

  def merge_accumulators(self, accumulators):
    return rewards.merge_all(accumulators)

  def extract_output(self, accumulator):
    return accumulator


class AttributeRewards(beam.PTransform):
  """{"predictions", "feedback"} Arrow tables -> ((experiment_id, arm), ArmAccumulator).

  Without "predictions", feedback carries its own experiment and arm.
  Also returns the joined "requests" (with `extras` and `signals`, see
  JoinRequests) for per-request metrics.
  Tagged outputs: `quality.DEAD_LETTER` (orphan feedback), `quality.COUNTS`.
  """

  def __init__(self, config: rewards.AttributionConfig, num_shards: int = 32,
               extras=(), signals=()):
    super().__init__()
    self._config = config
    self._num_shards = num_shards
    self._extras = tuple(extras)
    self._signals = tuple(signals)

  def expand(self, tables):
    joined = tables | "JoinRequests" >> JoinRequests(
        self._config, self._num_shards, self._extras, self._signals)
    totals = (joined["requests"]
              | "PerArm" >> beam.FlatMap(rewards.per_arm,
                                         self._config.missing_reward)
              | "CombinePerArm" >> beam.CombinePerKey(ArmCombineFn()))
    return {"arm_totals": totals, "requests": joined["requests"],
            quality.DEAD_LETTER: joined[quality.DEAD_LETTER],
            quality.COUNTS: joined[quality.COUNTS]}

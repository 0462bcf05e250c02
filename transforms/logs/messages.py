"""Parse streamed log messages (Pub/Sub payloads) of predictions or feedback, one record each."""

from __future__ import annotations

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.metrics import Metrics

from transforms.logs import contract
from transforms.logs import quality

# The two streams of serving logs, by the name their inputs go by.
SOURCES = {"predictions": contract.PREDICTION, "feedback": contract.FEEDBACK}


class _ParseMessage(beam.DoFn):
  """A message -> its record at the record's own event time, or a dead letter."""

  def __init__(self, record_type: str, source: str, extras=()):
    self._record_type = record_type
    self._source = source
    self._extras = tuple(extras)

  def process(self, data: bytes):
    parsed = contract.PARSERS[self._record_type](data, self._extras)
    raw = data.decode("utf-8", errors="replace")
    if isinstance(parsed, contract.Rejected):
      yield pvalue.TaggedOutput(quality.DEAD_LETTER, quality.dead_letter(
          self._record_type, self._source, raw, parsed))
      outcome = quality.dead_letter_metric(parsed.reason)
    else:
      if self._record_type == contract.FEEDBACK:
        parsed["raw"] = raw  # Orphan feedback is dead-lettered later, raw.
      yield beam.window.TimestampedValue(parsed, parsed["ts"])
      outcome = quality.PARSED
    for metric in (quality.READ, outcome):
      Metrics.counter(self._record_type, metric).inc()
      yield pvalue.TaggedOutput(quality.COUNTS,
                                ((self._record_type, metric), 1))


class ParseMessages(beam.PTransform):
  """Message payloads (bytes) -> records (contract fields) at their event time.

  The event time is the record's own timestamp, as in batch. Tagged outputs:
  `quality.DEAD_LETTER` (source_file = `source`, the subscription),
  `quality.COUNTS`. `extras`: the optional fields to read (contract.EXTRAS).
  """

  def __init__(self, record_type: str, source: str, extras=()):
    super().__init__()
    self._record_type = record_type
    self._source = source
    self._extras = contract.check_extras(record_type, extras)

  def expand(self, messages):
    return messages | "Parse" >> beam.ParDo(_ParseMessage(
        self._record_type, self._source, self._extras)).with_outputs(
            quality.DEAD_LETTER, quality.COUNTS, main="records")

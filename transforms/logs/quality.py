"""Dead letters and data-quality counts: what every stage reports besides its data."""

from __future__ import annotations

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.metrics import Metrics

from transforms.logs import contract

DEAD_LETTER = "dead_letter"
COUNTS = "counts"

READ = "read"
PARSED = "parsed"
FAST_PATH = "fast_path_records"
DEAD_LETTERED = "dead_letter"


def dead_letter(record_type: str, source_file: str | None, raw: str,
                rejected: contract.Rejected) -> dict:
  """A dead-letter row (without the run fields, which the sink adds)."""
  return {"record_type": record_type, "source_file": source_file,
          "reason": rejected.reason, "detail": rejected.detail or None,
          "raw": raw}


def dead_letter_metric(reason: str) -> str:
  return f"{DEAD_LETTERED}:{reason}"


def emit_block(record_type: str, source_file: str, result, read: int):
  """Outputs of one parsed block: its table, its dead letters, its counts."""
  if result.table.num_rows:
    yield result.table
  for raw, rejected in result.rejected:
    yield pvalue.TaggedOutput(
        DEAD_LETTER, dead_letter(record_type, source_file, raw, rejected))
  counts = {READ: read, PARSED: result.table.num_rows}
  if result.fast_rows:
    counts[FAST_PATH] = result.fast_rows
  for _, rejected in result.rejected:
    metric = dead_letter_metric(rejected.reason)
    counts[metric] = counts.get(metric, 0) + 1
  for metric, count in counts.items():
    Metrics.counter(record_type, metric).inc(count)
    yield pvalue.TaggedOutput(COUNTS, ((record_type, metric), count))


class SummarizeCounts(beam.PTransform):
  """((record_type, metric), n) pairs from every stage -> data_quality rows."""

  def expand(self, counts):
    return (counts
            | "Sum" >> beam.CombinePerKey(sum)
            | "ToRows" >> beam.MapTuple(lambda key, count: {
                "record_type": key[0], "metric": key[1], "count": count}))


# Where each parsed record ends up besides being counted: read = counted +
# these + dead-lettered.
NOT_COUNTED = ("duplicate", "late", "shadow")


def balance(rows) -> dict[str, tuple[int, int]]:
  """data_quality rows -> {record_type: (records read, records accounted for)}."""
  read, accounted = {}, {}
  for row in rows:
    record_type, metric, count = row["record_type"], row["metric"], row["count"]
    if metric == READ:
      read[record_type] = read.get(record_type, 0) + count
    elif metric == "counted" or metric in NOT_COUNTED or metric.startswith(
        DEAD_LETTERED + ":"):
      accounted[record_type] = accounted.get(record_type, 0) + count
  return {t: (read.get(t, 0), accounted.get(t, 0))
          for t in sorted(set(read) | set(accounted))}

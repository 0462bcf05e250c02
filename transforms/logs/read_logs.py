"""Read prediction or feedback logs as validated Arrow tables, one element per block."""

from __future__ import annotations

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
import pyarrow.parquet as pq

from transforms.logs import batches
from transforms.logs import contract
from transforms.logs import quality

SPLIT_BYTES = 64 << 20
BLOCK_BYTES = 16 << 20
PARQUET_BATCH_ROWS = 8192


def match_files(file_pattern: str) -> beam.PTransform:
  """The files of a pattern. One that matches nothing is a mistake (or lost
  logs), not an empty day: the run fails instead of writing empty tables."""
  return fileio.MatchFiles(
      file_pattern, empty_match_treatment=fileio.EmptyMatchTreatment.DISALLOW)


def is_parquet(path: str) -> bool:
  return path.lower().endswith(".parquet")


def _is_compressed(path: str) -> bool:
  return CompressionTypes.detect_compression_type(
      path) != CompressionTypes.UNCOMPRESSED


class _SplitFile(beam.DoFn):
  """A matched file -> byte ranges that can be read in parallel."""

  def process(self, metadata):
    path, size = metadata.path, metadata.size_in_bytes
    if is_parquet(path) or _is_compressed(path) or size <= SPLIT_BYTES:
      yield path, 0, None
      return
    for start in range(0, size, SPLIT_BYTES):
      yield path, start, min(start + SPLIT_BYTES, size)


def _line_blocks(stream, start: int, end: int | None):
  """Blocks of whole lines whose first byte lies in [start, end)."""
  if start > 0:
    stream.seek(start - 1)
    stream.readline()  # The line that straddles `start` belongs to the range before.
  position = stream.tell() if start > 0 else 0
  carry = b""
  while end is None or position < end:
    want = BLOCK_BYTES if end is None else min(BLOCK_BYTES, end - position)
    chunk = stream.read(want)
    if not chunk:
      break
    position += len(chunk)
    data = carry + chunk
    cut = data.rfind(b"\n")
    if cut < 0:
      carry = data
      continue
    yield data[:cut + 1]
    carry = data[cut + 1:]
  if carry:
    # Finish the last line of the range, even past `end`.
    yield carry + stream.readline()


class _ParseFileRange(beam.DoFn):
  """A byte range of a log file -> validated Arrow tables; bad records to dead letter."""

  def __init__(self, record_type: str, extras: tuple,
               log_format: str = contract.AUTO):
    self._record_type = record_type
    self._extras = extras
    self._log_format = log_format

  def process(self, file_range):
    path, start, end = file_range
    if is_parquet(path):
      blocks = self._parquet_blocks(path)
    else:
      blocks = self._json_blocks(path, start, end)
    for result, read in blocks:
      yield from quality.emit_block(self._record_type, path, result, read)

  def _json_blocks(self, path, start, end):
    with FileSystems.open(path, compression_type=CompressionTypes.AUTO) as f:
      for block in _line_blocks(f, start, end):
        result = batches.parse_json_block(block, self._record_type, path,
                                          self._extras, self._log_format)
        yield result, result.table.num_rows + len(result.rejected)

  def _parquet_blocks(self, path):
    with FileSystems.open(path) as f:
      for batch in pq.ParquetFile(f).iter_batches(PARQUET_BATCH_ROWS):
        yield batches.parse_arrow_batch(batch, self._record_type, path,
                                        self._extras,
                                        self._log_format), batch.num_rows


class ReadLogs(beam.PTransform):
  """Read one record type's log files (JSONL, gzip or Parquet) as Arrow tables.

  Main output: `pa.Table` blocks with `batches.schema(record_type, extras)`
  columns: the normalized ones and the optional fields `extras` asks for.
  Tagged outputs: `quality.DEAD_LETTER` rows and `quality.COUNTS` pairs.
  """

  def __init__(self, file_pattern: str, record_type: str, extras=(),
               log_format: str = contract.AUTO):
    super().__init__()
    self._file_pattern = file_pattern
    self._record_type = record_type
    self._extras = contract.check_extras(record_type, extras)
    self._log_format = log_format

  def expand(self, pbegin):
    return (pbegin
            | "Match" >> match_files(self._file_pattern)
            | "Split" >> beam.ParDo(_SplitFile())
            | "Distribute" >> beam.Reshuffle()
            | "Parse" >> beam.ParDo(_ParseFileRange(
                self._record_type, self._extras,
                self._log_format)).with_outputs(quality.DEAD_LETTER,
                                                  quality.COUNTS,
                                                  main="records"))

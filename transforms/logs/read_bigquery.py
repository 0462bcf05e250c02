"""Read prediction or feedback logs from BigQuery (a table or a query) as
validated Arrow tables: the outputs of `ReadLogs`, from the Storage Read API.

Beam's `ReadFromBigQuery(method=DIRECT_READ)` yields one Python dict per row
and reaches only Google's endpoints; this reads the same Storage Read API
with google-cloud-bigquery-storage, in Arrow record batches that go to the
contract's column-wise checks as they are, and against the local emulator
too (docs/log-sources.md says what is tested where).
"""

from __future__ import annotations

import dataclasses
import datetime

import apache_beam as beam

from transforms.io import bigquery
from transforms.logs import batches
from transforms.logs import contract
from transforms.logs import formats
from transforms.logs import quality


@dataclasses.dataclass(frozen=True)
class BigQueryLogs:
  """One record type's logs in BigQuery: a table or a standard-SQL query."""
  table: str | None = None  # PROJECT:DATASET.TABLE
  query: str | None = None
  day: str | None = None  # YYYY-MM-DD: only a table's rows of this UTC day
  project: str | None = None  # Billing project (default: the table's)
  emulator_host: str | None = None  # REST endpoint of a local emulator
  emulator_grpc_host: str | None = None  # its Storage Read API

  def __post_init__(self):
    if bool(self.table) == bool(self.query):
      raise ValueError("BigQuery logs: give a table or a query")
    if self.query and not self.project:
      raise ValueError("a BigQuery log query needs --project to run in")

  @property
  def label(self) -> str:
    """What dead letters name as their source."""
    return f"bigquery:{self.table}" if self.table else "bigquery:query"


def day_restriction(column: str, day: str) -> str:
  """A Storage Read row restriction: `column` within one UTC day."""
  start = datetime.date.fromisoformat(day)
  end = start + datetime.timedelta(days=1)
  return (f"`{column}` >= TIMESTAMP '{start.isoformat()} 00:00:00+00' AND "
          f"`{column}` < TIMESTAMP '{end.isoformat()} 00:00:00+00'")


def timestamp_column(record_type: str, log_format: str,
                     columns: list[str]) -> str:
  """The column a table's day restriction applies to."""
  if record_type == contract.PREDICTION and (
      log_format == formats.VERTEX or formats.is_vertex_table(columns)):
    return "logging_time"
  return "timestamp"


class _OpenReadSession(beam.DoFn):
  """The logs' source -> (stream, Arrow schema) of one Storage Read session
  over it."""

  def __init__(self, record_type: str, log_format: str):
    self._record_type = record_type
    self._log_format = log_format

  def process(self, source: BigQueryLogs):
    rest = bigquery.bigquery_client(
        source.project or bigquery.table_reference(source.table).project,
        source.emulator_host)
    row_restriction = None
    if source.query:
      table = bigquery.query_destination(rest, source.query)
    else:
      table = bigquery.table_reference(source.table, source.project)
      if source.day:
        columns = [field.name for field in rest.get_table(table).schema]
        row_restriction = day_restriction(
            timestamp_column(self._record_type, self._log_format, columns),
            source.day)
    schema, streams = bigquery.open_read_session(
        bigquery.read_client(source.emulator_grpc_host), table,
        source.project or table.project, row_restriction)
    for stream in streams:
      yield stream, schema


class _ReadStream(beam.DoFn):
  """A read stream -> validated Arrow tables; bad rows to dead letter."""

  def __init__(self, record_type: str, extras: tuple, log_format: str,
               label: str, emulator_grpc_host: str | None):
    self._record_type = record_type
    self._extras = extras
    self._log_format = log_format
    self._label = label
    self._emulator_grpc_host = emulator_grpc_host
    self._client = None

  def setup(self):
    self._client = bigquery.read_client(self._emulator_grpc_host)

  def process(self, stream_and_schema: tuple[str, bytes]):
    stream, schema = stream_and_schema
    for batch in bigquery.read_stream_batches(self._client, stream, schema):
      result = batches.parse_arrow_batch(batch, self._record_type,
                                         self._label, self._extras,
                                         self._log_format)
      yield from quality.emit_block(self._record_type, self._label, result,
                                    batch.num_rows)


class ReadBigQueryLogs(beam.PTransform):
  """Read one record type's logs from BigQuery as Arrow tables.

  Outputs as `ReadLogs`: `pa.Table` blocks with
  `batches.schema(record_type, extras)` columns; tagged `quality.DEAD_LETTER`
  rows and `quality.COUNTS` pairs. The session is opened when the job runs,
  not when it is built.
  """

  def __init__(self, source: BigQueryLogs, record_type: str, extras=(),
               log_format: str = contract.AUTO):
    super().__init__()
    self._source = source
    self._record_type = record_type
    self._extras = contract.check_extras(record_type, extras)
    self._log_format = log_format

  def expand(self, pbegin):
    return (pbegin
            | "Source" >> beam.Create([self._source])
            | "OpenReadSession" >> beam.ParDo(_OpenReadSession(
                self._record_type, self._log_format))
            | "Distribute" >> beam.Reshuffle()
            | "ReadStreams" >> beam.ParDo(_ReadStream(
                self._record_type, self._extras, self._log_format,
                self._source.label,
                self._source.emulator_grpc_host)).with_outputs(
                    quality.DEAD_LETTER, quality.COUNTS, main="records"))

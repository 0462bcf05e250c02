"""Read prediction or feedback logs from BigQuery (a table or a query) as
validated Arrow tables: the outputs of `ReadLogs`, from the Storage Read API,
by one of two methods:

DIRECT_READ: Beam's `ReadFromBigQuery(method=DIRECT_READ)`, the job on Google
  Cloud. It yields one Python dict per row (Beam 2.77 has no Arrow output) and
  reaches only Google's endpoints; the rows are batched back into Arrow
  tables for the contract's column-wise checks.
ARROW_STREAMS: the same Storage Read API through google-cloud-bigquery-storage,
  Arrow record batches going to the checks as they come; it reaches the local
  emulator too (docs/log-sources.md says what is tested where).
"""

from __future__ import annotations

import dataclasses
import datetime

import apache_beam as beam
import pyarrow as pa

from transforms.io import bigquery
from transforms.logs import batches
from transforms.logs import contract
from transforms.logs import formats
from transforms.logs import quality
from transforms.logs import read_logs

DIRECT_READ = "DIRECT_READ"
ARROW_STREAMS = "ARROW_STREAMS"


@dataclasses.dataclass(frozen=True)
class BigQueryLogs:
  """One record type's logs in BigQuery: a table or a standard-SQL query."""
  table: str | None = None  # PROJECT:DATASET.TABLE
  query: str | None = None
  day: str | None = None  # YYYY-MM-DD: only a table's rows of this UTC day
  project: str | None = None  # Billing project (default: the table's)
  emulator_host: str | None = None  # REST endpoint of a local emulator
  emulator_grpc_host: str | None = None  # its Storage Read API
  read_method: str = DIRECT_READ

  def __post_init__(self):
    if bool(self.table) == bool(self.query):
      raise ValueError("BigQuery logs: give a table or a query")
    if self.query and not self.project:
      raise ValueError("a BigQuery log query needs --project to run in")
    if self.read_method == DIRECT_READ and (self.emulator_host or
                                            self.emulator_grpc_host):
      raise ValueError("Beam's ReadFromBigQuery cannot reach the BigQuery "
                       "emulator: use --bigquery_read_method=ARROW_STREAMS")

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


def table_columns(source: BigQueryLogs) -> list[str]:
  """The names of a log table's columns (one metadata call)."""
  table = bigquery.table_reference(source.table, source.project)
  rest = bigquery.bigquery_client(source.project or table.project,
                                  source.emulator_host)
  return [field.name for field in rest.get_table(table).schema]


def direct_read_arguments(source: BigQueryLogs, record_type: str,
                          log_format: str) -> dict:
  """The arguments of Beam's `ReadFromBigQuery` for the logs: a table with
  its day restriction, or a standard-SQL query; Arrow on the wire."""
  arguments = dict(method=beam.io.ReadFromBigQuery.Method.DIRECT_READ,
                   use_native_datetime=True)
  if source.query:
    return dict(arguments, query=source.query, use_standard_sql=True,
                project=source.project)
  table = bigquery.table_reference(source.table, source.project)
  arguments["table"] = f"{table.project}:{table.dataset_id}.{table.table_id}"
  if source.day:
    # Beam needs the restriction when the job is built: a prediction table
    # of unknown format is looked up to name its timestamp column.
    columns = ([] if record_type != contract.PREDICTION or
               log_format == formats.VERTEX else table_columns(source))
    arguments["row_restriction"] = day_restriction(
        timestamp_column(record_type, log_format, columns), source.day)
  return arguments


# Optional text columns of the contract: pyarrow types a column that is null
# in every row of a batch as null, which the column-wise checks refuse for
# text; BigQuery's Arrow streams type it as text.
_OPTIONAL_TEXT_COLUMNS = ("experiment_id", "arm", "policy")


def _typed(table: pa.Table) -> pa.Table:
  for name in _OPTIONAL_TEXT_COLUMNS:
    if name in table.column_names and pa.types.is_null(table[name].type):
      table = table.set_column(table.column_names.index(name), name,
                               pa.nulls(table.num_rows, pa.string()))
  return table


def _row_tables(rows: list[dict]) -> list[pa.Table]:
  """Rows as Beam's read yields them (Decimal for NUMERIC, datetime for
  TIMESTAMP, lists for REPEATED) -> one Arrow table, its types inferred per
  column; a table a row each if the rows do not agree on a column's type."""
  try:
    return [_typed(pa.Table.from_pylist(rows))]
  except (pa.ArrowInvalid, pa.ArrowTypeError):
    return [_typed(pa.Table.from_pylist([row])) for row in rows]


class _ParseRows(beam.DoFn):
  """A batch of row dicts -> validated Arrow tables; bad rows to dead letter."""

  def __init__(self, record_type: str, extras: tuple, log_format: str,
               label: str):
    self._record_type = record_type
    self._extras = extras
    self._log_format = log_format
    self._label = label

  def process(self, rows: list[dict]):
    for table in _row_tables(rows):
      result = batches.parse_arrow_batch(table, self._record_type,
                                         self._label, self._extras,
                                         self._log_format)
      yield from quality.emit_block(self._record_type, self._label, result,
                                    table.num_rows)


class RowsToArrowTables(beam.PTransform):
  """BigQuery rows as Python dicts -> the outputs of `ReadLogs`, in batches
  the size of the Parquet reader's."""

  def __init__(self, record_type: str, extras: tuple, log_format: str,
               label: str):
    super().__init__()
    self._parse = _ParseRows(record_type, extras, log_format, label)

  def expand(self, rows):
    return (rows
            | "Batch" >> beam.BatchElements(
                min_batch_size=read_logs.PARQUET_BATCH_ROWS,
                max_batch_size=read_logs.PARQUET_BATCH_ROWS)
            | "Parse" >> beam.ParDo(self._parse).with_outputs(
                quality.DEAD_LETTER, quality.COUNTS, main="records"))


class ReadBigQueryLogs(beam.PTransform):
  """Read one record type's logs from BigQuery as Arrow tables.

  Outputs as `ReadLogs`: `pa.Table` blocks with
  `batches.schema(record_type, extras)` columns; tagged `quality.DEAD_LETTER`
  rows and `quality.COUNTS` pairs. The read session is opened when the job
  runs, not when it is built.
  """

  def __init__(self, source: BigQueryLogs, record_type: str, extras=(),
               log_format: str = contract.AUTO):
    super().__init__()
    self._source = source
    self._record_type = record_type
    self._extras = contract.check_extras(record_type, extras)
    self._log_format = log_format

  def expand(self, pbegin):
    if self._source.read_method == DIRECT_READ:
      return (pbegin
              | "ReadFromBigQuery" >> beam.io.ReadFromBigQuery(
                  **direct_read_arguments(self._source, self._record_type,
                                          self._log_format))
              | "RowsToArrow" >> RowsToArrowTables(
                  self._record_type, self._extras, self._log_format,
                  self._source.label))
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

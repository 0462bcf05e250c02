"""Write output tables: BigQuery through `WriteToBigQuery`, and/or files (JSON lines or Parquet)."""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import uuid

import apache_beam as beam
from apache_beam.io.gcp.bigquery_tools import RetryStrategy
from apache_beam.transforms import window

from transforms.io import arrow_tables
from transforms.logs import contract
from transforms.io import json_lines
from transforms import options as opts
from transforms.io import schemas

INSERT_FAILED = "bigquery_insert_failed"
JSONL = "jsonl"
PARQUET = "parquet"
FILE_FORMATS = (JSONL, PARQUET)
# Row dicts per Parquet write, at most.
PARQUET_ROWS_PER_WRITE = 65_536


@dataclasses.dataclass(frozen=True)
class OutputConfig:
  """Where the tables of one run go, and the run fields stamped on every row."""
  run_id: str
  # None: each row goes to the day it is computed on (a streaming job's rows).
  partition_date: str | None
  output_dir: str | None = None
  project: str | None = None
  dataset: str | None = None
  emulator_host: str | None = None
  write_method: str | None = None
  streaming: bool = False
  pseudonymize_key_env: str | None = None
  file_format: str = JSONL  # of the files under output_dir

  @classmethod
  def from_options(cls, pipeline_options) -> "OutputConfig":
    output = pipeline_options.view_as(opts.OutputPipelineOptions)
    output_dir = pipeline_options.view_as(opts.OutputFileOptions).output_dir
    standard = pipeline_options.view_as(
        beam.options.pipeline_options.StandardOptions)
    if not output_dir and not output.output_dataset:
      raise ValueError("give --output_dir and/or --output_dataset")
    project = dataset = None
    if output.output_dataset:
      project, _, dataset = output.output_dataset.replace(".", ":",
                                                          1).partition(":")
    if standard.streaming and output.bigquery_write_method == "FILE_LOADS":
      raise ValueError("a streaming run writes BigQuery with STREAMING_INSERTS")
    partition_date = output.partition_date or (
        None if standard.streaming else opts.today())
    run_id = output.run_id or (
        f"{partition_date or opts.today()}-{uuid.uuid4().hex[:8]}")
    return cls(run_id=run_id, partition_date=partition_date,
               output_dir=output_dir, project=project, dataset=dataset,
               emulator_host=output.bigquery_emulator_host,
               write_method=output.bigquery_write_method,
               streaming=bool(standard.streaming),
               pseudonymize_key_env=output.pseudonymize_key_env)

  @property
  def method(self) -> str:
    if self.write_method:
      return self.write_method
    if self.emulator_host or self.streaming:
      return "STREAMING_INSERTS"
    return "FILE_LOADS"

  def run_fields(self) -> dict:
    now = datetime.datetime.now(datetime.timezone.utc)
    return {"run_id": self.run_id,
            "partition_date": self.partition_date or now.date().isoformat(),
            "computed_at": schemas.format_timestamp(now.timestamp())}


def fix_run(pipeline_options) -> OutputConfig:
  """The run's OutputConfig, with its run id and partition date written back
  into the options: the job built from them writes that run, which the
  command then reads back."""
  config = OutputConfig.from_options(pipeline_options)
  output = pipeline_options.view_as(opts.OutputPipelineOptions)
  output.run_id = config.run_id
  if config.partition_date:
    output.partition_date = config.partition_date
  return config


class _StampRun(beam.DoFn):
  """Adds the run fields and keeps exactly the table's columns, to a row dict
  or to a `json_lines.RowBatch` (batch-wise, for large outputs)."""

  def __init__(self, config: OutputConfig, table: schemas.Table):
    self._config = config
    self._columns = table.columns

  def process(self, element):
    if isinstance(element, json_lines.RowBatch):
      table = element.table.select(
          [c for c in element.table.column_names if c in self._columns])
      constants = {**element.constants, **self._config.run_fields()}
      constants = {c: constants.get(c) for c in self._columns
                   if c not in table.column_names}
      yield json_lines.RowBatch(constants, table)
      return
    stamped = {**element, **self._config.run_fields()}
    yield {column: stamped.get(column) for column in self._columns}


def _to_json(element) -> bytes:
  if isinstance(element, json_lines.RowBatch):
    return json_lines.encode(element)
  return json_lines.dumps(element, sort_keys=True).encode("utf-8")


class _ToArrow(beam.DoFn):
  """RowBatches -> Arrow tables one for one; row dicts gathered into tables of
  up to PARQUET_ROWS_PER_WRITE rows per bundle. Batch pipelines only (the
  gathered rows leave in the global window)."""

  def __init__(self, table: schemas.Table):
    self._table = table
    self._rows = []

  def start_bundle(self):
    self._rows = []

  def process(self, element):
    if isinstance(element, json_lines.RowBatch):
      yield arrow_tables.to_arrow([element], self._table)
      return
    self._rows.append(element)
    if len(self._rows) >= PARQUET_ROWS_PER_WRITE:
      yield arrow_tables.to_arrow(self._rows, self._table)
      self._rows = []

  def finish_bundle(self):
    if self._rows:
      yield window.GlobalWindows.windowed_value(
          arrow_tables.to_arrow(self._rows, self._table))


def _to_rows(element):
  if isinstance(element, json_lines.RowBatch):
    return element.rows()
  return [element]


class WriteTable(beam.PTransform):
  """Rows of one table -> BigQuery and/or DIR/<table>*.jsonl (or .parquet).

  Elements are row dicts or `json_lines.RowBatch`es. Returns the rows BigQuery
  refused, as dead-letter rows (empty without BigQuery).
  """

  def __init__(self, table: schemas.Table, config: OutputConfig):
    super().__init__()
    self._table = table
    self._config = config

  def expand(self, rows):
    stamped = rows | "StampRun" >> beam.ParDo(_StampRun(self._config,
                                                         self._table))
    if self._config.output_dir:
      _ = stamped | "WriteFiles" >> self._file_write()
    if not self._config.dataset:
      return rows.pipeline | "NoFailedRows" >> beam.Create([])
    # Rows carry their window in columns. In the global window the direct
    # runner does not drop, inside WriteToBigQuery's reshuffle, the late panes
    # of a streaming job's event-time windows.
    result = (stamped
              | "ToRows" >> beam.FlatMap(_to_rows)
              | "GlobalWindow" >> beam.WindowInto(window.GlobalWindows())
              | "WriteBigQuery" >> self._bigquery_write())
    if self._config.method != "STREAMING_INSERTS":
      return rows.pipeline | "NoFailedRows" >> beam.Create([])
    return (result.failed_rows_with_errors
            | "FailedToDeadLetter" >> beam.Map(self._failed_row))

  def _file_write(self) -> beam.PTransform:
    prefix = f"{self._config.output_dir.rstrip('/')}/{self._table.name}"
    if self._config.file_format == PARQUET:
      return (
          "ToArrow" >> beam.ParDo(_ToArrow(self._table))
          | "WriteParquet" >> beam.io.WriteToParquetBatched(
              prefix, arrow_tables.arrow_schema(self._table), codec="snappy",
              file_name_suffix=".parquet"))
    return ("ToJson" >> beam.Map(_to_json)
            | "SkipEmpty" >> beam.Filter(bool)
            | "WriteJsonl" >> beam.io.WriteToText(
                prefix, file_name_suffix=self._table.file_suffix))

  def _bigquery_write(self):
    config, table = self._config, self._table
    table_ref = f"{config.project}:{config.dataset}.{table.name}"
    common = dict(schema=table.beam_schema(),
                  additional_bq_parameters=table.additional_bq_parameters())
    if config.emulator_host:
      from transforms.io import bigquery  # Only local runs need the emulator client.
      return beam.io.WriteToBigQuery(
          table_ref, method="STREAMING_INSERTS",
          create_disposition="CREATE_NEVER", write_disposition="WRITE_APPEND",
          insert_retry_strategy=RetryStrategy.RETRY_ON_TRANSIENT_ERROR,
          test_client=bigquery.EmulatorClient(config.project,
                                              config.emulator_host), **common)
    if config.method == "STREAMING_INSERTS":
      return beam.io.WriteToBigQuery(
          table_ref, method="STREAMING_INSERTS",
          create_disposition="CREATE_IF_NEEDED",
          write_disposition="WRITE_APPEND",
          insert_retry_strategy=RetryStrategy.RETRY_ON_TRANSIENT_ERROR,
          **common)
    # A load job into the run's day partition, truncating it: re-runs replace.
    partition = config.partition_date.replace("-", "")
    return beam.io.WriteToBigQuery(
        f"{table_ref}${partition}", method="FILE_LOADS",
        create_disposition="CREATE_IF_NEEDED",
        write_disposition="WRITE_TRUNCATE", **common)

  def _failed_row(self, failed):
    _, row, *errors = failed
    return {"record_type": self._table.name, "source_file": None,
            "reason": INSERT_FAILED, "detail": json.dumps(errors, default=str),
            "raw": json.dumps(row, sort_keys=True, default=str)}


class WriteTables(beam.PTransform):
  """{table name: rows} -> every table; rows BigQuery refuses join dead_letter.

  The input must have a "dead_letter" entry; dead letters are pseudonymized
  when the config names a key. Rows the dead_letter table itself refuses are
  not routed again (no loop).
  """

  def __init__(self, tables, config: OutputConfig):
    super().__init__()
    self._tables = {table.name: table for table in tables}
    self._config = config

  def expand(self, outputs):
    failed = [
        rows | f"Write_{name}" >> WriteTable(self._tables[name], self._config)
        for name, rows in sorted(outputs.items())
        if name != schemas.DEAD_LETTER.name
    ]
    _ = ((outputs[schemas.DEAD_LETTER.name], *failed)
         | "FlattenDeadLetters" >> beam.Flatten()
         | "Redact" >> RedactDeadLetters(self._config.pseudonymize_key_env)
         | "Write_dead_letter" >> WriteTable(schemas.DEAD_LETTER,
                                             self._config))


class _Redact(beam.DoFn):

  def __init__(self, key_env: str):
    self._key_env = key_env
    self._key = None

  def setup(self):
    # Read in the worker: the key never enters the pickled pipeline graph.
    value = os.environ.get(self._key_env)
    if not value:
      raise ValueError(f"${self._key_env} is not set")
    self._key = value.encode("utf-8")

  def process(self, row):
    yield {**row, "raw": contract.redact_raw(row["raw"], self._key)}


class RedactDeadLetters(beam.PTransform):
  """Pseudonymize user_id inside dead-lettered raw records when a key is configured."""

  def __init__(self, key_env: str | None):
    super().__init__()
    self._key_env = key_env

  def expand(self, rows):
    if not self._key_env:
      return rows
    return rows | "Redact" >> beam.ParDo(_Redact(self._key_env))


def prepare_emulator_tables(config: OutputConfig, tables,
                            replace_partition: bool) -> None:
  """Local emulator only: create the tables (Beam writes with CREATE_NEVER) and,
  for a batch run, empty the run's day partition so a re-run replaces it."""
  if not (config.emulator_host and config.dataset):
    return
  from transforms.io import bigquery
  client = bigquery.bigquery_client(config.project, config.emulator_host)
  bigquery.ensure_tables(client, config.project, config.dataset, tables)
  if replace_partition:
    for table in tables:
      bigquery.delete_partition(client, config.project, config.dataset,
                                table.name, config.partition_date)

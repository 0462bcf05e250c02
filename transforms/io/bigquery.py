"""BigQuery I/O helpers: clients, table set-up, partition clean-up, read-back.

Work the same against real BigQuery and the local emulator
(`emulators.bq_emulator`); no Beam.
"""

from __future__ import annotations

import datetime
from typing import Iterable

from google.api_core import client_options
from google.auth import credentials as auth_credentials
from google.cloud import bigquery

from transforms.io import schemas


def bigquery_client(project: str,
                    emulator_host: str | None = None) -> bigquery.Client:
  """A client of real BigQuery (Application Default Credentials), or of the
  emulator at `emulator_host` (e.g. "http://127.0.0.1:9050", no credentials).
  """
  if emulator_host is None:
    return bigquery.Client(project=project)
  return bigquery.Client(
      project=project,
      credentials=auth_credentials.AnonymousCredentials(),
      client_options=client_options.ClientOptions(api_endpoint=emulator_host))


class EmulatorClient:
  """`test_client` of `beam.io.WriteToBigQuery` to stream into the emulator.

  Beam's `BigQueryWrapper` uses its `test_client` both as its apitools client
  and as its `google.cloud.bigquery.Client`. With
  `method="STREAMING_INSERTS"` and `create_disposition="CREATE_NEVER"` the only
  call it makes is `insert_rows_json`, which this forwards to a real client.
  Beam pickles its `test_client` into the workers, and a
  `google.cloud.bigquery.Client` does not pickle: the client is built on first
  use, in the worker.
  """

  def __init__(self, project: str, emulator_host: str):
    self.project = project
    self.emulator_host = emulator_host
    self._client = None

  def __getstate__(self) -> dict:
    return {**self.__dict__, "_client": None}

  def insert_rows_json(self, *args, **kwargs):
    if self._client is None:
      self._client = bigquery_client(self.project, self.emulator_host)
    return self._client.insert_rows_json(*args, **kwargs)


def ensure_tables(client: bigquery.Client, project: str, dataset: str,
                  tables: Iterable[schemas.Table]) -> None:
  """Creates the dataset and the tables that do not exist yet.

  Existing tables are left as they are, even if their schema differs.
  """
  client.create_dataset(f"{project}.{dataset}", exists_ok=True)
  for table in tables:
    client.create_table(_bigquery_table(project, dataset, table),
                        exists_ok=True)


def _bigquery_table(project: str, dataset: str,
                    table: schemas.Table) -> bigquery.Table:
  bq_table = bigquery.Table(f"{project}.{dataset}.{table.name}",
                            schema=[_schema_field(f) for f in table.fields])
  bq_table.description = table.description
  bq_table.time_partitioning = bigquery.TimePartitioning(
      type_=bigquery.TimePartitioningType.DAY, field=table.partition_field)
  bq_table.clustering_fields = list(table.clustering) or None
  return bq_table


def _schema_field(field) -> bigquery.SchemaField:
  name, kind, mode = field
  if isinstance(kind, tuple):
    return bigquery.SchemaField(name, "RECORD", mode=mode,
                                fields=[_schema_field(f) for f in kind])
  return bigquery.SchemaField(name, kind, mode=mode)


def delete_partition(client: bigquery.Client, project: str, dataset: str,
                     table: str, partition_date: datetime.date,
                     column: str = "partition_date") -> int:
  """Deletes the rows of one day partition; returns how many were deleted.

  Real BigQuery refuses DML on rows still in the streaming buffer (up to
  about 90 minutes after a streaming insert): there a day is replaced by a
  WRITE_TRUNCATE load into `table$YYYYMMDD` instead.
  """
  job = client.query(
      f"DELETE FROM `{project}.{dataset}.{table}` WHERE `{column}` = @day",
      job_config=bigquery.QueryJobConfig(query_parameters=[
          bigquery.ScalarQueryParameter("day", "DATE", partition_date)]))
  job.result()
  return job.num_dml_affected_rows or 0


def read_rows(client: bigquery.Client, project: str, dataset: str,
              table: str) -> list[dict]:
  """All rows of a table, as dicts of Python values (in no given order)."""
  return [dict(row.items())
          for row in client.list_rows(f"{project}.{dataset}.{table}")]

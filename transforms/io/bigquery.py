"""BigQuery I/O helpers: clients, table set-up, partition clean-up, read-back,
Storage Read API sessions.

Work the same against real BigQuery and the local emulator
(`emulators.bq_emulator`); no Beam.
"""

from __future__ import annotations

import datetime
from typing import Iterable

from google.api_core import client_options
from google.auth import credentials as auth_credentials
from google.cloud import bigquery
from google.cloud import bigquery_storage_v1
import pyarrow as pa

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


def read_client(emulator_grpc_host: str | None = None
               ) -> bigquery_storage_v1.BigQueryReadClient:
  """A Storage Read API client of real BigQuery (Application Default
  Credentials), or of the emulator's plain-gRPC port ("127.0.0.1:PORT")."""
  if emulator_grpc_host is None:
    return bigquery_storage_v1.BigQueryReadClient()
  import grpc  # pylint: disable=import-outside-toplevel
  from google.cloud.bigquery_storage_v1.services.big_query_read import transports  # pylint: disable=import-outside-toplevel
  # No message size limit, as the client's own channel to BigQuery: a
  # response carries a whole Arrow record batch (the emulator's: 65,536 rows).
  unlimited = [("grpc.max_send_message_length", -1),
               ("grpc.max_receive_message_length", -1)]
  return bigquery_storage_v1.BigQueryReadClient(
      transport=transports.BigQueryReadGrpcTransport(
          channel=grpc.insecure_channel(emulator_grpc_host,
                                        options=unlimited)))


def table_reference(spec: str, project: str | None = None
                    ) -> bigquery.TableReference:
  """"PROJECT:DATASET.TABLE", "PROJECT.DATASET.TABLE" or (with `project`)
  "DATASET.TABLE" -> a table reference."""
  return bigquery.TableReference.from_string(spec.replace(":", ".", 1),
                                             default_project=project)


def query_destination(client: bigquery.Client,
                      query: str) -> bigquery.TableReference:
  """Runs a standard-SQL query; the (temporary) table holding its result."""
  job = client.query(query, job_config=bigquery.QueryJobConfig(
      use_legacy_sql=False))
  job.result()
  return job.destination


def open_read_session(client: bigquery_storage_v1.BigQueryReadClient,
                      table: bigquery.TableReference, billing_project: str,
                      row_restriction: str | None = None,
                      max_streams: int = 0) -> tuple[bytes, list[str]]:
  """A Storage Read session over `table` in Arrow format: its serialized
  Arrow schema and stream names (none when no row qualifies). max_streams 0
  lets BigQuery choose."""
  types = bigquery_storage_v1.types
  requested = types.ReadSession(
      table=(f"projects/{table.project}/datasets/{table.dataset_id}"
             f"/tables/{table.table_id}"),
      data_format=types.DataFormat.ARROW)
  if row_restriction:
    requested.read_options.row_restriction = row_restriction
  session = client.create_read_session(
      parent=f"projects/{billing_project}", read_session=requested,
      max_stream_count=max_streams)
  return (session.arrow_schema.serialized_schema,
          [stream.name for stream in session.streams])


def read_stream_batches(client: bigquery_storage_v1.BigQueryReadClient,
                        stream: str, serialized_schema: bytes):
  """The Arrow record batches of one read stream, as BigQuery sends them
  (the client resumes a broken stream where it stopped)."""
  schema = pa.ipc.read_schema(pa.py_buffer(serialized_schema))
  for response in client.read_rows(stream):
    yield pa.ipc.read_record_batch(
        pa.py_buffer(response.arrow_record_batch.serialized_record_batch),
        schema)


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

"""Beam's `ReadFromBigQuery(method=DIRECT_READ)` sent to the local BigQuery
emulator, for tests and benchmarks.

Beam 2.77 builds its Storage Read client with no endpoint option
(`bq_storage.BigQueryReadClient()`) and its REST client (table size,
temporary datasets of a query) with Google's URL
(`BigQueryWrapper._bigquery_client`). Within `reads_from(emulator)` both are
clients of the emulator; the rest of Beam's read (session, streams, rows)
runs as it does on Google Cloud. The pipeline must run in this process
(FnApiRunner, DirectRunner). Nothing here is used by a pipeline.

After a read Beam deletes its temporary datasets: those it lists with a
label filter, which the emulator ignores (it lists every dataset). The
emulator's client applies the filter itself, so only Beam's go.
"""

from __future__ import annotations

import contextlib
import types
from unittest import mock

from apache_beam.io.gcp import bigquery as beam_bigquery
from apache_beam.io.gcp import bigquery_tools
from apache_beam.io.gcp.internal.clients import bigquery as bigquery_api
from google.cloud import bigquery_storage_v1

from transforms.io import bigquery


@contextlib.contextmanager
def reads_from(emulator):
  """Within the block Beam's BigQuery reads go to `emulator` (a running
  `emulators.bq_emulator` handle)."""

  def rest_client(pipeline_options):
    del pipeline_options  # Beam takes credentials from them: none here.
    client = bigquery_api.BigqueryV2(
        url=f"{emulator.host}/bigquery/v2/", get_credentials=False,
        credentials=None, response_encoding="utf8")
    list_datasets = client.datasets.List

    def list_labelled_datasets(request, **kwargs):
      listed = list_datasets(request, **kwargs)
      wanted = set((request.filter or "").split())  # "labels.KEY:VALUE ..."
      listed.datasets = [dataset for dataset in listed.datasets
                         if wanted <= _label_terms(dataset)]
      return listed

    # apitools finds a method's request path on the method itself.
    list_labelled_datasets.method_config = list_datasets.method_config
    client.datasets.List = list_labelled_datasets
    return client

  storage = types.SimpleNamespace(
      BigQueryReadClient=lambda: bigquery.read_client(emulator.grpc_host),
      types=bigquery_storage_v1.types)
  with mock.patch.object(beam_bigquery, "bq_storage", storage), \
      mock.patch.object(bigquery_tools.BigQueryWrapper, "_bigquery_client",
                        staticmethod(rest_client)):
    yield


def _label_terms(dataset) -> set[str]:
  labels = dataset.labels.additionalProperties if dataset.labels else []
  return {f"labels.{label.key}:{label.value}" for label in labels}

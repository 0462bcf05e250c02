"""Round trips through the local BigQuery emulator, with Beam's streaming sink.

Row values as the streaming sink sends them: TIMESTAMP as an RFC 3339 / ISO
8601 string with an explicit UTC zone ("...Z", "+00:00" or " UTC"; a number
is read as microseconds by the emulator but as seconds by BigQuery, so never
a number), DATE as "YYYY-MM-DD", a REPEATED RECORD as a list of dicts.
"""

import datetime

import apache_beam as beam
from apache_beam.io.gcp import bigquery_tools
from apache_beam.testing import test_pipeline
from apache_beam.testing import util
import pytest

from transforms.io import bigquery
from transforms.io import schemas

UTC = datetime.timezone.utc
DAY = datetime.date(2024, 1, 1)


@pytest.fixture
def dataset(bq_emulator, request):
  """A dataset of its own for each test, holding all the tables."""
  emulator, project = bq_emulator
  client = bigquery.bigquery_client(project, emulator.host)
  name = request.node.name
  bigquery.ensure_tables(client, project, name, schemas.TABLES.values())
  return client, project, name


def _arm_stats_row(arm, impressions, partition_date="2024-01-01"):
  return {
      "experiment_id": "exp", "arm": arm,
      "window_start": "2024-01-01T00:00:00Z",
      "window_end": "2024-01-02 00:00:00 UTC",
      "impressions": impressions, "feedback_count": 2, "samples": 2,
      "reward_sum": 1.5, "reward_sq_sum": 1.25, "reward_mean": 0.75,
      "srm_alert": False,
      "run_id": "run-1", "computed_at": "2024-01-02T03:04:05.123456+00:00",
      "partition_date": partition_date,
  }


ROUTER_STATE_ROW = {
    "experiment_id": "exp", "reward_type": "binary", "best_arm": "b",
    "window_start": "2024-01-01T00:00:00Z", "window_end": None,
    "arms": [
        {"arm": "a", "tries": 10, "successes": 3.0, "alpha": 4.0, "beta": 8.0},
        {"arm": "b", "tries": 12, "successes": 7.0, "traffic_share": 0.6},
    ],
    "run_id": "run-1", "computed_at": "2024-01-02T03:04:05Z",
    "partition_date": "2024-01-01",
}


def _write(rows, project, dataset_name, table, emulator, **kwargs):
  return rows | f"Write {table.name}" >> beam.io.WriteToBigQuery(
      table=f"{project}:{dataset_name}.{table.name}",
      schema=table.beam_schema(),
      method="STREAMING_INSERTS",
      create_disposition="CREATE_NEVER",
      write_disposition="WRITE_APPEND",
      test_client=bigquery.EmulatorClient(project, emulator.host),
      **kwargs)


def _pipeline():
  # The default DirectRunner would download the Prism runner.
  return test_pipeline.TestPipeline(runner="FnApiRunner")


def test_ensure_tables_creates_partitioned_clustered_tables(dataset):
  client, project, name = dataset
  bigquery.ensure_tables(client, project, name, schemas.TABLES.values())

  for table in schemas.TABLES.values():
    created = client.get_table(f"{project}.{name}.{table.name}")
    assert tuple(f.name for f in created.schema) == table.columns
    assert created.time_partitioning.type_ == "DAY"
    assert created.time_partitioning.field == "partition_date"
    assert tuple(created.clustering_fields) == table.clustering
  arms = client.get_table(f"{project}.{name}.router_state").schema[5]
  assert (arms.name, arms.field_type, arms.mode) == ("arms", "RECORD",
                                                     "REPEATED")
  assert [f.name for f in arms.fields] == [f[0] for f in
                                           schemas.ROUTER_ARM_FIELDS]


def test_streaming_insert_round_trip(bq_emulator, dataset):
  emulator, _ = bq_emulator
  client, project, name = dataset
  with _pipeline() as p:
    _write(p | "ArmStats" >> beam.Create(
        [_arm_stats_row("a", 10), _arm_stats_row("b", 12)]),
           project, name, schemas.ARM_STATS, emulator)
    _write(p | "RouterState" >> beam.Create([ROUTER_STATE_ROW]),
           project, name, schemas.ROUTER_STATE, emulator)

  arm_stats = sorted(bigquery.read_rows(client, project, name, "arm_stats"),
                     key=lambda r: r["arm"])
  assert [(r["arm"], r["impressions"]) for r in arm_stats] == [("a", 10),
                                                               ("b", 12)]
  row = arm_stats[0]
  assert row["window_start"] == datetime.datetime(2024, 1, 1, tzinfo=UTC)
  assert row["window_end"] == datetime.datetime(2024, 1, 2, tzinfo=UTC)
  assert row["computed_at"] == datetime.datetime(2024, 1, 2, 3, 4, 5, 123456,
                                                 tzinfo=UTC)
  assert row["partition_date"] == DAY
  assert (row["reward_sum"], row["srm_alert"], row["ci_low"]) == (1.5, False,
                                                                  None)

  [state] = bigquery.read_rows(client, project, name, "router_state")
  assert state["window_end"] is None
  assert state["computed_at"] == datetime.datetime(2024, 1, 2, 3, 4, 5,
                                                   tzinfo=UTC)
  assert [(a["arm"], a["tries"], a["successes"], a["alpha"],
           a["traffic_share"]) for a in state["arms"]] == [
               ("a", 10, 3.0, 4.0, None), ("b", 12, 7.0, None, 0.6)]


def test_delete_partition(dataset):
  client, project, name = dataset
  rows = [_arm_stats_row("a", 1, "2024-01-01"),
          _arm_stats_row("b", 2, "2024-01-01"),
          _arm_stats_row("c", 3, "2024-01-02")]
  assert not client.insert_rows_json(f"{project}.{name}.arm_stats", rows)

  assert bigquery.delete_partition(client, project, name, "arm_stats",
                                   DAY) == 2
  assert [r["arm"] for r in
          bigquery.read_rows(client, project, name, "arm_stats")] == ["c"]
  assert bigquery.delete_partition(client, project, name, "arm_stats",
                                   DAY) == 0


def test_invalid_rows_are_returned_not_retried(bq_emulator, dataset):
  emulator, _ = bq_emulator
  client, project, name = dataset
  bad = _arm_stats_row("bad", "many")
  with _pipeline() as p:
    result = _write(
        p | beam.Create([_arm_stats_row("good", 1), bad]),
        project, name, schemas.ARM_STATS, emulator,
        insert_retry_strategy=bigquery_tools.RetryStrategy.RETRY_NEVER)
    failed = result.failed_rows_with_errors | beam.MapTuple(
        lambda destination, row, errors: (destination, row["arm"],
                                          errors[0]["reason"]))
    util.assert_that(failed, util.equal_to(
        [(f"{project}:{name}.arm_stats", "bad", "invalid")]))

  assert [r["arm"] for r in
          bigquery.read_rows(client, project, name, "arm_stats")] == ["good"]


def test_emulator_does_not_enforce_required_fields(dataset):
  # Real BigQuery rejects this row; the emulator stores a NULL.
  client, project, name = dataset
  row = _arm_stats_row("a", 1)
  del row["run_id"]
  assert not client.insert_rows_json(f"{project}.{name}.arm_stats", [row])
  [stored] = bigquery.read_rows(client, project, name, "arm_stats")
  assert stored["run_id"] is None

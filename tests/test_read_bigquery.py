"""Logs read from BigQuery tables and queries (the local emulator's Storage
Read API), by either read method, give exactly what the same records give
read from JSON lines."""

import collections
import datetime
import json
import random

import apache_beam as beam
from apache_beam.io.gcp import bigquery as beam_bigquery
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that
from apache_beam.testing.util import equal_to
import pyarrow as pa
import pytest

from emulators import beam_bigquery_reads
from pipelines import reward_batch
from transforms import options as opts
from transforms.io import bigquery
from transforms.logs import batches
from transforms.logs import contract
from transforms.logs import quality
from transforms.logs import read_bigquery
from transforms.logs import sources

DAY = "2026-12-01"
DAY_START = datetime.datetime(2026, 12, 1, tzinfo=datetime.timezone.utc)
RUN_FIELDS = ("run_id", "computed_at")
PREDICTION_COLUMNS = [("request_id", "STRING"), ("timestamp", "TIMESTAMP"),
                      ("experiment_id", "STRING"), ("arm", "STRING"),
                      ("shadow", "BOOL"), ("propensity", "FLOAT64")]
VERTEX_COLUMNS = [("endpoint", "STRING"), ("deployed_model_id", "STRING"),
                  ("logging_time", "TIMESTAMP"), ("request_id", "NUMERIC"),
                  ("request_payload", "STRING", "REPEATED"),
                  ("response_payload", "STRING", "REPEATED")]
FEEDBACK_COLUMNS = [("request_id", "STRING"), ("timestamp", "TIMESTAMP"),
                    ("reward", "FLOAT64"), ("experiment_id", "STRING"),
                    ("arm", "STRING")]


def at(seconds):
  moment = DAY_START + datetime.timedelta(seconds=seconds)
  return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def contract_logs(n=120, seed=4):
  """Predictions and feedback of one day, with rows the contract refuses,
  and rows of the next day that the table read must leave out."""
  rng = random.Random(seed)
  predictions, feedback = [], []
  for i in range(n):
    arm = rng.choice(["control", "candidate"])
    t = rng.uniform(0, 80_000)
    predictions.append({"request_id": f"r{i}", "timestamp": at(t),
                        "experiment_id": "exp", "arm": arm,
                        "propensity": 0.5})
    if rng.random() < 0.7:
      feedback.append({"request_id": f"r{i}", "timestamp": at(t + 60),
                       "reward": float(rng.random() < 0.3)})
  predictions += [
      {"request_id": "no-arm", "timestamp": at(5), "experiment_id": "exp"},
      {"request_id": "", "timestamp": at(6), "experiment_id": "exp",
       "arm": "control"},
      {"request_id": "bad-propensity", "timestamp": at(7),
       "experiment_id": "exp", "arm": "control", "propensity": 0.0},
      {"request_id": "shadowed", "timestamp": at(8), "experiment_id": "exp",
       "arm": "shadow-model", "shadow": True}]
  feedback += [{"request_id": "ghost", "timestamp": at(9), "reward": 1.0},
               {"request_id": "r1", "timestamp": at(10)}]  # no reward
  next_day = ([{"request_id": "tomorrow", "timestamp": at(90_000),
                "experiment_id": "exp", "arm": "control"}],
              [{"request_id": "r2", "timestamp": at(90_000), "reward": 1.0}])
  return predictions, feedback, next_day


def vertex_logs(n=90, seed=6):
  rng = random.Random(seed)
  endpoint = "projects/1/locations/europe-west4/endpoints/42"
  predictions, feedback = [], []
  for i in range(n):
    request_id = str(10**20 + i * 7919)  # Beyond a float's exact integers.
    t = rng.uniform(0, 80_000)
    predictions.append({
        "endpoint": endpoint, "deployed_model_id": rng.choice(["71", "72"]),
        "logging_time": at(t), "request_id": request_id,
        "request_payload": ['{"instances": [[1.0]]}'],
        "response_payload": ['{"predictions": [0.5]}']})
    if rng.random() < 0.6:
      feedback.append({"request_id": request_id, "timestamp": at(t + 30),
                       "reward": 1.0})
  predictions.append({"endpoint": endpoint, "logging_time": at(3),
                      "request_id": "5", "request_payload": [],
                      "response_payload": []})  # no deployed_model_id
  next_day = ([{"endpoint": endpoint, "deployed_model_id": "71",
                "logging_time": at(100_000), "request_id": "6",
                "request_payload": [], "response_payload": []}], [])
  return predictions, feedback, next_day


def load_table(client, project, dataset, name, columns, rows):
  from google.cloud import bigquery as bq
  schema = [bq.SchemaField(c[0], c[1], mode=c[2] if len(c) > 2 else
                           "NULLABLE") for c in columns]
  client.create_dataset(f"{project}.{dataset}", exists_ok=True)
  client.create_table(bq.Table(f"{project}.{dataset}.{name}", schema=schema),
                      exists_ok=True)
  assert client.insert_rows_json(f"{project}.{dataset}.{name}", rows) == []
  return f"{project}:{dataset}.{name}"


def write_lines(path, rows):
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  return str(path)


def outputs(out_dir, table):
  rows = [json.loads(line) for path in sorted(out_dir.glob(f"{table}*"))
          for line in path.read_text().splitlines()]
  return sorted((json.dumps({k: v for k, v in r.items()
                             if k not in RUN_FIELDS}, sort_keys=True)
                 for r in rows))


@pytest.fixture
def beam_reads_the_emulator(bq_emulator, monkeypatch):
  """Beam's ReadFromBigQuery (emulators/beam_bigquery_reads.py), and our
  table look-ups, sent to the emulator; the rest of Beam's read runs as is.
  Returns the emulator's project, the one a job must name with --project.
  """
  emulator, project = bq_emulator
  rest_client = bigquery.bigquery_client

  def emulator_rest_client(project, emulator_host=None):
    del emulator_host  # Not given: DIRECT_READ runs without emulator flags.
    return rest_client(project, emulator.host)

  monkeypatch.setattr(bigquery, "bigquery_client", emulator_rest_client)
  with beam_bigquery_reads.reads_from(emulator):
    yield project


def load_logs(client, project, dataset, logs, prediction_columns):
  """Tables of `logs()` (the next day's rows too): (predictions table,
  feedback table, (predictions, feedback) of the day)."""
  predictions, feedback, (late_predictions, late_feedback) = logs()
  return (load_table(client, project, dataset, "predictions",
                     prediction_columns, predictions + late_predictions),
          load_table(client, project, dataset, "feedback", FEEDBACK_COLUMNS,
                     feedback + late_feedback),
          (predictions, feedback))


@pytest.mark.parametrize("logs,prediction_columns,log_format", [
    (contract_logs, PREDICTION_COLUMNS, "auto"),
    (vertex_logs, VERTEX_COLUMNS, "vertex"),
    (vertex_logs, VERTEX_COLUMNS, "auto")])
def test_beams_direct_read_gives_the_same_tables_as_json_lines(
    beam_reads_the_emulator, tmp_path, logs, prediction_columns, log_format):
  """The job that runs on Google Cloud: Beam's ReadFromBigQuery, the day's
  row restriction, rows batched back into Arrow tables."""
  project = beam_reads_the_emulator
  client = bigquery.bigquery_client(project)
  predictions_table, feedback_table, (predictions, feedback) = load_logs(
      client, project, f"direct_{logs.__name__}_{log_format}", logs,
      prediction_columns)
  common = [f"--partition_date={DAY}", "--runner=FnApiRunner",
            f"--log_format={log_format}", f"--project={project}"]
  reward_batch.run(common + [
      f"--predictions={write_lines(tmp_path / 'p.jsonl', predictions)}",
      f"--feedback={write_lines(tmp_path / 'f.jsonl', feedback)}",
      f"--output_dir={tmp_path / 'files'}"])
  reward_batch.run(common + [
      f"--predictions_table={predictions_table}",
      f"--feedback_table={feedback_table}",
      f"--output_dir={tmp_path / 'tables'}"])

  # Beam's clean-up of its temporary datasets left the others alone.
  assert client.get_table(predictions_table.replace(":", "."))
  from_files = outputs(tmp_path / "files", "arm_stats")
  assert len(from_files) >= 2
  assert outputs(tmp_path / "tables", "arm_stats") == from_files
  quality_rows = outputs(tmp_path / "files", "data_quality")
  assert any('"metric": "dead_letter:' in row for row in quality_rows)
  assert outputs(tmp_path / "tables", "data_quality") == quality_rows
  assert sorted(json.loads(r)["reason"] for r in outputs(
      tmp_path / "tables", "dead_letter")) == sorted(
          json.loads(r)["reason"] for r in outputs(tmp_path / "files",
                                                   "dead_letter"))


def arrow_stream_batches(project, table, grpc_host):
  client = bigquery.read_client(grpc_host)
  schema, streams = bigquery.open_read_session(
      client, bigquery.table_reference(table), project)
  return [batch for stream in streams
          for batch in bigquery.read_stream_batches(client, stream, schema)]


def beam_stream_source(stream: str):
  return beam_bigquery._CustomBigQueryStorageStreamSource(  # pylint: disable=protected-access
      stream, use_native_datetime=True)


def beam_rows(project, table):
  """A table's rows as Beam's ReadFromBigQuery(DIRECT_READ,
  use_native_datetime=True) yields them, by Beam's own stream reader and
  client (the emulator's: beam_reads_the_emulator)."""
  _, streams = bigquery.open_read_session(
      beam_bigquery.bq_storage.BigQueryReadClient(),
      bigquery.table_reference(table), project)
  return [row for stream in streams
          for row in beam_stream_source(stream).read(None)]


def comparable(table: pa.Table):
  return sorted(json.dumps(row, sort_keys=True, default=str)
                for row in table.to_pylist())


@pytest.mark.parametrize("logs,prediction_columns,log_format", [
    (contract_logs, PREDICTION_COLUMNS, "auto"),
    (vertex_logs, VERTEX_COLUMNS, "vertex"),
    (vertex_logs, VERTEX_COLUMNS, "auto")])
def test_rows_as_beam_yields_them_give_the_arrow_streams_tables(
    beam_reads_the_emulator, bq_emulator, logs, prediction_columns,
    log_format):
  """The same table's rows, as Beam yields them through RowsToArrowTables
  and as Arrow stream batches through the contract: the same tables, dead
  letters and counts (but for fast_path_records, which depend on batching)."""
  project = beam_reads_the_emulator
  emulator, _ = bq_emulator
  predictions_table, _, _ = load_logs(
      bigquery.bigquery_client(project), project,
      f"rows_{logs.__name__}_{log_format}", logs, prediction_columns)
  label = f"bigquery:{predictions_table}"
  tables, dead, counts = [], [], collections.Counter()
  for batch in arrow_stream_batches(project, predictions_table,
                                    emulator.grpc_host):
    for output in quality.emit_block(contract.PREDICTION, label,
                                     batches.parse_arrow_batch(
                                         batch, contract.PREDICTION, label,
                                         (), log_format), batch.num_rows):
      if isinstance(output, pa.Table):
        tables.append(output)
      elif output.tag == quality.DEAD_LETTER:
        dead.append(output.value)
      elif output.value[0][1] != quality.FAST_PATH:
        counts[output.value[0]] += output.value[1]
  rows = beam_rows(project, predictions_table)
  assert isinstance(rows[0], dict)
  assert len(rows) == counts[(contract.PREDICTION, quality.READ)]
  expected_records = comparable(pa.concat_tables(tables))
  assert dead and len(expected_records) > 50

  with TestPipeline(runner="FnApiRunner") as p:
    read = (p
            | beam.Create(rows)
            | read_bigquery.RowsToArrowTables(contract.PREDICTION, (),
                                              log_format, label))
    assert_that(read.records | beam.combiners.ToList()
                | beam.Map(lambda parts: comparable(pa.concat_tables(parts))),
                equal_to([expected_records]), label="Records")
    assert_that(read[quality.DEAD_LETTER], equal_to(dead), label="DeadLetters")
    assert_that(read[quality.COUNTS]
                | beam.Filter(lambda kv: kv[0][1] != quality.FAST_PATH)
                | beam.CombinePerKey(sum), equal_to(list(counts.items())),
                label="Counts")


def test_rows_that_disagree_on_a_column_type_are_parsed_one_by_one():
  """Beam's rows carry one type per column; should they not, each row is
  its own table and the contract dead-letters the wrong one."""
  at_noon = datetime.datetime(2026, 12, 1, 12, tzinfo=datetime.timezone.utc)
  rows = [{"request_id": "r1", "timestamp": at_noon, "experiment_id": "e",
           "arm": "a", "propensity": 0.5},
          {"request_id": "r2", "timestamp": at_noon, "experiment_id": "e",
           "arm": "a", "propensity": "high"}]
  with TestPipeline(runner="FnApiRunner") as p:
    read = (p | beam.Create(rows) | read_bigquery.RowsToArrowTables(
        contract.PREDICTION, ("propensity",), contract.AUTO, "bigquery:t"))
    assert_that(read.records | beam.FlatMap(lambda table: [
        (r["request_id"], r["propensity"]) for r in table.to_pylist()]),
                equal_to([("r1", 0.5)]), label="Records")
    assert_that(read[quality.DEAD_LETTER] | beam.Map(
        lambda row: (row["reason"], json.loads(row["raw"])["request_id"])),
                equal_to([(contract.WRONG_TYPE, "r2")]), label="DeadLetters")


@pytest.mark.parametrize("flags,method", [
    ([], read_bigquery.DIRECT_READ),
    (["--bigquery_emulator_grpc_host=127.0.0.1:1"],
     read_bigquery.ARROW_STREAMS),
    (["--bigquery_emulator_host=http://127.0.0.1:1"],
     read_bigquery.ARROW_STREAMS),
    (["--bigquery_read_method=ARROW_STREAMS"], read_bigquery.ARROW_STREAMS)])
def test_read_method_defaults_to_beams_off_the_emulator(flags, method):
  options = opts.parse_pipeline_options(
      ["--predictions_table=p:d.t"] + flags, reward_batch.OPTION_CLASSES, "")
  chosen = sources.log_sources(options, DAY, predictions=None)
  assert chosen["predictions"].bigquery.read_method == method


def test_beams_read_is_refused_on_the_emulator(tmp_path, capsys):
  with pytest.raises(SystemExit) as stop:
    reward_batch.run([
        "--predictions_table=p:d.t", "--feedback=f.jsonl",
        "--bigquery_read_method=DIRECT_READ",
        "--bigquery_emulator_grpc_host=127.0.0.1:1",
        f"--output_dir={tmp_path}"])
  assert stop.value.code == 2
  assert "--bigquery_read_method=ARROW_STREAMS" in capsys.readouterr().err


@pytest.mark.parametrize("logs,prediction_columns,log_format", [
    (contract_logs, PREDICTION_COLUMNS, "auto"),
    (vertex_logs, VERTEX_COLUMNS, "vertex"),
    (vertex_logs, VERTEX_COLUMNS, "auto")])
def test_tables_give_the_same_tables_as_json_lines(
    bq_emulator, tmp_path, logs, prediction_columns, log_format):
  emulator, project = bq_emulator
  predictions, feedback, (late_predictions, late_feedback) = logs()
  client = bigquery.bigquery_client(project, emulator.host)
  dataset = f"logs_{logs.__name__}_{log_format}"
  predictions_table = load_table(client, project, dataset, "predictions",
                                 prediction_columns,
                                 predictions + late_predictions)
  feedback_table = load_table(client, project, dataset, "feedback",
                              FEEDBACK_COLUMNS, feedback + late_feedback)
  common = [f"--partition_date={DAY}", "--runner=FnApiRunner",
            f"--log_format={log_format}", "--sampling_rate=0.25"]
  reward_batch.run(common + [
      f"--predictions={write_lines(tmp_path / 'p.jsonl', predictions)}",
      f"--feedback={write_lines(tmp_path / 'f.jsonl', feedback)}",
      f"--output_dir={tmp_path / 'files'}"])
  reward_batch.run(common + [
      f"--predictions_table={predictions_table}",
      f"--feedback_table={feedback_table}",
      f"--bigquery_emulator_host={emulator.host}",
      f"--bigquery_emulator_grpc_host={emulator.grpc_host}",
      f"--output_dir={tmp_path / 'tables'}"])

  from_files = outputs(tmp_path / "files", "arm_stats")
  assert len(from_files) >= 2
  assert outputs(tmp_path / "tables", "arm_stats") == from_files
  quality = outputs(tmp_path / "files", "data_quality")
  assert any('"metric": "dead_letter:' in row for row in quality)
  assert outputs(tmp_path / "tables", "data_quality") == quality
  dead = [json.loads(r)["reason"]
          for r in outputs(tmp_path / "tables", "dead_letter")]
  assert sorted(dead) == sorted(json.loads(r)["reason"] for r in outputs(
      tmp_path / "files", "dead_letter"))


def test_a_query_reads_what_it_selects(bq_emulator, tmp_path, monkeypatch):
  emulator, project = bq_emulator
  predictions, feedback, _ = contract_logs(n=40, seed=9)
  client = bigquery.bigquery_client(project, emulator.host)
  predictions_table = load_table(client, project, "logs_query",
                                 "predictions", PREDICTION_COLUMNS,
                                 predictions)
  feedback_table = load_table(client, project, "logs_query", "feedback",
                              FEEDBACK_COLUMNS, feedback)
  queries = []

  def materialized(rest_client, query):
    # The emulator runs the query but keeps no result table to read (BigQuery
    # keeps an anonymous one): CREATE TABLE AS SELECT stands in for it.
    queries.append(query)
    destination = f"{project}.logs_query.result_{len(queries)}"
    rest_client.query(f"CREATE TABLE `{destination}` AS {query}").result()
    return bigquery.table_reference(destination)

  monkeypatch.setattr(bigquery, "query_destination", materialized)
  query = (f"SELECT * FROM `{predictions_table.replace(':', '.')}` "
           "WHERE arm = 'control'")
  reward_batch.run([
      f"--predictions_query={query}", f"--feedback_table={feedback_table}",
      f"--project={project}", f"--partition_date={DAY}",
      "--runner=FnApiRunner", f"--bigquery_emulator_host={emulator.host}",
      f"--bigquery_emulator_grpc_host={emulator.grpc_host}",
      # The query selects one arm: the others' feedback is orphaned.
      "--allow_partial", f"--output_dir={tmp_path / 'out'}"])
  assert queries == [query]
  arms = [json.loads(r) for r in outputs(tmp_path / "out", "arm_stats")]
  valid_control = [p for p in predictions if p.get("arm") == "control" and
                   p["request_id"] and p.get("propensity", 1.0) > 0]
  assert [(a["arm"], a["impressions"]) for a in arms] == [
      ("control", len(valid_control))]


@pytest.mark.parametrize("flags", [
    ["--predictions=p.jsonl", "--predictions_table=p:d.t",
     "--feedback=f.jsonl"],
    ["--predictions=p.jsonl", "--feedback_table=p:d.t",
     "--feedback_query=SELECT 1"]])
def test_two_sources_for_one_log_are_refused(tmp_path, flags, capsys):
  with pytest.raises(SystemExit) as stop:
    reward_batch.run(flags + [f"--output_dir={tmp_path}"])
  assert stop.value.code == 2
  assert "give one of" in capsys.readouterr().err


def test_day_restriction_is_one_utc_day():
  assert read_bigquery.day_restriction("logging_time", "2026-12-31") == (
      "`logging_time` >= TIMESTAMP '2026-12-31 00:00:00+00' AND "
      "`logging_time` < TIMESTAMP '2027-01-01 00:00:00+00'")


def test_a_table_larger_than_grpcs_default_message_is_read(bq_emulator,
                                                            tmp_path):
  """Storage Read messages past gRPC's default limit (4 MiB) are read."""
  emulator, project = bq_emulator
  client = bigquery.bigquery_client(project, emulator.host)
  # The emulator sends its stored chunks (30,720 rows here) a message each:
  # long request ids make them about 5 MB.
  rows, padding = 40_000, "x" * 200
  load_table(client, project, "logs_large", "predictions",
             PREDICTION_COLUMNS[:4], [
                 {"request_id": f"{padding}-{i}", "timestamp": at(43_200),
                  "experiment_id": "homepage-ranker",
                  "arm": "control" if i % 2 == 0 else "candidate"}
                 for i in range(rows)])
  feedback = write_lines(tmp_path / "f.jsonl", [
      {"request_id": f"{padding}-2", "timestamp": at(43_300), "reward": 1.0}])
  reward_batch.run([
      f"--predictions_table={project}:logs_large.predictions",
      f"--feedback={feedback}", f"--partition_date={DAY}",
      "--runner=FnApiRunner", f"--bigquery_emulator_host={emulator.host}",
      f"--bigquery_emulator_grpc_host={emulator.grpc_host}",
      f"--output_dir={tmp_path / 'out'}"])
  arms = [json.loads(r) for r in outputs(tmp_path / "out", "arm_stats")]
  assert sorted((a["arm"], a["impressions"], a["reward_sum"])
                for a in arms) == [("candidate", rows // 2, 0.0),
                                   ("control", rows // 2, 1.0)]

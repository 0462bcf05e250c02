"""Table sinks: row dicts and column batches give the same JSON lines."""

import json
import math

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from transforms.io import json_lines
from transforms import options
from transforms.io import schemas
from transforms.io import sinks

MIXED = pa.table({
    "request_id": ["a", 'quote"d', None, "naïve\\n"],
    "score": [1.5, float("nan"), 1e-7, -2.0],
    "count": [1, None, 3, 4],
    "flag": [True, False, None, True],
    "scores": [[1.0], [], None, [0.5, 0.5]],
    "source": pa.array(["s", "s", "t", "s"]).dictionary_encode(),
    "note": pa.array(["x", None, "z", "w"], pa.large_string()),
})


def decoded(batch):
  return [json.loads(line)
          for line in json_lines.encode(batch).decode().split("\n")]


def expected(batch):
  return [{k: None if isinstance(v, float) and math.isnan(v) else v
           for k, v in row.items()} for row in batch.rows()]


@pytest.mark.parametrize("constants", [{}, {"model": "m", "empty": []}])
def test_encoded_batch_is_json_of_every_row(constants):
  batch = json_lines.RowBatch(constants, MIXED)
  assert decoded(batch) == expected(batch)


def strict_json(line):
  """json.loads that refuses NaN and Infinity, as BigQuery's loader does."""
  def refuse(token):
    raise ValueError(f"not JSON: {token}")
  return json.loads(line, parse_constant=refuse)


def test_non_finite_floats_in_lists_and_constants_encode_as_null():
  batch = json_lines.RowBatch(
      {"model": "m", "threshold": math.inf},
      pa.table({"scores": [[0.5, math.nan], [math.inf, 1.0]]}))
  rows = [strict_json(line)
          for line in json_lines.encode(batch).decode().splitlines()]
  assert rows == [{"model": "m", "threshold": None, "scores": [0.5, None]},
                  {"model": "m", "threshold": None, "scores": [None, 1.0]}]


def test_row_dicts_with_non_finite_floats_write_valid_json(tmp_path):
  # Rewards of 1e200 are finite; their squares are not.
  table = schemas.DATA_QUALITY
  config = sinks.OutputConfig(run_id="r1", partition_date="2026-11-21",
                              output_dir=str(tmp_path))
  with TestPipeline(runner="FnApiRunner") as p:
    _ = (p | beam.Create([{"record_type": "x", "metric": "m",
                           "count": math.inf}])
         | sinks.WriteTable(table, config))
  rows = [strict_json(line) for path in tmp_path.glob("data_quality*.jsonl")
          for line in path.read_text().splitlines()]
  assert [row["count"] for row in rows] == [None]


def test_empty_batch_encodes_to_nothing():
  assert json_lines.encode(json_lines.RowBatch({"a": 1}, MIXED.slice(0, 0))) \
      == b""


def test_batches_and_dicts_write_the_same_table(tmp_path):
  table = schemas.DATA_QUALITY
  config = sinks.OutputConfig(run_id="r1", partition_date="2026-11-21",
                              output_dir=str(tmp_path))
  batch = json_lines.RowBatch(
      {"record_type": "prediction"},
      pa.table({"metric": ["read", "parsed"], "count": [3, 2],
                "not_a_column": [0, 0]}))
  row = {"record_type": "feedback", "metric": "read", "count": 5}
  with TestPipeline(runner="FnApiRunner") as p:
    _ = (p | beam.Create([batch, row], reshuffle=False)
         | sinks.WriteTable(table, config))
  rows = [json.loads(line) for path in tmp_path.glob("data_quality*.jsonl")
          for line in path.read_text().splitlines()]
  assert len(rows) == 3
  assert all(set(r) == set(table.columns) for r in rows)
  assert sorted((r["record_type"], r["metric"], r["count"], r["run_id"])
                for r in rows) == [("feedback", "read", 5, "r1"),
                                   ("prediction", "parsed", 2, "r1"),
                                   ("prediction", "read", 3, "r1")]


def _write(elements, table, tmp_path, file_format):
  config = sinks.OutputConfig(run_id="r1", partition_date="2026-11-21",
                              output_dir=str(tmp_path / file_format),
                              file_format=file_format)
  with TestPipeline(runner="FnApiRunner") as p:
    _ = (p | beam.Create(elements, reshuffle=False)
         | sinks.WriteTable(table, config))


def test_parquet_files_hold_the_rows_of_the_json_lines(tmp_path):
  table = schemas.INFERENCE_TABLES["predictions"]
  scored_at = "2026-11-21T10:00:00.250000Z"
  batch = json_lines.RowBatch(
      {"model": "m", "scored_at": scored_at, "scores": ()},
      pa.table({"request_id": ["a", "b"],
                "prediction": pa.array([0.25, 0.75], pa.float32()),
                "predicted_class": [0, 1]}))
  softmax = json_lines.RowBatch(
      {"model": "s", "scored_at": scored_at},
      pa.table({"request_id": ["a"],
                "scores": pa.FixedSizeListArray.from_arrays(
                    pa.array([0.5, 0.5], pa.float32()), 2)}))
  row = {"request_id": "c", "model": "m", "prediction": 0.5, "scores": [],
         "agrees": True, "scored_at": scored_at}
  for file_format in sinks.FILE_FORMATS:
    _write([batch, softmax, row], table, tmp_path, file_format)

  json_rows = [json.loads(line)
               for path in (tmp_path / "jsonl").glob("predictions*.jsonl")
               for line in path.read_text().splitlines()]
  [parquet_file] = (tmp_path / "parquet").glob("predictions*.parquet")
  stored = pq.read_table(parquet_file)
  assert stored.schema.field("scored_at").type == pa.timestamp("us", "UTC")
  assert stored.schema.field("partition_date").type == pa.date32()
  parquet_rows = stored.to_pylist()
  for parquet_row in parquet_rows:
    assert parquet_row.pop("scored_at").isoformat() == (
        "2026-11-21T10:00:00.250000+00:00")
    assert parquet_row.pop("partition_date").isoformat() == "2026-11-21"
    parquet_row.pop("computed_at")
  for json_row in json_rows:
    for column in ("scored_at", "partition_date", "computed_at"):
      json_row.pop(column)

  def key(r):
    return r["request_id"], r["model"]

  assert sorted(parquet_rows, key=key) == sorted(json_rows, key=key)
  assert len(parquet_rows) == 4


def test_a_streaming_run_writes_each_row_to_the_day_it_is_computed():
  streaming = sinks.OutputConfig.from_options(
      PipelineOptions(["--streaming", "--output_dataset=p:d"]))
  assert streaming.partition_date is None
  fields = streaming.run_fields()
  assert fields["partition_date"] == fields["computed_at"][:10]
  # A batch run owns one day partition: the given one, or today.
  batch = sinks.OutputConfig.from_options(
      PipelineOptions(["--output_dataset=p:d"]))
  assert batch.run_fields()["partition_date"] == options.today()
  pinned = sinks.OutputConfig.from_options(PipelineOptions(
      ["--streaming", "--output_dataset=p:d", "--partition_date=2026-01-01"]))
  assert pinned.run_fields()["partition_date"] == "2026-01-01"


def test_a_streaming_run_refuses_load_jobs():
  with pytest.raises(ValueError, match="STREAMING_INSERTS"):
    sinks.OutputConfig.from_options(PipelineOptions(
        ["--streaming", "--output_dataset=p:d",
         "--bigquery_write_method=FILE_LOADS"]))

"""Table sinks: row dicts and column batches give the same JSON lines."""

import json
import math

import apache_beam as beam
from apache_beam.testing.test_pipeline import TestPipeline
import pyarrow as pa
import pytest

from transforms import json_lines
from transforms import schemas
from transforms import sinks

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

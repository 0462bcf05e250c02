"""Reading predictions from a BigQuery table vs from JSON lines, same rows.

Loads generated prediction rows (our contract) into a table of the local
BigQuery emulator and into a JSONL file, reads each with the pipelines'
readers on the FnApiRunner: `ReadLogs` on the file, `ReadBigQueryLogs` on the
table by both read methods (ARROW_STREAMS: our Storage Read client, Arrow
record batches; DIRECT_READ: Beam's ReadFromBigQuery, sent to the emulator
by emulators/beam_bigquery_reads.py, its rows batched back into Arrow).
Checks every reader parses every row, and prints rows per second once
running (the marginal rate between a tenth of the rows and all of them, the
fastest of --repeats runs), their ratios to the JSONL read, and the share of
rows that took the column-wise path. The emulator is a local process on the
same machine: its time to serve the rows is part of the table reads.

  PYTHONPATH=. python benchmarks/read_bigquery_benchmark.py [--rows 400000]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions
from google.cloud import bigquery as bq

from benchmarks import common
from emulators import beam_bigquery_reads
from emulators.bq_emulator import start_emulator
from transforms.io import bigquery
from transforms.logs import contract
from transforms.logs import quality
from transforms.logs import read_bigquery
from transforms.logs.read_bigquery import BigQueryLogs
from transforms.logs.read_bigquery import ReadBigQueryLogs
from transforms.logs.read_logs import ReadLogs

SCHEMA = [bq.SchemaField("request_id", "STRING"),
          bq.SchemaField("timestamp", "TIMESTAMP"),
          bq.SchemaField("experiment_id", "STRING"),
          bq.SchemaField("arm", "STRING"),
          bq.SchemaField("propensity", "FLOAT64")]
DAY_START = 1_796_083_200  # 2026-12-01T00:00:00Z


def rows(n: int) -> list[dict]:
  return [{"request_id": f"req-{i:09d}",
           "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                      time.gmtime(DAY_START + i % 86_400)),
           "experiment_id": "homepage-ranker",
           "arm": ("control", "candidate-a", "candidate-b")[i % 3],
           "propensity": 0.333333} for i in range(n)]


def load(client, project: str, name: str, records: list[dict],
         directory: str) -> tuple[str, str]:
  """The same records as a JSONL file and an emulator table."""
  path = os.path.join(directory, f"{name}.jsonl")
  with open(path, "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in records)
  table = bq.Table(f"{project}.bench.{name}", schema=SCHEMA)
  client.create_table(table, exists_ok=True)
  for start in range(0, len(records), 50_000):
    errors = client.insert_rows_json(table, records[start:start + 50_000])
    assert not errors, errors[:3]
  return path, f"{project}:bench.{name}"


def timed_read(read: beam.PTransform, project: str) -> tuple[float, dict]:
  """Seconds to read; the readers' counters (read, parsed, fast path)."""
  start = time.perf_counter()
  pipeline = beam.Pipeline(options=PipelineOptions(
      common.runner_args(1) + [f"--project={project}"]))
  _ = pipeline | read
  result = pipeline.run()
  result.wait_until_finish()
  seconds = time.perf_counter() - start
  counters = result.metrics().query(MetricsFilter())["counters"]
  return seconds, {c.key.metric.name: c.committed for c in counters}


def best_of(repeats: int, read_factory, project: str) -> tuple[float, dict]:
  runs = [timed_read(read_factory(), project) for _ in range(repeats)]
  return min(seconds for seconds, _ in runs), runs[-1][1]


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--rows", type=int, default=400_000)
  parser.add_argument("--repeats", type=int, default=2)
  args = parser.parse_args(argv)
  sizes = {"small": args.rows // 10, "big": args.rows}
  with start_emulator() as emulator, tempfile.TemporaryDirectory() as tmp:
    client = bigquery.bigquery_client(emulator.project, emulator.host)
    client.create_dataset(f"{emulator.project}.bench", exists_ok=True)
    inputs = {name: load(client, emulator.project, name, rows(n), tmp)
              for name, n in sizes.items()}
    results = {}
    for name, (path, table) in inputs.items():
      arrow_streams = BigQueryLogs(
          table=table, emulator_host=emulator.host,
          emulator_grpc_host=emulator.grpc_host,
          read_method=read_bigquery.ARROW_STREAMS)
      direct_read = BigQueryLogs(table=table, project=emulator.project,
                                 read_method=read_bigquery.DIRECT_READ)
      results[name] = {
          "jsonl": best_of(args.repeats,
                           lambda: ReadLogs(path, contract.PREDICTION),
                           emulator.project),
          "arrow_streams": best_of(args.repeats, lambda: ReadBigQueryLogs(
              arrow_streams, contract.PREDICTION), emulator.project)}
      with beam_bigquery_reads.reads_from(emulator):
        results[name]["direct_read"] = best_of(
            args.repeats, lambda: ReadBigQueryLogs(
                direct_read, contract.PREDICTION), emulator.project)
  print(f"rows: {sizes['small']} and {sizes['big']}, best of "
        f"{args.repeats} runs each, FnApiRunner in one process")
  rates = {}
  for reader in ("jsonl", "arrow_streams", "direct_read"):
    (small_s, _), (big_s, counts) = (results["small"][reader],
                                     results["big"][reader])
    assert counts[quality.PARSED] == sizes["big"], counts
    rates[reader] = common.marginal_rate(sizes["small"], small_s,
                                         sizes["big"], big_s)
    fast = counts.get(quality.FAST_PATH, 0) / sizes["big"]
    print(f"{reader:>13}: {big_s:6.2f} s for all rows, "
          f"{rates[reader]:10,.0f} rows/s once running, "
          f"column-wise path {fast:.0%}")
  for reader in ("arrow_streams", "direct_read"):
    print(f"{reader} / jsonl rows/s: {rates[reader] / rates['jsonl']:.2f}")


if __name__ == "__main__":
  main()

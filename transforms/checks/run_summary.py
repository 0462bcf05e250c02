"""The run_summary row in the pipeline, and read back after a local run.

`RunSummary` turns the run's data_quality (and arm_stats) rows into its one
run_summary row, which the sinks write like every other table; `finish` reads
that row back once the run is done, prints it, and exits non-zero when a gate
broke (the tables are written by then).
"""

from __future__ import annotations

import json
import sys
from typing import Callable

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
import pyarrow.parquet as pq

from transforms.checks import gates
from transforms.checks import summary
from transforms.io import schemas
from transforms.io import sinks

GATE_EXIT_STATUS = 3


def destinations(config: sinks.OutputConfig, tables) -> list[str]:
  """Where each table of the run goes, as a person would look for it."""
  where = []
  for table in tables:
    if config.output_dir:
      suffix = (".parquet" if config.file_format == sinks.PARQUET
                else table.file_suffix)
      where.append(f"{config.output_dir.rstrip('/')}/{table.name}-*{suffix}")
    if config.dataset:
      where.append(f"{config.project}:{config.dataset}.{table.name}")
  return where


def _summarize(_, quality_rows, arm_stats_rows, pipeline, config, tables,
               verdicts):
  found = verdicts(config, quality_rows, arm_stats_rows)
  return summary.summary_row(pipeline, config, tables, quality_rows, found,
                             arm_stats_rows)


class RunSummary(beam.PTransform):
  """{"data_quality": rows[, "arm_stats": rows]} -> the one run_summary row."""

  def __init__(self, pipeline: str, config: gates.GateConfig,
               tables: list[str], verdicts: Callable):
    super().__init__()
    self._pipeline = pipeline
    self._config = config
    self._tables = tables
    self._verdicts = verdicts

  def expand(self, outputs):
    quality_rows = outputs["data_quality"]
    arm_stats = outputs.get("arm_stats")
    if arm_stats is None:
      arm_stats = quality_rows.pipeline | "NoArmStats" >> beam.Create([])
    return (quality_rows.pipeline
            | "Once" >> beam.Create([None])
            | "Summarize" >> beam.Map(
                _summarize, beam.pvalue.AsList(quality_rows),
                beam.pvalue.AsList(arm_stats), self._pipeline, self._config,
                self._tables, self._verdicts))


def _file_rows(config: sinks.OutputConfig) -> list[dict]:
  table = schemas.RUN_SUMMARY
  parquet = config.file_format == sinks.PARQUET
  suffix = ".parquet" if parquet else table.file_suffix
  [match] = FileSystems.match(
      [f"{config.output_dir.rstrip('/')}/{table.name}*{suffix}"])
  rows = []
  for metadata in match.metadata_list:
    with FileSystems.open(metadata.path) as f:
      if parquet:
        rows.extend(pq.read_table(f).to_pylist())
      else:
        rows.extend(json.loads(line) for line in f if line.strip())
  return rows


def _bigquery_rows(config: sinks.OutputConfig) -> list[dict]:
  from transforms.io import bigquery  # Only BigQuery output needs the client.
  client = bigquery.bigquery_client(config.project, config.emulator_host)
  return bigquery.read_rows(client, config.project, config.dataset,
                            schemas.RUN_SUMMARY.name)


def read_summary(config: sinks.OutputConfig) -> dict | None:
  """The run_summary row of this run, from its files or its dataset."""
  rows = _file_rows(config) if config.output_dir else _bigquery_rows(config)
  ours = [row for row in rows if row["run_id"] == config.run_id]
  # A fixed --run_id may have older rows beside (files of an earlier run).
  return max(ours, key=lambda row: str(row["computed_at"]), default=None)


def finish(program: str, config: sinks.OutputConfig) -> dict:
  """After a run: print its summary; exit non-zero if it broke a gate."""
  row = read_summary(config)
  if row is None:
    print(f"{program}: error: run {config.run_id} wrote no run_summary row",
          file=sys.stderr)
    raise SystemExit(1)
  print(summary.format_summary(row))
  if row["status"] == gates.FAILED:
    print(f"{program}: error: {summary.failure_line(row)}", file=sys.stderr)
    raise SystemExit(GATE_EXIT_STATUS)
  return row

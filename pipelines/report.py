r"""A static HTML report of the arm_stats and router_state tables.

Per experiment (its latest run): posterior densities, mean rewards, lift vs
control, the sample-ratio check, the traffic allocation and the numbers.

  python -m pipelines.report --input out/ --out report.html
  python -m pipelines.report --input gs://bucket/out --out report.html
  python -m pipelines.report --input my-project:experiments --out report.html
  python -m pipelines.report --input local-project:demo \
      --bigquery_emulator_host http://127.0.0.1:9050 --out report.html
  python -m pipelines.report --models --input out-models/ --out models.html

`--input` is a directory (local or gs://) of the JSON-lines table files as the
pipelines write them, or a BigQuery dataset PROJECT:DATASET.
"""

from __future__ import annotations

import argparse
import json
import logging

from apache_beam.io.filesystems import FileSystems

from transforms import options as opts
from reporting import model_report
from reporting import report_html
from transforms.io import schemas

TABLES = (schemas.ARM_STATS, schemas.ROUTER_STATE)
MODEL_TABLES = (schemas.MODEL_QUALITY, schemas.SHADOW_COMPARISON,
                schemas.CANARY_VERDICTS)


def is_bigquery_dataset(source: str) -> bool:
  """PROJECT:DATASET, as opposed to a directory (which gs:// ones are too)."""
  return ":" in source and "/" not in source


def read_file_table(directory: str, table: schemas.Table) -> list[dict]:
  """Every row of the table's JSON-lines files in `directory` (local or gs://)."""
  pattern = f"{directory.rstrip('/')}/{table.name}*{table.file_suffix}"
  [match] = FileSystems.match([pattern])
  rows = []
  for metadata in sorted(match.metadata_list, key=lambda m: m.path):
    with FileSystems.open(metadata.path) as f:
      rows.extend(json.loads(line) for line in f if line.strip())
  return rows


def read_bigquery_table(dataset: str, table: str,
                        emulator_host: str | None = None) -> list[dict]:
  """Every row of PROJECT:DATASET.<table>."""
  from transforms.io import bigquery  # Only BigQuery input needs the client.
  project, _, dataset_id = dataset.partition(":")
  client = bigquery.bigquery_client(project, emulator_host)
  return bigquery.read_rows(client, project, dataset_id, table)


def load_tables(source: str, emulator_host: str | None = None,
                tables=TABLES) -> dict[str, list[dict]]:
  """table name -> rows, for `tables`, from a directory or a dataset."""
  if is_bigquery_dataset(source):
    return {table.name: read_bigquery_table(source, table.name, emulator_host)
            for table in tables}
  return {table.name: read_file_table(source, table) for table in tables}


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      description="Render the arm_stats and router_state tables as one "
      "static HTML page.")
  parser.add_argument(
      "--input", required=True,
      help="Directory (local or gs://) of the table files, or a "
      "BigQuery dataset PROJECT:DATASET.")
  parser.add_argument("--out", required=True,
                      help="Path (local or gs://) of the HTML file to write.")
  parser.add_argument(
      "--bigquery_emulator_host",
      help="Local BigQuery emulator endpoint (http://HOST:PORT).")
  parser.add_argument(
      "--expected_allocation",
      help="Planned traffic split arm=weight,... behind the expected shares "
      "of impressions (default: equal), as given to the pipeline.")
  parser.add_argument(
      "--models", action="store_true",
      help="Render the model evaluation tables (model_quality, "
      "shadow_comparison, canary_verdicts) instead.")
  return parser.parse_args(argv)


def run(argv=None) -> str:
  """Load the tables, render the report, write it; returns its path."""
  args = parse_args(argv)
  if args.models:
    page = model_page(args.input, args.bigquery_emulator_host)
  else:
    tables = load_tables(args.input, args.bigquery_emulator_host)
    if not tables["arm_stats"]:
      raise ValueError(f"no arm_stats rows in {args.input}")
    page = report_html.render_report(
        tables["arm_stats"], tables["router_state"], source=args.input,
        expected_allocation=opts.parse_allocation(args.expected_allocation))
  with FileSystems.create(args.out, mime_type="text/html") as f:
    f.write(page.encode("utf-8"))
  return args.out


def model_page(source: str, emulator_host: str | None) -> str:
  tables = load_tables(source, emulator_host, MODEL_TABLES)
  if not any(tables.values()):
    raise ValueError(f"no model evaluation rows in {source}")
  return model_report.render_model_report(
      tables[schemas.MODEL_QUALITY.name],
      tables[schemas.SHADOW_COMPARISON.name],
      tables[schemas.CANARY_VERDICTS.name], source=source)


def main(argv=None) -> None:
  logging.getLogger().setLevel(logging.INFO)
  logging.info("Wrote %s", run(argv))


if __name__ == "__main__":
  main()

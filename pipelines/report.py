r"""A static HTML report of the arm_stats, router_state and run_summary tables.

Per experiment (its latest run): its data quality and quality gates, posterior
densities, mean rewards, lift vs control, the sample-ratio check (with the
expected allocation the run used), the traffic allocation and the numbers.

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
from transforms.checks import preflight
from reporting import metric_report
from reporting import model_report
from reporting import report_html
from transforms.io import schemas

TABLES = (schemas.ARM_STATS, schemas.ROUTER_STATE, schemas.RUN_SUMMARY)
# Read when present (runs with --metrics).
OPTIONAL_TABLES = (schemas.METRIC_STATS, schemas.DECISIONS)
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
  from google.api_core import exceptions
  client = bigquery.bigquery_client(project, emulator_host)
  try:
    return bigquery.read_rows(client, project, dataset_id, table)
  except exceptions.NotFound:
    if table == schemas.RUN_SUMMARY.name:  # Written by older runs: optional.
      return []
    raise


def load_tables(source: str, emulator_host: str | None = None,
                tables=TABLES, optional=()) -> dict[str, list[dict]]:
  """table name -> rows, for `tables` and the `optional` ones (no rows when
  absent), from a directory or a dataset."""
  if is_bigquery_dataset(source):
    found = {table.name: read_bigquery_table(source, table.name,
                                             emulator_host)
             for table in tables}
    for table in optional:
      try:
        found[table.name] = read_bigquery_table(source, table.name,
                                                emulator_host)
      except Exception as error:  # pylint: disable=broad-except
        if type(error).__name__ != "NotFound":
          raise
        found[table.name] = []
    return found
  return {table.name: read_file_table(source, table)
          for table in (*tables, *optional)}


def metric_sections(tables: dict) -> dict[str, str]:
  """experiment id -> its metrics section (verdicts, metrics, segments)."""
  return {experiment: metric_report.metrics_html(
      experiment, tables["metric_stats"], tables["decisions"])
          for experiment in {r["experiment_id"]
                             for r in tables["metric_stats"]}}


def parse_args(argv=None) -> argparse.Namespace:
  parser = opts.OneLineParser(
      prog="pipelines.report", formatter_class=opts.HelpFormatter,
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
      "--policy_input",
      help="Where policy_evaluation wrote its policy_value table (a "
      "directory or PROJECT:DATASET): adds the off-policy evaluation "
      "section.")
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
    tables = load_tables(args.input, args.bigquery_emulator_host,
                         optional=OPTIONAL_TABLES)
    if not tables["arm_stats"]:
      raise ValueError(f"no arm_stats rows in {args.input}")
    policy_values = []
    if args.policy_input:
      policy_values = (read_bigquery_table(args.policy_input, "policy_value",
                                           args.bigquery_emulator_host)
                       if is_bigquery_dataset(args.policy_input) else
                       read_file_table(args.policy_input,
                                       schemas.POLICY_VALUE))
    page = report_html.render_report(
        tables["arm_stats"], tables["router_state"], source=args.input,
        run_summary_rows=tables["run_summary"],
        experiment_sections=metric_sections(tables),
        extra_css=metric_report.CSS, policy_value_rows=policy_values)
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
  with preflight.user_errors("pipelines.report"):
    logging.info("Wrote %s", run(argv))


if __name__ == "__main__":
  main()

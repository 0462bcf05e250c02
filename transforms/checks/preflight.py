"""Preflight: what can be checked in seconds before a pipeline starts.

Input patterns match files of a format the readers understand, models are
Keras archives whose input width fits the features, the BigQuery emulator
answers. A failed check raises `UserError`, which the command prints as one
line (no traceback) before exiting with status 2: nothing has been written.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import urllib.parse
import zipfile
import zlib

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
import pyarrow.parquet as pq

from transforms import options as opts
from transforms.logs import contract
from transforms.logs import formats
from transforms.logs import read_logs

USAGE_EXIT_STATUS = 2
SNIFF_BYTES = 64 << 10
SNIFF_FILES = 50  # The first files of a pattern are sniffed, not all.
CONNECT_TIMEOUT_S = 3.0
KNOWN_SUFFIXES = (".jsonl", ".json", ".ndjson", ".gz", ".parquet")
# Columns a Parquet log needs (a feedback row may be Seldon-shaped, with the
# request id inside `response`).
PARQUET_COLUMNS = {
    contract.PREDICTION: ("request_id", "timestamp", "experiment_id", "arm"),
    contract.FEEDBACK: ("timestamp", "reward"),
}


class UserError(Exception):
  """A mistake in the command line or its inputs, said in one line."""


@contextlib.contextmanager
def user_errors(program: str):
  """User errors before the pipeline starts: one line on stderr, exit 2.

  ValueError is what option checks in the pipelines' build functions raise.
  """
  try:
    yield
  except (UserError, ValueError) as error:
    print(f"{program}: error: {error}", file=sys.stderr)
    raise SystemExit(USAGE_EXIT_STATUS) from None


def _is_directory(pattern: str) -> bool:
  return pattern.endswith("/") or (
      "://" not in pattern and os.path.isdir(pattern))


def _log_suffix(directory: str) -> str:
  """The first known log suffix among a local directory's files."""
  names = os.listdir(directory) if os.path.isdir(directory) else ()
  suffixes = sorted(os.path.splitext(name)[1] for name in names
                    if name.lower().endswith(KNOWN_SUFFIXES))
  return suffixes[0] if suffixes else ".jsonl"


def matched_files(option: str, pattern: str) -> list:
  """The files of `pattern` (local or gs://); a directory or no match is an error."""
  if _is_directory(pattern):
    directory = pattern.rstrip("/") or "/"
    raise UserError(
        f"--{option} {pattern} is a directory: give a file pattern such as "
        f"'{directory}/*{_log_suffix(directory)}' (quoted), so that only "
        "those files are read")
  try:
    [match] = FileSystems.match([pattern])
  except Exception as error:  # pylint: disable=broad-except
    raise UserError(f"--{option} {pattern}: cannot list it: "
                    f"{str(error).splitlines()[0]}") from None
  files = sorted(match.metadata_list, key=lambda m: m.path)
  if not files:
    raise UserError(f"--{option} {pattern}: no such file (no file matches "
                    "the pattern)")
  return files


def _head(path: str) -> bytes:
  with FileSystems.open(path, compression_type=CompressionTypes.AUTO) as f:
    return f.read(SNIFF_BYTES)


def _text_problem(head: bytes) -> str | None:
  """Why a file's first bytes are not JSON lines, or None."""
  first = next((line.strip() for line in head.removeprefix(
      b"\xef\xbb\xbf").splitlines() if line.strip()), None)  # A BOM aside.
  if first is None:
    return None
  if first.startswith(b"{"):
    return None
  if first.startswith(b"["):
    return "is a JSON array: the logs are JSON lines, one object per line"
  if first.startswith(b"PK"):
    return "is a zip archive (a .keras model?), not JSON lines or Parquet"
  if b"," in first and b"{" not in first:
    return ("looks like CSV: the logs are JSON lines (one object per line) "
            "or Parquet")
  return "is not JSON lines: its first line is not a JSON object"


def _sniff(option: str, path: str, columns: tuple[str, ...]) -> bool:
  """Raises UserError unless `path` reads as the reader will read it; returns
  whether it holds anything."""
  if read_logs.is_parquet(path):
    try:
      with FileSystems.open(path) as f:
        parquet = pq.ParquetFile(f)
        names = parquet.schema_arrow.names
        rows = parquet.metadata.num_rows
    except Exception as error:  # pylint: disable=broad-except
      raise UserError(f"--{option}: {path} is not a readable Parquet file: "
                      f"{str(error).splitlines()[0]}") from None
    missing = [c for c in columns if c not in names]
    if missing and not formats.is_vertex_table(names):
      raise UserError(
          f"--{option}: {path} has no column {', '.join(missing)} (its "
          f"columns: {', '.join(names)})")
    return rows > 0
  try:
    head = _head(path)
  except (OSError, EOFError, zlib.error) as error:  # gzip's errors too.
    raise UserError(f"--{option}: cannot read {path}: {error}") from None
  if head.startswith(b"PAR1"):
    raise UserError(f"--{option}: {path} is Parquet: name it *.parquet so "
                    "it is read as Parquet")
  problem = _text_problem(head)
  if problem:
    raise UserError(f"--{option}: {path} {problem}")
  return bool(head.strip())


def check_inputs(option: str, pattern: str,
                 columns: tuple[str, ...] = ()) -> set[str]:
  """Checks the files of one input option; returns their paths. Parquet
  files must have `columns`."""
  files = matched_files(option, pattern)
  sniffed = files[:SNIFF_FILES]
  holding = [f.path for f in sniffed if _sniff(option, f.path, columns)]
  if not holding and len(sniffed) == len(files):
    names = ", ".join(f.path for f in files[:3])
    raise UserError(f"--{option} {pattern}: every file is empty ({names}"
                    f"{', ...' if len(files) > 3 else ''})")
  return {f.path for f in files}


def check_log_inputs(option: str, pattern: str, record_type: str) -> set[str]:
  return check_inputs(option, pattern, PARQUET_COLUMNS[record_type])


def check_disjoint(first: str, first_paths: set[str], second: str,
                   second_paths: set[str]) -> None:
  """Two inputs of different record types do not share a file."""
  shared = sorted(first_paths & second_paths)
  if shared:
    more = f" (and {len(shared) - 1} more)" if len(shared) > 1 else ""
    raise UserError(f"--{first} and --{second} both match {shared[0]}{more}: "
                    "give each record type its own files")


def check_output_dir(output_dir: str | None) -> None:
  """A local output directory is not an existing file."""
  if output_dir and "://" not in output_dir and os.path.isfile(output_dir):
    raise UserError(f"--output_dir {output_dir} is a file: give a directory")


def check_keras_file(name: str, path: str) -> None:
  """A model file exists and is a Keras archive."""
  try:
    with FileSystems.open(path) as f:
      valid = zipfile.is_zipfile(f)
      if valid:
        f.seek(0)
        valid = "config.json" in zipfile.ZipFile(f).namelist()
  except (OSError, FileNotFoundError) as error:
    raise UserError(f"--model {name}={path}: cannot open it: "
                    f"{str(error).splitlines()[0]}") from None
  if not valid:
    raise UserError(f"--model {name}={path}: not a Keras .keras file (a zip "
                    "archive with config.json)")


def check_widths(widths: dict[str, int], num_features: int | None) -> None:
  """The models take one input width, and --num_features says the same."""
  if len(set(widths.values())) > 1:
    raise UserError("the models take different input widths: " + ", ".join(
        f"{name} {width}" for name, width in sorted(widths.items())))
  mismatched = {name: width for name, width in widths.items()
                if num_features is not None and width != num_features}
  if mismatched:
    raise UserError(f"--num_features {num_features}, but " + ", ".join(
        f"model {name} takes {width} features"
        for name, width in sorted(mismatched.items())))


def check_bigquery_emulator(host: str | None, dataset: str | None,
                            reads_bigquery: bool = False) -> None:
  """The emulator endpoint answers within seconds, and is used: a dataset to
  write, or log tables to read."""
  if not host:
    return
  if not dataset and not reads_bigquery:
    raise UserError("--bigquery_emulator_host needs --output_dataset (the "
                    "dataset written into the emulator) or a log table or "
                    "query to read from it")
  url = urllib.parse.urlparse(host if "://" in host else f"http://{host}")
  if not url.hostname or not url.port:
    raise UserError(f"--bigquery_emulator_host {host}: expected "
                    "http://HOST:PORT")
  try:
    socket.create_connection((url.hostname, url.port),
                             timeout=CONNECT_TIMEOUT_S).close()
  except OSError as error:
    raise UserError(
        f"--bigquery_emulator_host {host}: nothing answers ({error}); start "
        "it with `python -m emulators.bq_emulator`") from None


def check_bigquery_tables(dataset: str, emulator_host: str | None,
                          tables) -> None:
  """BigQuery answers, and each output table that exists already has every
  column of its schema (else BigQuery would refuse the run's rows)."""
  import google.auth.exceptions
  from google.api_core import exceptions
  from google.cloud.bigquery import DEFAULT_RETRY
  from transforms.io import bigquery  # Only BigQuery output needs the client.
  project, _, dataset_id = dataset.replace(".", ":", 1).partition(":")
  try:
    client = bigquery.bigquery_client(project, emulator_host)
  except google.auth.exceptions.DefaultCredentialsError:
    raise UserError("--output_dataset: no Google Cloud credentials (run "
                    "`gcloud auth application-default login`), or give "
                    "--bigquery_emulator_host") from None
  retry = DEFAULT_RETRY.with_deadline(CONNECT_TIMEOUT_S * 3)
  for table in tables:
    name = f"{project}:{dataset_id}.{table.name}"
    try:
      existing = client.get_table(f"{project}.{dataset_id}.{table.name}",
                                  retry=retry, timeout=CONNECT_TIMEOUT_S * 3)
    except exceptions.NotFound:
      continue  # The pipeline creates it.
    except exceptions.GoogleAPICallError as error:
      raise UserError(f"BigQuery refuses table {name}: "
                      f"{error.message}") from None
    have = {field.name for field in existing.schema}
    missing = [column for column in table.columns if column not in have]
    if missing:
      raise UserError(
          f"BigQuery table {name} has no column {', '.join(missing)} (an "
          "older schema): drop the table so the pipeline creates it, or "
          "write another --output_dataset")


def check_outputs(pipeline_options, tables) -> None:
  """The output directory and the BigQuery dataset (or emulator) can take
  the run's tables."""
  output = pipeline_options.view_as(opts.OutputPipelineOptions)
  sources = pipeline_options.view_as(opts.LogSourceOptions)
  reads_bigquery = any(getattr(sources, f"{log}_{kind}", None)
                       for log in ("predictions", "feedback")
                       for kind in ("table", "query"))
  check_bigquery_emulator(output.bigquery_emulator_host, output.output_dataset,
                          reads_bigquery)
  if output.output_dataset:
    check_bigquery_tables(output.output_dataset, output.bigquery_emulator_host,
                          tables)
  check_output_dir(pipeline_options.view_as(opts.OutputFileOptions).output_dir)

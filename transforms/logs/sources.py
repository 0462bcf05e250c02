"""Where a pipeline's logs are: files, a BigQuery table or a query, chosen by
options. Any pipeline that reads predictions or feedback adds
`opts.LogSourceOptions` and reads through `ReadLogSource`:

  sources = log_sources(pipeline_options, day, predictions=inputs.predictions,
                        feedback=inputs.feedback)
  feedback = pbegin | "ReadFeedback" >> ReadLogSource(sources["feedback"],
                                                      contract.FEEDBACK)
"""

from __future__ import annotations

import dataclasses

import apache_beam as beam
from apache_beam.options.pipeline_options import GoogleCloudOptions
import pyarrow as pa

from transforms import options as opts
from transforms.logs import contract
from transforms.logs import read_bigquery
from transforms.logs.read_bigquery import BigQueryLogs
from transforms.logs.read_bigquery import ReadBigQueryLogs
from transforms.logs.read_logs import ReadLogs

ESTIMATED_REQUESTS = "estimated_requests"


@dataclasses.dataclass(frozen=True)
class LogSource:
  """One record type's logs: a file pattern or BigQuery, and their format."""
  files: str | None = None
  bigquery: BigQueryLogs | None = None
  log_format: str = contract.AUTO


def log_sources(pipeline_options, day: str | None, **file_patterns
                ) -> dict[str, LogSource | None]:
  """{"predictions": LogSource or None, "feedback": ...} from the options:
  `file_patterns` (e.g. predictions=inputs.predictions) or the
  --{name}_table / --{name}_query options; at most one of the three each."""
  given = pipeline_options.view_as(opts.LogSourceOptions)
  project = pipeline_options.view_as(GoogleCloudOptions).project
  output = pipeline_options.view_as(opts.OutputPipelineOptions)
  sources = {}
  for name, files in file_patterns.items():
    table = getattr(given, f"{name}_table")
    query = getattr(given, f"{name}_query")
    chosen = [flag for flag, value in ((f"--{name}", files),
                                       (f"--{name}_table", table),
                                       (f"--{name}_query", query)) if value]
    if len(chosen) > 1:
      raise ValueError(f"give one of {', '.join(chosen)}")
    log_format = (given.log_format if name == "predictions"
                  else contract.AUTO)
    bigquery = None
    if table or query:
      emulator_host = output.bigquery_emulator_host
      emulator_grpc_host = given.bigquery_emulator_grpc_host
      bigquery = BigQueryLogs(
          table=table, query=query, day=day, project=project,
          emulator_host=emulator_host, emulator_grpc_host=emulator_grpc_host,
          read_method=given.bigquery_read_method or (
              read_bigquery.ARROW_STREAMS
              if emulator_host or emulator_grpc_host
              else read_bigquery.DIRECT_READ))
    sources[name] = (LogSource(files, bigquery, log_format)
                     if chosen else None)
  return sources


class ReadLogSource(beam.PTransform):
  """Read one record type's logs from wherever they are, as `ReadLogs` does
  (same Arrow tables with the asked-for `extras`, dead letters and counts)."""

  def __init__(self, source: LogSource, record_type: str, extras=()):
    super().__init__()
    self._source = source
    self._record_type = record_type
    self._extras = tuple(extras)

  def expand(self, pbegin):
    if self._source.bigquery is not None:
      return pbegin | "ReadBigQuery" >> ReadBigQueryLogs(
          self._source.bigquery, self._record_type, self._extras,
          self._source.log_format)
    return pbegin | "ReadFiles" >> ReadLogs(
        self._source.files, self._record_type, self._extras,
        self._source.log_format)


def _experiment_counts(table: pa.Table):
  grouped = table.group_by("experiment_id").aggregate([("ts", "count")])
  for experiment, count in zip(grouped["experiment_id"].to_pylist(),
                               grouped["ts_count"].to_pylist()):
    yield experiment, count


class EstimatedRequests(beam.PTransform):
  """Parsed prediction tables -> data_quality pairs of the requests each
  experiment served, estimated from the logged ones and the logging
  sampling rate: ((prediction, "estimated_requests:EXPERIMENT"), n)."""

  def __init__(self, rates: dict[str | None, float]):
    super().__init__()
    self._rates = rates

  def expand(self, tables):
    rates = self._rates

    def estimate(experiment, logged):
      rate = rates.get(experiment, rates.get(None, 1.0))
      return ((contract.PREDICTION, f"{ESTIMATED_REQUESTS}:{experiment}"),
              round(logged / rate))

    return (tables
            | "CountPerExperiment" >> beam.FlatMap(_experiment_counts)
            | "Sum" >> beam.CombinePerKey(sum)
            | "Scale" >> beam.MapTuple(estimate))

"""Beam: joined requests -> sharded GZIP TFRecord files of tf.train.Examples.

  requests ─ArmTotals─(side input)─┐
  requests ───────────────────────PrepareExamples─┬─ (split, shard) ─GroupShards─WriteShards─ files
                                                  ├─ summary ─ export_summary
                                                  └─ dead letters, counts
  WriteSchema ─ schema.json;  files ─DeleteStaleShards─ (a former run's other shards)

Files: PREFIX/train-SSSSS-of-NNNNN.tfrecord.gz and PREFIX/eval-...; every
shard is written, sorted by pseudonymized request id, so a re-run of the same
input writes byte-identical files (beam.io.WriteToTFRecord assigns records
to shards round-robin from a random shard per bundle: its files differ from
run to run). The record framing is that of Beam's TFRecord sink.
"""

from __future__ import annotations

import io
import json
import os

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.tfrecordio import _TFRecordUtil
from apache_beam.metrics import Metrics
import pyarrow as pa
import pyarrow.compute as pc

from transforms.export import examples
from transforms.export import training_set
from transforms.logs import batches
from transforms.logs import contract
from transforms.logs import quality

SCHEMA_FILE = "schema.json"
SUFFIX = ".tfrecord.gz"
SUMMARY = "summary"


def shard_path(prefix: str, split: str, shard: int, num_shards: int) -> str:
  return (f"{prefix.rstrip('/')}/{split}-{shard:05d}-of-{num_shards:05d}"
          f"{SUFFIX}")


def read_key(key_env: str | None, key_secret: str | None = None) -> bytes:
  """The pseudonymization key: a Secret Manager secret version
  (projects/P/secrets/S/versions/V), else an environment variable. One
  clear line when neither gives a key."""
  if key_secret:
    from google.cloud import secretmanager  # Dataflow workers only.
    client = secretmanager.SecretManagerServiceClient()
    return client.access_secret_version(name=key_secret).payload.data
  if not key_env:
    raise ValueError("give --pseudonymize_key_env or "
                     "--pseudonymize_key_secret: the export pseudonymizes ids")
  value = os.environ.get(key_env)
  if not value:
    raise ValueError(f"the pseudonymization key variable ${key_env} is not "
                     "set")
  return value.encode("utf-8")


class _Prepare(beam.DoFn):
  """A block of joined requests -> ((split, shard), table of key, example) and
  tagged dead letters, counts and summary partials."""

  def __init__(self, config: training_set.ExportConfig, key_env: str | None,
               key_secret: str | None):
    self._config = config
    self._key_env = key_env
    self._key_secret = key_secret
    self._key = None

  def setup(self):
    # Read in the worker: the key never enters the pickled pipeline graph.
    self._key = read_key(self._key_env, self._key_secret)

  def process(self, table, totals):
    prepared = training_set.prepare(table, self._config, self._key, totals)
    yield from prepared.shards.items()
    for raw, rejected in prepared.dead_letters:
      yield pvalue.TaggedOutput(quality.DEAD_LETTER, quality.dead_letter(
          training_set.RECORD_TYPE, None, raw, rejected))
    for metric, count in prepared.counts.items():
      Metrics.counter(training_set.RECORD_TYPE, metric).inc(count)
      yield pvalue.TaggedOutput(quality.COUNTS,
                                ((training_set.RECORD_TYPE, metric), count))
    for key, partial in prepared.summary.items():
      yield pvalue.TaggedOutput(SUMMARY, (key, partial))


class _WriteShard(beam.DoFn):
  """(split, shard), [tables of key, example] -> one GZIP TFRecord file,
  sorted by key."""

  def __init__(self, prefix: str, num_shards: int):
    self._prefix = prefix
    self._num_shards = num_shards

  def process(self, element):
    (split, shard), parts = element
    tables = [part for part in parts if part is not None]
    path = shard_path(self._prefix, split, shard, self._num_shards)
    framed = io.BytesIO()
    if tables:
      table = pa.concat_tables(tables)
      ordered = table["example"].take(pc.sort_indices(table["key"]))
      for example in ordered.to_pylist():
        _TFRecordUtil.write_record(framed, example)
    temporary = f"{path}.tmp"
    with FileSystems.create(temporary, "application/octet-stream",
                            CompressionTypes.GZIP) as handle:
      handle.write(framed.getvalue())  # One compression call per shard.
    if FileSystems.exists(path):
      FileSystems.delete([path])
    FileSystems.rename([temporary], [path])
    yield path


def delete_stale_shards(written: list, prefix: str) -> list:
  """Deletes shard files under `prefix` that this run did not write (a
  former run with another shard count): a reader of the day sees this run
  only. Returns the deleted paths."""
  names = {path.rsplit("/", 1)[-1] for path in written}
  pattern = f"{prefix.rstrip('/')}/*-*-of-*{SUFFIX}"
  stale = [m.path for m in FileSystems.match([pattern])[0].metadata_list
           if m.path.rsplit("/", 1)[-1] not in names]
  if stale:
    FileSystems.delete(stale)
  return stale


def _sum_partials(partials):
  rows = reward_sum = positive = 0
  for r, s, p in partials:
    rows, reward_sum, positive = rows + r, reward_sum + s, positive + p
  return rows, reward_sum, positive


def _summary_row(key, totals) -> dict:
  (split, experiment_id, arm), (rows, reward_sum, positive) = key, totals
  return {"split": split, "experiment_id": experiment_id, "arm": arm,
          "rows": rows, "reward_sum": float(reward_sum),
          "reward_mean": float(reward_sum) / rows if rows else None,
          "positive_rows": positive}


def write_schema(prefix: str, config: training_set.ExportConfig) -> str:
  path = f"{prefix.rstrip('/')}/{SCHEMA_FILE}"
  with FileSystems.create(path, "application/json") as handle:
    handle.write(examples.schema_json(config.features()).encode("utf-8"))
  return path


class ExportTrainingSet(beam.PTransform):
  """Joined request tables -> TFRecord files under `prefix`, schema.json, and
  {"files", "export_summary" rows, quality.DEAD_LETTER, quality.COUNTS}."""

  def __init__(self, config: training_set.ExportConfig, key_env: str | None,
               prefix: str, key_secret: str | None = None):
    super().__init__()
    self._config = config
    self._key_env = key_env
    self._key_secret = key_secret
    self._prefix = prefix

  def expand(self, requests):
    config = self._config
    totals = (requests
              | "ArmTotals" >> beam.FlatMap(
                  lambda table: training_set.arm_totals(table).items())
              | "SumArmTotals" >> beam.CombinePerKey(sum))
    prepared = requests | "PrepareExamples" >> beam.ParDo(
        _Prepare(config, self._key_env, self._key_secret),
        totals=pvalue.AsDict(totals)).with_outputs(
            quality.DEAD_LETTER, quality.COUNTS, SUMMARY, main="shards")
    every_shard = requests.pipeline | "EveryShard" >> beam.Create([
        ((split, shard), None) for split in training_set.SPLITS
        for shard in range(config.num_shards)])
    files = ((prepared.shards, every_shard)
             | "FlattenShards" >> beam.Flatten()
             | "GroupShards" >> beam.GroupByKey()
             | "WriteShards" >> beam.ParDo(_WriteShard(self._prefix,
                                                       config.num_shards)))
    _ = (files
         | "AllWritten" >> beam.combiners.ToList()
         | "DeleteStaleShards" >> beam.Map(delete_stale_shards, self._prefix))
    schema_file = (requests.pipeline
                   | "SchemaPath" >> beam.Create([self._prefix])
                   | "WriteSchema" >> beam.Map(write_schema, config))
    summary = (prepared[SUMMARY]
               | "SumSummary" >> beam.CombinePerKey(_sum_partials)
               | "SummaryRows" >> beam.MapTuple(_summary_row))
    return {"files": (files, schema_file) | "AllFiles" >> beam.Flatten(),
            "export_summary": summary,
            quality.DEAD_LETTER: prepared[quality.DEAD_LETTER],
            quality.COUNTS: prepared[quality.COUNTS]}



# What Cloud DLP looks for in a row unless a template says otherwise.
DLP_INFO_TYPES = ("EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD_NUMBER",
                  "KOREA_RRN", "IBAN_CODE", "PERSON_NAME", "STREET_ADDRESS",
                  "URL")
DLP_BROKE_RECORD = "dlp_broke_record"
_REQUEST_SCHEMA = batches.schema(contract.PREDICTION,
                                 training_set.EXTRAS).append(
                                     pa.field("reward", pa.float64()))


def _rows_as_json(table: pa.Table):
  for row in table.to_pylist():
    yield json.dumps(row, separators=(",", ":"))


def _to_table(rows: list) -> pa.Table:
  return pa.Table.from_pylist(rows, schema=_REQUEST_SCHEMA)


class _RowsBack(beam.DoFn):

  def process(self, masked: str):
    try:
      yield json.loads(masked)
    except ValueError:
      yield pvalue.TaggedOutput(quality.DEAD_LETTER, quality.dead_letter(
          training_set.RECORD_TYPE, None, masked,
          contract.Rejected(DLP_BROKE_RECORD)))
      yield pvalue.TaggedOutput(quality.COUNTS, (
          (training_set.RECORD_TYPE,
           quality.dead_letter_metric(DLP_BROKE_RECORD)), 1))


class MaskWithCloudDlp(beam.PTransform):
  """Joined request tables -> the same, with what Cloud DLP detects in each
  row (its raw record: the free text) replaced by its info type. Calls the
  DLP API: Dataflow (or credentials) only. {"requests", dead letters, counts}."""

  def __init__(self, project: str, template: str | None = None):
    super().__init__()
    self._project = project
    self._template = template

  def expand(self, requests):
    from apache_beam.ml.gcp import cloud_dlp  # google-cloud-dlp, [gcp] extra.
    replace = {"info_type_transformations": {"transformations": [{
        "primitive_transformation": {"replace_with_info_type_config": {}}}]}}
    rows = (requests
            | "RowsAsJson" >> beam.FlatMap(_rows_as_json)
            | "MaskDetectedDetails" >> cloud_dlp.MaskDetectedDetails(
                project=self._project,
                deidentification_template_name=self._template,
                deidentification_config=None if self._template else replace,
                inspection_config={"info_types": [
                    {"name": name} for name in DLP_INFO_TYPES]})
            | "RowsBack" >> beam.ParDo(_RowsBack()).with_outputs(
                quality.DEAD_LETTER, quality.COUNTS, main="rows"))
    tables = (rows.rows
              | "Batch" >> beam.BatchElements(min_batch_size=1024,
                                              max_batch_size=8192)
              | "ToTables" >> beam.Map(_to_table))
    return {"requests": tables, quality.DEAD_LETTER: rows[quality.DEAD_LETTER],
            quality.COUNTS: rows[quality.COUNTS]}

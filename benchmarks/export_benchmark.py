"""Training export (ExportTrainingSet) vs a single-process TFRecordWriter loop.

Both start from the same joined requests (Arrow tables of 16 features, user
and request ids, propensity, reward: what JoinRequests yields) and write the
same Examples: pseudonymized ids (HMAC-SHA256), the split by user, GZIP
TFRecord files. The pipeline (FnApiRunner, one process) encodes a whole
block at once (transforms/export/examples.py) and writes sorted shards; the
baseline builds one `tf.train.Example` per row in a Python loop and writes it
with `tf.io.TFRecordWriter`. Pipeline throughput is the marginal rate between
a small input and the full one (fixed costs cancel out); the ratio to the
loop's rate is what the issue asks to be at least 0.5.

  PYTHONPATH=. python benchmarks/export_benchmark.py [--rows 1000000]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks import common
from simulation import click_data
from transforms.export import export
from transforms.export import training_set
from transforms.logs import contract

BLOCK_ROWS = 65_536
KEY_ENV = "EXPORT_BENCHMARK_KEY"


def joined_blocks(rows: int, seed: int = 0) -> list[pa.Table]:
  """Joined requests as JoinRequests yields them, in blocks."""
  features, clicks = click_data.generate_clicks(rows, seed)
  rng = np.random.default_rng(seed)
  arms = pa.array(np.array(["control", "candidate"])[rng.integers(0, 2, rows)])
  table = pa.table({
      "request_id": pa.array(click_data.request_ids(rows)),
      "ts": pa.array(1_763_683_200.0 + np.arange(rows) * 0.05),
      "experiment_id": pa.array(["ranker"] * rows).dictionary_encode(),
      "arm": arms.dictionary_encode(),
      "shadow": pa.array(np.zeros(rows, bool)),
      "raw": pa.array(["{}"] * rows),
      "features": pa.FixedSizeListArray.from_arrays(
          pa.array(features.reshape(-1).astype(np.float64)),
          click_data.NUM_FEATURES).cast(pa.list_(pa.float64())),
      "user_id": pa.array([f"user-{u}" for u in rng.integers(0, 50_000,
                                                             rows)]),
      "propensity": pa.array(np.full(rows, 0.5)),
      "reward": pa.array(np.where(clicks, 1.0, np.nan), mask=~clicks.astype(
          bool)),
  })
  return [table.slice(i, BLOCK_ROWS) for i in range(0, rows, BLOCK_ROWS)]


def write_parquet(blocks, directory: str) -> list[str]:
  """The blocks as Parquet files: the pipeline reads them as tables (a
  beam.Create of large tables would time the pickling of its input)."""
  os.makedirs(directory)
  paths = [f"{directory}/block-{i:04d}.parquet" for i in range(len(blocks))]
  for path, block in zip(paths, blocks):
    pq.write_table(block, path, compression="none")
  return paths


def run_pipeline(paths, out: str) -> float:
  config = training_set.ExportConfig(feature_count=click_data.NUM_FEATURES)
  started = time.perf_counter()
  with beam.Pipeline(options=PipelineOptions(common.runner_args(1))) as p:
    _ = (p
         | beam.Create(paths)
         | beam.Reshuffle()
         | beam.Map(pq.read_table)
         | export.ExportTrainingSet(config, KEY_ENV, out))
  return time.perf_counter() - started


def run_loop(blocks, out: str) -> float:
  """One tf.train.Example per row, written by tf.io.TFRecordWriter."""
  import tensorflow as tf
  key = os.environ[KEY_ENV].encode()
  config = training_set.ExportConfig(feature_count=click_data.NUM_FEATURES)
  started = time.perf_counter()
  options = tf.io.TFRecordOptions(compression_type="GZIP")
  writers = {split: tf.io.TFRecordWriter(f"{out}/{split}.tfrecord.gz", options)
             for split in training_set.SPLITS}
  for block in blocks:
    columns = {name: block[name].cast(pa.string()) if name in (
        "experiment_id", "arm") else block[name] for name in block.column_names}
    rows = zip(*(columns[name].to_pylist() for name in (
        "request_id", "ts", "experiment_id", "arm", "features", "user_id",
        "propensity", "reward")))
    for request_id, ts, experiment_id, arm, vector, user, propensity, \
        reward in rows:
      request = contract.pseudonymize(request_id, key)
      user = contract.pseudonymize(user, key)
      split = training_set.EVAL if training_set.hash_fraction([user])[0] < (
          config.eval_fraction) else training_set.TRAIN
      feature = {
          "features": tf.train.Feature(float_list=tf.train.FloatList(
              value=vector)),
          "arm": tf.train.Feature(bytes_list=tf.train.BytesList(
              value=[arm.encode()])),
          "experiment_id": tf.train.Feature(bytes_list=tf.train.BytesList(
              value=[experiment_id.encode()])),
          "propensity": tf.train.Feature(float_list=tf.train.FloatList(
              value=[propensity])),
          "reward": tf.train.Feature(float_list=tf.train.FloatList(
              value=[reward or 0.0])),
          "timestamp_us": tf.train.Feature(int64_list=tf.train.Int64List(
              value=[round(ts * 1e6)])),
          "request_id": tf.train.Feature(bytes_list=tf.train.BytesList(
              value=[request.encode()])),
          "user_id": tf.train.Feature(bytes_list=tf.train.BytesList(
              value=[user.encode()])),
      }
      writers[split].write(tf.train.Example(features=tf.train.Features(
          feature=feature)).SerializeToString())
  for writer in writers.values():
    writer.close()
  return time.perf_counter() - started


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--rows", type=int, default=1_000_000)
  parser.add_argument("--small_rows", type=int, default=100_000)
  args = parser.parse_args(argv)
  os.environ.setdefault(KEY_ENV, "benchmark-key")
  small, big = joined_blocks(args.small_rows), joined_blocks(args.rows)
  with tempfile.TemporaryDirectory() as tmp:
    small_files = write_parquet(small, f"{tmp}/small_in")
    big_files = write_parquet(big, f"{tmp}/big_in")
    run_pipeline(small_files, f"{tmp}/warm")  # Imports and first-run costs.
    small_s = run_pipeline(small_files, f"{tmp}/small")
    big_s = run_pipeline(big_files, f"{tmp}/big")
    loop_s = run_loop(big, tmp)
  pipeline_rate = common.marginal_rate(args.small_rows, small_s, args.rows,
                                       big_s)
  loop_rate = args.rows / loop_s
  print(f"pipeline: {args.small_rows:,} rows {small_s:.1f} s, {args.rows:,} "
        f"rows {big_s:.1f} s: marginal {pipeline_rate:,.0f} rows/s")
  print(f"TFRecordWriter loop: {args.rows:,} rows {loop_s:.1f} s: "
        f"{loop_rate:,.0f} rows/s")
  print(f"ratio pipeline / loop: {pipeline_rate / loop_rate:.2f}; peak memory "
        f"{common.peak_memory_mib():,.0f} MiB")


if __name__ == "__main__":
  main()

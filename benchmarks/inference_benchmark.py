"""Batch inference pipeline vs the raw Keras loop over the same rows.

Writes click features (16 floats per row) as Parquet, saves a dense Keras
model (two hidden layers of 64), then runs the pipeline on the FnApiRunner
(read, infer, write predictions as JSONL through the table sink) and, in this
process, the raw loop `model(batch)` over the same rows in batches of the same
size: the baseline of the ratio. `model.predict_on_batch(batch)`, the call the
pipeline makes, is timed too. Pipeline throughput is the marginal rate between
a small input and the full one, after a warm-up run, each the fastest of
--repeats runs: process start-up, the TensorFlow import, model loading,
tracing and pipeline construction are left out.

Then the pipeline runs once more per size under cProfile: the time in each
stage's function, marginal between the sizes, is the stage's cost per row, and
the rest is Beam's (where most of cProfile's own overhead lands too). Prints
the rates, the ratio, the cost of each stage and peak memory.

  PYTHONPATH=. python benchmarks/inference_benchmark.py [--rows 1000000]

--sink parquet writes the predictions as Parquet (--output_format parquet);
--sink none replaces the writer by a count of the prediction rows, to show
what writing costs. --workers 2 runs two FnApiRunner worker processes, one per
core (as Dataflow runs one SDK process per vCPU); their start-up takes
seconds, so give them a larger input (--rows 4000000) to keep its noise out of
the marginal rate.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import tempfile
import time

import apache_beam as beam
from apache_beam.io import filebasedsink
from apache_beam.io import parquetio
from apache_beam.options.pipeline_options import PipelineOptions
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks import common
from pipelines import batch_inference
from pipelines import train_demo_models
from transforms.io import arrow_tables
from simulation import click_data
from transforms.scoring import inference
from transforms.io import json_lines
from transforms.scoring import predictions

SMALL_ROWS = 20_000
# The function of each stage in the pipeline, for the profile.
STAGES = {
    "read/validate": inference._ReadFeatureFile.process,
    "inference": inference.KerasModelsHandler.run_inference,
    "batch building": predictions.score_batches,
    "JSON encoding": json_lines.encode,
    "file writing": filebasedsink.FileBasedSink.write_record,
    "Arrow conversion": arrow_tables.to_arrow,
    "Parquet writing": parquetio._ParquetSink.write_record,
}


def write_features(directory: str, rows: int, files: int,
                   seed: int) -> np.ndarray:
  """`files` Parquet files of request_id + list column `features`."""
  features_matrix, _ = click_data.generate_clicks(rows, seed)
  request_ids = click_data.request_ids(rows)
  os.makedirs(directory, exist_ok=True)
  bounds = np.linspace(0, rows, files + 1).astype(int)
  for shard, (start, end) in enumerate(zip(bounds[:-1], bounds[1:])):
    pq.write_table(pa.table({
        "request_id": request_ids[start:end],
        "features": pa.FixedSizeListArray.from_arrays(
            pa.array(features_matrix[start:end].reshape(-1)),
            click_data.NUM_FEATURES),
    }), f"{directory}/features-{shard:05d}.parquet")
  return features_matrix


def run_pipeline(features_dir: str, model_path: str, out: str, sink: str,
                 batch_size: int, runner_args: list[str]) -> None:
  argv = [f"--features={features_dir}/features-*.parquet",
          f"--model=mlp={model_path}", f"--batch_size={batch_size}",
          f"--output_dir={out}", "--run_id=bench", *runner_args]
  if sink != "none":
    batch_inference.run([*argv, f"--output_format={sink}"])
    return
  options = PipelineOptions(argv)
  with beam.Pipeline(options=options) as pipeline:
    outputs = pipeline | "BatchInference" >> batch_inference.batch_inference(
        options)
    _ = (outputs["predictions"]
         | "Rows" >> beam.Map(lambda batch: batch.table.num_rows)
         | "Count" >> beam.CombineGlobally(sum))


def best_seconds(run, repeats: int) -> float:
  seconds = []
  for _ in range(repeats):
    start = time.perf_counter()
    run()
    seconds.append(time.perf_counter() - start)
  return min(seconds)


def raw_rate(call, features_matrix: np.ndarray, batch_size: int,
             repeats: int) -> float:
  """Rows per second of `call(batch)` over the rows, batch after batch."""
  call(features_matrix[:batch_size])  # Traces the model's function once.

  def loop():
    for begin in range(0, len(features_matrix), batch_size):
      np.asarray(call(features_matrix[begin:begin + batch_size]))

  return len(features_matrix) / best_seconds(loop, repeats)


def profiled(run) -> tuple[float, dict[str, float]]:
  """Seconds of `run()` under cProfile, and of each stage's function in it."""
  profile = cProfile.Profile()
  start = time.perf_counter()
  profile.runcall(run)
  seconds = time.perf_counter() - start
  stats = pstats.Stats(profile).stats
  stage_seconds = {}
  for stage, function in STAGES.items():
    code = function.__code__
    # (calls, primitive calls, own time, cumulative time, callers); a
    # generator's cumulative time leaves out what its consumer does.
    entry = stats.get((code.co_filename, code.co_firstlineno, code.co_name))
    stage_seconds[stage] = entry[3] if entry else 0.0
  return seconds, stage_seconds


def stage_costs(rows: dict[str, int], profiles: dict) -> dict[str, float]:
  """Microseconds per row of each stage, marginal between the profiled runs;
  the rest of the run's time is Beam's (and cProfile's)."""
  added_rows = rows["full"] - rows["small"]
  (small_s, small_stages), (full_s, full_stages) = (profiles["small"],
                                                    profiles["full"])
  costs = {stage: (full_stages[stage] - small_stages[stage]) / added_rows * 1e6
           for stage in STAGES}
  costs["Beam and the rest"] = ((full_s - small_s) / added_rows * 1e6 -
                                sum(costs.values()))
  return costs


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--rows", type=int, default=1_000_000)
  parser.add_argument("--batch_size", type=int, default=8192)
  parser.add_argument("--files", type=int, default=4,
                      help="Parquet files the rows are spread over")
  parser.add_argument("--sink", choices=("jsonl", "parquet", "none"),
                      default="jsonl")
  parser.add_argument("--repeats", type=int, default=3,
                      help="runs per size and loop; the fastest counts")
  parser.add_argument("--workers", type=int, default=1,
                      help="FnApiRunner workers (multi_processing when > 1)")
  parser.add_argument("--tmp_dir", help="where features and predictions are "
                      "written, e.g. /dev/shm to leave the disk out (default: "
                      "the system's temporary directory)")
  args = parser.parse_args(argv)
  runner_args = common.runner_args(args.workers)

  with tempfile.TemporaryDirectory(dir=args.tmp_dir) as tmp:
    sizes = {"small": min(SMALL_ROWS, args.rows // 10), "full": args.rows}
    write_features(f"{tmp}/small", sizes["small"], args.files, seed=1)
    features_matrix = write_features(f"{tmp}/full", sizes["full"], args.files,
                                     seed=1)
    import keras  # After the Parquet writes: TensorFlow takes seconds.
    model_path = f"{tmp}/mlp.keras"
    train_demo_models.build_models(seed=0)["mlp"].save(model_path)

    def run(name):
      return lambda: run_pipeline(f"{tmp}/{name}", model_path,
                                  f"{tmp}/out-{name}", args.sink,
                                  args.batch_size, runner_args)

    run("small")()  # Warm-up: the first run in a process pays once-only costs.
    seconds = {name: best_seconds(run(name), args.repeats) for name in sizes}
    pipeline_rate = common.marginal_rate(sizes["small"], seconds["small"],
                                         sizes["full"], seconds["full"])
    if args.workers == 1:  # The profile sees this process only.
      costs = stage_costs(sizes, {name: profiled(run(name)) for name in sizes})

    model = keras.models.load_model(model_path, compile=False)
    model_call = raw_rate(model, features_matrix, args.batch_size,
                          args.repeats)
    predict_on_batch = raw_rate(model.predict_on_batch, features_matrix,
                                args.batch_size, args.repeats)

  print(f"rows {args.rows:,}, batch size {args.batch_size:,}, sink "
        f"{args.sink}, FnApiRunner workers {args.workers}, fastest of "
        f"{args.repeats}")
  for name, rows in sizes.items():
    print(f"pipeline {name}: {rows:,} rows in {seconds[name]:.2f}s")
  print(f"pipeline throughput: {pipeline_rate:,.0f} rows/s (marginal, "
        "start-up excluded)")
  print(f"raw model(batch) loop: {model_call:,.0f} rows/s; pipeline/raw "
        f"{pipeline_rate / model_call:.3f} (target >= 0.5)")
  print("raw model.predict_on_batch(batch) loop (the pipeline's call): "
        f"{predict_on_batch:,.0f} rows/s; pipeline/that "
        f"{pipeline_rate / predict_on_batch:.3f}")
  if args.workers == 1:
    print("µs per row, profiled: " + ", ".join(
        f"{stage} {cost:.3f}" for stage, cost in costs.items()))
  print(f"peak memory: {common.peak_memory_mib():,.0f} MiB")


if __name__ == "__main__":
  main()

"""Batch inference pipeline vs a raw Keras loop over the same rows.

Writes click features (16 floats per row) as Parquet, saves a dense Keras
model (two hidden layers of 64), then runs the pipeline on the FnApiRunner
(read, infer, write predictions as JSONL through the table sink) and, in this
process, the raw loop `model.predict_on_batch(batch)` (the call the pipeline
makes) and `model(batch)` over the same rows in batches of the same size.
Pipeline throughput is the marginal rate between a small input and the full
one, so process start-up, the TensorFlow import, model loading and pipeline
construction are left out. Prints both rates, their ratio and peak memory.

  python benchmarks/inference_benchmark.py [--rows 1000000] [--sink none]

--sink none replaces the JSONL writer by a count of the prediction rows, to
show what writing costs.
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines import batch_inference
from pipelines import train_demo_models
from transforms import click_data

SMALL_ROWS = 20_000


def write_features(directory: str, rows: int, files: int,
                   seed: int) -> np.ndarray:
  """`files` Parquet files of request_id + list column `features`."""
  features, _ = click_data.generate_clicks(rows, seed)
  request_ids = click_data.request_ids(rows)
  os.makedirs(directory, exist_ok=True)
  bounds = np.linspace(0, rows, files + 1).astype(int)
  for shard, (start, end) in enumerate(zip(bounds[:-1], bounds[1:])):
    pq.write_table(pa.table({
        "request_id": request_ids[start:end],
        "features": pa.FixedSizeListArray.from_arrays(
            pa.array(features[start:end].reshape(-1)),
            click_data.NUM_FEATURES),
    }), f"{directory}/features-{shard:05d}.parquet")
  return features


def run_pipeline(features_dir: str, model_path: str, out: str, sink: str,
                 batch_size: int, runner_args: list[str]) -> float:
  argv = [f"--features={features_dir}/features-*.parquet",
          f"--model=mlp={model_path}", f"--batch_size={batch_size}",
          f"--output_dir={out}", "--run_id=bench", *runner_args]
  start = time.perf_counter()
  if sink == "jsonl":
    batch_inference.run(argv)
  else:
    options = PipelineOptions(argv)
    with beam.Pipeline(options=options) as pipeline:
      outputs = pipeline | "BatchInference" >> batch_inference.batch_inference(
          options)
      _ = outputs["predictions"] | "Count" >> beam.combiners.Count.Globally()
  return time.perf_counter() - start


def raw_rate(model, call, features: np.ndarray, batch_size: int) -> float:
  call(model, features[:batch_size])  # Builds the model's function once.
  start = time.perf_counter()
  for begin in range(0, len(features), batch_size):
    np.asarray(call(model, features[begin:begin + batch_size]))
  return len(features) / (time.perf_counter() - start)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--rows", type=int, default=1_000_000)
  parser.add_argument("--batch_size", type=int, default=8192)
  parser.add_argument("--files", type=int, default=4,
                      help="Parquet files the rows are spread over")
  parser.add_argument("--sink", choices=("jsonl", "none"), default="jsonl")
  parser.add_argument("--workers", type=int, default=1,
                      help="FnApiRunner workers (multi_processing when > 1)")
  args = parser.parse_args(argv)
  runner_args = ["--runner=FnApiRunner"]
  if args.workers > 1:
    runner_args += [f"--direct_num_workers={args.workers}",
                    "--direct_running_mode=multi_processing"]

  with tempfile.TemporaryDirectory() as tmp:
    import keras  # After the Parquet writes: TensorFlow takes seconds.
    model_path = f"{tmp}/mlp.keras"
    train_demo_models.build_models(seed=0)["mlp"].save(model_path)
    sizes = {"small": min(SMALL_ROWS, args.rows // 10), "full": args.rows}
    seconds = {}
    for name, rows in sizes.items():
      features = write_features(f"{tmp}/{name}", rows, args.files, seed=1)
      seconds[name] = run_pipeline(f"{tmp}/{name}", model_path,
                                   f"{tmp}/out-{name}", args.sink,
                                   args.batch_size, runner_args)
      print(f"pipeline {name}: {rows:,} rows in {seconds[name]:.2f}s")

    model = keras.models.load_model(model_path, compile=False)
    raw = {
        "model.predict_on_batch(batch)": raw_rate(
            model, lambda m, b: m.predict_on_batch(b), features,
            args.batch_size),
        "model(batch)": raw_rate(model, lambda m, b: m(b), features,
                                 args.batch_size),
    }
    pipeline_rate = (sizes["full"] - sizes["small"]) / max(
        seconds["full"] - seconds["small"], 1e-9)
    peak_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss +
                resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024
    print(f"rows {args.rows:,}, batch size {args.batch_size:,}, sink "
          f"{args.sink}, FnApiRunner workers {args.workers}")
    print(f"pipeline throughput: {pipeline_rate:,.0f} rows/s "
          "(marginal, start-up excluded)")
    for call, rate in raw.items():
      print(f"raw {call}: {rate:,.0f} rows/s; pipeline/raw "
            f"{pipeline_rate / rate:.3f}")
    print(f"peak memory: {peak_mib:,.0f} MiB")


if __name__ == "__main__":
  main()

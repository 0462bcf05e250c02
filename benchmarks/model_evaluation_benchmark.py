"""Model evaluation vs the reward pipeline on the same logs.

Generates prediction logs that carry the model's `prediction` (and latency,
status, a canary arm) and feedback that carries the `truth` besides the
reward, runs the batch reward pipeline and the model evaluation pipeline on
the same files on the FnApiRunner, and prints each one's throughput once
running (the marginal rate between a tenth of the input and all of it, each
the fastest of --repeats runs) and the ratio of their times: what reading
the extra fields and computing model quality, the shadow comparison and the
canary verdict cost over the reward aggregation.

  PYTHONPATH=. python benchmarks/model_evaluation_benchmark.py [--requests 300000]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from benchmarks import common
from pipelines import model_evaluation
from pipelines import reward_batch
from simulation import model_logs
from simulation import simulate


def generate(directory: str, requests: int, with_shadow: bool) -> int:
  scenario = model_logs.ModelScenario(
      requests=requests, shadow_arm="shadow-v3" if with_shadow else None,
      seed=11)
  predictions, feedback = model_logs.log_lines(scenario)
  os.makedirs(directory, exist_ok=True)
  simulate.write_jsonl(f"{directory}/predictions.jsonl", predictions)
  simulate.write_jsonl(f"{directory}/feedback.jsonl", feedback)
  return len(predictions) + len(feedback)


def run(module, directory: str, out: str, runner_args) -> float:
  start = time.perf_counter()
  module.run([f"--predictions={directory}/predictions.jsonl",
              f"--feedback={directory}/feedback.jsonl",
              f"--output_dir={out}", "--run_id=bench", *runner_args])
  return time.perf_counter() - start


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--requests", type=int, default=300_000)
  parser.add_argument("--repeats", type=int, default=1,
                      help="runs per pipeline and size; the fastest counts")
  parser.add_argument("--workers", type=int, default=1,
                      help="FnApiRunner workers (multi_processing when > 1)")
  parser.add_argument("--shadow", action="store_true",
                      help="a shadow model answers every request too")
  args = parser.parse_args(argv)
  runner_args = common.runner_args(args.workers)
  pipelines = {"reward_batch": reward_batch,
               "model_evaluation": model_evaluation}

  with tempfile.TemporaryDirectory() as tmp:
    sizes = {"tenth": args.requests // 10, "full": args.requests}
    events, seconds = {}, {}
    for name, requests in sizes.items():
      events[name] = generate(f"{tmp}/{name}", requests, args.shadow)
    for name in sizes:
      for label, module in pipelines.items():
        seconds[(label, name)] = min(
            run(module, f"{tmp}/{name}", f"{tmp}/out-{label}-{name}-{i}",
                runner_args) for i in range(args.repeats))
        print(f"{name}: {events[name]:,} records  {label} "
              f"{seconds[(label, name)]:.2f}s")
    rates = {label: common.marginal_rate(
        events["tenth"], seconds[(label, "tenth")], events["full"],
        seconds[(label, "full")]) for label in pipelines}
    for label, rate in rates.items():
      print(f"{label} throughput: {rate:,.0f} records/s")
    added = rates["reward_batch"] / rates["model_evaluation"] - 1
    print(f"model evaluation adds {added:+.0%} to the reward pipeline's time "
          f"(target <= +30%)")
    print(f"peak memory: {common.peak_memory_mib():,.0f} MiB")


if __name__ == "__main__":
  main()

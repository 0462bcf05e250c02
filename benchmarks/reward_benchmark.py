"""Batch reward pipeline vs one DuckDB query on the same JSONL files.

Generates predictions and feedback logs, runs the Beam pipeline on the
FnApiRunner and the same join + per-arm aggregation as one DuckDB SQL query,
checks both give the same per-arm totals, and prints throughput once running
(the marginal rate between a tenth of the input and all of it, so process
start-up, imports and pipeline construction are left out; each the fastest
of --repeats runs), the ratio, and peak memory.

  PYTHONPATH=. python benchmarks/reward_benchmark.py [--requests 1000000]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import tempfile
import time

import duckdb

from benchmarks import common
from pipelines import reward_batch
from simulation import simulate

WINDOW_S = 86_400.0

DUCKDB_QUERY = """
WITH p AS (
  SELECT request_id, epoch(CAST("timestamp" AS TIMESTAMPTZ)) AS ts,
         experiment_id, arm, coalesce(shadow, false) AS shadow
  FROM read_json('{predictions}', format='newline_delimited',
       columns={{request_id: 'VARCHAR', "timestamp": 'VARCHAR',
                experiment_id: 'VARCHAR', arm: 'VARCHAR', shadow: 'BOOLEAN'}})
  QUALIFY row_number() OVER (PARTITION BY request_id ORDER BY ts) = 1),
f AS (
  SELECT request_id, epoch(CAST("timestamp" AS TIMESTAMPTZ)) AS ts, reward
  FROM read_json('{feedback}', format='newline_delimited',
       columns={{request_id: 'VARCHAR', "timestamp": 'VARCHAR',
                reward: 'DOUBLE'}})),
r AS (
  SELECT p.request_id, max(f.reward) AS reward
  FROM p JOIN f USING (request_id)
  WHERE NOT p.shadow AND f.ts - p.ts <= {window}
  GROUP BY p.request_id)
SELECT experiment_id, arm, count(*) AS impressions,
       count(r.reward) AS feedback_count,
       coalesce(sum(r.reward), 0) AS reward_sum
FROM p LEFT JOIN r USING (request_id)
WHERE NOT p.shadow
GROUP BY experiment_id, arm ORDER BY experiment_id, arm
"""


def generate(directory: str, requests: int) -> int:
  scenario = simulate.Scenario(requests=requests, feedback_rate=0.5,
                               duplicate_feedback=0.01, late_feedback=0.01,
                               seed=11)
  predictions, feedback, _ = simulate.generate(scenario)
  os.makedirs(directory, exist_ok=True)
  simulate.write_jsonl(f"{directory}/predictions.jsonl", predictions)
  simulate.write_jsonl(f"{directory}/feedback.jsonl", feedback)
  return len(predictions) + len(feedback)


def run_duckdb(directory: str):
  start = time.perf_counter()
  rows = duckdb.sql(DUCKDB_QUERY.format(
      predictions=f"{directory}/predictions.jsonl",
      feedback=f"{directory}/feedback.jsonl", window=WINDOW_S)).fetchall()
  return time.perf_counter() - start, {
      (e, a): (n, fb, s) for e, a, n, fb, s in rows}


def run_beam(directory: str, out: str, runner_args):
  start = time.perf_counter()
  reward_batch.run([
      f"--predictions={directory}/predictions.jsonl",
      f"--feedback={directory}/feedback.jsonl", f"--output_dir={out}",
      f"--attribution_window_s={WINDOW_S}", "--run_id=bench",
      *runner_args])
  elapsed = time.perf_counter() - start
  totals = {}
  for path in glob.glob(f"{out}/arm_stats*.jsonl"):
    with open(path, encoding="utf-8") as f:
      for line in f:
        row = json.loads(line)
        totals[(row["experiment_id"], row["arm"])] = (
            row["impressions"], row["feedback_count"], row["reward_sum"])
  return elapsed, totals


def same_totals(beam_totals, duck_totals) -> bool:
  """Equal impressions and feedback counts, reward sums up to float rounding."""
  return beam_totals.keys() == duck_totals.keys() and all(
      beam_totals[k][:2] == duck_totals[k][:2] and
      abs(beam_totals[k][2] - duck_totals[k][2]) < 1e-6 for k in duck_totals)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--requests", type=int, default=1_000_000)
  parser.add_argument("--repeats", type=int, default=3,
                      help="runs per engine and size; the fastest counts")
  parser.add_argument("--workers", type=int, default=1,
                      help="FnApiRunner workers (multi_processing when > 1)")
  args = parser.parse_args(argv)
  runner_args = common.runner_args(args.workers)

  with tempfile.TemporaryDirectory() as tmp:
    sizes = {"tenth": args.requests // 10, "full": args.requests}
    events, duck, beam_s = {}, {}, {}
    for name, requests in sizes.items():
      start = time.perf_counter()
      events[name] = generate(f"{tmp}/{name}", requests)
      print(f"generated {name}: {events[name]:,} records in "
            f"{time.perf_counter() - start:.1f}s")
    for name in sizes:
      duck_runs = [run_duckdb(f"{tmp}/{name}") for _ in range(args.repeats)]
      beam_runs = [run_beam(f"{tmp}/{name}", f"{tmp}/out-{name}-{i}",
                            runner_args) for i in range(args.repeats)]
      duck[name], duck_totals = min(duck_runs, key=lambda run: run[0])
      beam_s[name], beam_totals = min(beam_runs, key=lambda run: run[0])
      print(f"{name}: {events[name]:,} records  duckdb {duck[name]:.2f}s  "
            f"beam {beam_s[name]:.2f}s  per-arm totals "
            f"{'match' if same_totals(beam_totals, duck_totals) else 'DIFFER'}")
    duck_rate = common.marginal_rate(events["tenth"], duck["tenth"],
                                     events["full"], duck["full"])
    beam_rate = common.marginal_rate(events["tenth"], beam_s["tenth"],
                                     events["full"], beam_s["full"])
    peak_mib = common.peak_memory_mib()
    print(f"duckdb throughput: {duck_rate:,.0f} records/s")
    print(f"beam throughput:   {beam_rate:,.0f} records/s")
    print(f"ratio beam/duckdb: {beam_rate / duck_rate:.3f} (target >= 0.2)")
    print(f"peak memory:       {peak_mib:,.0f} MiB")


if __name__ == "__main__":
  main()

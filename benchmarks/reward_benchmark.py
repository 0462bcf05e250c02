"""Batch reward pipeline vs one DuckDB query on the same JSONL files.

Generates predictions and feedback logs, runs the Beam pipeline on the
FnApiRunner and the same join + per-arm aggregation as one DuckDB SQL query,
checks both give the same per-arm totals, and prints throughput once running
(the marginal rate between a tenth of the input and all of it, so process
start-up, imports and pipeline construction are left out; each the fastest
of --repeats runs), the ratio, and peak memory.

`--variant metrics`: logs with latency, countries and purchase feedback,
`reward_batch --metrics` with three metrics (clicks: a proportion, revenue: a
mean of the purchase signal, latency p95 from the KLL sketch) and one
dimension of 5 countries, against the matching DuckDB query (quantile_cont
for p95). `--variant both` runs the two.

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


METRICS = json.dumps({"metrics": [
    {"name": "clicks", "source": "feedback:reward", "type": "proportion",
     "role": "goal"},
    {"name": "revenue", "source": "feedback:purchase", "type": "mean",
     "reduce": "sum"},
    {"name": "latency_ms", "source": "prediction:latency_ms",
     "type": "quantile", "q": 0.95, "role": "guardrail",
     "direction": "decrease", "margin": 0.05}]})

METRICS_QUERY = """
WITH p AS (
  SELECT request_id, epoch(CAST("timestamp" AS TIMESTAMPTZ)) AS ts,
         experiment_id, arm, coalesce(shadow, false) AS shadow, latency_ms,
         attributes.country AS country
  FROM read_json('{predictions}', format='newline_delimited',
       columns={{request_id: 'VARCHAR', "timestamp": 'VARCHAR',
                experiment_id: 'VARCHAR', arm: 'VARCHAR', shadow: 'BOOLEAN',
                latency_ms: 'DOUBLE',
                attributes: 'STRUCT(country VARCHAR)'}})
  QUALIFY row_number() OVER (PARTITION BY request_id ORDER BY ts) = 1),
f AS (
  SELECT request_id, epoch(CAST("timestamp" AS TIMESTAMPTZ)) AS ts, reward,
         coalesce(metric, 'reward') AS metric
  FROM read_json('{feedback}', format='newline_delimited',
       columns={{request_id: 'VARCHAR', "timestamp": 'VARCHAR',
                reward: 'DOUBLE', metric: 'VARCHAR'}})),
r AS (
  SELECT p.request_id, max(f.reward) FILTER (WHERE metric = 'reward') AS click,
         sum(f.reward) FILTER (WHERE metric = 'purchase') AS revenue
  FROM p JOIN f USING (request_id)
  WHERE NOT p.shadow AND f.ts - p.ts <= {window}
  GROUP BY p.request_id),
j AS (
  SELECT experiment_id, arm, country, latency_ms,
         coalesce(r.click, 0) AS click, coalesce(r.revenue, 0) AS revenue
  FROM p LEFT JOIN r USING (request_id) WHERE NOT p.shadow),
s AS (
  SELECT *, 'all' AS dimension, 'all' AS segment FROM j
  UNION ALL SELECT *, 'country' AS dimension, country AS segment FROM j)
SELECT experiment_id, dimension, segment, arm, count(*) AS n,
       sum(click), var_samp(click), sum(revenue), var_samp(revenue),
       quantile_cont(latency_ms, 0.95)
FROM s GROUP BY ALL ORDER BY ALL
"""


def generate(directory: str, requests: int, serving_metrics=False) -> int:
  scenario = simulate.Scenario(requests=requests, feedback_rate=0.5,
                               duplicate_feedback=0.01, late_feedback=0.01,
                               seed=11, serving_metrics=serving_metrics,
                               countries=5)
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


def run_duckdb_metrics(directory: str):
  start = time.perf_counter()
  rows = duckdb.sql(METRICS_QUERY.format(
      predictions=f"{directory}/predictions.jsonl",
      feedback=f"{directory}/feedback.jsonl", window=WINDOW_S)).fetchall()
  totals = {}
  for e, d, s, a, n, clicks, _, revenue, _, p95 in rows:
    totals[(e, d, s, a, "clicks")] = (n, clicks)
    totals[(e, d, s, a, "revenue")] = (n, revenue)
    totals[(e, d, s, a, "latency_ms")] = (n, p95)
  return time.perf_counter() - start, totals


def run_beam_metrics(directory: str, out: str, runner_args):
  start = time.perf_counter()
  reward_batch.run([
      f"--predictions={directory}/predictions.jsonl",
      f"--feedback={directory}/feedback.jsonl", f"--output_dir={out}",
      f"--attribution_window_s={WINDOW_S}", "--run_id=bench",
      f"--metrics={METRICS}", "--dimensions=country", *runner_args])
  elapsed = time.perf_counter() - start
  totals = {}
  for path in glob.glob(f"{out}/metric_stats*.jsonl"):
    with open(path, encoding="utf-8") as f:
      for line in f:
        row = json.loads(line)
        value = (row["estimate"] if row["metric"] == "latency_ms"
                 else row["value_sum"])
        totals[(row["experiment_id"], row["dimension"], row["segment"],
                row["arm"], row["metric"])] = (row["n"], value)
  return elapsed, totals


def same_metric_totals(beam_totals, duck_totals) -> bool:
  """Equal counts, sums up to float rounding, p95 within 2 % from 1,000
  values on (the sketch answers an order statistic within its rank error,
  quantile_cont interpolates; below that neighbouring values differ more)."""
  def close(key):
    (n, beam), (_, duck) = beam_totals[key], duck_totals[key]
    if key[-1] == "latency_ms":
      return n < 1000 or abs(beam - duck) <= 0.02 * abs(duck)
    return abs(beam - duck) <= 1e-6 * max(1.0, abs(duck))
  return beam_totals.keys() == duck_totals.keys() and all(
      beam_totals[k][0] == duck_totals[k][0] and close(k) for k in duck_totals)


VARIANTS = {  # serving metrics in the logs, DuckDB run, Beam run
    "plain": (False, run_duckdb, run_beam),
    "metrics": (True, run_duckdb_metrics, run_beam_metrics),
}
TARGETS = {"plain": 0.2, "metrics": 0.15}


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
  parser.add_argument("--variant", default="plain",
                      choices=("plain", "metrics", "both"))
  args = parser.parse_args(argv)
  runner_args = common.runner_args(args.workers)
  variants = ("plain", "metrics") if args.variant == "both" else (
      args.variant,)
  with tempfile.TemporaryDirectory() as tmp:
    for variant in variants:
      benchmark(variant, f"{tmp}/{variant}", args.requests, args.repeats,
                runner_args)
  print(f"peak memory:       {common.peak_memory_mib():,.0f} MiB")


def benchmark(variant: str, tmp: str, requests: int, repeats: int,
              runner_args) -> None:
  serving_metrics, duck_fn, beam_fn = VARIANTS[variant]
  compare = same_metric_totals if serving_metrics else same_totals
  sizes = {"tenth": requests // 10, "full": requests}
  events, duck, beam_s = {}, {}, {}
  for name, size in sizes.items():
    start = time.perf_counter()
    events[name] = generate(f"{tmp}/{name}", size, serving_metrics)
    print(f"{variant}: generated {name}: {events[name]:,} records in "
          f"{time.perf_counter() - start:.1f}s")
  for name in sizes:
    duck_runs = [duck_fn(f"{tmp}/{name}") for _ in range(repeats)]
    beam_runs = [beam_fn(f"{tmp}/{name}", f"{tmp}/out-{name}-{i}",
                         runner_args) for i in range(repeats)]
    duck[name], duck_totals = min(duck_runs, key=lambda run: run[0])
    beam_s[name], beam_totals = min(beam_runs, key=lambda run: run[0])
    print(f"{variant} {name}: {events[name]:,} records  duckdb "
          f"{duck[name]:.2f}s  beam {beam_s[name]:.2f}s  totals "
          f"{'match' if compare(beam_totals, duck_totals) else 'DIFFER'}")
  duck_rate = common.marginal_rate(events["tenth"], duck["tenth"],
                                   events["full"], duck["full"])
  beam_rate = common.marginal_rate(events["tenth"], beam_s["tenth"],
                                   events["full"], beam_s["full"])
  print(f"{variant} duckdb throughput: {duck_rate:,.0f} records/s")
  print(f"{variant} beam throughput:   {beam_rate:,.0f} records/s")
  print(f"{variant} ratio beam/duckdb: {beam_rate / duck_rate:.3f} "
        f"(target >= {TARGETS[variant]})")


if __name__ == "__main__":
  main()

"""The main job on an embedded default: `python3 dev.py demo`.

Simulates a router serving three arms with different true reward rates (plus
a shadow model, duplicates, late, orphan, Seldon-format and malformed records),
starts the local BigQuery emulator, runs the batch reward pipeline on the
DirectRunner into it, prints the per-arm table read back from BigQuery, and
renders the HTML report from it. Then trains two small Keras click models and
shadow-scores the candidate against the baseline with the batch inference
pipeline, into the emulator too. Then decides a second experiment on several
metrics (clicks, purchases, latency p95, errors) per country and platform:
one candidate wins on clicks but breaks the latency guardrail (rollback);
judges a shadow model and a canary from logs with ground truth (the model
evaluation pipeline) and prints both verdicts; and last estimates a
contextual routing policy off-policy beside the simulator's true values.
"""

from __future__ import annotations

import logging
import os

from pipelines import batch_inference
from pipelines import model_evaluation
from pipelines import policy_demo
from pipelines import report
from pipelines import reward_batch
from pipelines import train_demo_models
from transforms import options as opts
from transforms.io import bigquery
from emulators import bq_emulator
from transforms.logs import quality
from simulation import model_logs
from simulation import simulate

DATASET = "online_eval"
# Each batch pipeline replaces its day partition of the tables it writes, so
# the two pipelines write to datasets of their own.
INFERENCE_DATASET = "online_eval_inference"
MODELS_DATASET = "online_eval_models"
SCENARIO = simulate.Scenario(
    experiment_id="homepage-ranker", policy="thompson",
    arms=(simulate.Arm("control", 0.10), simulate.Arm("candidate-a", 0.12),
          simulate.Arm("candidate-b", 0.08)),
    requests=30_000, feedback_rate=0.6, duplicate_feedback=0.03,
    late_feedback=0.01, duplicate_predictions=0.005, shadow_arm="shadow-v2",
    orphan_feedback=0.005, malformed=0.002, seldon_feedback=0.1)

# Metrics and verdicts (docs/metrics.md): a dataset of its own, as above.
METRICS_DATASET = "online_eval_metrics"
METRICS_SCENARIO = simulate.Scenario(
    experiment_id="checkout-ranker", policy="ab",
    arms=(simulate.Arm("control", 0.10, latency_ms=80.0),
          simulate.Arm("fast-model", 0.105, latency_ms=78.0),
          simulate.Arm("big-model", 0.125, latency_ms=100.0)),
    requests=30_000, feedback_rate=1.0, serving_metrics=True, seed=11)
METRICS_FILE = """\
metrics:
  - {name: clicks, source: "feedback:reward", type: proportion, role: goal}
  - {name: revenue, source: "feedback:purchase", type: mean, reduce: sum,
     cap: 500}
  - {name: latency_ms, source: "prediction:latency_ms", type: quantile,
     q: 0.95, role: guardrail, direction: decrease, margin: 0.05}
  - {name: errors, source: "prediction:error", type: proportion,
     role: guardrail, direction: decrease, margin: 0.5}
"""

ARM_COLUMNS = (("arm", "{}"), ("impressions", "{:,}"), ("samples", "{:,}"),
               ("reward_mean", "{:.4f}"), ("ci_low", "{:.4f}"),
               ("ci_high", "{:.4f}"), ("prob_best", "{:.3f}"),
               ("lift", "{:+.1%}"), ("p_value", "{:.2g}"),
               ("seq_p_value", "{:.2g}"))


def write_sample_logs(directory: str, scenario: simulate.Scenario):
  os.makedirs(directory, exist_ok=True)
  predictions, feedback, truth = simulate.generate(scenario)
  simulate.write_jsonl(f"{directory}/predictions.jsonl", predictions)
  simulate.write_jsonl(f"{directory}/feedback.jsonl", feedback)
  return len(predictions), len(feedback), truth


def format_table(rows, columns) -> str:
  cells = [[name for name, _ in columns]]
  for row in rows:
    cells.append(["" if row.get(name) is None else fmt.format(row[name])
                  for name, fmt in columns])
  widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
  return "\n".join("  ".join(c.rjust(w) for c, w in zip(r, widths))
                   for r in cells)


def print_results(client, project: str, truth: dict) -> None:
  arm_stats = bigquery.read_rows(client, project, DATASET, "arm_stats")
  for experiment in sorted({r["experiment_id"] for r in arm_stats}):
    rows = sorted((r for r in arm_stats if r["experiment_id"] == experiment),
                  key=lambda r: r["arm"])
    first = rows[0]
    print(f"\n{experiment}: control {first['control_arm']}, "
          f"{first['reward_type']} rewards, SRM p={first['srm_p_value']:.3g}"
          f"{' ALERT' if first['srm_alert'] else ''}")
    print(format_table(rows, ARM_COLUMNS))
  print("\ntrue reward rates x feedback rate: " + ", ".join(
      f"{arm} {rate * SCENARIO.feedback_rate:.4f}"
      for arm, rate in sorted(truth.items())))
  for state in bigquery.read_rows(client, project, DATASET, "router_state"):
    shares = ", ".join(f"{a['arm']} {a['traffic_share']:.2f}"
                       for a in sorted(state["arms"], key=lambda a: a["arm"]))
    print(f"router_state {state['experiment_id']}: best {state['best_arm']}; "
          f"recommended split {shares}")
  counts = bigquery.read_rows(client, project, DATASET, "data_quality")
  dead = bigquery.read_rows(client, project, DATASET, "dead_letter")
  print("\ndata_quality: " + ", ".join(
      f"{q['record_type']}.{q['metric']}={q['count']}"
      for q in sorted(counts, key=lambda q: (q["record_type"], q["metric"]))))
  print(f"dead_letter: {len(dead)} rows in BigQuery")
  for record_type, (read, accounted) in quality.balance(counts).items():
    verdict = "balanced" if read == accounted else "UNBALANCED"
    print(f"{record_type}: {read:,} read = {accounted:,} counted, duplicate, "
          f"late, shadow or dead-lettered: {verdict}")


def main(argv=None) -> None:
  parser = opts.OneLineParser(prog="pipelines.demo",
                              description=__doc__.splitlines()[0],
                              formatter_class=opts.HelpFormatter)
  parser.add_argument("--workdir", default="local/demo",
                      help="where the sample logs and outputs go")
  parser.add_argument("--requests", type=int, default=SCENARIO.requests,
                      help="simulated served requests")
  args = parser.parse_args(argv)
  logging.basicConfig(level=logging.WARNING)

  scenario = simulate.Scenario(**{**SCENARIO.__dict__,
                                  "requests": args.requests})
  logs = f"{args.workdir}/logs"
  n_pred, n_fb, truth = write_sample_logs(logs, scenario)
  print(f"sample logs: {n_pred:,} predictions, {n_fb:,} feedback in {logs}/")

  with bq_emulator.start_emulator(
      log_path=f"{args.workdir}/bigquery-emulator.log") as emulator:
    print(f"BigQuery emulator: {emulator.host} (project {emulator.project})")
    reward_batch.run([
        f"--predictions={logs}/predictions.jsonl",
        f"--feedback={logs}/feedback.jsonl",
        f"--output_dataset={emulator.project}:{DATASET}",
        f"--bigquery_emulator_host={emulator.host}",
        f"--output_dir={args.workdir}/out", "--control_arm=control",
        "--runner=FnApiRunner"])
    client = bigquery.bigquery_client(emulator.project, emulator.host)
    print_results(client, emulator.project, truth)
    page = report.run([f"--input={emulator.project}:{DATASET}",
                       f"--bigquery_emulator_host={emulator.host}",
                       f"--out={args.workdir}/report.html"])
    run_inference(args.workdir, emulator)
    run_metrics(args.workdir, emulator)
    run_model_evaluation(args.workdir, emulator)
  policy_demo.run_policy_demo(f"{args.workdir}/policy")
  print(f"\nreport: {os.path.abspath(page)}")


def run_inference(workdir: str, emulator) -> None:
  """Train two click models, shadow-score the candidate against the baseline."""
  models = f"{workdir}/models"
  print("\ntraining two Keras click models (logreg, mlp) on generated data")
  train_demo_models.main([f"--out={models}", "--sample_rows=2000"])
  batch_inference.run([
      f"--features={models}/features.jsonl",
      f"--model=logreg={models}/logreg.keras",
      f"--model=mlp={models}/mlp.keras", "--mode=shadow", "--baseline=logreg",
      f"--output_dataset={emulator.project}:{INFERENCE_DATASET}",
      f"--bigquery_emulator_host={emulator.host}",
      f"--output_dir={workdir}/inference", "--runner=FnApiRunner"])
  client = bigquery.bigquery_client(emulator.project, emulator.host)
  for row in bigquery.read_rows(client, emulator.project, INFERENCE_DATASET,
                                "shadow_summary"):
    print(f"shadow {row['model']} vs {row['baseline']}: {row['rows']:,} rows, "
          f"agreement {row['agreement_rate']:.3f}, "
          f"mean |diff| {row['mean_abs_diff']:.4f}")


def run_metrics(workdir: str, emulator) -> None:
  """Decide the checkout experiment on goal and guardrail metrics."""
  logs = f"{workdir}/metrics-logs"
  n_pred, n_fb, _ = write_sample_logs(logs, METRICS_SCENARIO)
  with open(f"{workdir}/metrics.yaml", "w", encoding="utf-8") as f:
    f.write(METRICS_FILE)
  print(f"\nmetrics: {n_pred:,} predictions with latency, status, country "
        f"and platform; {n_fb:,} click and purchase feedback")
  reward_batch.run([
      f"--predictions={logs}/predictions.jsonl",
      f"--feedback={logs}/feedback.jsonl",
      f"--metrics={workdir}/metrics.yaml", "--dimensions=country,platform",
      "--max_segment_values=4", "--control_arm=control",
      f"--output_dataset={emulator.project}:{METRICS_DATASET}",
      f"--bigquery_emulator_host={emulator.host}",
      f"--output_dir={workdir}/metrics-out", "--runner=FnApiRunner"])
  client = bigquery.bigquery_client(emulator.project, emulator.host)
  decisions = bigquery.read_rows(client, emulator.project, METRICS_DATASET,
                                 "decisions")
  for row in sorted((r for r in decisions if r["dimension"] == "all"),
                    key=lambda r: r["arm"]):
    print(f"{row['experiment_id']} {row['arm']} vs {row['control_arm']}: "
          f"{row['verdict'].upper()} ({row['decide_on']})")
    for reason in row["reasons"]:
      print(f"  {reason}")
  segments = [r for r in decisions if r["dimension"] != "all"]
  by_verdict = {}
  for row in segments:
    by_verdict.setdefault(row["verdict"], []).append(
        f"{row['arm']}@{row['dimension']}={row['segment']}")
  print("per segment: " + "; ".join(
      f"{verdict} {len(rows)}" for verdict, rows in sorted(by_verdict.items())))


# A live model with a slightly worse shadow (2 points less accurate) and a
# canary on a tenth of the traffic with 30 % more latency.
MODEL_SCENARIO = model_logs.ModelScenario(canary_latency_factor=1.3)


def run_model_evaluation(workdir: str, emulator) -> None:
  """Judge the shadow and the canary from logs with ground truth."""
  logs = f"{workdir}/model-logs"
  os.makedirs(logs, exist_ok=True)
  predictions, feedback = model_logs.log_lines(MODEL_SCENARIO)
  simulate.write_jsonl(f"{logs}/predictions.jsonl", predictions)
  simulate.write_jsonl(f"{logs}/feedback.jsonl", feedback)
  model_evaluation.run([
      f"--predictions={logs}/predictions.jsonl",
      f"--feedback={logs}/feedback.jsonl", "--task=classification",
      f"--output_dataset={emulator.project}:{MODELS_DATASET}",
      f"--bigquery_emulator_host={emulator.host}",
      f"--output_dir={workdir}/model-evaluation", "--runner=FnApiRunner"])
  client = bigquery.bigquery_client(emulator.project, emulator.host)
  read = lambda name: bigquery.read_rows(client, emulator.project,
                                         MODELS_DATASET, name)
  print(f"\nmodel evaluation of {MODEL_SCENARIO.experiment_id} "
        f"({len(predictions):,} predictions, {len(feedback):,} with truth):")
  for row in sorted(read("model_quality"), key=lambda r: r["arm"]):
    print(f"  {row['arm']}{' (shadow)' if row['shadow'] else ''}: accuracy "
          f"{row['accuracy']:.3f} [{row['accuracy_ci_low']:.3f}, "
          f"{row['accuracy_ci_high']:.3f}], AUC {row['auc']:.3f}, log-loss "
          f"{row['log_loss']:.3f} on {row['scored']:,} requests with truth")
  for row in read("shadow_comparison"):
    print(f"shadow verdict: {row['verdict']}: {row['summary']}")
  for row in read("canary_verdicts"):
    classes = ", ".join(
        f"{m['metric']} {m['classification']}" + (
            f" ({m['effect']:+.1%})" if m["effect"] is not None else "")
        for m in row["metrics"])
    print(f"canary verdict: {row['canary_arm']} vs {row['baseline_arm']}: "
          f"{row['verdict']} (score {row['score']:.0f}; {classes})")
  page = report.run(["--models", f"--input={emulator.project}:{MODELS_DATASET}",
                     f"--bigquery_emulator_host={emulator.host}",
                     f"--out={workdir}/models.html"])
  print(f"model evaluation report: {os.path.abspath(page)}")


if __name__ == "__main__":
  main()

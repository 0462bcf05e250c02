"""The loop from logs to the next model, end to end, locally (`python3 dev.py loop-demo`).

  simulated day of logs ─training_export─ TFRecords (de-identified, train/eval)
    ─train_candidate─ candidate.keras, registered as models:/ranker@candidate
    ─batch_inference --mode shadow─ the candidate against the live model on the
     logged features
  morning's logs ─reward_batch --contextual_policy─ router state
    ─policy_evaluation on the afternoon's logs─ its value off-policy ─ summary

Everything runs on this machine (FnApiRunner, an embedded MLflow store); the
pseudonymization key is a random one made for the run, never printed.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import logging
import os
import secrets

import numpy as np

from pipelines import batch_inference
from pipelines import policy_evaluation
from pipelines import reward_batch
from pipelines import train_candidate
from pipelines import train_demo_models
from pipelines import training_export
from simulation import click_data
from simulation import training_logs

KEY_ENV = "LOOP_DEMO_PSEUDONYMIZE_KEY"
TARGET = "contextual_morning"


def _rows(directory: str, table: str) -> list[dict]:
  rows = []
  for path in sorted(glob.glob(f"{directory}/{table}*.jsonl")):
    with open(path) as f:
      rows += [json.loads(line) for line in f]
  return rows


def _live_model(workdir: str, seed: int) -> str:
  """The model serving today: the demo's logistic regression, trained on
  other data."""
  model = train_demo_models.build_models(seed)["logreg"]
  model.compile(optimizer="adam", loss="binary_crossentropy")
  x, y = click_data.generate_clicks(20_000, seed + 100)
  model.fit(x, y, batch_size=256, epochs=3, verbose=0)
  path = os.path.join(workdir, "live.keras")
  model.save(path)
  return path


def split_day(logs: str, predictions: list[str], feedback: list[str]):
  """The day's logs as a morning and an afternoon (feedback with its
  request), for learning a routing policy on one and evaluating it on the
  other."""
  midday = training_logs.START + 43_200
  half_of = {}
  for line in predictions:
    record = json.loads(line)
    half_of[record["request_id"]] = ("morning" if record["timestamp"] < midday
                                     else "afternoon")
  for half in ("morning", "afternoon"):
    os.makedirs(f"{logs}/{half}", exist_ok=True)
    for name, lines in (("predictions", predictions), ("feedback", feedback)):
      training_logs.write(f"{logs}/{half}/{name}.jsonl", [
          line for line in lines
          if half_of[json.loads(line)["request_id"]] == half])


def true_value(predictions: str) -> float:
  """The simulator's expected reward of any routing policy on these
  requests: its arms do not change the click probability."""
  with open(predictions) as f:
    features = np.array([json.loads(line)["features"] for line in f])
  return float(click_data.click_probability(features).mean())


def off_policy_value(workdir: str, logs: str) -> dict:
  """The value of the contextual router state learned from the morning's
  logs (linear Thompson sampling, 5 % uniform exploration), estimated on the
  afternoon's logs from their propensities."""
  state_dir = os.path.join(workdir, "router_state")
  os.makedirs(state_dir, exist_ok=True)
  # Its run summary (gates) goes to a file: a broken gate still stops the run.
  with open(f"{state_dir}/run_summary.txt", "w") as out, \
       contextlib.redirect_stdout(out):
    reward_batch.run([
        "--runner", "FnApiRunner",
        "--predictions", f"{logs}/morning/predictions.jsonl",
        "--feedback", f"{logs}/morning/feedback.jsonl",
        "--context_dim", str(click_data.NUM_FEATURES),
        "--contextual_policy", "linear_thompson", "--policy_epsilon", "0.05",
        "--output_dir", state_dir])
  evaluation_dir = os.path.join(workdir, "policy_value")
  afternoon = f"{logs}/afternoon/predictions.jsonl"
  policy_evaluation.run([
      "--runner", "FnApiRunner", "--predictions", afternoon,
      "--feedback", f"{logs}/afternoon/feedback.jsonl",
      "--context_dim", str(click_data.NUM_FEATURES),
      "--target_policy",
      f"{TARGET}=linear_thompson:{state_dir}/router_state*.json",
      "--experiment_id", training_logs.EXPERIMENT_ID, "--bootstrap", "0",
      "--output_dir", evaluation_dir])
  rows = {row["estimator"]: row for row in
          _rows(evaluation_dir, "policy_value") if row["policy"] == TARGET}
  return {"target": TARGET, "dr": rows["dr"], "ips": rows["ips"],
          "true_value": true_value(afternoon)}


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", default="loop-demo",
                      help="Directory for logs, export, models and tables.")
  parser.add_argument("--requests", type=int, default=30_000,
                      help="Simulated requests in the day of logs.")
  parser.add_argument("--epochs", type=int, default=5)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  workdir = os.path.abspath(args.workdir)
  logs = os.path.join(workdir, "logs")
  os.makedirs(logs, exist_ok=True)
  os.environ.setdefault(KEY_ENV, secrets.token_hex(32))

  predictions, feedback = training_logs.generate(args.requests, args.seed)
  training_logs.write(f"{logs}/predictions.jsonl", predictions)
  training_logs.write(f"{logs}/feedback.jsonl", feedback)
  split_day(logs, predictions, feedback)

  export = os.path.join(workdir, "export", "dt=2026-11-21")
  tables = os.path.join(workdir, "export_tables")
  training_export.run([
      "--runner", "FnApiRunner", "--predictions", f"{logs}/predictions.jsonl",
      "--feedback", f"{logs}/feedback.jsonl",
      "--feature_count", str(click_data.NUM_FEATURES),
      "--text_fields", "request.text", "--pseudonymize_key_env", KEY_ENV,
      "--output_prefix", export, "--output_dir", tables,
      "--partition_date", "2026-11-21"])

  registry = os.path.join(workdir, "registry")
  card = train_candidate.main([
      "--export", export, "--out", os.path.join(workdir, "candidate"),
      "--epochs", str(args.epochs), "--seed", str(args.seed),
      "--registry", "mlflow", "--registry_dir", registry])

  os.environ["MLFLOW_TRACKING_URI"] = train_candidate.registry_uri(registry)
  shadow_dir = os.path.join(workdir, "shadow")
  batch_inference.run([
      "--runner", "FnApiRunner", "--features", f"{logs}/predictions.jsonl",
      "--model", f"live={_live_model(workdir, args.seed)}",
      "--model", "candidate=models:/ranker@candidate",
      "--mode", "shadow", "--baseline", "live", "--output_dir", shadow_dir])

  summary = {
      "quality": {row["metric"]: row["count"] for row in
                  _rows(tables, "data_quality")
                  if row["record_type"] == "export"},
      "card": card,
      "shadow": _rows(shadow_dir, "shadow_summary"),
      "value": off_policy_value(workdir, logs),
  }
  print_summary(summary, export)
  return summary


def print_summary(summary: dict, export: str) -> None:
  quality, card = summary["quality"], summary["card"]
  metrics = card["eval"]
  replaced = ", ".join(f"{metric.split(':')[1]} {count:,}" for metric, count
                       in sorted(quality.items())
                       if metric.startswith("deid:"))
  print(f"\nexport {export}")
  print(f"  rows: train {quality.get('exported:train', 0):,}, eval "
        f"{quality.get('exported:eval', 0):,} (users in one split only); "
        f"dead-lettered {sum(v for k, v in quality.items() if k.startswith('dead_letter:')):,}")
  print(f"  free text de-identified: {replaced or 'nothing found'}")
  print(f"candidate {card['registry']['model']} (version "
        f"{card['registry']['version']}), eval split:")
  print(f"  accuracy {metrics['accuracy']:.3f} vs majority class "
        f"{metrics['baseline_accuracy']:.3f}; log loss {metrics['log_loss']:.3f}"
        f" vs base rate {metrics['baseline_log_loss']:.3f}; AUC "
        f"{metrics['auc']:.3f}")
  for row in summary["shadow"]:
    print(f"shadow {row['model']} vs {row['baseline']} model: {row['rows']:,} "
          f"logged requests, agreement {row['agreement_rate']:.3f}, mean |diff| "
          f"{row['mean_abs_diff']:.3f}")
  value = summary["value"]
  dr = value["dr"]
  print(f"off-policy value, {dr['n']:,} afternoon requests: "
        f"{value['target']} (router state learned in the morning)")
  print(f"  DR {dr['value']:.4f} [{dr['ci_low']:.4f}, {dr['ci_high']:.4f}],"
        f" IPS {value['ips']['value']:.4f} vs logged policy "
        f"{dr['logged_value']:.4f}; simulator's true value "
        f"{value['true_value']:.4f}")

if __name__ == "__main__":
  logging.getLogger().setLevel(logging.WARNING)
  main()

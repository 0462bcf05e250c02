"""Live rewards of a simulated router over Pub/Sub: `python -m pipelines.streaming_demo`.

Starts the Pub/Sub emulator (Google Cloud CLI) and the local BigQuery
emulator, creates the topics and subscriptions, publishes a simulated router's
predictions and their delayed feedback in real time (with re-sent, late,
orphan, shadow, Seldon-format and malformed records), runs the streaming
reward pipeline on the direct runner, and prints from BigQuery how each arm's
rewards and the router state move as feedback arrives. It stops once every
published record is accounted for, or after --duration_s.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import shutil
import signal
import sys
import threading
import time

from apache_beam.options.pipeline_options import PipelineOptions
from google.cloud import pubsub_v1

from pipelines import reward_streaming
from transforms import options as opts
from transforms.io import bigquery
from emulators import bq_emulator
from transforms.logs import messages
from emulators import pubsub_emulator
from transforms.logs import quality
from simulation import realtime_publisher
from simulation import simulate

PROJECT = "local-project"
EXPERIMENT = "homepage-ranker"
ARMS = (simulate.Arm("control", 0.30), simulate.Arm("candidate-a", 0.45),
        simulate.Arm("candidate-b", 0.20))


@dataclasses.dataclass(frozen=True)
class DemoConfig:
  """The simulated traffic and the pipeline's windows, in seconds."""
  duration_s: float = 60.0
  requests_per_s: float = 3.0
  attribution_window_s: float = 10.0
  allowed_lateness_s: float = 5.0
  window_s: float = 20.0
  early_firing_s: int = 2
  print_every_s: float = 5.0
  startup_s: float = 5.0  # The pipeline starts before the first record.
  dataset: str = "rewards_live"
  seed: int = 7


DEMO_HELP = {
    "duration_s": "how long the job runs (s)",
    "requests_per_s": "simulated served requests per second",
    "attribution_window_s": "the pipeline's --attribution_window_s",
    "allowed_lateness_s": "the pipeline's --allowed_lateness_s",
    "window_s": "the pipeline's --window_s",
    "early_firing_s": "the pipeline's --early_firing_s",
    "print_every_s": "seconds between two progress lines",
    "startup_s": "seconds the pipeline gets to start before the traffic",
    "dataset": "BigQuery emulator dataset of the tables",
    "seed": "seed of the simulated traffic",
}


def missing_tools() -> str | None:
  """What the local Pub/Sub emulator lacks on this machine, in one line."""
  if not pubsub_emulator.is_installed():
    return ("the Pub/Sub emulator is not installed: install the Google Cloud "
            "CLI with its pubsub-emulator component (`gcloud components "
            "install pubsub-emulator beta`, or the Debian package "
            "google-cloud-cli-pubsub-emulator)")
  if shutil.which("java") is None:
    return ("the Pub/Sub emulator needs Java (a JRE 8 or later) on PATH, "
            "e.g. `apt-get install default-jre-headless`")
  return None


def scenario(config: DemoConfig, start: float) -> simulate.Scenario:
  """Traffic from `start` to past the end of the run: the direct runner's
  Pub/Sub read waits for a message on each subscription in turn (so does
  cancelling the job), so both must flow."""
  traffic_s = config.duration_s - config.startup_s + 10.0
  return simulate.Scenario(
      experiment_id=EXPERIMENT, arms=ARMS, start=start, duration_s=traffic_s,
      requests=int(config.requests_per_s * traffic_s), feedback_rate=0.7,
      mean_delay_s=config.attribution_window_s / 5, duplicate_feedback=0.05,
      late_feedback=0.03,
      # Late by half the lateness: counted `late`, not mistaken for orphans.
      late_delay_s=(config.attribution_window_s +
                    config.allowed_lateness_s / 2),
      duplicate_predictions=0.02, shadow_arm="shadow-v2",
      orphan_feedback=0.02, malformed=0.01, seldon_feedback=0.1,
      seed=config.seed)


def pipeline_args(config: DemoConfig, subscriptions: dict,
                  bigquery_host: str) -> list[str]:
  return [
      f"--predictions_subscription={subscriptions['predictions']}",
      f"--feedback_subscription={subscriptions['feedback']}",
      f"--timestamp_attribute={realtime_publisher.TIMESTAMP_ATTRIBUTE}",
      f"--output_dataset={PROJECT}:{config.dataset}",
      f"--bigquery_emulator_host={bigquery_host}",
      f"--attribution_window_s={config.attribution_window_s}",
      f"--allowed_lateness_s={config.allowed_lateness_s}",
      f"--window_s={config.window_s}",
      f"--early_firing_s={config.early_firing_s}",
      "--control_arm=control", "--runner=BundleBasedDirectRunner",
      f"--project={PROJECT}"]


def latest(rows, *key):
  """The most recent row (by computed_at) of each key: each firing appends."""
  newest = {}
  for row in rows:
    k = tuple(row[name] for name in key)
    if k not in newest or row["computed_at"] > newest[k]["computed_at"]:
      newest[k] = row
  return [newest[k] for k in sorted(newest)]


class Progress:
  """What the BigQuery tables say now."""

  def __init__(self, client, dataset: str):
    self._client = client
    self._dataset = dataset

  def read(self, table: str):
    return bigquery.read_rows(self._client, PROJECT, self._dataset, table)

  def router_state(self):
    return latest(self.read("router_state"), "experiment_id")

  def data_quality(self):
    return latest(self.read("data_quality"), "record_type", "metric")


def describe_state(state: dict) -> str:
  arms = "  ".join(
      f"{a['arm']} {a['successes']:.0f}/{a['tries']} "
      f"({a['value'] or 0:.2f}, share {a['traffic_share']:.2f})"
      for a in state["arms"])
  return f"{arms}  best {state['best_arm']}"


def describe_windows(arm_stats) -> str:
  lines = [f"{'window':>8} {'arm':>12} {'impr':>5} {'samples':>7} "
           f"{'mean':>6} {'prob_best':>9} {'seq_p':>6}"]
  for row in latest(arm_stats, "window_start", "arm"):
    def number(name, fmt):
      return "" if row[name] is None else format(row[name], fmt)
    lines.append(
        f"{row['window_start'].strftime('%H:%M:%S'):>8} {row['arm']:>12} "
        f"{row['impressions']:>5} {row['samples']:>7} "
        f"{number('reward_mean', '.3f'):>6} {number('prob_best', '.3f'):>9} "
        f"{number('seq_p_value', '.2g'):>6}")
  return "\n".join(lines)


def describe_balance(counts) -> str:
  """read = accounted for (counted, duplicate, late, shadow or dead-lettered)
  + still inside an open attribution window."""
  return "; ".join(
      f"{record_type}: {read} read = {accounted} accounted for + "
      f"{read - accounted} in flight"
      for record_type, (read, accounted) in quality.balance(counts).items())


def run_demo(config: DemoConfig, bigquery_host: str, print_=print) -> dict:
  """Publishes the simulated traffic and runs the pipeline for
  `config.duration_s`, both against the emulators ($PUBSUB_EMULATOR_HOST,
  `bigquery_host`); returns {source: records published}."""
  subscriptions = {
      source: pubsub_emulator.create_subscription(PROJECT, source, source)
      for source in messages.SOURCES
  }
  publisher = pubsub_v1.PublisherClient()
  topics = {source: publisher.topic_path(PROJECT, source)
            for source in subscriptions}
  began = time.time()
  start = began + config.startup_s
  traffic = scenario(config, start)
  predictions, feedback, truth = simulate.generate(traffic)
  records = realtime_publisher.timeline(
      {"predictions": predictions, "feedback": feedback}, start)
  print_(f"publishing {len(predictions)} predictions and {len(feedback)} "
         f"feedback in real time; expected reward means (true rate x "
         f"feedback rate): " + ", ".join(
             f"{arm} {rate * traffic.feedback_rate:.2f}"
             for arm, rate in truth.items()))

  result = reward_streaming.start(PipelineOptions(
      pipeline_args(config, subscriptions, bigquery_host), streaming=True))
  stop = threading.Event()
  published = {}
  publishing = threading.Thread(target=lambda: published.update(
      realtime_publisher.publish(publisher, topics, records, stop)))
  publishing.start()
  progress = Progress(bigquery.bigquery_client(PROJECT, bigquery_host),
                      config.dataset)
  end = began + config.duration_s
  try:
    while time.time() < end:
      stop.wait(min(config.print_every_s, end - time.time()))
      states = progress.router_state()
      print_(f"[+{time.time() - began:3.0f}s] " +
             ("; ".join(map(describe_state, states)) if states
              else "no router state yet"))
  finally:
    result.cancel()  # Before the traffic stops: see `scenario`.
    stop.set()
    publishing.join()

  print_("\narm_stats, latest pane of each window:\n" +
         describe_windows(progress.read("arm_stats")))
  counts = progress.data_quality()
  print_("data_quality: " + describe_balance(counts))
  dead = collections.Counter(r["reason"] for r in progress.read("dead_letter"))
  print_("dead_letter: " + ", ".join(f"{reason} {n}"
                                     for reason, n in sorted(dead.items())))
  print_("published: " + ", ".join(f"{source} {n}"
                                   for source, n in sorted(published.items())))
  return published


def main(argv=None) -> None:
  parser = opts.OneLineParser(prog="pipelines.streaming_demo",
                              description=__doc__.splitlines()[0],
                              formatter_class=opts.HelpFormatter)
  for field in dataclasses.fields(DemoConfig):
    parser.add_argument(f"--{field.name}", type=type(field.default),
                        default=field.default,
                        help=DEMO_HELP[field.name])
  parser.add_argument("--workdir", default="local/streaming_demo",
                      help="where the emulators' logs go")
  args = vars(parser.parse_args(argv))
  workdir = args.pop("workdir")
  problem = missing_tools()
  if problem:
    print(f"{parser.prog}: error: {problem}", file=sys.stderr)
    raise SystemExit(1)
  config = DemoConfig(**args)
  logging.basicConfig(level=logging.WARNING)
  # On SIGTERM too, leave through the `with` below: it stops the emulators.
  signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
  os.makedirs(workdir, exist_ok=True)
  with pubsub_emulator.start_emulator(
      log_path=f"{workdir}/pubsub-emulator.log") as pubsub, \
      bq_emulator.start_emulator(
          PROJECT, log_path=f"{workdir}/bigquery-emulator.log") as bq:
    os.environ["PUBSUB_EMULATOR_HOST"] = pubsub.host
    print(f"Pub/Sub emulator {pubsub.host}, BigQuery emulator {bq.host}")
    run_demo(config, bq.host)


if __name__ == "__main__":
  main()

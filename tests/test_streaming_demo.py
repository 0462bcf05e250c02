"""The streaming demo end to end: Pub/Sub emulator -> pipeline -> BigQuery emulator."""

import os

import pytest

from pipelines import streaming_demo
from transforms.io import bigquery
from emulators import pubsub_emulator
from transforms.logs import quality

pytestmark = pytest.mark.pubsub


@pytest.fixture(scope="module")
def pubsub_host(tmp_path_factory):
  """A Pub/Sub emulator for this module, in $PUBSUB_EMULATOR_HOST."""
  if not pubsub_emulator.is_installed():
    pytest.skip("needs the Google Cloud CLI with its Pub/Sub emulator")
  log_path = tmp_path_factory.mktemp("pubsub") / "emulator.log"
  previous = os.environ.get("PUBSUB_EMULATOR_HOST")
  with pubsub_emulator.start_emulator(log_path=str(log_path)) as emulator:
    os.environ["PUBSUB_EMULATOR_HOST"] = emulator.host
    yield emulator.host
  if previous is None:
    del os.environ["PUBSUB_EMULATOR_HOST"]
  else:
    os.environ["PUBSUB_EMULATOR_HOST"] = previous


def test_live_rewards_reach_bigquery_while_feedback_arrives(
    pubsub_host, bq_emulator):
  emulator, project = bq_emulator
  config = streaming_demo.DemoConfig(
      duration_s=25.0, attribution_window_s=3.0, allowed_lateness_s=3.0,
      window_s=5.0, early_firing_s=1, print_every_s=4.0, startup_s=3.0,
      dataset="streaming_demo")
  printed = []
  published = streaming_demo.run_demo(config, emulator.host, printed.append)

  client = bigquery.bigquery_client(project, emulator.host)

  def rows(table):
    return bigquery.read_rows(client, project, config.dataset, table)

  # The router state was updated again and again as feedback came.
  states = sorted(rows("router_state"), key=lambda s: s["computed_at"])
  tries = [sum(a["tries"] for a in s["arms"]) for s in states]
  assert len(set(tries)) >= 3 and tries == sorted(tries)
  assert {a["arm"] for a in states[-1]["arms"]} == {
      "control", "candidate-a", "candidate-b"}
  assert sum(a["traffic_share"] for a in states[-1]["arms"]) == (
      pytest.approx(1.0))
  assert any(line.startswith("[+") and "best" in line for line in printed)

  # Per-arm rows of several 5 s windows, each refreshed more than once.
  arm_stats = rows("arm_stats")
  windows = {r["window_start"] for r in arm_stats}
  assert len(windows) >= 2
  assert all(w.timestamp() % config.window_s == 0 for w in windows)
  assert len(arm_stats) > 3 * len(windows)

  # Every record read is accounted for or still in an open attribution
  # window; bad ones are dead letters that name their subscription.
  counts = streaming_demo.latest(rows("data_quality"), "record_type",
                                 "metric")
  balance = quality.balance(counts)
  for source, record_type in (("predictions", "prediction"),
                              ("feedback", "feedback")):
    read, accounted = balance[record_type]
    assert 0 < accounted <= read <= published[source]
  dead = rows("dead_letter")
  assert {(r["reason"], r["source_file"]) for r in dead} >= {
      ("invalid_json",
       f"projects/{streaming_demo.PROJECT}/subscriptions/predictions")}

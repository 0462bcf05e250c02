"""A local Pub/Sub emulator (the Google Cloud CLI's), and topics with subscriptions on it.

Run one in the foreground:

  gcloud beta emulators pubsub start --host-port=127.0.0.1:8085

or from Python / tests:

  with start_emulator() as emulator:
    os.environ["PUBSUB_EMULATOR_HOST"] = emulator.host
    create_subscription("local-project", "predictions", "predictions")

Every Pub/Sub client of the process, Beam's `ReadFromPubSub` on the direct
runner included, talks to the emulator while `PUBSUB_EMULATOR_HOST` is set.
"""

from __future__ import annotations

import os
import shutil

from google.api_core import exceptions
from google.cloud import pubsub_v1

from emulators import local_service


class Emulator(local_service.LocalService):
  """A running emulator; `stop()` it, or use it as a context manager."""

  name = "the Pub/Sub emulator"

  @property
  def host(self) -> str:
    return f"127.0.0.1:{self.port}"


def is_installed() -> bool:
  """Whether the Google Cloud CLI and its Pub/Sub emulator are installed."""
  gcloud = shutil.which("gcloud")
  if gcloud is None:
    return False
  sdk = os.path.dirname(os.path.dirname(os.path.realpath(gcloud)))
  return os.path.isdir(os.path.join(sdk, "platform", "pubsub-emulator"))


def start_emulator(port: int = 0, log_path: str | None = None,
                   timeout: float = 60.0) -> Emulator:
  """Starts an emulator (in memory) and waits until it answers.

  Args:
    port: the port; 0 picks a free one.
    log_path: where the emulator logs; a new temporary file when None.
    timeout: seconds to wait for the emulator to be ready.
  """
  port = port or local_service.free_port()
  command = ["gcloud", "beta", "emulators", "pubsub", "start",
             f"--host-port=127.0.0.1:{port}", "--quiet"]
  return local_service.start(
      lambda process, log: Emulator(port, process, log), command,
      f"http://127.0.0.1:{port}/", log_path, timeout)


def create_subscription(project: str, topic: str, subscription: str) -> str:
  """Creates the topic and a subscription to it, unless they exist; returns
  the subscription path."""
  publisher = pubsub_v1.PublisherClient()
  topic_path = publisher.topic_path(project, topic)
  try:
    publisher.create_topic(name=topic_path)
  except exceptions.AlreadyExists:
    pass
  with pubsub_v1.SubscriberClient() as subscriber:
    subscription_path = subscriber.subscription_path(project, subscription)
    try:
      subscriber.create_subscription(name=subscription_path, topic=topic_path)
    except exceptions.AlreadyExists:
      pass
  return subscription_path

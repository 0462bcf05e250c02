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
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request

from google.api_core import exceptions
from google.cloud import pubsub_v1


class Emulator:
  """A running emulator; `stop()` it, or use it as a context manager."""

  def __init__(self, port: int, process: subprocess.Popen, log_path: str):
    self.port = port
    self.host = f"127.0.0.1:{port}"
    self.process = process
    self.log_path = log_path

  def stop(self, timeout: float = 10.0) -> None:
    if self.process.poll() is not None:
      return
    # gcloud starts the Java emulator as a child: stop the whole group.
    os.killpg(self.process.pid, signal.SIGTERM)
    try:
      self.process.wait(timeout)
    except subprocess.TimeoutExpired:
      os.killpg(self.process.pid, signal.SIGKILL)
      self.process.wait()

  def __enter__(self) -> Emulator:
    return self

  def __exit__(self, *exc_info) -> None:
    self.stop()


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
  port = port or _free_port()
  if log_path is None:
    fd, log_path = tempfile.mkstemp(prefix="pubsub-emulator-", suffix=".log")
    os.close(fd)
  command = ["gcloud", "beta", "emulators", "pubsub", "start",
             f"--host-port=127.0.0.1:{port}", "--quiet"]
  with open(log_path, "ab") as log:
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)
  emulator = Emulator(port, process, log_path)
  try:
    _wait_ready(emulator, timeout)
  except BaseException:
    emulator.stop()
    raise
  return emulator


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


def _free_port() -> int:
  with socket.socket() as sock:
    sock.bind(("127.0.0.1", 0))
    return sock.getsockname()[1]


def _wait_ready(emulator: Emulator, timeout: float) -> None:
  deadline = time.monotonic() + timeout
  while True:
    if emulator.process.poll() is not None:
      raise RuntimeError(
          f"the Pub/Sub emulator exited with code "
          f"{emulator.process.returncode}, see {emulator.log_path}")
    try:
      with urllib.request.urlopen(f"http://{emulator.host}/", timeout=2):
        return
    except OSError:  # Not listening yet.
      pass
    if time.monotonic() > deadline:
      raise TimeoutError(f"the Pub/Sub emulator not ready after {timeout}s, "
                         f"see {emulator.log_path}")
    time.sleep(0.2)

"""A local service in a child process (the emulators): start, wait until it answers, stop."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from typing import Callable


class LocalService:
  """A running child process; `stop()` it, or use it as a context manager."""

  name = "local service"

  def __init__(self, port: int, process: subprocess.Popen, log_path: str):
    self.port = port
    self.process = process
    self.log_path = log_path

  def stop(self, timeout: float = 10.0) -> None:
    if self.process.poll() is not None:
      return
    # The whole process group: gcloud runs the Pub/Sub emulator as its child.
    os.killpg(self.process.pid, signal.SIGTERM)
    try:
      self.process.wait(timeout)
    except subprocess.TimeoutExpired:
      os.killpg(self.process.pid, signal.SIGKILL)
      self.process.wait()

  def __enter__(self):
    return self

  def __exit__(self, *exc_info) -> None:
    self.stop()


def free_port() -> int:
  with socket.socket() as sock:
    sock.bind(("127.0.0.1", 0))
    return sock.getsockname()[1]


def start(make_service: Callable[[subprocess.Popen, str], LocalService],
          command: list[str], ready_url: str, log_path: str | None,
          timeout: float, env: dict | None = None) -> LocalService:
  """Runs `command` in a process group of its own, logging to `log_path` (a
  new temporary file when None), and waits until `ready_url` answers; stops
  it when it does not. `make_service(process, log_path)` wraps the process."""
  if log_path is None:
    fd, log_path = tempfile.mkstemp(prefix="local-service-", suffix=".log")
    os.close(fd)
  with open(log_path, "ab") as log:
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                               env=env, start_new_session=True)
  service = make_service(process, log_path)
  try:
    _wait_ready(service, ready_url, timeout)
  except BaseException:
    service.stop()
    raise
  return service


def _wait_ready(service: LocalService, url: str, timeout: float) -> None:
  deadline = time.monotonic() + timeout
  while True:
    if service.process.poll() is not None:
      raise RuntimeError(
          f"{service.name} exited with code {service.process.returncode}, "
          f"see {service.log_path}:\n{_tail(service.log_path)}")
    try:
      with urllib.request.urlopen(url, timeout=2):
        return
    except OSError:  # Not listening yet, or not ready (an HTTP error).
      pass
    if time.monotonic() > deadline:
      raise TimeoutError(
          f"{service.name} not ready after {timeout}s, see {service.log_path}")
    time.sleep(0.1)


def _tail(path: str, lines: int = 20) -> str:
  with open(path, encoding="utf-8", errors="replace") as f:
    return "".join(f.readlines()[-lines:])

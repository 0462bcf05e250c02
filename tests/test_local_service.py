"""Starting, waiting for and stopping a local service process."""

import sys

import pytest

from emulators import local_service


def _start(command, port):
  return local_service.start(
      lambda process, log: local_service.LocalService(port, process, log),
      command, f"http://127.0.0.1:{port}/", None, timeout=30)


def test_waits_until_the_service_answers_then_stops_it():
  port = local_service.free_port()
  command = [sys.executable, "-m", "http.server", str(port),
             "--bind", "127.0.0.1"]
  with _start(command, port) as service:
    assert service.process.poll() is None
  assert service.process.poll() is not None


def test_a_service_that_exits_fails_with_the_end_of_its_log():
  command = [sys.executable, "-c", "print('no such table'); exit(3)"]
  with pytest.raises(RuntimeError,
                     match=r"(?s)exited with code 3, see .*no such table"):
    _start(command, local_service.free_port())

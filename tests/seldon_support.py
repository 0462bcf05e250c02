"""Running Seldon's own code for the tests: .venv-seldon (which `python3
dev.py test` creates), the client script, and the example router under the
real `seldon-core-microservice` wrapper on loopback."""

import contextlib
import json
import os
import pathlib
import socket
import subprocess
import time
import urllib.error
import urllib.request

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SELDON_VENV = ROOT / ".venv-seldon"
CLIENT = ROOT / "tests" / "seldon" / "client.py"
START_TIMEOUT_S = 60.0


def seldon_python() -> str:
  """The Python of .venv-seldon; the test fails (not skips) without it."""
  python = SELDON_VENV / "bin" / "python"
  if not python.exists() or subprocess.run(
      [str(python), "-c", "import seldon_core"], capture_output=True,
      check=False).returncode != 0:
    pytest.fail(f"{SELDON_VENV} with seldon-core is missing: `python3 dev.py "
                "test` creates it (Python 3.12 needed, see dev.py)")
  return str(python)


def run_client(*args: str) -> dict:
  """tests/seldon/client.py in .venv-seldon; its JSON output."""
  result = subprocess.run([seldon_python(), str(CLIENT), *args],
                          capture_output=True, text=True, check=False,
                          timeout=300)
  if result.returncode != 0:
    raise AssertionError(f"Seldon client failed:\n{result.stderr[-3000:]}")
  return json.loads(result.stdout)


def _free_port() -> int:
  with socket.socket() as sock:
    sock.bind(("127.0.0.1", 0))
    return sock.getsockname()[1]


@contextlib.contextmanager
def router_microservice(unit: str, parameters: list[dict], log_path):
  """The example router as Seldon runs it: `seldon-core-microservice
  thompson_router.BanditRouter --service-type ROUTER`, PREDICTIVE_UNIT_ID the
  graph node's name. Yields its REST endpoint (host:port)."""
  http_port, grpc_port, metrics_port = (_free_port() for _ in range(3))
  microservice = pathlib.Path(seldon_python()).parent / (
      "seldon-core-microservice")
  env = dict(os.environ, PREDICTIVE_UNIT_ID=unit,
             INCLUDE_METRICS_IN_CLIENT_RESPONSE="true",
             PYTHONPATH=str(ROOT / "examples"))
  with open(log_path, "w", encoding="utf-8") as log:
    process = subprocess.Popen(
        [str(microservice), "thompson_router.BanditRouter",
         "--service-type", "ROUTER", "--http-port", str(http_port),
         "--grpc-port", str(grpc_port), "--metrics-port", str(metrics_port),
         "--parameters", json.dumps(parameters), "--workers", "1"],
        cwd=ROOT / "examples", env=env, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True)
  try:
    _wait_until_ready(process, http_port, log_path)
    yield f"127.0.0.1:{http_port}"
  finally:
    os.killpg(process.pid, 15)
    try:
      process.wait(timeout=20)
    except subprocess.TimeoutExpired:
      os.killpg(process.pid, 9)
      process.wait()


def _wait_until_ready(process, port: int, log_path) -> None:
  deadline = time.monotonic() + START_TIMEOUT_S
  while time.monotonic() < deadline:
    if process.poll() is not None:
      raise AssertionError("the router exited:\n" +
                           pathlib.Path(log_path).read_text()[-3000:])
    try:
      with urllib.request.urlopen(f"http://127.0.0.1:{port}/health/ping",
                                  timeout=2) as response:
        if response.status == 200:
          return
    except (urllib.error.URLError, OSError):
      pass
    time.sleep(0.2)
  raise AssertionError(f"the router did not start in {START_TIMEOUT_S} s:\n" +
                       pathlib.Path(log_path).read_text()[-3000:])

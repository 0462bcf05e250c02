"""A local BigQuery emulator (bqemulator, DuckDB-backed) that runs offline.

bqemulator's start-up runs `INSTALL spatial; LOAD spatial`, which downloads
DuckDB's spatial extension and aborts the start when there is no network.
It has no switch for that step (`BQEMU_ENABLE_FORMAT_EXTENSIONS` only covers
the Avro extension), so `serve` replaces the step with a no-op before starting
the server: only GEOGRAPHY, which no table of ours uses, needs it.

Run one in the foreground:

  python -m emulators.bq_emulator --project local-project --port 9050

or from Python / tests:

  with start_emulator("local-project") as emulator:
    client = transforms.io.bigquery.bigquery_client(emulator.project,
                                                 emulator.host)
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import threading

from emulators import local_service

DEFAULT_PROJECT = "local-project"
DEFAULT_PORT = 9050
_PACKAGE_ROOT = pathlib.Path(__file__).resolve().parent.parent


def serve(project: str, port: int, data_dir: str | None = None,
          grpc_port: int = 0) -> None:
  """Runs the emulator in this process until SIGINT or SIGTERM."""
  from bqemulator import config
  from bqemulator import server
  from bqemulator.storage import engine

  # Offline: skip the spatial and Avro extension downloads (module docstring).
  engine.DuckDBEngine._load_spatial = lambda self: None
  # Reads run in worker threads and streaming inserts on the event loop, on one
  # DuckDB connection: a read during an insert fails it ("connection has an
  # unfinished result"). Each thread gets its own cursor of the database.
  shared_connection = engine.DuckDBEngine.connection.fget
  cursors = threading.local()

  def connection_of_this_thread(self):
    if getattr(cursors, "cursor", None) is None:
      cursors.cursor = shared_connection(self).cursor()
    return cursors.cursor

  engine.DuckDBEngine.connection = property(connection_of_this_thread)
  settings = config.Settings(
      rest_port=port,
      grpc_host="127.0.0.1",
      grpc_port=grpc_port,  # The Storage Read API (0: any free port).
      default_project_id=project,
      enable_format_extensions=False,
      persistence_mode=(config.PersistenceMode.PERSISTENT if data_dir
                        else config.PersistenceMode.EPHEMERAL),
      data_dir=data_dir)
  server.run_forever(settings)


class Emulator(local_service.LocalService):
  """A running emulator process; `stop()` it, or use it as a context manager."""

  name = "bqemulator"

  def __init__(self, project: str, port: int, grpc_port: int, process,
               log_path: str):
    super().__init__(port, process, log_path)
    self.project = project
    self.host = f"http://127.0.0.1:{port}"
    self.grpc_port = grpc_port
    # The Storage Read API, plain gRPC (no TLS): `transforms.io.bigquery.read_client`.
    self.grpc_host = f"127.0.0.1:{grpc_port}"


def start_emulator(project: str = DEFAULT_PROJECT,
                   port: int = 0,
                   data_dir: str | None = None,
                   log_path: str | None = None,
                   timeout: float = 60.0) -> Emulator:
  """Starts an emulator process and waits until it answers.

  Args:
    project: the default project id of the emulator.
    port: the REST port; 0 picks a free one.
    data_dir: keep the data in a DuckDB file there; in memory when None.
    log_path: where the emulator logs; a new temporary file when None.
    timeout: seconds to wait for the emulator to be ready.
  """
  port = port or local_service.free_port()
  grpc_port = local_service.free_port()
  command = [sys.executable, "-m", "emulators.bq_emulator",
             "--project", project, "--port", str(port),
             "--grpc-port", str(grpc_port)]
  if data_dir:
    command += ["--data-dir", str(data_dir)]
  return local_service.start(
      lambda process, log: Emulator(project, port, grpc_port, process, log),
      command,
      f"http://127.0.0.1:{port}/readyz", log_path, timeout, env=_child_env())


def _child_env() -> dict:
  """This environment, with this package importable whatever the cwd."""
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join(
      p for p in (str(_PACKAGE_ROOT), env.get("PYTHONPATH")) if p)
  return env


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(
      description="Run a local BigQuery emulator (offline) in the foreground.")
  parser.add_argument("--project", default=DEFAULT_PROJECT)
  parser.add_argument("--port", type=int, default=DEFAULT_PORT)
  parser.add_argument("--grpc-port", type=int, default=0,
                      help="port of the Storage Read API (gRPC); 0: any free")
  parser.add_argument("--data-dir", default=None,
                      help="keep the data in a DuckDB file in this directory")
  args = parser.parse_args(argv)
  serve(args.project, args.port, args.data_dir, args.grpc_port)


if __name__ == "__main__":
  main()

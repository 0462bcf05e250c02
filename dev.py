#!/usr/bin/env python3
"""The two commands: `python3 dev.py demo` and `python3 dev.py test`.

Each creates .venv (Python 3.11) on first use, installs the package with its
pinned dependencies (requirements/constraints.txt), then runs the demo job or
the test suite. Extra arguments go to the demo or to pytest.
`python3 dev.py streaming-demo` runs the live demo on the local Pub/Sub and
BigQuery emulators the same way; `python3 dev.py loop-demo` the loop from logs
to a registered candidate model (docs/training.md).
"""

import hashlib
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent
VENV = ROOT / ".venv"
PYTHON = VENV / "bin" / "python"
EXTRAS = {"demo": "local", "streaming-demo": "local", "loop-demo": "local,mlflow",
          "test": "local,test,airflow,mlflow"}
DEMOS = {"demo": "pipelines.demo", "streaming-demo": "pipelines.streaming_demo",
         "loop-demo": "pipelines.loop_demo"}


def _install(extras: str) -> None:
  constraints = ROOT / "requirements" / "constraints.txt"
  digest = hashlib.sha256((ROOT / "setup.py").read_bytes() +
                          constraints.read_bytes()).hexdigest()[:16]
  stamp = VENV / f".installed-{extras.replace(',', '-')}-{digest}"
  if stamp.exists():
    return
  if not PYTHON.exists():
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
  subprocess.run([str(PYTHON), "-m", "pip", "install", "--quiet",
                  "--upgrade", "pip"], check=True)
  subprocess.run([str(PYTHON), "-m", "pip", "install", "--quiet", "-c",
                  str(constraints), "-e", f".[{extras}]"], check=True,
                 cwd=ROOT)
  stamp.touch()


def main(argv) -> int:
  if not argv or argv[0] not in EXTRAS:
    print(__doc__)
    return 2
  command, rest = argv[0], argv[1:]
  if sys.version_info[:2] != (3, 11):
    print(f"dev.py needs Python 3.11 (this is {sys.version.split()[0]})")
    return 2
  _install(EXTRAS[command])
  env = dict(os.environ, PYTHONPATH=str(ROOT))
  if command in DEMOS:
    args = [str(PYTHON), "-m", DEMOS[command], *rest]
  else:
    args = [str(PYTHON), "-m", "pytest", "-q", *rest]
  return subprocess.run(args, cwd=ROOT, env=env).returncode


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))

#!/usr/bin/env python3
"""The two commands: `python3 dev.py demo` and `python3 dev.py test`.

Each creates .venv (Python 3.11) on first use, installs the package with its
pinned dependencies (requirements/constraints.txt), then runs the demo job or
the test suite. Extra arguments go to the demo or to pytest.
`python3 dev.py streaming-demo` runs the live demo on the local Pub/Sub and
BigQuery emulators the same way; `python3 dev.py loop-demo` the loop from logs
to a registered candidate model (docs/training.md).

`test` also creates .venv-seldon with Python 3.12 (seldon-core 1.19 needs it):
seldon-core pinned in requirements/seldon.txt, for the tests that run the
example router under Seldon's own wrapper and client. Python 3.12 is
$SELDON_PYTHON, `python3.12`, or pyenv's; without one those tests fail and
say why.
"""

import glob
import hashlib
import os
import pathlib
import shutil
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent
VENV = ROOT / ".venv"
PYTHON = VENV / "bin" / "python"
EXTRAS = {"demo": "local", "streaming-demo": "local", "loop-demo": "local,mlflow",
          "test": "local,test,airflow,mlflow"}
DEMOS = {"demo": "pipelines.demo", "streaming-demo": "pipelines.streaming_demo",
         "loop-demo": "pipelines.loop_demo"}
SELDON_VENV = ROOT / ".venv-seldon"
SELDON_REQUIREMENTS = ROOT / "requirements" / "seldon.txt"


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


def _python_3_12():
  """$SELDON_PYTHON, python3.12 on the PATH, or pyenv's newest 3.12."""
  candidates = [os.environ.get("SELDON_PYTHON"), shutil.which("python3.12")]
  pyenv = shutil.which("pyenv")
  if pyenv:
    root = subprocess.run([pyenv, "root"], capture_output=True, text=True,
                          check=False).stdout.strip()
    found = glob.glob(os.path.join(root, "versions", "3.12*", "bin",
                                   "python3.12"))
    candidates += sorted(found, key=lambda path: [
        int(part) if part.isdigit() else -1
        for part in pathlib.Path(path).parents[1].name.split(".")],
                         reverse=True)
  for candidate in candidates:
    if candidate and subprocess.run(
        [candidate, "-c", "import sys; assert sys.version_info[:2] == (3, 12)"],
        capture_output=True, check=False).returncode == 0:
      return candidate
  return None


def _install_seldon() -> None:
  """.venv-seldon for the Seldon tests; on failure they fail and say why."""
  digest = hashlib.sha256(SELDON_REQUIREMENTS.read_bytes()).hexdigest()[:16]
  stamp = SELDON_VENV / f".installed-{digest}"
  if stamp.exists():
    return
  python = _python_3_12()
  if python is None:
    print("dev.py: no Python 3.12 (set SELDON_PYTHON): the Seldon tests "
          "will fail")
    return
  venv_python = SELDON_VENV / "bin" / "python"
  try:
    if not venv_python.exists():
      subprocess.run([python, "-m", "venv", str(SELDON_VENV)], check=True)
    subprocess.run([str(venv_python), "-m", "pip", "install", "--quiet",
                    "-r", str(SELDON_REQUIREMENTS)], check=True)
  except subprocess.CalledProcessError as error:
    print(f"dev.py: cannot create {SELDON_VENV.name} ({error}): the Seldon "
          "tests will fail")
    return
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
  if command == "test":
    _install_seldon()
  env = dict(os.environ, PYTHONPATH=str(ROOT))
  if command in DEMOS:
    args = [str(PYTHON), "-m", DEMOS[command], *rest]
  else:
    args = [str(PYTHON), "-m", "pytest", "-q", *rest]
  return subprocess.run(args, cwd=ROOT, env=env).returncode


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))

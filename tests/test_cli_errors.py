"""Never report garbage as success: each user error of issue 12 is a row.

Every row runs a command line (the pipeline's own `run`/`main` with the argv
a shell would pass) and checks its exit status and the first line it prints
on stderr. Status 2: refused before the pipeline started (options, inputs,
models, emulator), nothing written. Status 3: the run broke a quality gate;
its tables are written and every dead-lettered record is in dead_letter.
A few rows also go through `python -m` in a subprocess.
"""

import dataclasses
import json
import os
import pathlib
import re
import socket
import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines import batch_inference
from pipelines import demo
from pipelines import report
from pipelines import reward_batch
from pipelines import reward_streaming
from pipelines import train_demo_models
from simulation import click_data

ROOT = pathlib.Path(__file__).resolve().parents[1]
T0 = 1_795_219_200  # 2026-11-21T00:00:00Z
REQUESTS = 40
WIDTH = click_data.NUM_FEATURES  # The demo model's input width.


def _prediction(i: int) -> dict:
  return {"request_id": f"r{i}", "timestamp": T0 + i, "experiment_id": "exp",
          "arm": ("control", "treatment")[i % 2]}


def _feedback(i: int, **changes) -> dict:
  return {"request_id": f"r{i}", "timestamp": T0 + i + 5,
          "reward": int(i % 3 == 0), **changes}


def _write_jsonl(path: pathlib.Path, rows) -> str:
  path.write_text("".join(json.dumps(row) + "\n" for row in rows))
  return str(path)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  """Every input of the table, by name -> path."""
  root = tmp_path_factory.mktemp("cli")
  logs = root / "logs"
  logs.mkdir()
  predictions = [_prediction(i) for i in range(REQUESTS)]
  paths = {
      "logs": str(logs),
      "predictions": _write_jsonl(logs / "predictions.jsonl", predictions),
      "predictions_half1": _write_jsonl(root / "p-1.jsonl", predictions[::2]),
      "predictions_half2": _write_jsonl(root / "p-2.jsonl", predictions[1::2]),
      "feedback": _write_jsonl(logs / "feedback.jsonl",
                               [_feedback(i) for i in range(REQUESTS)]),
      "feedback_bool": _write_jsonl(root / "f-bool.jsonl", [
          _feedback(i, reward=bool(i % 3 == 0)) for i in range(REQUESTS)]),
      "feedback_text": _write_jsonl(root / "f-text.jsonl", [
          _feedback(i, reward=str(int(i % 3 == 0))) for i in range(REQUESTS)]),
      "feedback_ms": _write_jsonl(root / "f-ms.jsonl", [
          _feedback(i, timestamp=(T0 + i + 5) * 1000)
          for i in range(REQUESTS)]),
      "out": str(root / "out"),
  }
  (root / "empty.jsonl").write_text("")
  paths["empty"] = str(root / "empty.jsonl")
  (root / "feedback.csv").write_text(
      "request_id,timestamp,reward\n" + "".join(
          f"r{i},{T0 + i},1\n" for i in range(5)))
  paths["csv"] = str(root / "feedback.csv")
  (root / "feedback-array.json").write_text(
      json.dumps([_feedback(i) for i in range(5)]))
  paths["json_array"] = str(root / "feedback-array.json")
  (root / "feedback.jsonl.gz").write_text(
      "".join(json.dumps(_feedback(i)) + "\n" for i in range(5)))
  paths["not_gzip"] = str(root / "feedback.jsonl.gz")
  pq.write_table(pa.Table.from_pylist([
      {"id": f"r{i}", "ts": T0 + i, "exp": "exp", "variant": "control"}
      for i in range(5)]), root / "predictions-renamed.parquet")
  paths["parquet_renamed"] = str(root / "predictions-renamed.parquet")

  models = root / "models"
  models.mkdir()
  model = train_demo_models.build_models(seed=0)["logreg"]
  model.save(models / "m.keras")
  paths["model"] = str(models / "m.keras")
  (root / "not-a-model.keras").write_text("weights, honestly")
  paths["bad_model"] = str(root / "not-a-model.keras")
  _write_jsonl(models / "features.jsonl", [
      {"request_id": f"r{i}", "features": [0.1 * i] * WIDTH}
      for i in range(20)])
  paths["models"] = str(models)
  paths["features"] = str(models / "features.jsonl")
  return paths


def _closed_port() -> int:
  with socket.socket() as sock:
    sock.bind(("127.0.0.1", 0))
    return sock.getsockname()[1]  # Closed again when the test connects.


RUNNER = "--runner=FnApiRunner"


def _rewards(f, *argv):
  return reward_batch.run, [*argv, f"--output_dir={f['out']}", RUNNER]


def _inference(f, *argv):
  return batch_inference.run, [*argv, f"--output_dir={f['out']}-inference",
                               RUNNER]


@dataclasses.dataclass(frozen=True)
class Case:
  """One user error: the command, its exit status, its first stderr line."""
  name: str
  command: object  # files -> (run function, argv)
  status: int
  first_line: str  # A regex the first line of stderr must match.


CASES = [
    # Typos in options are errors, with the closest known option.
    Case("option typo --prediction", lambda f: _rewards(
        f, "--prediction", f["predictions"], "--feedback", f["feedback"]),
         2, r"^pipelines\.reward_batch: error: unknown option --prediction; "
         r"did you mean --predictions\?$"),
    Case("option with a dash --control-arm", lambda f: _rewards(
        f, "--predictions", f["predictions"], "--feedback", f["feedback"],
        "--control-arm", "control"),
         2, r"unknown option --control-arm; did you mean --control_arm\?$"),
    Case("unquoted glob expanded by the shell", lambda f: _rewards(
        f, "--predictions", f["predictions_half1"], f["predictions_half2"],
        "--feedback", f["feedback"]),
         2, r"unexpected argument '.*p-2\.jsonl': .*quote a file pattern"),
    Case("streaming option typo", lambda f: (reward_streaming.run, [
        "--predictions_subscriptions", "projects/p/subscriptions/s"]),
         2, r"^pipelines\.reward_streaming: error: unknown option "
         r"--predictions_subscriptions; did you mean "
         r"--predictions_subscription\?$"),
    Case("streaming run with output files", lambda f: (reward_streaming.run, [
        "--predictions_subscription", "projects/p/subscriptions/a",
        "--feedback_subscription", "projects/p/subscriptions/b",
        "--output_dir", f["out"]]),
         # An option of the batch pipelines only.
         2, r"^pipelines\.reward_streaming: error: unknown option "
         r"--output_dir$"),
    Case("streaming emulator without a dataset", lambda f: (
        reward_streaming.run, [
            "--predictions_subscription", "projects/p/subscriptions/a",
            "--feedback_subscription", "projects/p/subscriptions/b",
            "--bigquery_emulator_host", "http://127.0.0.1:9050"]),
         2, r"^pipelines\.reward_streaming: error: --bigquery_emulator_host "
         r"needs --output_dataset"),
    # Inputs the readers do not understand.
    Case("empty file", lambda f: _rewards(
        f, "--predictions", f["predictions"], "--feedback", f["empty"]),
         2, r"--feedback .*empty\.jsonl: every file is empty"),
    Case("CSV file", lambda f: _rewards(
        f, "--predictions", f["predictions"], "--feedback", f["csv"]),
         2, r"--feedback: .*feedback\.csv looks like CSV"),
    Case("JSON array", lambda f: _rewards(
        f, "--predictions", f["predictions"], "--feedback", f["json_array"]),
         2, r"--feedback: .*feedback-array\.json is a JSON array"),
    Case("a .gz file that is not gzip", lambda f: _rewards(
        f, "--predictions", f["predictions"], "--feedback", f["not_gzip"]),
         2, r"--feedback: cannot read .*feedback\.jsonl\.gz: "),
    Case("Parquet with other column names", lambda f: _rewards(
        f, "--predictions", f["parquet_renamed"], "--feedback", f["feedback"]),
         2, r"--predictions: .*predictions-renamed\.parquet has no column "
         r"request_id, timestamp, experiment_id, arm \(its columns: id, ts, "
         r"exp, variant\)$"),
    Case("epoch-millisecond timestamps", lambda f: _rewards(
        f, "--predictions", f["predictions"], "--feedback", f["feedback_ms"]),
         3, r"quality gate dead_letter_fraction failed: 40 of 40 feedback "
         r"records dead-lettered .*bad_timestamp 40; timestamps are RFC "
         r"3339 with a zone or epoch seconds, not milliseconds "),
    Case("rewards written as true/false", lambda f: _rewards(
        f, "--predictions", f["predictions"], "--feedback", f["feedback_bool"]),
         3, r"quality gate dead_letter_fraction failed: .*wrong_type 40"),
    Case("rewards written as text", lambda f: _rewards(
        f, "--predictions", f["predictions"], "--feedback", f["feedback_text"]),
         3, r"quality gate dead_letter_fraction failed: .*wrong_type 40"),
    Case("no counted feedback even with every dead letter allowed",
         lambda f: _rewards(
             f, "--predictions", f["predictions"], "--feedback",
             f["feedback_bool"], "--max_dead_letter_fraction", "1"),
         3, r"quality gate feedback_counted failed: exp: 40 impressions, 0 "
         r"counted feedback"),
    # Option values checked against the data, or against their declaration.
    Case("control arm not in the data", lambda f: _rewards(
        f, "--predictions", f["predictions"], "--feedback", f["feedback"],
        "--control_arm", "Control"),
         3, r"quality gate control_arm failed: --control_arm Control is not an "
         r"arm of exp \(arms: control, treatment\)"),
    Case("misspelt arm in the expected allocation", lambda f: _rewards(
        f, "--predictions", f["predictions"], "--feedback", f["feedback"],
        "--expected_allocation", "control=1,treatmnet=1"),
         3, r"quality gate expected_allocation failed: .*no arm treatmnet in "
         r"the data; no weight for treatment"),
    Case("partition date with slashes", lambda f: _rewards(
        f, "--feedback", f["feedback"], "--partition_date", "2026/01/01"),
         2, r"argument --partition_date: '2026/01/01': expected a date "
         r"YYYY-MM-DD$"),
    Case("a date that is not a day", lambda f: _rewards(
        f, "--feedback", f["feedback"], "--partition_date", "2026-02-30"),
         2, r"argument --partition_date: '2026-02-30': day is out of range "
         r"for month$"),
    Case("the same file for both record types", lambda f: _rewards(
        f, "--predictions", f["logs"] + "/*.jsonl", "--feedback",
        f["feedback"]),
         2, r"--predictions and --feedback both match .*feedback\.jsonl: give "
         r"each record type its own files$"),
    Case("output directory that is a file", lambda f: (reward_batch.run, [
        "--feedback", f["feedback"], "--output_dir", f["feedback"]]),
         2, r"--output_dir .*feedback\.jsonl is a file: give a directory$"),
    Case("allocation with a colon", lambda f: _rewards(
        f, "--feedback", f["feedback"], "--expected_allocation", "control:2"),
         2, r"argument --expected_allocation: 'control:2': expected "
         r"ARM=WEIGHT"),
    Case("allocation with a zero weight", lambda f: _rewards(
        f, "--feedback", f["feedback"], "--expected_allocation",
        "control=1,treatment=0"),
         2, r"--expected_allocation control=1,treatment=0: 'treatment=0' is "
         r"not NAME=WEIGHT with a positive weight$"),
    Case("allocation naming an arm twice", lambda f: _rewards(
        f, "--feedback", f["feedback"], "--expected_allocation",
        "control=1,control=2"),
         2, r"--expected_allocation control=1,control=2: control twice$"),
    # A directory as input.
    Case("a directory of logs", lambda f: _rewards(
        f, "--predictions", f["logs"], "--feedback", f["feedback"]),
         2, r"--predictions .*logs is a directory: give a file pattern such "
         r"as '.*logs/\*\.jsonl'"),
    Case("a directory of features and models", lambda f: _inference(
        f, "--features", f["models"] + "/", "--model", f"m={f['model']}"),
         2, r"--features .*models/ is a directory"),
    Case("a feature pattern that matches the models", lambda f: _inference(
        f, "--features", f["models"] + "/*", "--model", f"m={f['model']}"),
         2, r"--features: .*m\.keras is a zip archive \(a \.keras model\?\)"),
    # Waits without a word, and options that are ignored.
    Case("emulator port nothing listens on", lambda f: _rewards(
        f, "--feedback", f["feedback"], "--output_dataset", "p:d",
        "--bigquery_emulator_host", f"http://127.0.0.1:{_closed_port()}"),
         2, r"--bigquery_emulator_host http://127\.0\.0\.1:\d+: nothing "
         r"answers .*python -m emulators\.bq_emulator"),
    Case("emulator without a dataset", lambda f: _rewards(
        f, "--feedback", f["feedback"], "--bigquery_emulator_host",
        "http://127.0.0.1:9050"),
         2, r"--bigquery_emulator_host needs --output_dataset"),
    # Errors that came as tracebacks after the start.
    Case("missing path", lambda f: _rewards(
        f, "--predictions", f["predictions"], "--feedback",
        f["logs"] + "/no-such-feedback.jsonl"),
         2, r"--feedback .*no-such-feedback\.jsonl: no such file"),
    Case("a model file that is not Keras", lambda f: _inference(
        f, "--features", f["features"], "--model", f"m={f['bad_model']}"),
         2, r"--model m=.*not-a-model\.keras: not a Keras \.keras file"),
    Case("--num_features against the model's width", lambda f: _inference(
        f, "--features", f["features"], "--model", f"m={f['model']}",
        "--num_features", "5"),
         2, rf"--num_features 5, but model m takes {WIDTH} features$"),
    Case("a model option without a name", lambda f: _inference(
        f, "--features", f["features"], "--model", f["model"]),
         2, r"argument --model: '.*m\.keras': expected a match of"),
    # The argparse commands.
    Case("report option typo", lambda f: (report.main, [
        "--inptu", f["out"], "--input", f["out"], "--out", "r.html"]),
         2, r"^pipelines\.report: error: unknown option --inptu"),
    Case("report of a directory without tables", lambda f: (report.main, [
        "--input", f["logs"], "--out", f["out"] + "/r.html"]),
         2, r"^pipelines\.report: error: no arm_stats rows in "),
    Case("demo option abbreviated", lambda f: (demo.main, [
        "--request", "5"]),
         2, r"^pipelines\.demo: error: unknown option --request; did you "
         r"mean --requests\?$"),
]


def _run(command, argv, capsys):
  """(exit status, stdout, stderr) of one in-process command line."""
  capsys.readouterr()
  try:
    command(argv)
    status = 0
  except SystemExit as exit_:
    status = exit_.code
  out, err = capsys.readouterr()
  return status, out, err


def _error_lines(err: str) -> list[str]:
  """stderr without the log records of Beam and its libraries."""
  return [line for line in err.splitlines()
          if line and not re.match(r"^(INFO|WARNING|DEBUG)[: ]", line)]


def _rows(directory: pathlib.Path, table: str) -> list[dict]:
  return [json.loads(line) for path in sorted(directory.glob(f"{table}-*"))
          for line in path.read_text().splitlines() if line.strip()]


def _clear(directory: str) -> None:
  for path in pathlib.Path(directory).glob("*"):
    path.unlink()


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_user_error(case, files, capsys):
  command, argv = case.command(files)
  out_dir = files["out"]
  if os.path.isdir(out_dir):
    _clear(out_dir)
  started = time.monotonic()

  status, out, err = _run(command, argv, capsys)

  lines = _error_lines(err)
  assert (status, bool(lines)) == (case.status, True), err
  assert re.search(case.first_line, lines[0]), lines[0]
  if status == 2:
    assert time.monotonic() - started < 20  # Refused in seconds.
    assert not any(pathlib.Path(out_dir).glob("arm_stats-*"))
  if status == 3:
    # The tables are written, the summary printed, and every dead-lettered
    # record is in dead_letter.
    tables = pathlib.Path(out_dir)
    assert _rows(tables, "arm_stats")
    [summary] = _rows(tables, "run_summary")
    assert summary["status"] == "failed"
    dead = sum(c["count"] for c in summary["counts"]
               if c["metric"].startswith("dead_letter:"))
    assert len(_rows(tables, "dead_letter")) == dead
    assert out.startswith(f"run {summary['run_id']} (reward_batch): FAILED")


def test_a_clean_run_passes_and_prints_its_summary(files, capsys):
  command, argv = _rewards(files, "--predictions", files["predictions"],
                           "--feedback", files["feedback"], "--control_arm",
                           "control", "--expected_allocation",
                           "control=1,treatment=1")
  _clear(files["out"]) if os.path.isdir(files["out"]) else None

  status, out, err = _run(command, argv, capsys)

  assert status == 0, err
  [summary] = _rows(pathlib.Path(files["out"]), "run_summary")
  assert summary["status"] == "passed"
  assert all(gate["passed"] for gate in summary["gates"])
  assert out.startswith(f"run {summary['run_id']} (reward_batch): PASSED")
  assert f"prediction: {REQUESTS} read = {REQUESTS} counted" in out
  assert "exp: arms control,treatment; control control; expected " \
         "allocation control=1,treatment=1" in out


def test_allow_partial_accepts_a_run_that_breaks_a_gate(files, capsys):
  command, argv = _rewards(files, "--predictions", files["predictions"],
                           "--feedback", files["feedback"], "--control_arm",
                           "Control", "--allow_partial")
  _clear(files["out"]) if os.path.isdir(files["out"]) else None

  status, out, _ = _run(command, argv, capsys)

  assert status == 0
  [summary] = _rows(pathlib.Path(files["out"]), "run_summary")
  assert summary["status"] == "accepted"
  assert "FAIL control_arm [exp]" in out


def test_batch_inference_passes_on_good_features(files, capsys):
  command, argv = _inference(files, "--features", files["features"],
                             "--model", f"m={files['model']}")

  status, out, err = _run(command, argv, capsys)

  assert status == 0, err
  assert "(batch_inference): PASSED" in out
  assert "not_empty [predictions]: 20 predictions rows" in out


SUBPROCESS_CASES = ("option typo --prediction", "unquoted glob expanded by "
                    "the shell", "rewards written as true/false")


@pytest.mark.parametrize("name", SUBPROCESS_CASES)
def test_the_same_through_python_dash_m(name, files, tmp_path):
  """The real command: `python -m pipelines.reward_batch ...`, one line on
  stderr before any log record of Beam."""
  [case] = [c for c in CASES if c.name == name]
  _, argv = case.command(files)
  argv = [a.replace(files["out"], str(tmp_path / "out")) for a in argv]

  result = subprocess.run(
      [sys.executable, "-m", "pipelines.reward_batch", *argv], cwd=ROOT,
      capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
      check=False)

  assert result.returncode == case.status, result.stderr
  assert re.search(case.first_line, _error_lines(result.stderr)[0])
  assert "Traceback" not in result.stderr


def test_a_table_bigquery_would_refuse_is_named_before_the_start(
    files, bq_emulator, capsys):
  from transforms.io import bigquery
  from transforms.io import schemas
  emulator, project = bq_emulator
  client = bigquery.bigquery_client(project, emulator.host)
  older = schemas.Table("arm_stats", tuple(
      f for f in schemas.ARM_STATS_FIELDS if f[0] != "srm_alert"), "older")
  bigquery.ensure_tables(client, project, "older_schema", [older])

  status, _, err = _run(*_rewards(
      files, "--predictions", files["predictions"], "--feedback",
      files["feedback"], f"--output_dataset={project}:older_schema",
      f"--bigquery_emulator_host={emulator.host}"), capsys)

  assert status == 2
  assert re.search(
      rf"BigQuery table {project}:older_schema\.arm_stats has no column "
      r"srm_alert \(an older schema\): drop the table", _error_lines(err)[0])


def test_beam_dataflow_and_worker_options_still_pass():
  from transforms import options as opts
  argv = ["--feedback=f.jsonl", "--output_dir=out", "--runner=DataflowRunner",
          "--project=p", "--region=us-central1", "--temp_location=gs://b/t",
          "--num_workers=3", "--max_num_workers", "5",
          "--machine_type=n2-standard-4", "--experiments=a", "--experiments=b",
          "--sdk_container_image=image", "--save_main_session",
          "--dataflow_service_options=enable_prime", "--setup_file=./setup.py",
          "--direct_num_workers=2", "--job_name=j", "--dry_run=True"]

  parsed = opts.parse_pipeline_options(argv, reward_batch.OPTION_CLASSES,
                                       "test")

  all_options = parsed.get_all_options()
  assert (all_options["num_workers"], all_options["experiments"],
          all_options["feedback"]) == (3, ["a", "b"], "f.jsonl")


def test_streaming_demo_without_the_pubsub_emulator(tmp_path):
  """No gcloud on PATH: one line saying what to install, before anything starts."""
  result = subprocess.run(
      [sys.executable, "-m", "pipelines.streaming_demo",
       f"--workdir={tmp_path}"], cwd=ROOT, capture_output=True, text=True,
      env={**os.environ, "PYTHONPATH": str(ROOT),
           "PATH": os.path.dirname(sys.executable)}, check=False)

  assert result.returncode == 1
  assert re.match(r"^pipelines\.streaming_demo: error: the Pub/Sub emulator "
                  r"is not installed: install the Google Cloud CLI",
                  _error_lines(result.stderr)[0])
  assert "Traceback" not in result.stderr


def test_streaming_demo_without_java(monkeypatch, capsys, tmp_path):
  from emulators import pubsub_emulator
  from pipelines import streaming_demo
  monkeypatch.setattr(pubsub_emulator, "is_installed", lambda: True)
  monkeypatch.setattr(streaming_demo.shutil, "which",
                      lambda name: None if name == "java" else f"/bin/{name}")

  status, _, err = _run(streaming_demo.main, [f"--workdir={tmp_path}"], capsys)

  assert status == 1
  assert _error_lines(err)[0].startswith(
      "pipelines.streaming_demo: error: the Pub/Sub emulator needs Java")


NEW_PIPELINES = {
    "model_evaluation": [],
    "policy_evaluation": ["--context_dim=2", "--target_policy=u=split:a=1"],
    "training_export": ["--output_prefix=OUT/export/", "--feature_count=2",
                        "--pseudonymize_key_env=HOME"],
}


@pytest.mark.parametrize("pipeline", sorted(NEW_PIPELINES))
@pytest.mark.parametrize("predictions,message", [
    ("missing.jsonl", "no such file"), ("empty.jsonl", "every file is empty")])
def test_per_request_pipelines_check_their_logs_before_the_start(
    tmp_path, pipeline, predictions, message):
  import importlib
  from transforms.checks import preflight
  (tmp_path / "empty.jsonl").write_text("")
  (tmp_path / "f.jsonl").write_text(
      '{"request_id": "a", "timestamp": 1700000000, "reward": 1}\n')
  module = importlib.import_module(f"pipelines.{pipeline}")
  argv = [f"--predictions={tmp_path / predictions}",
          f"--feedback={tmp_path / 'f.jsonl'}",
          f"--output_dir={tmp_path / 'out'}", "--runner=FnApiRunner",
          *[a.replace("OUT", str(tmp_path)) for a in NEW_PIPELINES[pipeline]]]
  with pytest.raises(preflight.UserError, match=message):
    module.run(argv)
  assert not (tmp_path / "out").exists()

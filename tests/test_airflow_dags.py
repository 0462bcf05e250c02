"""Airflow DAGs: the folder parses, the Dataflow launches use exactly the
templates' parameters, and the local variant runs end to end.

Airflow runs in subprocesses with their own AIRFLOW_HOME (SQLite): this
process's configuration and imports stay untouched.
"""

import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

from templates import registry

ROOT = pathlib.Path(__file__).resolve().parents[1]
DAGS = ROOT / "airflow" / "dags"
DAG_IDS = {"online_eval_rewards_daily", "online_eval_inference_nightly",
           "online_eval_streaming_deploy", "online_eval_local_rewards",
           "online_eval_retrain_weekly", "online_eval_models_daily"}

# Parses the DAG folder as the DAG processor does (the folder is the bundle,
# on sys.path) and writes what the tests check as JSON.
DESCRIBE_DAGS = """
import json, sys
from airflow.dag_processing.dagbag import BundleDagBag

def callbacks(callback):
  callback = callback if isinstance(callback, list) else [callback]
  return [f.__name__ for f in callback if f]

bag = BundleDagBag(dag_folder=sys.argv[1], bundle_path=sys.argv[1])
dags = {}
for dag in bag.dags.values():
  dags[dag.dag_id] = {
      "schedule": getattr(dag.timetable, "expression", None),
      "deadlines": len(dag.deadline or []),
      "tasks": {task.task_id: {
          "operator": type(task).__name__,
          "downstream": sorted(task.downstream_task_ids),
          "retries": task.retries,
          "on_failure": callbacks(task.on_failure_callback),
          **{attribute: getattr(task, attribute) for attribute in (
              "body", "append_job_name", "wait_until_finished", "py_file",
              "py_options", "runner", "pipeline_options", "bash_command")
             if hasattr(task, attribute)},
      } for task in dag.tasks}}
with open(sys.argv[2], "w") as out:
  json.dump({"import_errors": bag.import_errors, "dags": dags}, out,
            default=str)
"""

# Runs the local DAG with dag.test(); writes the run's state and its tasks'.
RUN_LOCAL_DAG = """
import datetime, json, sys
from airflow.dag_processing.dagbag import BundleDagBag

bag = BundleDagBag(dag_folder=sys.argv[1], bundle_path=sys.argv[1])
run = bag.dags["online_eval_local_rewards"].test(
    logical_date=datetime.datetime(2026, 1, 2, tzinfo=datetime.timezone.utc),
    run_conf={"workdir": sys.argv[2], "requests": 500,
              **json.loads(sys.argv[4])})
with open(sys.argv[3], "w") as out:
  json.dump({"run": str(run.state), "tasks": {
      ti.task_id: str(ti.state) for ti in run.get_task_instances()}}, out)
"""


@pytest.fixture(scope="module")
def airflow_env(tmp_path_factory):
  home = tmp_path_factory.mktemp("airflow_home")
  return dict(os.environ, AIRFLOW_HOME=str(home),
              AIRFLOW__CORE__LOAD_EXAMPLES="False",
              AIRFLOW__CORE__DAGS_FOLDER=str(DAGS),
              AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{home}/airflow.db",
              PYTHONPATH=str(ROOT))


def run_python(env, script: str, *args) -> None:
  subprocess.run([sys.executable, "-c", script, *map(str, args)], env=env,
                 cwd=ROOT, check=True, stdout=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def dags(airflow_env, tmp_path_factory):
  described = tmp_path_factory.mktemp("dags") / "dags.json"
  run_python(airflow_env, DESCRIBE_DAGS, DAGS, described)
  parsed = json.loads(described.read_text())
  assert parsed["import_errors"] == {}
  return parsed["dags"]


def launched_template(task: dict) -> str:
  path = task["body"]["launchParameter"]["containerSpecGcsPath"]
  return re.fullmatch(r"gs://.+/templates/(\w+)\.json", path).group(1)


def check_parameters(name: str, parameters: dict) -> None:
  """Launch parameters of template `name`: each one declared there (a renamed
  option fails), every required one given, all strings."""
  declared = registry.load_metadata(name)["parameters"]
  assert set(parameters) <= {p["name"] for p in declared}
  assert {p["name"] for p in declared if not p["isOptional"]} <= set(
      parameters)
  assert all(isinstance(value, str) for value in parameters.values())


def test_dag_folder_parses_into_the_dags(dags):
  assert set(dags) == DAG_IDS


def test_daily_rewards_dag_launches_then_checks_then_publishes(dags):
  daily = dags["online_eval_rewards_daily"]
  assert daily["schedule"] == "0 3 * * *"
  assert daily["deadlines"] == 1
  tasks = daily["tasks"]
  assert tasks["aggregate_rewards"]["downstream"] == ["check_router_state"]
  assert tasks["check_router_state"]["downstream"] == ["check_decisions"]
  assert tasks["check_decisions"]["downstream"] == ["publish_router_state"]
  aggregate = tasks["aggregate_rewards"]
  assert aggregate["wait_until_finished"] is True
  parameters = aggregate["body"]["launchParameter"]["parameters"]
  assert parameters["partition_date"] == "{{ macros.ds_add(ds, -1) }}"
  assert "dt={{ macros.ds_add(ds, -1) }}" in parameters["feedback"]
  for task in tasks.values():
    assert task["retries"] == 2
    assert task["on_failure"] == ["task_failed"]


def test_models_dag_fails_its_check_on_a_canary_fail(dags):
  tasks = dags["online_eval_models_daily"]["tasks"]
  assert tasks["evaluate_models"]["downstream"] == ["check_canaries"]
  check = tasks["check_canaries"]
  assert check["retries"] == 0 and check["on_failure"] == ["task_failed"]


def test_every_template_is_launched_with_its_own_parameters(dags):
  launched = set()
  for dag in dags.values():
    for task in dag["tasks"].values():
      if task["operator"] == "DataflowStartFlexTemplateOperator":
        name = launched_template(task)
        launch = task["body"]["launchParameter"]
        check_parameters(name, launch["parameters"])
        assert f"-{name.replace('_', '-')}:" in launch["environment"][
            "sdkContainerImage"]
        assert launch["environment"]["enableStreamingEngine"] is (
            registry.PIPELINES[name].streaming)
        launched.add(name)
  assert launched == set(registry.PIPELINES)


def test_streaming_deploy_launches_or_updates_the_same_job(dags):
  tasks = dags["online_eval_streaming_deploy"]["tasks"]
  assert tasks["launch_or_update"]["downstream"] == ["launch_streaming",
                                                    "update_streaming"]
  for task_id, update in (("launch_streaming", False),
                          ("update_streaming", True)):
    launch = tasks[task_id]["body"]["launchParameter"]
    assert launch["jobName"] == "reward-streaming"
    assert launch["update"] is update
    assert tasks[task_id]["append_job_name"] is False


def test_local_variant_runs_the_batch_pipeline_with_template_parameters(dags):
  aggregate = dags["online_eval_local_rewards"]["tasks"]["aggregate_rewards"]
  assert aggregate["operator"] == "BeamRunPythonPipelineOperator"
  assert (aggregate["py_options"], aggregate["py_file"]) == (
      ["-m"], registry.PIPELINES["reward_batch"].module)
  assert aggregate["runner"] == "FnApiRunner"
  check_parameters("reward_batch", aggregate["pipeline_options"])


def read_rows(directory: pathlib.Path, table: str) -> list[dict]:
  rows = []
  for path in directory.glob(f"{table}-*-of-*"):
    rows += [json.loads(line) for line in path.read_text().splitlines()]
  return rows


@pytest.fixture(scope="module")
def airflow_db(airflow_env):
  subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"],
                 env=airflow_env, check=True, stdout=subprocess.DEVNULL,
                 stderr=subprocess.DEVNULL)
  return airflow_env


def run_local_dag(airflow_env, workdir: pathlib.Path, **conf) -> dict:
  """dag.test() of the local DAG: {"run": state, "tasks": {task: state}}."""
  states = workdir / "states.json"
  run_python(airflow_env, RUN_LOCAL_DAG, DAGS, workdir, states,
             json.dumps(conf))
  return json.loads(states.read_text())


def test_local_dag_runs_end_to_end(airflow_db, tmp_path):
  states = run_local_dag(airflow_db, tmp_path)

  assert states["run"] == "success"
  # The run of 2026-01-02 owns the previous day.
  out = tmp_path / "out" / "dt=2026-01-01"
  arm_stats = read_rows(out, "arm_stats")
  assert sorted(row["arm"] for row in arm_stats) == [
      "candidate-a", "candidate-b", "control"]
  assert {row["partition_date"] for row in arm_stats} == {"2026-01-01"}
  assert all(row["run_id"].startswith("manual__") for row in arm_stats)
  [router_state] = read_rows(out, "router_state")
  assert router_state["best_arm"] in {"candidate-a", "candidate-b", "control"}
  assert read_rows(out, "data_quality")


def test_local_dag_fails_its_check_on_a_run_that_broke_a_gate(airflow_db,
                                                             tmp_path):
  # No arm is called "Control": the run writes its tables, then fails.
  states = run_local_dag(airflow_db, tmp_path, control_arm="Control")

  assert states["run"] == "failed"
  assert states["tasks"]["aggregate_rewards"] == "failed"
  # The check ran all the same and failed on the run's run_summary row.
  assert states["tasks"]["check_router_state"] == "failed"
  out = tmp_path / "out" / "dt=2026-01-01"
  [summary] = read_rows(out, "run_summary")
  assert summary["status"] == "failed"
  assert [(g["gate"], g["subject"]) for g in summary["gates"]
          if not g["passed"]] == [("control_arm", "homepage-ranker")]
  assert read_rows(out, "arm_stats")  # Nothing is lost.


def test_rollback_and_invalid_decisions_alert_and_invalid_holds_back():
  sys.path.insert(0, str(DAGS))
  try:
    import online_eval_alerts  # pylint: disable=import-outside-toplevel
  finally:
    sys.path.remove(str(DAGS))
  ship = {"experiment_id": "e", "arm": "b", "dimension": "all",
          "segment": "all", "verdict": "ship", "reasons": ["clicks: better"]}
  rollback = {**ship, "arm": "c", "verdict": "rollback",
              "reasons": ["latency_ms p95 +18.0%: worse", "clicks: better"]}
  invalid = {**ship, "dimension": "country", "segment": "DE",
             "verdict": "invalid", "reasons": ["sample ratio mismatch"]}
  assert online_eval_alerts.decision_alerts([ship]) == ([], False)
  lines, hold_back = online_eval_alerts.decision_alerts([ship, rollback])
  assert not hold_back
  assert lines == ["ONLINE_EVAL_ALERT rollback: experiment e, arm c: "
                   "latency_ms p95 +18.0%: worse; clicks: better"]
  lines, hold_back = online_eval_alerts.decision_alerts([invalid, rollback])
  assert hold_back and len(lines) == 2
  assert "arm b [country=DE]: sample ratio mismatch" in lines[0]
  assert online_eval_alerts.report_decisions([invalid]) is False

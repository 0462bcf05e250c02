"""The daily reward DAG on one machine: simulated logs, the DirectRunner
(FnApiRunner), JSON-lines tables instead of BigQuery.

  simulate_logs >> aggregate_rewards (reward_batch) >> check_router_state

A run that breaks a quality gate writes its tables and exits non-zero, so
aggregate_rewards fails; check_router_state runs all the same, reads the
run's run_summary row and fails naming the broken gates (as the Dataflow
DAG's check does, where a job finishes whatever its gates say).

Same pipeline and template parameters as online_eval_rewards_daily, so the
DAG can be exercised without Google Cloud. From the repository root, with
`pip install -e .[airflow]`:
  export AIRFLOW_HOME=/tmp/airflow AIRFLOW__CORE__LOAD_EXAMPLES=False \
      AIRFLOW__CORE__DAGS_FOLDER=$PWD/airflow/dags PYTHONPATH=$PWD
  airflow db migrate
  airflow dags test online_eval_local_rewards 2026-01-02 \
      -c '{"workdir": "/tmp/online-eval"}'
writes the tables to /tmp/online-eval/out/dt=2026-01-01/ (the previous day).
"""

from __future__ import annotations

import datetime
import glob
import json
import sys

from airflow.providers.apache.beam.operators.beam import BeamRunPythonPipelineOperator
from airflow.sdk import DAG
from airflow.sdk import Param
from airflow.sdk import task

from templates import registry

PARTITION = "{{ macros.ds_add(ds, -1) }}"
LOGS = "{{ params.workdir }}/logs/dt=" + PARTITION
OUTPUT = "{{ params.workdir }}/out/dt=" + PARTITION

with DAG(dag_id="online_eval_local_rewards",
         description="online_eval_rewards_daily on the DirectRunner",
         schedule=None,
         start_date=datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc),
         catchup=False,
         params={"workdir": Param("local/airflow", type="string",
                                  description="Where logs and tables go"),
                 "requests": Param(5000, type="integer", minimum=1,
                                   description="Simulated served requests"),
                 "control_arm": Param("control", type="string",
                                      description="The pipeline's "
                                      "--control_arm")},
         tags=["online-eval", "local"]):

  @task
  def simulate_logs(logs_dir: str, params=None) -> None:
    """The demo's simulated router, as the day's prediction and feedback logs."""
    import dataclasses
    from pipelines import demo  # Imported when run: parsing needs no Beam.
    scenario = dataclasses.replace(demo.SCENARIO, requests=params["requests"])
    demo.write_sample_logs(logs_dir, scenario)

  aggregate_rewards = BeamRunPythonPipelineOperator(
      task_id="aggregate_rewards", py_file="pipelines.reward_batch",
      py_options=["-m"], py_interpreter=sys.executable,
      # The DirectRunner would first download the Prism runner.
      runner="FnApiRunner",
      pipeline_options=registry.template_parameters(
          "reward_batch", predictions=f"{LOGS}/predictions.jsonl",
          feedback=f"{LOGS}/feedback.jsonl", output_dir=OUTPUT,
          partition_date=PARTITION, run_id="{{ run_id }}",
          control_arm="{{ params.control_arm }}"))

  def read_rows(output_dir: str, table: str) -> list[dict]:
    rows = []
    for path in glob.glob(f"{output_dir}/{table}-*-of-*"):
      with open(path) as lines:
        rows += [json.loads(line) for line in lines if line.strip()]
    return rows

  @task(trigger_rule="all_done")
  def check_router_state(output_dir: str, run_id=None) -> int:
    """Fail unless this run's run_summary says its gates held (or were
    accepted) and it wrote router state; return the router_state rows."""
    summaries = [row for row in read_rows(output_dir, "run_summary")
                 if row["run_id"] == run_id]
    if not summaries:
      raise ValueError(f"no run_summary row of run {run_id} in {output_dir}")
    failed = [f"{gate['gate']} [{gate['subject']}]: {gate['detail']}"
              for gate in summaries[0]["gates"] if not gate["passed"]]
    if summaries[0]["status"] == "failed":
      raise ValueError(f"run {run_id} broke its quality gates: " +
                       "; ".join(failed))
    rows = len(read_rows(output_dir, "router_state"))
    if not rows:
      raise ValueError(f"no router_state rows in {output_dir}")
    return rows

  simulate_logs(LOGS) >> aggregate_rewards >> check_router_state(OUTPUT)

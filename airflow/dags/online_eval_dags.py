"""Online-eval pipelines on Dataflow, launched from their Flex Templates.

  online_eval_rewards_daily      03:00 UTC: the previous day's partition
      aggregate_rewards (reward_batch) >> check_router_state (run_summary
      gates, router state)
      >> check_decisions (alert on rollback/invalid; invalid stops here)
      >> publish_router_state (router_state_current, what routers read);
      beside them evaluate_policies (policy_evaluation of a target policy)
  online_eval_inference_nightly  01:00 UTC: batch_inference on the previous
      day's features
  online_eval_models_daily       04:00 UTC: model_evaluation of the previous
      day's logs >> check_canaries (fails, and so alerts, on a canary Fail)
  online_eval_streaming_deploy   manual: launch reward_streaming, or update
      the running job in place (after a new template is built)

Settings come from the Airflow Variable `online_eval` (JSON; keys in
README, "Run on Google Cloud"). Template parameters are checked against
templates/<name>/metadata.json, generated from the pipelines' options: a
renamed option fails parsing here, not the scheduled run.
"""

from __future__ import annotations

import datetime

from airflow.providers.google.cloud.hooks.bigquery import BigQueryHook
from airflow.providers.google.cloud.hooks.dataflow import DataflowHook
from airflow.providers.google.cloud.operators.bigquery import BigQueryCheckOperator
from airflow.providers.google.cloud.operators.bigquery import BigQueryInsertJobOperator
from airflow.sdk import DAG
from airflow.sdk import CronTriggerTimetable
from airflow.sdk import Variable
from airflow.sdk import task

import online_eval_alerts
from online_eval_launch import DEFAULT_ARGS
from online_eval_launch import SETTINGS
from online_eval_launch import START_DATE
from online_eval_launch import deadline
from online_eval_launch import flex_template
from online_eval_launch import setting
from templates import registry

PARTITION = "{{ macros.ds_add(ds, -1) }}"  # The run at 03:00 owns yesterday.
STREAMING_JOB = "reward-streaming"


def optional_setting(key: str) -> str:
  """Like `setting`, but an absent key renders as empty (option not given)."""
  return "{{ var.json.%s.get('%s', '') }}" % (SETTINGS, key)


def table(dataset_key: str, name: str) -> str:
  return f"`{setting('project')}.{setting(dataset_key)}.{name}`"


with DAG(dag_id="online_eval_rewards_daily",
         description="Rewards, statistics and router state of yesterday",
         schedule=CronTriggerTimetable("0 3 * * *", timezone="UTC"),
         start_date=START_DATE, catchup=False, max_active_runs=1,
         default_args=DEFAULT_ARGS, deadline=deadline(hours=4),
         tags=["online-eval"]):
  logs = setting("logs")
  aggregate_rewards = flex_template(
      "aggregate_rewards", "reward_batch", "reward-batch-{{ ds_nodash }}",
      registry.template_parameters(
          "reward_batch",
          predictions=f"{logs}/predictions/dt={PARTITION}/*",
          feedback=f"{logs}/feedback/dt={PARTITION}/*",
          output_dataset=f"{setting('project')}:{setting('dataset')}",
          metrics=optional_setting("metrics"),
          dimensions=optional_setting("dimensions"),
          partition_date=PARTITION, run_id="{{ run_id }}"),
      wait_until_finished=True)

  # The run held its quality gates (its run_summary row is not `failed`: a
  # Dataflow job finishes whatever they say), and every experiment with arm
  # statistics that day has its router state.
  check_router_state = BigQueryCheckOperator(
      task_id="check_router_state", use_legacy_sql=False,
      sql=f"""
        WITH stats AS (
          SELECT DISTINCT experiment_id FROM {table('dataset', 'arm_stats')}
          WHERE partition_date = '{PARTITION}'),
        state AS (
          SELECT experiment_id FROM {table('dataset', 'router_state')}
          WHERE partition_date = '{PARTITION}'),
        summary AS (
          SELECT status FROM {table('dataset', 'run_summary')}
          WHERE partition_date = '{PARTITION}' AND run_id = '{{{{ run_id }}}}')
        SELECT
          (SELECT COUNT(*) > 0 FROM stats),
          (SELECT COUNTIF(state.experiment_id IS NULL) = 0
           FROM stats LEFT JOIN state USING (experiment_id)),
          (SELECT COUNT(*) = 1 AND COUNTIF(status = 'failed') = 0
           FROM summary)""")

  # Routers poll one small table; it changes only after the check passed, and
  # always to the newest day (a backfill does not roll it back).
  publish_router_state = BigQueryInsertJobOperator(
      task_id="publish_router_state", project_id=setting("project"),
      configuration={"query": {"useLegacySql": False, "query": f"""
        CREATE OR REPLACE TABLE {table('dataset', 'router_state_current')} AS
        SELECT * FROM {table('dataset', 'router_state')}
        WHERE partition_date = (SELECT MAX(partition_date)
                                FROM {table('dataset', 'router_state')})"""}})

  @task.short_circuit(ignore_downstream_trigger_rules=False)
  def check_decisions(partition: str) -> bool:
    """Alert on every rollback or invalid verdict of the day (overall and per
    segment); an invalid one holds back publishing the router state."""
    settings = Variable.get(SETTINGS, deserialize_json=True)
    if not settings.get("metrics"):
      return True  # No --metrics: no decisions table.
    client = BigQueryHook(use_legacy_sql=False).get_client(
        project_id=settings["project"])
    rows = client.query(
        f"SELECT experiment_id, dimension, segment, arm, verdict, reasons "
        f"FROM `{settings['project']}.{settings['dataset']}.decisions` "
        f"WHERE partition_date = '{partition}'").result()
    return online_eval_alerts.report_decisions([dict(row) for row in rows])

  (aggregate_rewards >> check_router_state >> check_decisions(PARTITION)
   >> publish_router_state)

  # What a candidate routing policy would have earned on the same day.
  flex_template(
      "evaluate_policies", "policy_evaluation",
      "policy-evaluation-{{ ds_nodash }}",
      registry.template_parameters(
          "policy_evaluation",
          predictions=f"{logs}/predictions/dt={PARTITION}/*",
          feedback=f"{logs}/feedback/dt={PARTITION}/*",
          context_features=setting("context_features"),
          target_policy=setting("target_policy"),
          # Its own dataset: each batch job replaces its day partition of
          # dead_letter and data_quality too.
          output_dataset=f"{setting('project')}:{setting('policy_dataset')}",
          partition_date=PARTITION, run_id="{{ run_id }}"),
      wait_until_finished=True)


with DAG(dag_id="online_eval_inference_nightly",
         description="Every model's predictions on yesterday's features",
         schedule=CronTriggerTimetable("0 1 * * *", timezone="UTC"),
         start_date=START_DATE, catchup=False, max_active_runs=1,
         default_args=DEFAULT_ARGS, deadline=deadline(hours=3),
         tags=["online-eval"]):
  flex_template(
      "batch_inference", "batch_inference", "batch-inference-{{ ds_nodash }}",
      registry.template_parameters(
          "batch_inference",
          features=f"{setting('features')}/dt={PARTITION}/*.parquet",
          model=setting("model"),
          # Its own dataset: each batch job replaces its day partition of
          # dead_letter and data_quality too.
          output_dataset=f"{setting('project')}:{setting('inference_dataset')}",
          partition_date=PARTITION, run_id="{{ run_id }}"),
      wait_until_finished=True)


with DAG(dag_id="online_eval_models_daily",
         description="Model quality, shadow vs live and canary verdicts of "
         "yesterday",
         schedule=CronTriggerTimetable("0 4 * * *", timezone="UTC"),
         start_date=START_DATE, catchup=False, max_active_runs=1,
         default_args=DEFAULT_ARGS, deadline=deadline(hours=4),
         tags=["online-eval"]):
  logs = setting("logs")
  evaluate_models = flex_template(
      "evaluate_models", "model_evaluation",
      "model-evaluation-{{ ds_nodash }}",
      registry.template_parameters(
          "model_evaluation",
          predictions=f"{logs}/predictions/dt={PARTITION}/*",
          feedback=f"{logs}/feedback/dt={PARTITION}/*",
          task=setting("task"),
          # Its own dataset: each batch job replaces its day partition of
          # dead_letter and data_quality too.
          output_dataset=f"{setting('project')}:{setting('models_dataset')}",
          partition_date=PARTITION, run_id="{{ run_id }}"),
      wait_until_finished=True)

  # A canary that failed its judgement fails this task: its failure callback
  # raises the alert (no retry: the verdict will not change).
  check_canaries = BigQueryCheckOperator(
      task_id="check_canaries", use_legacy_sql=False, retries=0,
      sql=f"""
        SELECT COUNTIF(verdict = 'Fail') = 0
        FROM {table('models_dataset', 'canary_verdicts')}
        WHERE partition_date = '{PARTITION}'""")

  evaluate_models >> check_canaries


with DAG(dag_id="online_eval_streaming_deploy",
         description="Launch the streaming reward job, or update it in place",
         schedule=None, start_date=START_DATE, catchup=False,
         max_active_runs=1, default_args=DEFAULT_ARGS, tags=["online-eval"]):

  @task.branch
  def launch_or_update() -> str:
    settings = Variable.get(SETTINGS, deserialize_json=True)
    running = DataflowHook().is_job_dataflow_running(
        name=STREAMING_JOB, project_id=settings["project"],
        location=settings["region"])
    return "update_streaming" if running else "launch_streaming"

  streaming_parameters = registry.template_parameters(
      "reward_streaming",
      predictions_subscription=setting("predictions_subscription"),
      feedback_subscription=setting("feedback_subscription"),
      output_dataset=f"{setting('project')}:{setting('streaming_dataset')}")
  # The job name stays STREAMING_JOB: an update replaces the job of that name,
  # keeping its state.
  launch_or_update() >> [
      flex_template("launch_streaming", "reward_streaming", STREAMING_JOB,
                    streaming_parameters, append_job_name=False),
      flex_template("update_streaming", "reward_streaming", STREAMING_JOB,
                    streaming_parameters, append_job_name=False, update=True),
  ]

"""Weekly retraining from the serving logs, on Dataflow and one training task.

  online_eval_retrain_weekly   Mondays 04:00 UTC
      export_day_1 .. export_day_7 (training_export Flex Template, one per day
      of the past week, each its own dt= directory; a re-run rewrites the
      same files) >> train_candidate (registers models:/ranker@candidate)

The training task runs `python -m pipelines.train_candidate` on the Airflow
worker (the package and its [mlflow] extra installed there); a large model
would move it to Vertex AI or a Kubernetes pod instead. Settings come from
the Airflow Variable `online_eval`, as in online_eval_launch.py, plus
`feature_count`, `text_fields`, `key_secret` (Secret Manager version of the
pseudonymization key), `training_dir` and `registry_dir`.
"""

from __future__ import annotations

import datetime

from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import DAG
from airflow.sdk import CronTriggerTimetable

from online_eval_launch import DEFAULT_ARGS
from online_eval_launch import START_DATE
from online_eval_launch import deadline
from online_eval_launch import flex_template
from online_eval_launch import setting
from templates import registry

DAYS = 7


def day(offset: int) -> str:
  """The day `offset` days before the run's logical date."""
  return "{{ macros.ds_add(ds, -%d) }}" % offset


def export_prefix(offset: int) -> str:
  return f"gs://{setting('bucket')}/training/dt={day(offset)}/"


with DAG(dag_id="online_eval_retrain_weekly",
         description="Export the past week of logs as training data, train "
         "and register a candidate model",
         schedule=CronTriggerTimetable("0 4 * * 1", timezone="UTC"),
         start_date=START_DATE, catchup=False, max_active_runs=1,
         default_args=DEFAULT_ARGS, deadline=deadline(hours=8),
         tags=["online-eval"]):
  logs = setting("logs")
  exports = [
      flex_template(
          f"export_day_{offset}", "training_export",
          f"training-export-{{{{ ds_nodash }}}}-{offset}",
          registry.template_parameters(
              "training_export",
              predictions=f"{logs}/predictions/dt={day(offset)}/*",
              feedback=f"{logs}/feedback/dt={day(offset)}/*",
              output_prefix=export_prefix(offset),
              feature_count=setting("feature_count"),
              text_fields=setting("text_fields"),
              pseudonymize_key_secret=setting("key_secret"),
              output_dataset=f"{setting('project')}:{setting('dataset')}",
              partition_date=day(offset), run_id="{{ run_id }}"),
          wait_until_finished=True)
      for offset in range(1, DAYS + 1)]

  train = BashOperator(
      task_id="train_candidate",
      bash_command=(
          "python -m pipelines.train_candidate"
          f" --export {','.join(export_prefix(o) for o in range(1, DAYS + 1))}"
          f" --out {setting('training_dir')}/{{{{ ds_nodash }}}}"
          f" --registry mlflow --registry_dir {setting('registry_dir')}"
          " --model_name ranker --alias candidate"),
      execution_timeout=datetime.timedelta(hours=4))

  exports >> train

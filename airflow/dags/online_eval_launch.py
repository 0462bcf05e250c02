"""What the Dataflow DAGs share: settings, default arguments, deadlines and
the Flex Template launch. Defines no DAG: the DAG files import it.

Settings come from the Airflow Variable `online_eval` (JSON; keys in
README, "Run on Google Cloud").
"""

from __future__ import annotations

import datetime

from airflow.providers.google.cloud.operators.dataflow import DataflowStartFlexTemplateOperator
from airflow.sdk import AsyncCallback
from airflow.sdk import DeadlineAlert
from airflow.sdk import DeadlineReference

import online_eval_alerts
from templates import registry

SETTINGS = "online_eval"
START_DATE = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)

DEFAULT_ARGS = {
    "retries": 2,
    "retry_delay": datetime.timedelta(minutes=10),
    "on_failure_callback": online_eval_alerts.task_failed,
}


def setting(key: str) -> str:
  """A template that renders to one key of the `online_eval` Variable."""
  return "{{ var.json.%s.%s }}" % (SETTINGS, key)


def deadline(hours: int) -> DeadlineAlert:
  """Alert when a run is not done `hours` after it was queued."""
  return DeadlineAlert(reference=DeadlineReference.DAGRUN_QUEUED_AT,
                       interval=datetime.timedelta(hours=hours),
                       callback=AsyncCallback(online_eval_alerts.run_late))


def flex_template(task_id: str, name: str, job_name: str, parameters: dict,
                  update: bool = False,
                  **operator_kwargs) -> DataflowStartFlexTemplateOperator:
  """Launch template `name` (built by templates/build_and_run.sh) with its own
  image as the workers' SDK container."""
  bucket = setting("bucket")
  image = f"{setting('image')}-{name.replace('_', '-')}:{setting('tag')}"
  body = {"launchParameter": {
      "jobName": job_name,
      "containerSpecGcsPath": f"gs://{bucket}/templates/{name}.json",
      "parameters": parameters,
      "environment": {"sdkContainerImage": image,
                      "tempLocation": f"gs://{bucket}/tmp",
                      "stagingLocation": f"gs://{bucket}/staging",
                      "enableStreamingEngine":
                          registry.PIPELINES[name].streaming},
      "update": update,
  }}
  return DataflowStartFlexTemplateOperator(
      task_id=task_id, body=body, project_id=setting("project"),
      location=setting("region"), **operator_kwargs)

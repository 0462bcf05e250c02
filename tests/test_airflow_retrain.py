"""The weekly retraining DAG: a week of exports with the template's own
parameters, then the training task that registers the candidate."""

import pytest

from templates import registry
from tests.test_airflow_dags import check_parameters
from tests.test_airflow_dags import launched_template
from tests.test_airflow_dags import airflow_env  # noqa: F401 (fixture)
from tests.test_airflow_dags import dags  # noqa: F401 (fixture)


@pytest.fixture(name="retrain")
def _retrain(dags):  # pylint: disable=redefined-outer-name
  return dags["online_eval_retrain_weekly"]


def test_weekly_schedule_with_a_deadline(retrain):
  assert retrain["schedule"] == "0 4 * * 1"
  assert retrain["deadlines"] == 1


def test_one_export_per_day_of_the_week_then_training(retrain):
  tasks = retrain["tasks"]
  exports = {task_id: task for task_id, task in tasks.items()
             if task_id.startswith("export_day_")}
  assert len(exports) == 7
  days = set()
  for task in exports.values():
    assert task["downstream"] == ["train_candidate"]
    assert launched_template(task) == "training_export"
    parameters = task["body"]["launchParameter"]["parameters"]
    check_parameters("training_export", parameters)
    assert parameters["output_prefix"].endswith(
        f"dt={parameters['partition_date']}/")
    assert f"dt={parameters['partition_date']}/" in parameters["predictions"]
    assert "pseudonymize_key_env" not in parameters  # A secret on Dataflow.
    days.add(parameters["partition_date"])
  assert len(days) == 7
  command = tasks["train_candidate"]["bash_command"]
  assert "pipelines.train_candidate" in command
  assert "--registry mlflow" in command
  for task in exports.values():
    assert task["body"]["launchParameter"]["parameters"][
        "output_prefix"] in command
  assert registry.PIPELINES["training_export"].streaming is False

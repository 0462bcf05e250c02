"""Dataflow submission, checked offline: every pipeline through the
DataflowRunner's dry run, with gs:// paths and no network.

A dry run does everything a submission does before calling the Dataflow API
(option validation, transform overrides, pickling every DoFn into the
portable pipeline proto, the job description) and returns the job instead of
creating it. It stays offline as long as:
  --project is a valid project id and --temp_location a valid gs:// bucket
      name (otherwise Beam looks up a default bucket: credentials, GCS);
  --update is not given (it asks Dataflow for the running job's id);
  batch_inference gets --num_features (otherwise it reads the models'
      input width, from GCS).
Nothing is staged in a dry run, so no --sdk_location is needed.
"""

import importlib
import socket

from apache_beam.portability.api import beam_runner_api_pb2
from apache_beam.runners import runner
from google.cloud import dataflow
import pytest

from templates import main
from templates import registry
from transforms.logs import read_bigquery

IMAGE = "us-central1-docker.pkg.dev/my-project/online-eval/online-eval:v1"
DATAFLOW = ["--runner=DataflowRunner", "--dry_run=True",
            "--project=my-project", "--region=us-central1",
            "--temp_location=gs://my-bucket/tmp",
            f"--sdk_container_image={IMAGE}"]
PARAMETERS = {
    "reward_batch": dict(
        predictions="gs://my-bucket/logs/predictions/dt=2026-01-01/*",
        feedback="gs://my-bucket/logs/feedback/dt=2026-01-01/*",
        output_dataset="my-project:online_eval",
        output_dir="gs://my-bucket/tables/dt=2026-01-01",
        partition_date="2026-01-01"),
    "reward_streaming": dict(
        predictions_subscription="projects/my-project/subscriptions/pred",
        feedback_subscription="projects/my-project/subscriptions/feedback",
        output_dataset="my-project:online_eval_live", model_quality="true"),
    "batch_inference": dict(
        features="gs://my-bucket/features/dt=2026-01-01/*.parquet",
        model="logreg=gs://my-bucket/models/logreg.keras", num_features=8,
        output_dataset="my-project:online_eval",
        partition_date="2026-01-01"),
    "training_export": dict(
        predictions="gs://my-bucket/logs/predictions/dt=2026-01-01/*",
        feedback="gs://my-bucket/logs/feedback/dt=2026-01-01/*",
        output_prefix="gs://my-bucket/training/dt=2026-01-01/",
        feature_count=16, text_fields="request.text",
        pseudonymize_key_secret="projects/my-project/secrets/key/versions/1",
        output_dataset="my-project:online_eval",
        partition_date="2026-01-01"),
    "policy_evaluation": dict(
        predictions="gs://my-bucket/logs/predictions/dt=2026-01-01/*",
        feedback="gs://my-bucket/logs/feedback/dt=2026-01-01/*",
        context_features="age,score", target_policy="even=split:a=1,b=1",
        output_dataset="my-project:online_eval",
        partition_date="2026-01-01"),
    "model_evaluation": dict(
        predictions="gs://my-bucket/logs/predictions/dt=2026-01-01/*",
        feedback="gs://my-bucket/logs/feedback/dt=2026-01-01/*",
        output_dataset="my-project:online_eval",
        partition_date="2026-01-01", canary_confidence=0.99),
}
# How each pipeline's arm_stats (or predictions) table reaches BigQuery.
BIGQUERY_WRITES = {
    "reward_batch": "WriteOutputs/Write_arm_stats/WriteBigQuery/"
                    "BigQueryBatchFileLoads",
    "reward_streaming": "WriteOutputs/Write_arm_stats/WriteBigQuery/"
                        "_StreamToBigQuery",
    "batch_inference": "WriteOutputs/Write_predictions/WriteBigQuery/"
                       "BigQueryBatchFileLoads",
    "training_export": "WriteOutputs/Write_export_summary/WriteBigQuery/"
                       "BigQueryBatchFileLoads",
    "policy_evaluation": "WriteOutputs/Write_policy_value/WriteBigQuery/"
                         "BigQueryBatchFileLoads",
    "model_evaluation": "WriteOutputs/Write_model_quality/WriteBigQuery/"
                        "BigQueryBatchFileLoads",
}


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
  """Any connection or name lookup fails the test."""

  def refuse(*args, **kwargs):
    raise AssertionError(f"network access during a dry run: {args}")

  monkeypatch.setattr(socket.socket, "connect", refuse)
  monkeypatch.setattr(socket, "getaddrinfo", refuse)


def arguments(name: str, **overrides) -> list[str]:
  parameters = registry.template_parameters(
      name, **{**PARAMETERS[name], **overrides})
  return DATAFLOW + [f"--{key}={value}" for key, value in parameters.items()]


def check_job(name: str, job) -> set[str]:
  """Checks the job's type, BigQuery writes and image; returns its transforms."""
  expected_type = (dataflow.JobType.JOB_TYPE_STREAMING
                   if registry.PIPELINES[name].streaming else
                   dataflow.JobType.JOB_TYPE_BATCH)
  assert job.proto.type_ == expected_type
  transforms = {transform.unique_name for transform
                in job.proto_pipeline.components.transforms.values()}
  assert BIGQUERY_WRITES[name] in transforms
  [environment] = job.proto_pipeline.components.environments.values()
  docker = beam_runner_api_pb2.DockerPayload.FromString(environment.payload)
  assert docker.container_image == IMAGE
  return transforms


def test_every_pipeline_is_dry_run():
  assert set(PARAMETERS) == set(BIGQUERY_WRITES) == set(registry.PIPELINES)


@pytest.mark.parametrize("name", sorted(registry.PIPELINES))
def test_flex_template_entry_point_produces_the_job(name, monkeypatch):
  monkeypatch.setenv(main.PIPELINE_ENV, name)
  check_job(name, main.main(arguments(name)).job)


@pytest.mark.parametrize("name", sorted(registry.PIPELINES))
def test_direct_submission_produces_the_job(name):
  """python -m pipelines.<name> --runner=DataflowRunner ..."""
  module = importlib.import_module(registry.PIPELINES[name].module)
  returned = module.run(arguments(name))
  # reward_streaming.run returns the result; the batch runs, their pipeline.
  result = (returned if isinstance(returned, runner.PipelineResult) else
            returned.result)
  check_job(name, result.job)


def test_batch_job_writes_the_run_partition_of_each_table():
  job = main.build_pipeline("reward_batch", arguments("reward_batch")).run().job
  display = str(job.proto_pipeline)
  assert "my-project:online_eval.arm_stats$20260101" in display
  assert "WRITE_TRUNCATE" in display


def test_batch_inference_reads_a_bigquery_table_offline():
  job = main.build_pipeline("batch_inference", arguments(
      "batch_inference", features=None,
      features_table="my-project:features.daily")).run().job
  assert "BatchInference/ReadFeatures/ReadTable" in check_job(
      "batch_inference", job)


def source_display_data(job, step: str) -> dict:
  """The display data of the BigQuery source read at `step`."""
  [transform] = [t for t in job.proto_pipeline.components.transforms.values()
                 if t.unique_name == step]
  shown = {}
  for item in transform.display_data:
    payload = beam_runner_api_pb2.LabelledPayload.FromString(item.payload)
    shown[payload.key] = getattr(payload, payload.WhichOneof("value"))
  return shown


VERTEX_TABLE = "my-project:vertex_logs.request_response_logging"
CONVERSIONS = ("SELECT request_id, timestamp, reward FROM "
               "`my-project.crm.conversions`")


@pytest.mark.parametrize("log_format", ["auto", "vertex"])
def test_batch_job_reads_its_logs_with_beams_read_from_bigquery(
    log_format, monkeypatch):
  """On Dataflow the logs are read by Beam's ReadFromBigQuery (DIRECT_READ):
  a table for the run's day, a query as it is. A prediction table of
  unknown format has its columns looked up when the job is built."""
  looked_up = []

  def vertex_columns(source):
    looked_up.append(source.table)
    return ["endpoint", "deployed_model_id", "logging_time", "request_id",
            "request_payload", "response_payload"]

  monkeypatch.setattr(read_bigquery, "table_columns", vertex_columns)
  job = main.build_pipeline("reward_batch", arguments(
      "reward_batch", predictions=None, feedback=None,
      predictions_table=VERTEX_TABLE, feedback_query=CONVERSIONS,
      log_format=log_format, sampling_rate="0.2")).run().job
  transforms = check_job("reward_batch", job)
  for read in ("ReadPredictions", "ReadFeedback"):
    for step in ("ReadFromBigQuery/Read", "RowsToArrow/Batch",
                 "RowsToArrow/Parse"):
      assert f"RewardAggregation/{read}/ReadBigQuery/{step}" in transforms
  assert "RewardAggregation/EstimatedRequests/Scale" in transforms
  assert looked_up == ([VERTEX_TABLE] if log_format == "auto" else [])
  table_read = source_display_data(
      job, "RewardAggregation/ReadPredictions/ReadBigQuery/ReadFromBigQuery/"
      "Read")
  assert table_read["method"] == "DIRECT_READ"
  assert table_read["output_format"] == "ARROW"
  assert "request_response_logging" in table_read["table_reference"]
  assert table_read["row_restriction"] == (
      "`logging_time` >= TIMESTAMP '2026-01-01 00:00:00+00' AND "
      "`logging_time` < TIMESTAMP '2026-01-02 00:00:00+00'")
  query_read = source_display_data(
      job, "RewardAggregation/ReadFeedback/ReadBigQuery/ReadFromBigQuery/Read")
  assert query_read["query"] == CONVERSIONS
  assert query_read["use_legacy_sql"] is False
  assert query_read["row_restriction"] == "None"


def test_batch_job_reads_its_logs_in_arrow_streams_offline():
  """--bigquery_read_method=ARROW_STREAMS: sessions are opened when the job
  runs, not when it is built."""
  job = main.build_pipeline("reward_batch", arguments(
      "reward_batch", predictions=None, feedback=None,
      predictions_table=VERTEX_TABLE, feedback_query=CONVERSIONS,
      bigquery_read_method="ARROW_STREAMS", sampling_rate="0.2")).run().job
  transforms = check_job("reward_batch", job)
  for read in ("ReadPredictions", "ReadFeedback"):
    for step in ("OpenReadSession", "ReadStreams"):
      assert f"RewardAggregation/{read}/ReadBigQuery/{step}" in transforms
  assert "RewardAggregation/EstimatedRequests/Scale" in transforms


def test_training_export_masks_free_text_with_cloud_dlp_offline():
  """The Cloud DLP step cannot run offline: its graph is built and checked."""
  job = main.build_pipeline("training_export", arguments(
      "training_export", dlp_project="my-project")).run().job
  transforms = check_job("training_export", job)
  assert ("TrainingExport/MaskWithCloudDlp/MaskDetectedDetails"
          in {name.rsplit("/", 1)[0] for name in transforms} | transforms)
  assert "TrainingExport/ExportTrainingSet/WriteShards" in transforms

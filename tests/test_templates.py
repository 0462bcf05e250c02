"""Flex Templates: metadata generated from the options, the image's files, the
entry point, and the build script (with a stand-in gcloud)."""

import argparse
import importlib
import os
import pathlib
import re
import shutil
import subprocess

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.options.pipeline_options import StandardOptions
import pytest

from templates import generate
from templates import main
from templates import registry

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "templates" / "Dockerfile"

# Launch parameters of each template, with local paths: nothing is read.
PARAMETERS = {
    "reward_batch": dict(predictions="logs/predictions*.jsonl",
                         feedback="logs/feedback*.jsonl", output_dir="out",
                         partition_date="2026-01-01", reward_reduce="sum"),
    "reward_streaming": dict(
        predictions_subscription="projects/my-project/subscriptions/predictions",
        feedback_subscription="projects/my-project/subscriptions/feedback",
        output_dataset="my-project:live", window_s=600),
    "batch_inference": dict(features="features*.parquet",
                            model="logreg=models/logreg.keras",
                            num_features=8, output_dir="out"),
    "training_export": dict(
        predictions="logs/predictions*.jsonl", feedback="logs/feedback*.jsonl",
        output_prefix="out/export/dt=2026-01-01/", feature_count=16,
        pseudonymize_key_secret="projects/p/secrets/key/versions/1",
        output_dir="out"),
    "policy_evaluation": dict(predictions="logs/predictions*.jsonl",
                              feedback="logs/feedback*.jsonl", context_dim=4,
                              target_policy="even=split:a=1,b=1",
                              output_dir="out", bootstrap=50),
    "model_evaluation": dict(predictions="logs/predictions*.jsonl",
                             feedback="logs/feedback*.jsonl", output_dir="out",
                             task="regression", canary_arm="v2"),
}
TOP_LEVEL_TRANSFORMS = {
    "reward_batch": {"RewardAggregation", "RunSummary", "WriteOutputs"},
    "reward_streaming": {"Read_predictions", "Read_feedback",
                         "RewardStreaming", "WriteOutputs"},
    "batch_inference": {"BatchInference", "RunSummary", "WriteOutputs"},
    "training_export": {"TrainingExport", "WriteOutputs"},
    "policy_evaluation": {"PolicyEvaluation", "WriteOutputs"},
    "model_evaluation": {"ModelEvaluation", "WriteOutputs"},
}


def launcher_args(parameters: dict) -> list[str]:
  """How the Flex Template launcher passes parameters to the entry point."""
  return [f"--{name}={value}" for name, value in parameters.items()]


def test_every_pipeline_has_test_parameters():
  assert set(PARAMETERS) == set(registry.PIPELINES)


def test_checked_in_metadata_is_what_the_options_generate():
  assert generate.outdated() == [], "run: python -m templates.generate"


def test_check_mode_fails_on_stale_metadata_and_writing_fixes_it(
    tmp_path, monkeypatch, capsys):
  copy = tmp_path / "templates"
  shutil.copytree(registry.TEMPLATES_DIR, copy,
                  ignore=shutil.ignore_patterns("*.py", "__pycache__"))
  monkeypatch.setattr(registry, "TEMPLATES_DIR", copy)
  metadata = copy / "reward_batch" / "metadata.json"
  metadata.write_text(metadata.read_text().replace("Join shards", "Shards"))

  assert generate.main(["--check"]) == 1
  assert "reward_batch/metadata.json differs" in capsys.readouterr().out
  assert generate.main([]) == 0
  assert "Join shards" in metadata.read_text()
  assert generate.main(["--check"]) == 0
  metadata.unlink()
  assert generate.main(["--check"]) == 1


@pytest.mark.parametrize("name", sorted(registry.PIPELINES))
def test_metadata_has_every_option_of_the_pipeline(name):
  module = importlib.import_module(registry.PIPELINES[name].module)
  parser = argparse.ArgumentParser()
  for option_class in module.OPTION_CLASSES:
    option_class._add_argparse_args(parser)
  option_names = [action.dest for action in parser._actions
                  if action.dest != "help"]
  metadata = registry.load_metadata(name)
  assert [p["name"] for p in metadata["parameters"]] == option_names
  assert metadata["streaming"] is registry.PIPELINES[name].streaming
  for parameter in metadata["parameters"]:
    assert parameter["label"] and parameter["helpText"]


def test_metadata_carries_types_and_checks_of_the_options():
  parameters = {p["name"]: p
                for p in registry.load_metadata("reward_batch")["parameters"]}
  assert parameters["feedback"]["paramType"] == "GCS_READ_FILE"
  assert parameters["output_dir"]["paramType"] == "GCS_WRITE_FOLDER"
  assert parameters["join_shards"]["paramType"] == "TEXT"
  assert parameters["partition_date"]["regexes"] == [r"^\d{4}-\d{2}-\d{2}$"]
  # choices become one more regex, which the template checks at launch.
  [choices] = parameters["reward_reduce"]["regexes"]
  assert re.match(choices, "last") and not re.match(choices, "median")
  assert not re.match(choices, "maximum")


def test_an_argument_without_an_option_declaration_is_refused():

  class RawOptions(PipelineOptions):

    @classmethod
    def _add_argparse_args(cls, parser):
      parser.add_argument("--raw")

  with pytest.raises(ValueError, match="--raw is added without an Option"):
    generate.declared_options([RawOptions])


def test_template_parameters_are_checked_against_the_metadata():
  assert registry.template_parameters(
      "reward_batch", feedback="gs://b/f*", join_shards=64,
      control_arm=None) == {"feedback": "gs://b/f*", "join_shards": "64"}
  with pytest.raises(ValueError, match="no parameter shards"):
    registry.template_parameters("reward_batch", shards=64)
  with pytest.raises(TypeError, match="one string"):
    registry.template_parameters("batch_inference", model=["a=x", "b=y"])
  with pytest.raises(KeyError, match="no template"):
    registry.template_parameters("reward_nightly")


def test_a_required_parameter_must_be_given(monkeypatch):
  metadata = {"parameters": [
      {"name": "feedback", "isOptional": False},
      {"name": "predictions", "isOptional": True}]}
  monkeypatch.setattr(registry, "load_metadata", lambda name: metadata)
  with pytest.raises(ValueError, match="needs feedback"):
    registry.template_parameters("reward_batch", predictions="p")
  assert registry.template_parameters("reward_batch", feedback="f") == {
      "feedback": "f"}


@pytest.mark.parametrize("name", sorted(registry.PIPELINES))
def test_entry_point_builds_the_pipeline_from_template_parameters(name):
  parameters = registry.template_parameters(name, **PARAMETERS[name])
  pipeline = main.build_pipeline(name, launcher_args(parameters))
  top_level = {transform.full_label
               for transform in pipeline.transforms_stack[0].parts}
  assert top_level == TOP_LEVEL_TRANSFORMS[name]
  streaming = pipeline.options.view_as(StandardOptions).streaming
  assert bool(streaming) is registry.PIPELINES[name].streaming


@pytest.mark.parametrize("name", sorted(registry.PIPELINES))
def test_help_lists_the_pipelines_options_and_bad_values_are_usage_errors(
    name, capsys):
  module = importlib.import_module(registry.PIPELINES[name].module)
  with pytest.raises(SystemExit) as help_exit:
    module.run(["--help"])
  assert help_exit.value.code == 0
  listed = capsys.readouterr().out
  declared = generate.declared_options(module.OPTION_CLASSES)
  assert [o.name for o in declared if f"--{o.name}" not in listed] == []
  with pytest.raises(SystemExit) as bad_exit:
    module.run(["--partition_date", "2026-01-01", "--run_id", "r",
                "--bigquery_write_method", "SOMETIMES"])
  assert bad_exit.value.code == 2
  assert "--bigquery_write_method" in capsys.readouterr().err


def test_the_streaming_template_does_not_offer_output_files():
  # The streaming pipeline refuses --output_dir: its template must not offer it.
  with pytest.raises(ValueError, match="no parameter output_dir"):
    registry.template_parameters("reward_streaming", output_dir="gs://b/out",
                                 **PARAMETERS["reward_streaming"])


def dockerfile_instructions() -> list[list[str]]:
  """[instruction, arguments...] per Dockerfile instruction."""
  text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
  return [line.split() for line in text.splitlines()
          if line.strip() and not line.lstrip().startswith("#")]


def test_dockerfile_copies_files_that_exist_and_are_in_the_build_context():
  included = {line[1:].rstrip("/") for line in
              (ROOT / "templates" / "Dockerfile.dockerignore").read_text()
              .splitlines() if line.startswith("!")}
  sources = [source for instruction, *args in dockerfile_instructions()
             if instruction == "COPY" and not args[0].startswith("--from")
             for source in args[:-1]]
  assert sources
  for source in sources:
    assert (ROOT / source).exists(), source
    assert source.rstrip("/") in included, source


def test_dockerfile_images_and_entry_point_match_the_package():
  instructions = dockerfile_instructions()
  images = [args[0] for instruction, *args in instructions
            if instruction == "FROM"]
  assert images == [
      "gcr.io/dataflow-templates-base/python311-template-launcher-base",
      f"apache/beam_python3.11_sdk:{beam.__version__}"]
  assert f"apache-beam[gcp]=={beam.__version__}" in (ROOT /
                                                     "setup.py").read_text()
  env = " ".join(" ".join(args) for instruction, *args in instructions
                 if instruction == "ENV")
  entry = re.search(r"FLEX_TEMPLATE_PYTHON_PY_FILE=\$\{WORKDIR\}/(\S+)", env)
  assert entry and (ROOT / entry.group(1)) == pathlib.Path(main.__file__)
  assert f"{main.PIPELINE_ENV}=${{PIPELINE}}" in env
  assert instructions[-1] == ["ENTRYPOINT", '["/opt/apache/beam/boot"]']


def run_build_script(tmp_path, *args) -> list[str]:
  """Runs templates/build_and_run.sh with a gcloud that records its calls."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir(exist_ok=True)
  gcloud = bin_dir / "gcloud"
  # Records each call, and the Cloud Build config it was given.
  gcloud.write_text(
      "#!/usr/bin/env bash\n"
      'echo "$*" >> "$CALLS"\n'
      "while (( $# )); do\n"
      '  if [[ $1 == --config ]]; then cat "$2" >> "$CALLS"; fi\n'
      "  shift\n"
      "done\n")
  gcloud.chmod(0o755)
  calls = tmp_path / "calls.txt"
  env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}",
             CALLS=str(calls), PROJECT="my-project", REGION="us-central1",
             BUCKET="my-bucket", REPOSITORY="online-eval", TAG="v1")
  subprocess.run([str(ROOT / "templates" / "build_and_run.sh"), *args],
                 env=env, check=True)
  return calls.read_text().splitlines()


def test_build_script_builds_an_image_and_a_template_per_pipeline(tmp_path):
  calls = run_build_script(tmp_path, "build")
  image = "us-central1-docker.pkg.dev/my-project/online-eval/online-eval-{}:v1"
  for name in registry.PIPELINES:
    assert (f"  args: [build, -f, templates/Dockerfile, --build-arg, "
            f"PIPELINE={name}, -t, '{image.format(name.replace('_', '-'))}'"
            ", .]") in calls
    assert (f"dataflow flex-template build gs://my-bucket/templates/{name}"
            f".json --image {image.format(name.replace('_', '-'))} "
            f"--sdk-language PYTHON --metadata-file templates/{name}/"
            "metadata.json --project my-project") in calls


def test_build_script_runs_a_template_with_its_image(tmp_path):
  [call] = run_build_script(tmp_path, "run", "reward_batch", "--parameters",
                            "feedback=gs://my-bucket/f*")
  assert re.match(
      r"dataflow flex-template run reward-batch-\d{8}-\d{6} "
      r"--template-file-gcs-location gs://my-bucket/templates/reward_batch"
      r"\.json --project my-project --region us-central1 "
      r"--temp-location gs://my-bucket/tmp "
      r"--staging-location gs://my-bucket/staging --parameters "
      r"sdk_container_image=us-central1-docker\.pkg\.dev/my-project/"
      r"online-eval/online-eval-reward-batch:v1 "
      r"--parameters feedback=gs://my-bucket/f\*$", call)

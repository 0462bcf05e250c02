"""Docs cannot rot silently: links resolve, and options named are options that exist."""

import contextlib
import io
import pathlib
import re
import runpy
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# Every module a user runs with options; `--help` lists them all.
COMMANDS = ("pipelines.reward_batch", "pipelines.reward_streaming",
            "pipelines.batch_inference", "pipelines.policy_evaluation",
            "pipelines.model_evaluation",
            "pipelines.policy_demo",
            "pipelines.report", "pipelines.demo",
            "pipelines.streaming_demo", "pipelines.train_demo_models",
            "pipelines.training_export", "pipelines.train_candidate",
            "pipelines.loop_demo", "benchmarks.export_benchmark",
            "benchmarks.reward_benchmark", "benchmarks.inference_benchmark",
            "emulators.bq_emulator", "emulators.pubsub_emulator",
            "templates.generate", "examples.router_simulation")
# Flags of other tools' commands quoted in the docs (gcloud, bq, git).
OTHER_TOOLS = {"build-arg", "enable-streaming-engine", "image", "image-version",
               "location", "metadata-file", "parameters", "region",
               "repository-format", "sdk-language", "short", "staging-location",
               "temp-location", "template-file-gcs-location", "topic",
               "format", "dataset", "service-type"}

_LIST_OPTIONS = """
import contextlib, io, runpy, sys
for module in sys.argv[1:]:
  out = io.StringIO()
  sys.argv = [module, "--help"]
  with contextlib.redirect_stdout(out):
    try:
      runpy.run_module(module, run_name="__main__")
    except SystemExit:
      pass
  print(module, " ".join(sorted(set(__import__("re").findall(
      r"(?<![\\w-])--([a-z][a-z0-9_]*)", out.getvalue())))))
"""


def _links(path: pathlib.Path):
  for target in re.findall(r"\]\(([^)\s]+)\)", path.read_text()):
    if not re.match(r"^[a-z]+:", target):
      yield target


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_relative_link_resolves(doc):
  broken = []
  for target in _links(doc):
    file_part, _, anchor = target.partition("#")
    resolved = (doc.parent / file_part) if file_part else doc
    if not resolved.exists():
      broken.append(target)
    elif anchor and resolved.suffix == ".md":
      headings = {re.sub(r"[^\w\- ]", "", h).strip().lower().replace(" ", "-")
                  for h in re.findall(r"^#+ (.+)$", resolved.read_text(),
                                      flags=re.M)}
      if anchor not in headings:
        broken.append(target)
  assert not broken


@pytest.fixture(scope="module")
def options_by_command():
  result = subprocess.run([sys.executable, "-c", _LIST_OPTIONS, *COMMANDS],
                          cwd=ROOT, capture_output=True, text=True,
                          check=True)
  found = {}
  for line in result.stdout.splitlines():
    if line.split(" ", 1)[0] in COMMANDS:
      module, _, names = line.partition(" ")
      found[module] = set(names.split())
  assert set(found) == set(COMMANDS)
  return found


def _named_in_docs():
  named = set()
  for doc in DOCS:
    named |= set(re.findall(r"(?<![\w-])--([a-z][a-z0-9_-]*[a-z0-9])",
                            doc.read_text()))
  return named


def _beam_options():
  from apache_beam.options import pipeline_options
  parser = pipeline_options._BeamArgumentParser()  # pylint: disable=protected-access
  for cls in pipeline_options.PipelineOptions.__subclasses__():
    for sub in [cls, *cls.__subclasses__()]:
      sub._add_argparse_args(parser)  # pylint: disable=protected-access
  return {a.dest for a in parser._actions}  # pylint: disable=protected-access


def test_every_option_named_in_the_docs_exists(options_by_command):
  known = set().union(*options_by_command.values()) | _beam_options()
  unknown = _named_in_docs() - known - OTHER_TOOLS
  assert not unknown, f"documented but no command has them: {sorted(unknown)}"


def test_every_pipeline_option_is_documented(options_by_command):
  pipelines = [m for m in COMMANDS if m.startswith("pipelines.")]
  ours = set().union(*(options_by_command[m] for m in pipelines)) - _beam_options()
  undocumented = ours - _named_in_docs() - {"help"}
  assert not undocumented, f"not in README or docs/: {sorted(undocumented)}"

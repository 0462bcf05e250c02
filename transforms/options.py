"""Every pipeline option, declared once.

Each pipeline's `PipelineOptions` class adds its groups of `Option`s; the Flex
Template metadata and the Airflow DAG parameters are generated from the same
declarations (see `templates/`), so a renamed option fails a test instead of a
scheduled run.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
from typing import Any, Callable

from apache_beam.options.pipeline_options import PipelineOptions

DATASET_REGEX = r"^[A-Za-z0-9_.:-]+:[A-Za-z0-9_]+$|^[A-Za-z0-9_.:-]+\.[A-Za-z0-9_]+$"
DATE_REGEX = r"^\d{4}-\d{2}-\d{2}$"
SUBSCRIPTION_REGEX = r"^projects/[^/]+/subscriptions/[^/]+$"


@dataclasses.dataclass(frozen=True)
class Option:
  """One command-line / template parameter."""
  name: str
  help: str
  label: str
  type: Callable = str
  default: Any = None
  choices: tuple | None = None
  param_type: str | None = None  # Flex Template paramType, e.g. GCS_READ_FILE
  regexes: tuple = ()
  action: str | None = None  # argparse action, e.g. "append" for repeatable
  # Required by the pipeline that declares it. Not enforced by argparse: Beam
  # parses every options class of the process at once, so a pipeline checks
  # its own required options when it builds.
  required: bool = False

  @property
  def is_optional(self) -> bool:
    return not self.required

  def add_to(self, parser) -> None:
    kwargs = {"help": self.help, "default": self.default}
    if self.action:
      kwargs["action"] = self.action
    else:
      kwargs["type"] = self.type
    if self.type is parse_bool:
      # `--flag` alone, or `--flag=true|false` as a template parameter passes it.
      kwargs.update(nargs="?", const=True)
    if self.choices:
      kwargs["choices"] = self.choices
    parser.add_argument(f"--{self.name}", **kwargs)


def parse_bool(text: str) -> bool:
  if text.lower() not in ("true", "false"):
    raise ValueError(f"expected true or false: {text}")
  return text.lower() == "true"


BOOL_REGEX = r"^(true|false|True|False)$"


def today() -> str:
  return datetime.datetime.now(datetime.timezone.utc).date().isoformat()


OUTPUT_FILE_OPTIONS = (
    Option("output_dir",
           "Directory (local or gs://) for the same tables as files (JSON "
           "lines by default: DIR/<table>*.jsonl).", "Output directory",
           param_type="GCS_WRITE_FOLDER"),
)

OUTPUT_OPTIONS = (
    Option("output_dataset",
           "BigQuery dataset PROJECT:DATASET to write the tables into.",
           "Output BigQuery dataset", param_type="TEXT",
           regexes=(DATASET_REGEX,)),
    Option("bigquery_emulator_host",
           "Local BigQuery emulator endpoint (http://HOST:PORT); writes with "
           "streaming inserts into pre-created tables.",
           "BigQuery emulator endpoint"),
    Option("bigquery_write_method",
           "How rows reach BigQuery: FILE_LOADS (truncates the run's day "
           "partition, idempotent) or STREAMING_INSERTS. Default: FILE_LOADS, "
           "or STREAMING_INSERTS with the emulator.",
           "BigQuery write method",
           choices=("FILE_LOADS", "STREAMING_INSERTS")),
    Option("run_id", "Identifier of this run (default: derived from the "
           "partition date and the time of launch).", "Run id"),
    Option("partition_date",
           "Day partition (YYYY-MM-DD) this run owns in every table; a re-run "
           "replaces it. Default: today (UTC); a streaming job's rows go to "
           "the day they are computed on.", "Partition date",
           regexes=(DATE_REGEX,)),
    Option("pseudonymize_key_env",
           "Name of an environment variable holding a key: user_id in "
           "dead-lettered raw records is replaced by its keyed hash.",
           "Pseudonymization key variable"),
)

ATTRIBUTION_OPTIONS = (
    Option("attribution_window_s",
           "Feedback later than this many seconds after its prediction does "
           "not count.", "Attribution window (s)", type=float,
           default=86400.0, regexes=(r"^[0-9.]+$",)),
    Option("reward_reduce",
           "How duplicate feedback for one request becomes one reward.",
           "Duplicate feedback reduction", default="max",
           choices=("max", "sum", "first", "last")),
    Option("missing_reward",
           "A prediction with no counted feedback: reward 0 (zero) or left "
           "out of the arm's denominator (ignore).", "Missing reward",
           default="zero", choices=("zero", "ignore")),
)

STATISTICS_OPTIONS = (
    Option("control_arm",
           "Arm the others are compared with (default: the arm with the most "
           "impressions).", "Control arm"),
    Option("expected_allocation",
           "Expected traffic split for the sample-ratio check, "
           "arm=weight,... (default: equal).", "Expected allocation",
           regexes=(r"^([^=,]+=[0-9.]+)(,[^=,]+=[0-9.]+)*$",)),
    Option("seq_tuning",
           "Spread (tau) of the mixture SPRT over the relative lift: the "
           "sequential statistics are most sensitive to lifts of about this "
           "size.", "Sequential test tuning", type=float, default=0.1,
           regexes=(r"^[0-9.]+$",)),
    Option("traffic_floor",
           "Minimum traffic share per arm in the recommended router split.",
           "Traffic floor", type=float, default=0.0,
           regexes=(r"^[0-9.]+$",)),
)


# What the models predict: batch inference scores by it, model evaluation
# measures by it (`TaskOptions`).
TASK_OPTIONS = (Option(
    "task", "classification (a sigmoid output or the probability of class 1, "
    "one output per class, or a class label: predicted classes, votes, "
    "agreement, accuracy) or regression (a number).", "Task",
    default="classification", choices=("classification", "regression")),)


def parse_pipeline_options(argv, option_classes, description: str,
                           **overrides) -> PipelineOptions:
  """The PipelineOptions of a command line. `--help` lists the pipeline's own
  options (Beam's parser knows none of them yet), and a bad value of one of
  them stops with a usage error instead of a traceback."""
  parser = argparse.ArgumentParser(
      description=description,
      formatter_class=argparse.RawDescriptionHelpFormatter,
      allow_abbrev=False,  # As Beam's: --output must not stand for --output_dir.
      epilog="Beam's options (--runner, --project, ...) are accepted too.")
  for option_class in option_classes:
    option_class._add_argparse_args(parser)  # pylint: disable=protected-access
  parser.parse_known_args(argv)
  return PipelineOptions(argv, **overrides)


def add_options(parser, options) -> None:
  for option in options:
    option.add_to(parser)


def check_required(view, options) -> None:
  """Raises ValueError naming every required option of `options` not given."""
  missing = [f"--{o.name}" for o in options
             if o.required and getattr(view, o.name) in (None, "", [])]
  if missing:
    raise ValueError(f"required: {', '.join(missing)}")


def parse_allocation(text: str | None) -> dict[str, float] | None:
  """"a=1,b=2" -> {"a": 1.0, "b": 2.0}."""
  if not text:
    return None
  allocation = {}
  for part in text.split(","):
    arm, _, weight = part.partition("=")
    allocation[arm.strip()] = float(weight)
  return allocation


class OutputPipelineOptions(PipelineOptions):
  """Where the tables go in BigQuery, and the run they belong to."""

  @classmethod
  def _add_argparse_args(cls, parser):
    add_options(parser, OUTPUT_OPTIONS)


class OutputFileOptions(PipelineOptions):
  """The tables as files too (batch pipelines)."""

  @classmethod
  def _add_argparse_args(cls, parser):
    add_options(parser, OUTPUT_FILE_OPTIONS)


class TaskOptions(PipelineOptions):
  """What the models predict."""

  @classmethod
  def _add_argparse_args(cls, parser):
    add_options(parser, TASK_OPTIONS)

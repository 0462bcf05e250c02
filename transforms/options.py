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
import difflib
import math
import re
import sys
from typing import Any, Callable

from apache_beam.options import pipeline_options as beam_options
from apache_beam.options.pipeline_options import PipelineOptions

DATASET_REGEX = r"^[A-Za-z0-9_.:-]+:[A-Za-z0-9_]+$|^[A-Za-z0-9_.:-]+\.[A-Za-z0-9_]+$"
DATE_REGEX = r"^\d{4}-\d{2}-\d{2}$"
SUBSCRIPTION_REGEX = r"^projects/[^/]+/subscriptions/[^/]+$"
TABLE_REGEX = r"^[A-Za-z0-9_.:-]+[:.][A-Za-z0-9_]+\.[A-Za-z0-9_$-]+$"
ALLOCATION_REGEX = r"^([^=,]+=[0-9.]+)(,[^=,]+=[0-9.]+)*$"
NUMBER_REGEX = r"^[0-9.]+$"
COUNT_REGEX = r"^[0-9]+$"
# What a value matching a regex looks like, for the command line's message.
REGEX_MEANINGS = {
    DATE_REGEX: "a date YYYY-MM-DD",
    DATASET_REGEX: "PROJECT:DATASET",
    SUBSCRIPTION_REGEX: "projects/PROJECT/subscriptions/NAME",
    ALLOCATION_REGEX: "ARM=WEIGHT,... such as control=1,treatment=1",
    NUMBER_REGEX: "a number without sign or exponent",
    COUNT_REGEX: "a whole number",
}


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
    kwargs = {"help": self.help, "default": self.default,
              "type": self.checked_type}
    if self.action:
      kwargs["action"] = self.action
    if self.type is parse_bool:
      # `--flag` alone, or `--flag=true|false` as a template parameter passes it.
      kwargs.update(nargs="?", const=True)
    if self.choices:
      kwargs["choices"] = self.choices
    parser.add_argument(f"--{self.name}", **kwargs)

  def checked_type(self, text: str):
    """The value of `text`, after the checks the template applies at launch."""
    for regex in self.regexes:
      if not re.match(regex, text):
        expected = REGEX_MEANINGS.get(regex, f"a match of {regex}")
        raise argparse.ArgumentTypeError(f"{text!r}: expected {expected}")
    try:
      return self.type(text)
    except ValueError as error:
      raise argparse.ArgumentTypeError(f"{text!r}: {error}") from None


def parse_bool(text: str) -> bool:
  if text.lower() not in ("true", "false"):
    raise ValueError(f"expected true or false: {text}")
  return text.lower() == "true"


BOOL_REGEX = r"^(true|false|True|False)$"


def iso_date(text: str) -> str:
  """A YYYY-MM-DD that is a day of the calendar, as given."""
  datetime.date.fromisoformat(text)  # ValueError: "month must be in 1..12".
  return text


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
           "the day they are computed on.", "Partition date", type=iso_date,
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
           regexes=(ALLOCATION_REGEX,)),
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


# Logs kept in BigQuery instead of files (transforms/logs/sources.py): any
# pipeline reading predictions or feedback adds LogSourceOptions.
LOG_SOURCE_OPTIONS = (
    Option("predictions_table",
           "Prediction logs in a BigQuery table PROJECT:DATASET.TABLE, read "
           "with the Storage Read API; only rows of the run's "
           "--partition_date (UTC) by their timestamp column.",
           "Prediction log table", param_type="BIGQUERY_TABLE",
           regexes=(TABLE_REGEX,)),
    Option("predictions_query",
           "Prediction logs as a BigQuery standard-SQL query (e.g. one day of "
           "logging_time); its result is read with the Storage Read API.",
           "Prediction log query"),
    Option("feedback_table",
           "Feedback logs in a BigQuery table PROJECT:DATASET.TABLE; only "
           "rows of the run's --partition_date (UTC).",
           "Feedback log table", param_type="BIGQUERY_TABLE",
           regexes=(TABLE_REGEX,)),
    Option("feedback_query",
           "Feedback logs as a BigQuery standard-SQL query.",
           "Feedback log query"),
    Option("log_format",
           "Format of the prediction logs: auto (detected per record: our "
           "contract, KServe, Open Inference Protocol, Vertex AI rows) or "
           "vertex (Vertex AI request-response logging rows only, read "
           "column-wise).", "Prediction log format", default="auto",
           choices=("auto", "vertex")),
    Option("sampling_rate",
           "Fraction of requests the serving stack logged (a Vertex AI "
           "endpoint's sampling_rate): one number, or ENDPOINT=RATE,... per "
           "experiment; data_quality then carries each experiment's "
           "estimated_requests.", "Logging sampling rate",
           regexes=(r"^[0-9.]+$|^([^=,]+=[0-9.]+)(,[^=,]+=[0-9.]+)*$",)),
    Option("bigquery_emulator_grpc_host",
           "Storage Read API (plain gRPC, HOST:PORT) of a local BigQuery "
           "emulator, to read log tables from it (queries go to "
           "--bigquery_emulator_host).", "BigQuery emulator read endpoint"),
    Option("bigquery_read_method",
           "How log tables and queries are read: DIRECT_READ (Beam's "
           "ReadFromBigQuery over the Storage Read API, rows batched into "
           "Arrow tables; Google's endpoints only) or ARROW_STREAMS (our "
           "Storage Read client, Arrow record batches as they come; reaches "
           "the emulator too). Default: ARROW_STREAMS when "
           "--bigquery_emulator_grpc_host or --bigquery_emulator_host is "
           "given, else DIRECT_READ.",
           "BigQuery log read method",
           choices=("DIRECT_READ", "ARROW_STREAMS")),
)


def parse_sampling_rate(text: str | None) -> dict[str | None, float]:
  """"0.1" -> {None: 0.1} (every experiment); "e1=0.1,e2=1" -> per experiment."""
  if not text:
    return {}
  if "=" not in text:
    rates = {None: float(text)}
  else:
    rates = parse_allocation(text, option="--sampling_rate")
  for experiment, rate in rates.items():
    if not 0.0 < rate <= 1.0:
      raise ValueError(f"sampling rate of {experiment or 'every experiment'} "
                       f"not in (0, 1]: {rate}")
  return rates
GATE_OPTIONS = (
    Option("max_dead_letter_fraction",
           "Quality gate: at most this fraction of each record type's "
           "records may be dead-lettered; a run beyond it fails (after "
           "writing its tables).", "Maximum dead-letter fraction", type=float,
           default=0.05, regexes=(NUMBER_REGEX,)),
    Option("allow_partial",
           "Accept a run that breaks a quality gate: exit 0, run_summary "
           "status `accepted` instead of `failed`.", "Allow partial results",
           type=parse_bool, default=False, regexes=(BOOL_REGEX,)),
)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
  """The description as written, and each option's default after its help."""

  def _get_help_string(self, action):
    text = action.help or ""
    if action.default not in (None, argparse.SUPPRESS, []) and (
        action.option_strings) and "%(default)" not in text:
      text += " (default: %(default)s)"
    return text


def usage_error(program: str, message: str) -> SystemExit:
  """One line on stderr, exit status 2 (argparse's for a bad command line)."""
  print(f"{program}: error: {message}", file=sys.stderr)
  return SystemExit(2)


def _beam_option_classes():
  """Beam's own options classes (runner, Google Cloud, worker, ...)."""
  return [cls for cls in PipelineOptions.__subclasses__()
          if cls.__module__.startswith("apache_beam.")]


def _option_parser(option_classes) -> argparse.ArgumentParser:
  parser = beam_options._BeamArgumentParser(allow_abbrev=False)  # pylint: disable=protected-access
  for option_class in {str(c): c for c in (*_beam_option_classes(),
                                            *option_classes)}.values():
    option_class._add_argparse_args(parser)  # pylint: disable=protected-access
  return parser


def unknown_arguments_error(program: str, unknown, known_options):
  """The usage error for arguments no parser took: an unknown option (with
  the closest known one), or a positional argument (a pattern the shell
  expanded)."""
  for argument in unknown:
    if argument.startswith("-"):
      name = argument.split("=", 1)[0]
      close = difflib.get_close_matches(name.replace("-", "_"), known_options,
                                        n=1, cutoff=0.6)
      hint = f"; did you mean {close[0]}?" if close else ""
      return usage_error(program, f"unknown option {name}{hint}")
  return usage_error(
      program, f"unexpected argument {unknown[0]!r}: an option value is one "
      "argument; quote a file pattern ('logs/*.jsonl') so the shell does not "
      "expand it")


def _option_strings(parser) -> list[str]:
  return [o for action in parser._actions for o in action.option_strings]  # pylint: disable=protected-access


def check_known(argv, option_classes, program: str) -> None:
  """Raises a usage error for an option neither the pipeline nor Beam knows
  (Beam would warn and run on without it) and for a positional argument."""
  parser = _option_parser(option_classes)
  _, unknown = parser.parse_known_args(argv)
  if unknown:
    raise unknown_arguments_error(program, unknown, _option_strings(parser))


def program_name(option_class) -> str:
  """The module a pipeline runs as (`python -m NAME`), even as __main__."""
  module = sys.modules.get(option_class.__module__)
  spec = getattr(module, "__spec__", None)
  return spec.name if spec else option_class.__module__


class OneLineParser(argparse.ArgumentParser):
  """An argparse parser whose usage errors are one line (no usage block),
  that takes no abbreviation (as Beam's: --output is not --output_dir) and
  names the option an unknown one resembles."""

  def __init__(self, *args, **kwargs):
    kwargs.setdefault("allow_abbrev", False)
    super().__init__(*args, **kwargs)

  def error(self, message):
    raise usage_error(self.prog, message)

  def parse_args(self, args=None, namespace=None):
    parsed, unknown = self.parse_known_args(args, namespace)
    if unknown:
      raise unknown_arguments_error(self.prog, unknown,
                                    _option_strings(self))
    return parsed


METRIC_OPTIONS = (
    Option("metrics",
           "Metric definitions (YAML or JSON): a file path (local or gs://) "
           "or inline JSON. Adds the metric_stats and decisions tables; "
           "without it only the reward is measured.", "Metric definitions"),
    Option("dimensions",
           "Prediction attributes to break every metric down by, "
           "comma-separated (e.g. country,platform).", "Segment dimensions",
           regexes=(r"^[^,]+(,[^,]+)*$",)),
    Option("max_segment_values",
           "Values kept per dimension and experiment (most requests first); "
           "the rest are reported as `other`.", "Values per dimension",
           type=int, default=20, regexes=(r"^[0-9]+$",)),
    Option("correction",
           "Multiple-testing correction across goal metrics x candidate "
           "arms: holm, bh (Benjamini-Hochberg) or none.",
           "Multiple-testing correction", default="holm",
           choices=("holm", "bh", "none")),
    Option("decide_on",
           "Verdicts from the fixed-horizon statistics (fixed) or the "
           "anytime-valid ones (sequential: safe to look every day).",
           "Decision statistics", default="sequential",
           choices=("fixed", "sequential")),
    Option("min_samples",
           "Values each arm needs on every goal metric before a ship verdict.",
           "Minimum samples per arm", type=int, default=100,
           regexes=(r"^[0-9]+$",)),
)


CONTEXT_OPTIONS = (
    Option("context_features",
           "A request's context: these prediction attributes (comma-separated "
           "names), each parsed as a number.", "Context attributes",
           regexes=(r"^[^,]+(,[^,]+)*$",)),
    Option("context_dim",
           "A request's context: its prediction features list, of exactly "
           "this length.", "Context length", type=int,
           regexes=(r"^[0-9]+$",)),
    Option("ridge_lambda",
           "Ridge penalty lambda of the per-arm linear reward models: theta = "
           "(A + lambda I)^-1 b.", "Ridge lambda", type=float, default=1.0,
           regexes=(r"^[0-9.eE+-]+$",)),
    Option("decay",
           "Forgetting factor per day of age of a request (1: none), relative "
           "to the newest request.", "Decay per day", type=float,
           default=1.0, regexes=(r"^[0-9.eE+-]+$",)),
)

CONTEXTUAL_POLICY_OPTIONS = (
    Option("contextual_policy",
           "Add a contextual state to router_state, for a router acting by "
           "this policy (needs --context_features or --context_dim).",
           "Contextual policy", choices=("linucb", "linear_thompson")),
    Option("policy_alpha",
           "Exploration of the contextual policy: LinUCB's bonus multiplier, "
           "linear Thompson sampling's posterior scale.", "Policy alpha",
           type=float, default=1.0, regexes=(r"^[0-9.eE+-]+$",)),
    Option("policy_epsilon",
           "Share of traffic the contextual router spreads evenly over the "
           "arms (keeps every propensity above 0).", "Policy epsilon",
           type=float, default=0.0, regexes=(r"^[0-9.eE+-]+$",)),
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
  options with their defaults (Beam's parser knows none of them yet). A bad
  value of one of them (the template's checks apply), an unknown option or a
  stray argument stops with a one-line usage error, exit status 2."""
  argv = sys.argv[1:] if argv is None else list(argv)
  parser = OneLineParser(
      prog=program_name(option_classes[0]), description=description,
      formatter_class=HelpFormatter,
      epilog="Beam's options (--runner, --project, ...) are accepted too.\n"
      "Exit status: 0 done; 2 refused before the start (nothing written);\n"
      "3 the run broke a quality gate (tables written, run_summary says why).")
  for option_class in option_classes:
    option_class._add_argparse_args(parser)  # pylint: disable=protected-access
  parser.parse_known_args(argv)
  check_known(argv, option_classes, parser.prog)
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


def parse_allocation(text: str | None, option: str = "--expected_allocation"
                     ) -> dict[str, float] | None:
  """"a=1,b=2" -> {"a": 1.0, "b": 2.0}: positive weights, each name once;
  a ValueError names `option` otherwise."""
  if not text:
    return None
  allocation = {}
  for part in text.split(","):
    arm, separator, weight = part.partition("=")
    arm = arm.strip()
    try:
      value = float(weight)
    except ValueError:
      value = math.nan
    if not (separator and arm and 0 < value < math.inf):
      raise ValueError(f"{option} {text}: {part!r} is not NAME=WEIGHT with "
                       "a positive weight")
    if arm in allocation:
      raise ValueError(f"{option} {text}: {arm} twice")
    allocation[arm] = value
  return allocation


class OutputPipelineOptions(PipelineOptions):
  """Where the tables go in BigQuery, and the run they belong to."""

  @classmethod
  def _add_argparse_args(cls, parser):
    add_options(parser, OUTPUT_OPTIONS)


class LogSourceOptions(PipelineOptions):
  """Prediction and feedback logs in BigQuery, and their format."""

  @classmethod
  def _add_argparse_args(cls, parser):
    add_options(parser, LOG_SOURCE_OPTIONS)
class QualityGateOptions(PipelineOptions):
  """What a finished run is held to (transforms/checks/gates.py)."""

  @classmethod
  def _add_argparse_args(cls, parser):
    add_options(parser, GATE_OPTIONS)


class OutputFileOptions(PipelineOptions):
  """The tables as files too (batch pipelines)."""

  @classmethod
  def _add_argparse_args(cls, parser):
    add_options(parser, OUTPUT_FILE_OPTIONS)


class ContextOptions(PipelineOptions):
  """A request's context, and the linear models fitted on it."""

  @classmethod
  def _add_argparse_args(cls, parser):
    add_options(parser, CONTEXT_OPTIONS)


class ContextualPolicyOptions(PipelineOptions):
  """A contextual router state beside the context-free one."""

  @classmethod
  def _add_argparse_args(cls, parser):
    add_options(parser, CONTEXTUAL_POLICY_OPTIONS)


class TaskOptions(PipelineOptions):
  """What the models predict."""

  @classmethod
  def _add_argparse_args(cls, parser):
    add_options(parser, TASK_OPTIONS)

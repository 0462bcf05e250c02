"""Metric definitions: what each experiment is judged on, loaded from one file.

Pure (PyYAML, no Beam). A definitions file is YAML or JSON (JSON is YAML) with
a list `metrics`; each entry becomes one frozen `MetricDefinition`. Anything
wrong stops the run before it starts with `MetricsFileError`: the file, the
line and what is wrong. The format is in docs/metrics.md.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import yaml

PROPORTION = "proportion"
MEAN = "mean"
RATIO = "ratio"
QUANTILE = "quantile"
TYPES = (PROPORTION, MEAN, RATIO, QUANTILE)

GOAL = "goal"
GUARDRAIL = "guardrail"
SECONDARY = "secondary"
ROLES = (GOAL, GUARDRAIL, SECONDARY)

INCREASE = "increase"
DECREASE = "decrease"
DIRECTIONS = (INCREASE, DECREASE)

REDUCERS = ("max", "sum", "first", "last")
MISSING_MODES = ("zero", "ignore")

FEEDBACK_SOURCE = "feedback"
PREDICTION_SOURCE = "prediction"
ERROR_FIELD = "error"
# Numeric prediction fields a metric can read (besides `error`, from status).
PREDICTION_FIELDS = ("latency_ms", "propensity")
DEFAULT_SIGNAL = "reward"

_KEYS = ("name", "source", "type", "role", "direction", "margin", "q",
         "numerator", "denominator", "reduce", "missing", "cap",
         "cap_percentile", "experiments")


class MetricsFileError(ValueError):
  """A metrics definitions file that cannot be used: file, line, what."""


@dataclasses.dataclass(frozen=True)
class MetricDefinition:
  """One metric of an experiment.

  source: "feedback:<signal>", "prediction:<field>" or "prediction:error"
    (None for a ratio, whose parts are other metrics).
  type: proportion, mean, ratio (numerator / denominator: names of other
    metrics, per-request sums) or quantile (q in (0, 1)).
  role: goal, guardrail or secondary; direction: which way is better.
  margin: a guardrail's relative non-inferiority margin (0.05: up to 5 % worse
    is acceptable).
  reduce: how several feedback records of the signal on one request become
    one value; missing: a request without a value counts as 0 (zero) or is
    left out (ignore); cap: values above it are set to it (winsorized);
    cap_percentile: the same at that percentile (in (0, 1)) of the control
    arm's values in each experiment (batch only).
  experiments: the experiment ids it applies to; empty: every experiment.
  """
  name: str
  type: str
  source: str | None = None
  role: str = SECONDARY
  direction: str = INCREASE
  margin: float | None = None
  q: float | None = None
  numerator: str | None = None
  denominator: str | None = None
  reduce: str = "max"
  missing: str = "zero"
  cap: float | None = None
  cap_percentile: float | None = None
  experiments: tuple = ()

  @property
  def source_kind(self) -> str | None:
    return self.source.partition(":")[0] if self.source else None

  @property
  def source_name(self) -> str | None:
    return self.source.partition(":")[2] if self.source else None

  def applies_to(self, experiment_id: str) -> bool:
    return not self.experiments or experiment_id in self.experiments


REWARD_METRIC = MetricDefinition(
    name="reward", type=MEAN, source=f"{FEEDBACK_SOURCE}:{DEFAULT_SIGNAL}",
    role=GOAL)


def _fail(source_name: str, line: int | None, message: str):
  where = f"{source_name}:{line}" if line else source_name
  raise MetricsFileError(f"{where}: {message}")


def _plain(node) -> Any:
  """A YAML node -> plain Python (mappings and sequences of scalars)."""
  return yaml.safe_load(yaml.serialize(node))


def _entries(text: str, source_name: str):
  """[(line, {key: value}, {key: line})] of the file's `metrics` list."""
  try:
    root = yaml.compose(text, Loader=yaml.SafeLoader)
  except yaml.YAMLError as error:
    mark = getattr(error, "problem_mark", None)
    _fail(source_name, mark.line + 1 if mark else None,
          f"not valid YAML or JSON: {getattr(error, 'problem', error)}")
  if not isinstance(root, yaml.MappingNode):
    _fail(source_name, root.start_mark.line + 1 if root else None,
          "expected a mapping with a `metrics` list")
  top = {key.value: value for key, value in root.value}
  unknown = sorted(set(top) - {"metrics"})
  if unknown:
    _fail(source_name, root.start_mark.line + 1,
          f"unknown top-level key(s) {', '.join(unknown)}; expected `metrics`")
  metrics = top.get("metrics")
  if not isinstance(metrics, yaml.SequenceNode) or not metrics.value:
    _fail(source_name, (metrics or root).start_mark.line + 1,
          "`metrics` must be a non-empty list")
  entries = []
  for node in metrics.value:
    line = node.start_mark.line + 1
    if not isinstance(node, yaml.MappingNode):
      _fail(source_name, line, "each metric must be a mapping")
    values = {key.value: _plain(value) for key, value in node.value}
    lines = {key.value: key.start_mark.line + 1 for key, _ in node.value}
    entries.append((line, values, lines))
  return entries


def _number(value, what: str, low=-math.inf, high=math.inf,
            open_low=False, open_high=False) -> float:
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    raise ValueError(f"`{what}` must be a number, got {value!r}")
  value = float(value)
  if (not math.isfinite(value) or value < low or value > high
      or (open_low and value == low) or (open_high and value == high)):
    raise ValueError(f"`{what}` out of range: {value}")
  return value


def _definition(values: dict) -> MetricDefinition:
  """One entry -> MetricDefinition; ValueError(message) when wrong."""
  unknown = sorted(set(values) - set(_KEYS))
  if unknown:
    raise ValueError(f"unknown key(s) {', '.join(unknown)}; known: "
                     f"{', '.join(_KEYS)}")
  name = values.get("name")
  if not isinstance(name, str) or not name.strip():
    raise ValueError("`name` must be a non-empty string")
  kind = values.get("type")
  if kind not in TYPES:
    raise ValueError(f"`type` must be one of {', '.join(TYPES)}, got {kind!r}")
  for key, allowed in (("role", ROLES), ("direction", DIRECTIONS),
                       ("reduce", REDUCERS), ("missing", MISSING_MODES)):
    if key in values and values[key] not in allowed:
      raise ValueError(f"`{key}` must be one of {', '.join(allowed)}, got "
                       f"{values[key]!r}")
  source = values.get("source")
  if kind == RATIO:
    for part in ("numerator", "denominator"):
      if not isinstance(values.get(part), str):
        raise ValueError(f"a ratio needs `{part}`: the name of another metric")
    if source is not None:
      raise ValueError("a ratio has no `source`: its parts have")
  else:
    if not isinstance(source, str):
      raise ValueError("`source` must be feedback:<signal>, "
                       "prediction:<field> or prediction:error")
    kind_of_source, _, field = source.partition(":")
    if kind_of_source == FEEDBACK_SOURCE and field:
      pass
    elif kind_of_source == PREDICTION_SOURCE and field in (
        (ERROR_FIELD,) + PREDICTION_FIELDS):
      pass
    else:
      raise ValueError(
          f"`source` {source!r}: expected feedback:<signal>, prediction:error "
          f"or prediction:<{'|'.join(PREDICTION_FIELDS)}>")
    for part in ("numerator", "denominator"):
      if part in values:
        raise ValueError(f"`{part}` belongs to ratio metrics only")
  q = None
  if kind == QUANTILE:
    if "q" not in values:
      raise ValueError("a quantile metric needs `q` in (0, 1), e.g. 0.95")
    q = _number(values["q"], "q", 0.0, 1.0, open_low=True, open_high=True)
  elif "q" in values:
    raise ValueError("`q` belongs to quantile metrics only")
  role = values.get("role", SECONDARY)
  margin = None
  if "margin" in values:
    if role != GUARDRAIL:
      raise ValueError("`margin` belongs to guardrail metrics only")
    margin = _number(values["margin"], "margin", 0.0)
  elif role == GUARDRAIL:
    raise ValueError("a guardrail needs `margin`: the relative change in its "
                     "bad direction it tolerates (0 for none)")
  cap = cap_percentile = None
  if values.get("cap") is not None:
    cap = _number(values["cap"], "cap")
  if values.get("cap_percentile") is not None:
    if cap is not None:
      raise ValueError("give `cap` or `cap_percentile`, not both")
    if kind == RATIO:
      raise ValueError("a ratio is capped through its parts: `cap_percentile` "
                       "belongs to them")
    cap_percentile = _number(values["cap_percentile"], "cap_percentile", 0.0,
                             1.0, open_low=True, open_high=True)
  experiments = values.get("experiments", ())
  if isinstance(experiments, str):
    experiments = (experiments,)
  if not all(isinstance(e, str) for e in experiments):
    raise ValueError("`experiments` must be a list of experiment ids")
  default_missing = ("zero" if (source or "").startswith(FEEDBACK_SOURCE)
                     else "ignore")
  return MetricDefinition(
      name=name, type=kind, source=source, role=role,
      direction=values.get("direction", INCREASE), margin=margin, q=q,
      numerator=values.get("numerator"), denominator=values.get("denominator"),
      reduce=values.get("reduce", "max"),
      missing=values.get("missing", default_missing), cap=cap,
      cap_percentile=cap_percentile, experiments=tuple(experiments))


def parse_metrics(text: str, source_name: str = "<metrics>") -> tuple:
  """The definitions in a YAML or JSON text, in file order.

  Raises MetricsFileError naming `source_name`, the line and the problem.
  """
  definitions, lines = [], {}
  for line, values, key_lines in _entries(text, source_name):
    try:
      definition = _definition(values)
    except ValueError as error:
      bad_key = next((k for k in _KEYS if f"`{k}`" in str(error)), None)
      _fail(source_name, key_lines.get(bad_key, line), str(error))
    if definition.name in lines:
      _fail(source_name, line, f"metric {definition.name!r} is defined twice "
            f"(first on line {lines[definition.name]})")
    lines[definition.name] = line
    definitions.append(definition)
  by_name = {d.name: d for d in definitions}
  for definition in definitions:
    if definition.type != RATIO:
      continue
    for part in (definition.numerator, definition.denominator):
      if part not in by_name or by_name[part].type in (RATIO, QUANTILE):
        _fail(source_name, lines[definition.name],
              f"ratio {definition.name!r}: {part!r} must name a proportion "
              f"or mean metric of this file")
  return tuple(definitions)


def load_metrics(text_or_path: str, read=None) -> tuple:
  """Definitions from inline JSON/YAML (text opening with `{`) or a path.

  `read(path) -> str` opens a path (the pipelines pass one that reads gs://);
  by default a local file.
  """
  stripped = text_or_path.lstrip()
  if stripped.startswith("{"):
    return parse_metrics(stripped, "<inline metrics>")
  try:
    if read is None:
      with open(text_or_path, encoding="utf-8") as f:
        text = f.read()
    else:
      text = read(text_or_path)
  except OSError as error:
    raise MetricsFileError(f"{text_or_path}: cannot read: {error}") from error
  return parse_metrics(text, text_or_path)


def feedback_signals(definitions) -> tuple:
  """((signal, reduce), ...) the feedback metrics need, sorted."""
  return tuple(sorted({(d.source_name, d.reduce) for d in definitions
                       if d.source_kind == FEEDBACK_SOURCE}))


def prediction_extras(definitions) -> tuple:
  """The optional prediction fields the metrics read."""
  fields = set()
  for d in definitions:
    if d.source_kind == PREDICTION_SOURCE:
      fields.add("status" if d.source_name == ERROR_FIELD else d.source_name)
  return tuple(sorted(fields))

"""Metric definitions files: what loads, and what fails with file and line."""

import json

import pytest

from transforms.decisions import metrics

GOOD = """\
metrics:
  - name: clicks
    source: feedback:click
    type: proportion
    role: goal
  - name: revenue
    source: feedback:purchase
    type: mean
    reduce: sum
    cap: 500
  - name: revenue_per_click
    type: ratio
    numerator: revenue
    denominator: clicks
  - name: latency_ms
    source: prediction:latency_ms
    type: quantile
    q: 0.95
    role: guardrail
    direction: decrease
    margin: 0.05
    experiments: [checkout]
"""


def test_yaml_file_loads_in_order_with_defaults(tmp_path):
  path = tmp_path / "metrics.yaml"
  path.write_text(GOOD)
  clicks, revenue, ratio, latency = metrics.load_metrics(str(path))
  assert clicks == metrics.MetricDefinition(
      name="clicks", type="proportion", source="feedback:click", role="goal",
      missing="zero")
  assert (revenue.reduce, revenue.cap, revenue.role) == ("sum", 500.0,
                                                         "secondary")
  assert (ratio.numerator, ratio.denominator) == ("revenue", "clicks")
  assert (latency.q, latency.margin, latency.missing) == (0.95, 0.05, "ignore")
  assert latency.applies_to("checkout") and not latency.applies_to("search")
  assert clicks.applies_to("anything")
  assert metrics.feedback_signals([clicks, revenue, ratio, latency]) == (
      ("click", "max"), ("purchase", "sum"))
  assert metrics.prediction_extras([latency]) == ("latency_ms",)


def test_inline_json_is_the_same_as_the_file():
  inline = json.dumps({"metrics": [
      {"name": "errors", "source": "prediction:error", "type": "proportion",
       "role": "guardrail", "direction": "decrease", "margin": 0}]})
  (errors,) = metrics.load_metrics(inline)
  assert errors.source_name == "error" and errors.margin == 0.0
  assert metrics.prediction_extras([errors]) == ("status",)


@pytest.mark.parametrize("text,line,message", [
    ("metrics:\n  - name: a\n    source: feedback:x\n    type: median\n", 4,
     "`type` must be one of"),
    ("metrics:\n  - name: a\n    source: feedback:x\n    type: mean\n"
     "    role: guardrail\n", 2, "needs `margin`"),
    ("metrics:\n  - name: a\n    source: feedback:x\n    type: quantile\n"
     "    q: 1.5\n", 5, "`q` out of range"),
    ("metrics:\n  - name: a\n    source: prediction:color\n    type: mean\n",
     3, "`source`"),
    ("metrics:\n  - name: a\n    source: feedback:x\n    type: mean\n"
     "    colour: red\n", 2, "unknown key(s) colour"),
    ("metrics:\n  - name: a\n    source: feedback:x\n    type: mean\n"
     "  - name: a\n    source: feedback:y\n    type: mean\n", 5,
     "defined twice"),
    ("metrics:\n  - name: r\n    type: ratio\n    numerator: a\n"
     "    denominator: b\n", 2, "'a' must name a proportion or mean"),
    ("metrics: [\n", 2, "not valid YAML or JSON"),
    ("metric:\n  - name: a\n", 1, "unknown top-level key(s) metric"),
    ("metrics: []\n", 1, "non-empty list"),
    ("metrics:\n  - name: a\n    source: feedback:x\n    type: mean\n"
     "    cap: lots\n", 5, "`cap` must be a number"),
    ("metrics:\n  - name: a\n    source: feedback:x\n    type: mean\n"
     "    cap: 3\n    cap_percentile: 0.9\n", 5, "not both"),
    ("metrics:\n  - name: a\n    source: feedback:x\n    type: mean\n"
     "    cap_percentile: 99\n", 5, "`cap_percentile` out of range"),
])
def test_bad_file_fails_with_file_line_and_problem(tmp_path, text, line,
                                                   message):
  path = tmp_path / "bad.yaml"
  path.write_text(text)
  with pytest.raises(metrics.MetricsFileError) as error:
    metrics.load_metrics(str(path))
  assert str(error.value).startswith(f"{path}:{line}: ")
  assert message in str(error.value)


def test_missing_file_names_it(tmp_path):
  with pytest.raises(metrics.MetricsFileError, match="nope.yaml: cannot read"):
    metrics.load_metrics(str(tmp_path / "nope.yaml"))

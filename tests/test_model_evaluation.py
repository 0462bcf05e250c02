"""The model evaluation pipeline on simulated logs: TestPipeline with assert_that."""

import dataclasses
import json

import apache_beam as beam
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that
from apache_beam.testing.util import BeamAssertException
import numpy as np
import pytest

from pipelines import model_evaluation
from simulation import model_logs
from transforms.attribution import rewards
from transforms.decisions import canary
from transforms.decisions import model_quality
from transforms.decisions import shadow
from transforms.io import schemas
from transforms.logs import quality

SCENARIO = model_logs.ModelScenario(requests=3000, canary_share=0.2,
                                    canary_latency_factor=1.5, seed=3)


def _close(a, b) -> bool:
  if isinstance(a, float) and isinstance(b, float):
    return bool(np.isclose(a, b, rtol=1e-9, atol=1e-12))
  if isinstance(a, dict) and isinstance(b, dict):
    return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
  if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
    return len(a) == len(b) and all(map(_close, a, b))
  return a == b


def _same_rows(expected, key_columns):
  def check(rows):
    found = {tuple(r[k] for k in key_columns): r for r in rows}
    wanted = {tuple(r[k] for k in key_columns): r for r in expected}
    if found.keys() != wanted.keys():
      raise BeamAssertException(f"keys {sorted(found)} != {sorted(wanted)}")
    for key, row in wanted.items():
      for name, value in row.items():
        if not _close(value, found[key][name]):
          raise BeamAssertException(f"{key} {name}: {found[key][name]} != "
                                    f"{value}")
  return check


def _expected(scenario):
  """The same requests computed without Beam, parsing or the join."""
  requests = model_logs.requests_table(scenario)
  quality_rows = [model_quality.quality_row(key, acc, "classification")
                  for key, acc in model_quality.partials(requests,
                                                         "classification")]
  shadow_rows = [shadow.comparison_row(key, acc, "classification")
                 for key, acc in shadow.partials(requests, "classification")]
  arms = {arm: acc for (_, arm), acc in canary.arm_partials(requests)}
  verdict = canary.experiment_verdict(scenario.experiment_id, arms,
                                      canary.JudgeConfig())
  return quality_rows, shadow_rows, [verdict]


def test_pipeline_matches_the_statistics_of_the_same_requests(tmp_path):
  predictions, feedback = model_logs.log_lines(SCENARIO)
  broken = json.dumps({"request_id": "bad", "timestamp": 1, "reward": 1,
                       "truth": [1, 0]})
  (tmp_path / "p.jsonl").write_text("\n".join(predictions) + "\n")
  (tmp_path / "f.jsonl").write_text("\n".join(feedback + [broken]) + "\n")
  quality_rows, shadow_rows, verdicts = _expected(SCENARIO)
  assert verdicts[0]["verdict"] == canary.FAIL
  with TestPipeline(runner="FnApiRunner") as pipeline:
    outputs = pipeline | model_evaluation.ModelEvaluation(
        str(tmp_path / "p.jsonl"), str(tmp_path / "f.jsonl"),
        rewards.AttributionConfig(), "classification", 0.05,
        canary.JudgeConfig(), join_shards=4)
    assert_that(outputs[schemas.MODEL_QUALITY.name],
                _same_rows(quality_rows, ("arm", "shadow")),
                label="ModelQuality")
    assert_that(outputs[schemas.SHADOW_COMPARISON.name],
                _same_rows(shadow_rows, ("live_arm", "shadow_arm")),
                label="ShadowComparison")
    assert_that(outputs[schemas.CANARY_VERDICTS.name]
                | beam.Map(lambda row: {**row, "metrics": tuple(
                    (m["metric"], m["classification"], m["canary_value"])
                    for m in row["metrics"])}),
                _same_rows([{**verdicts[0], "metrics": tuple(
                    (m["metric"], m["classification"], m["canary_value"])
                    for m in verdicts[0]["metrics"])}], ("canary_arm",)),
                label="CanaryVerdicts")

    def balanced(rows):
      balance = quality.balance(rows)
      if any(read != accounted for read, accounted in balance.values()):
        raise BeamAssertException(f"unbalanced: {balance}")
      reasons = {r["metric"] for r in rows if r["record_type"] == "feedback"}
      if "dead_letter:wrong_type" not in reasons:
        raise BeamAssertException(f"no wrong_type truth: {reasons}")
    assert_that(outputs[schemas.DATA_QUALITY.name], balanced,
                label="Balance")


def test_the_pipeline_runs_from_its_command_line(tmp_path):
  scenario = dataclasses.replace(SCENARIO, requests=400, canary_arm=None)
  predictions, feedback = model_logs.log_lines(scenario)
  (tmp_path / "p.jsonl").write_text("\n".join(predictions) + "\n")
  (tmp_path / "f.jsonl").write_text("\n".join(feedback) + "\n")
  model_evaluation.run([
      f"--predictions={tmp_path}/p.jsonl", f"--feedback={tmp_path}/f.jsonl",
      "--task=classification", f"--output_dir={tmp_path}/out",
      "--runner=FnApiRunner", "--join_shards=2"])
  rows = [json.loads(line) for path in (tmp_path / "out").glob(
      "model_quality*.jsonl") for line in path.read_text().splitlines()]
  assert sorted((r["arm"], r["shadow"]) for r in rows) == [
      ("shadow-v3", True), ("stable", False)]
  # No canary in these logs: no verdict.
  assert not [line for path in (tmp_path / "out").glob("canary_verdicts*")
              for line in path.read_text().splitlines()]
  with pytest.raises(SystemExit) as stop:
    model_evaluation.run([f"--predictions={tmp_path}/p.jsonl",
                          f"--feedback={tmp_path}/f.jsonl",
                          "--quality_confidence=1.5", "--runner=FnApiRunner"])
  assert stop.value.code == 2
  # A value the option's pattern takes but the pipeline refuses.
  with pytest.raises(ValueError, match="quality_confidence"):
    model_evaluation.run([f"--predictions={tmp_path}/p.jsonl",
                          f"--feedback={tmp_path}/f.jsonl",
                          "--quality_confidence=0.0", "--runner=FnApiRunner"])


def test_model_report_shows_quality_shadow_calibration_and_canary(tmp_path):
  from pipelines import report
  predictions, feedback = model_logs.log_lines(SCENARIO)
  (tmp_path / "p.jsonl").write_text("\n".join(predictions) + "\n")
  (tmp_path / "f.jsonl").write_text("\n".join(feedback) + "\n")
  model_evaluation.run([
      f"--predictions={tmp_path}/p.jsonl", f"--feedback={tmp_path}/f.jsonl",
      f"--output_dir={tmp_path}/out", "--runner=FnApiRunner",
      "--join_shards=2"])
  path = report.run(["--models", f"--input={tmp_path}/out",
                     f"--out={tmp_path}/models.html"])
  page = (tmp_path / "models.html").read_text()
  assert path.endswith("models.html")
  assert 'class="canary fail"' in page and "latency_ms" in page
  assert "shadow-v3 is significantly" in page or "not significantly" in page
  assert page.count('alt="calibration"') == 1
  assert "<h3>Model quality</h3>" in page
  # Quality of the stable and canary arms, live, and of the shadow.
  assert page.count("<td>live</td>") == 2
  assert page.count("<td>shadow</td>") == 1


def test_model_report_shows_the_latest_run_of_each_experiment():
  from reporting import model_report
  row = {"experiment_id": "e", "arm": "a", "shadow": False,
         "task": "classification", "requests": 10, "with_truth": 5,
         "scored": 5, "accuracy": 0.5, "calibration": []}
  page = model_report.render_model_report([
      {**row, "run_id": "old", "computed_at": "2026-01-01T00:00:00Z",
       "arm": "old-arm"},
      {**row, "run_id": "new", "computed_at": "2026-01-02T00:00:00Z"},
      {**row, "run_id": "new", "computed_at": "2026-01-02T00:00:01Z",
       "arm": "<b>", "shadow": True}])
  assert "old-arm" not in page and "&lt;b&gt;" in page and "<td>a</td>" in page

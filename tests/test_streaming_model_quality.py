"""model_quality from the streaming reward pipeline (TestStream) against the
batch model evaluation pipeline on the same records."""

import json

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import assert_that
from apache_beam.testing.util import BeamAssertException
from apache_beam.transforms import window
import numpy as np

from pipelines import model_evaluation
from pipelines import reward_streaming
from simulation import model_logs
from transforms.attribution import rewards
from transforms.decisions import arm_table
from transforms.io import schemas

SUBSCRIPTIONS = {
    "predictions": "projects/local-project/subscriptions/predictions",
    "feedback": "projects/local-project/subscriptions/feedback"}
ATTRIBUTION_WINDOW_S = 1800.0  # Some truths (mean delay 600 s) come later.
LATENESS_S = 120.0
STEP_S = 300.0
METRICS = {"requests", "with_truth", "scored", "accuracy", "accuracy_ci_low",
           "log_loss", "brier", "auc", "auc_ci_high", "calibration"}


def _stream(lines_by_source, start, end):
  """Each line published at its record's time, while the watermark and the
  clock advance by STEP_S (early panes fire between steps)."""
  timed = sorted((json.loads(line)["timestamp"], name, line)
                 for name, lines in lines_by_source.items() for line in lines)
  events = TestStream().advance_processing_time(start).advance_watermark_to(
      start)
  next_line = 0
  for watermark in np.arange(start + STEP_S, end + STEP_S, STEP_S):
    published = []
    while next_line < len(timed) and timed[next_line][0] < watermark:
      ts, name, line = timed[next_line]
      published.append(window.TimestampedValue((name, line.encode()), ts))
      next_line += 1
    if published:
      events = events.add_elements(published)
    events = events.advance_processing_time(STEP_S).advance_watermark_to(
        watermark)
  return events.advance_watermark_to_infinity()


def _last_pane(row, pane=beam.DoFn.PaneInfoParam):
  if pane.is_last:
    yield row


def _close(a, b) -> bool:
  if isinstance(a, float) and isinstance(b, float):
    return bool(np.isclose(a, b, rtol=1e-9, atol=1e-12))
  if isinstance(a, dict) and isinstance(b, dict):
    return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
  if isinstance(a, list) and isinstance(b, list):
    return len(a) == len(b) and all(map(_close, a, b))
  return a == b


def _equal_rows(expected):
  def check(rows):
    found = {r["arm"]: r for r in rows}
    wanted = {r["arm"]: r for r in expected}
    if found.keys() != wanted.keys() or len(rows) != len(found):
      raise BeamAssertException(f"arms {sorted(found)} != {sorted(wanted)}")
    for arm, row in found.items():
      # The batch rows also carry what the sink adds (computed_at, ...).
      if not METRICS <= row.keys() <= wanted[arm].keys():
        raise BeamAssertException(f"{arm}: columns {sorted(row)}")
      for name, value in row.items():
        if not _close(value, wanted[arm][name]):
          raise BeamAssertException(
              f"{arm} {name}: streamed {value} != batch {wanted[arm][name]}")
  return check


def test_streamed_model_quality_equals_batch_on_the_same_records(tmp_path):
  scenario = model_logs.ModelScenario(requests=600, duration_s=1800.0,
                                      canary_share=0.3, seed=11)
  predictions, feedback = model_logs.log_lines(scenario)
  (tmp_path / "p.jsonl").write_text("\n".join(predictions) + "\n")
  (tmp_path / "f.jsonl").write_text("\n".join(feedback) + "\n")
  model_evaluation.run([f"--predictions={tmp_path / 'p.jsonl'}",
                        f"--feedback={tmp_path / 'f.jsonl'}",
                        f"--output_dir={tmp_path / 'batch'}",
                        f"--attribution_window_s={ATTRIBUTION_WINDOW_S}",
                        "--task=classification", "--runner=FnApiRunner"])
  batch_rows = [json.loads(line)
                for path in (tmp_path / "batch").glob("model_quality*")
                for line in path.read_text().splitlines()]
  live_rows = [row for row in batch_rows if not row["shadow"]]
  assert {row["arm"] for row in live_rows} == {"stable", "canary-v3"}
  # Truth came late for some requests: both leave it out.
  assert all(0 < row["scored"] < row["requests"] for row in live_rows)

  pipeline = TestPipeline(runner="BundleBasedDirectRunner",
                          options=PipelineOptions(streaming=True))
  stream = pipeline | _stream(
      {"predictions": predictions, "feedback": feedback}, scenario.start,
      scenario.start + scenario.duration_s + ATTRIBUTION_WINDOW_S +
      2 * LATENESS_S)
  payloads = {
      name: (stream
             | f"Only_{name}" >> beam.Filter(lambda m, n: m[0] == n, name)
             | f"Payload_{name}" >> beam.Map(lambda m: m[1]))
      for name in SUBSCRIPTIONS}
  outputs = payloads | reward_streaming.RewardStreaming(
      SUBSCRIPTIONS,
      rewards.AttributionConfig(attribution_window_s=ATTRIBUTION_WINDOW_S),
      arm_table.StatisticsConfig(control_arm="stable"),
      reward_streaming.WindowConfig(window_s=600.0, early_firing_s=60,
                                    allowed_lateness_s=LATENESS_S),
      quality_task="classification")
  streamed = outputs[schemas.MODEL_QUALITY.name]
  assert_that(streamed | "LastPane" >> beam.ParDo(_last_pane),
              _equal_rows(live_rows), label="LastPaneEqualsBatch")
  with pipeline:
    pass

"""The streaming reward pipeline on TestStream: attribution with state and
timers, panes, lateness, state clean-up, and agreement with the batch pipeline."""

import collections
import json

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import assert_that
from apache_beam.testing.util import equal_to
from apache_beam.transforms import window
from apache_beam.utils.windowed_value import PaneInfoTiming
import numpy as np
import pyarrow as pa
import pytest

from pipelines import reward_batch
from pipelines import reward_streaming
from transforms.decisions import arm_table
from transforms.logs import batches
from transforms.io import bigquery
from transforms.logs import quality
from simulation import realtime_publisher
from transforms.attribution import rewards
from transforms.io import schemas
from simulation import simulate
from transforms.io import sinks

T0 = 1_795_219_200.0  # 2026-11-21T00:00:00Z, a multiple of every window here
SUBSCRIPTIONS = {
    "predictions": "projects/local-project/subscriptions/predictions",
    "feedback": "projects/local-project/subscriptions/feedback"}


def pipeline():
  return TestPipeline(runner="BundleBasedDirectRunner",
                      options=PipelineOptions(streaming=True))


def message(name, record, published=None):
  """A message on the `name` ("predictions" or "feedback") subscription,
  published at the record's own time unless told otherwise."""
  if isinstance(record, str):
    return window.TimestampedValue((name, record.encode()), published)
  return window.TimestampedValue((name, json.dumps(record).encode()),
                                 record["timestamp"] if published is None
                                 else published)


def pred(rid, t, arm, **extra):
  return message("predictions", {"request_id": rid, "timestamp": T0 + t,
                                 "experiment_id": "exp", "arm": arm, **extra})


def fb(rid, t, reward):
  return message("feedback", {"request_id": rid, "timestamp": T0 + t,
                              "reward": reward})


def run_streaming(p, events, attribution_window_s=20.0, reward_reduce="max",
                  missing_reward="zero", window_s=100.0, lateness_s=10.0):
  """TestStream events -> the outputs of RewardStreaming."""
  stream = p | events
  messages = {
      name: (stream
             | f"Only_{name}" >> beam.Filter(lambda m, n: m[0] == n, name)
             | f"Payload_{name}" >> beam.Map(lambda m: m[1]))
      for name in SUBSCRIPTIONS
  }
  return messages | reward_streaming.RewardStreaming(
      SUBSCRIPTIONS,
      rewards.AttributionConfig(attribution_window_s=attribution_window_s,
                                reward_reduce=reward_reduce,
                                missing_reward=missing_reward),
      arm_table.StatisticsConfig(control_arm="a"),
      reward_streaming.WindowConfig(window_s=window_s, early_firing_s=5,
                                    allowed_lateness_s=lateness_s))


def totals(row):
  return (row["arm"], row["impressions"], row["feedback_count"],
          row["samples"], row["reward_sum"])


def final(rows, pane=beam.DoFn.PaneInfoParam):
  """Only the rows of the last pane (at the end of the stream)."""
  if pane.is_last:
    yield rows


def quality_counts(rows):
  return {(r["record_type"], r["metric"]): r["count"] for r in rows}


# Pure, per request: the same semantics as the batch `rewards.attribute`.


@pytest.mark.parametrize("how,expected", [
    ("max", 1.0), ("sum", 1.75), ("first", 1.0), ("last", 0.5)])
def test_reduce_rewards_in_event_time_order(how, expected):
  assert rewards.reduce_rewards([1.0, 0.25, 0.5], how) == expected


def test_request_contribution_with_and_without_reward():
  assert rewards.request_contribution(5.0, 0.5, "zero") == (
      rewards.ArmAccumulator(1, 1, 1, 0.5, 0.25, 1, 5.0, 5.0, 0.5, 0.0, 0.5,
                             0.5))
  assert rewards.request_contribution(5.0, None, "zero") == (
      rewards.ArmAccumulator(1, 0, 1, 0.0, 0.0, 0, 5.0, 5.0, 0.0, 0.0, 0.0,
                             0.0))
  assert rewards.request_contribution(5.0, None, "ignore").samples == 0


@pytest.mark.parametrize("how", rewards.REDUCERS)
@pytest.mark.parametrize("missing", rewards.MISSING_REWARD_MODES)
def test_attribute_request_matches_batch_attribution(how, missing):
  rng = np.random.default_rng(11)
  n = 200
  p_ts = rng.uniform(0, 1000, n)
  shadow = rng.random(n) < 0.1
  feedback = {i: [(float(p_ts[i] + d), float(r)) for d, r in zip(
      rng.uniform(-5, 90, k), rng.choice([0.0, 1.0, 0.5], k))]
              for i, k in enumerate(rng.integers(0, 4, n))}
  config = rewards.AttributionConfig(attribution_window_s=60.0,
                                     reward_reduce=how, missing_reward=missing)
  streamed = collections.Counter()
  arms = collections.defaultdict(rewards.ArmAccumulator)
  for i in range(n):
    outcome = rewards.attribute_request(float(p_ts[i]), bool(shadow[i]),
                                        feedback[i], config)
    streamed.update(outcome.counts)
    if outcome.contribution:
      arms[("e", "ab"[i % 2])] = arms[("e", "ab"[i % 2])].merge(
          outcome.contribution)

  batch = rewards.attribute(
      pa.Table.from_pylist([{"request_id": f"r{i}", "ts": p_ts[i],
                             "experiment_id": "e", "arm": "ab"[i % 2],
                             "shadow": bool(shadow[i])} for i in range(n)],
                           schema=batches.PREDICTION_SCHEMA),
      pa.Table.from_pylist([{"request_id": f"r{i}", "ts": ts, "reward": r,
                             "experiment_id": None, "arm": None, "raw": "",
                             "source_file": "f"}
                            for i in range(n) for ts, r in feedback[i]],
                           schema=batches.FEEDBACK_SCHEMA), config)
  assert streamed == +collections.Counter(batch.counts)
  assert dict(arms).keys() == dict(batch.partials).keys()
  for key, accumulator in batch.partials:
    assert arms[key] == pytest.approx(accumulator)


# The pipeline, on TestStream.


@pytest.mark.parametrize("how,r1_reward", [
    ("max", 1.0), ("sum", 1.75), ("first", 1.0), ("last", 0.5)])
def test_out_of_order_early_duplicate_late_shadow_and_orphan_records(
    how, r1_reward):
  events = (
      TestStream()
      .advance_watermark_to(T0)
      # r1: three rewards, out of event-time order (1 at 3 s, 0.25 at 6 s,
      # 0.5 at 8 s); r2: feedback before its prediction; r3: late feedback.
      .add_elements([fb("r1", 8, 0.5), fb("r2", 4, 1.0), pred("r1", 1, "a"),
                     fb("r1", 3, 1.0), fb("r1", 6, 0.25),
                     pred("r3", 2, "b"), fb("r3", 30, 1.0),
                     pred("s1", 2, "shadow-model", shadow=True),
                     fb("s1", 5, 1.0), fb("ghost", 5, 1.0),
                     message("predictions", "not json", published=T0 + 5)])
      .advance_watermark_to(T0 + 8)
      .add_elements([pred("r2", 3, "b"), pred("r1", 2, "a")])  # r1 re-logged
      .advance_watermark_to(T0 + 35)
      .add_elements([fb("r1", 9, 1.0)])  # r1 was decided at 31 s: too late
      .advance_watermark_to(T0 + 100)
      .advance_watermark_to_infinity())
  p = pipeline()
  outputs = run_streaming(p, events, reward_reduce=how)
  assert_that(outputs["arm_stats_so_far"] | "Final" >> beam.ParDo(final)
              | beam.Map(totals),
              equal_to([("a", 1, 1, 1, r1_reward), ("b", 2, 1, 2, 1.0)]),
              label="ArmTotals")

  def check_quality(rows):
    counts = quality_counts(rows)
    assert counts == {
        ("prediction", "read"): 6, ("prediction", "parsed"): 5,
        ("prediction", "dead_letter:invalid_json"): 1,
        ("prediction", "counted"): 3, ("prediction", "shadow"): 1,
        ("prediction", "duplicate"): 1,
        ("feedback", "read"): 8, ("feedback", "parsed"): 8,
        ("feedback", "counted"): 2, ("feedback", "duplicate"): 2,
        ("feedback", "late"): 2, ("feedback", "shadow"): 1,
        ("feedback", "dead_letter:orphan_feedback"): 1}, counts
    assert quality.balance(rows) == {"feedback": (8, 8),
                                     "prediction": (6, 6)}

  assert_that(outputs["data_quality"] | "FinalCounts" >> beam.ParDo(final),
              check_quality,
              label="DataQuality")
  assert_that(outputs["dead_letter"] | "Reasons" >> beam.Map(
      lambda r: (r["record_type"], r["reason"], r["source_file"])),
              equal_to([("prediction", "invalid_json",
                         SUBSCRIPTIONS["predictions"]),
                        ("feedback", "orphan_feedback",
                         SUBSCRIPTIONS["feedback"])]), label="DeadLetters")
  with p:
    pass


def pane_of(row, pane=beam.DoFn.PaneInfoParam):
  return (pane.index, pane.timing, *totals(row))


def test_early_on_time_and_late_panes_accumulate():
  # Processing time runs a little ahead of event time, as on a live stream
  # (the test clock starts at the epoch): attribution window 20 s, window 100 s.
  events = (
      TestStream()
      .advance_processing_time(T0)
      .advance_watermark_to(T0)
      .add_elements([pred("a1", 1, "a"), fb("a1", 5, 1.0), pred("b1", 2, "b")])
      .advance_processing_time(30)
      .advance_watermark_to(T0 + 35)  # a1 and b1 decided (at 31 s and 32 s)
      .add_elements([pred("a2", 40, "a"), fb("a2", 45, 0.0),
                     pred("b2", 50, "b"), fb("b2", 55, 1.0)])
      .advance_processing_time(50)  # early pane 0
      .advance_watermark_to(T0 + 85)  # a2 and b2 decided (at 70 s and 80 s)
      .add_elements([pred("a3", 90, "a"), fb("a3", 95, 1.0)])
      .advance_processing_time(25)  # early pane 1
      .advance_watermark_to(T0 + 105)  # the window's end: on-time pane 2
      .advance_processing_time(10)
      .advance_watermark_to(T0 + 125)  # a3 decided at 120 s, after the window's end
      .advance_processing_time(85)  # late pane 3
      .advance_watermark_to(T0 + 200)  # past end + 20 s + 10 s: expired
      .advance_watermark_to_infinity())
  p = pipeline()
  outputs = run_streaming(p, events, window_s=100.0)
  first = [("a", 1, 1, 1, 1.0), ("b", 1, 0, 1, 0.0)]
  second = [("a", 2, 2, 2, 1.0), ("b", 2, 1, 2, 1.0)]
  third = [("a", 3, 3, 3, 2.0), ("b", 2, 1, 2, 1.0)]
  assert_that(outputs["arm_stats"] | beam.Map(pane_of), equal_to(
      [(0, PaneInfoTiming.EARLY, *arm) for arm in first] +
      [(1, PaneInfoTiming.EARLY, *arm) for arm in second] +
      [(2, PaneInfoTiming.ON_TIME, *arm) for arm in second] +
      [(3, PaneInfoTiming.LATE, *arm) for arm in third]))
  # Every pane carries the window's bounds and the sequential p-value of the
  # arm against the control.
  window_bounds = ("2026-11-21T00:00:00.000000Z", "2026-11-21T00:01:40.000000Z")
  assert_that(outputs["arm_stats"] | "Windows" >> beam.Map(
      lambda r: (r["window_start"], r["window_end"], r["arm"],
                 r["seq_p_value"] is not None)),
              equal_to([(*window_bounds, "a", False)] * 4 +
                       [(*window_bounds, "b", True)] * 4),
              label="WindowBoundsAndSequentialStatistics")
  with p:
    pass


def impressions_per_pane(row, pane=beam.DoFn.PaneInfoParam):
  return pane.index, row["arm"], row["impressions"]


def test_contribution_past_allowed_lateness_misses_its_window_only():
  events = (
      TestStream()
      .advance_processing_time(T0)
      .advance_watermark_to(T0)
      .add_elements([pred("p1", 10, "a"), fb("p1", 12, 1.0)])
      .advance_processing_time(45)
      .advance_watermark_to(T0 + 45)  # p1 decided at 40 s: early pane 0
      .advance_processing_time(260)
      .advance_watermark_to(T0 + 300)  # on-time pane 1; expired at 130 s
      # Logged at 20 s but arriving 280 s behind the watermark.
      .add_elements([pred("p2", 20, "a")])
      .advance_processing_time(100)
      .advance_watermark_to(T0 + 400)
      .advance_watermark_to_infinity())
  p = pipeline()
  outputs = run_streaming(p, events, window_s=100.0)
  # Beam drops p2 from its (expired) window without a trace...
  assert_that(outputs["arm_stats"] | beam.Map(impressions_per_pane),
              equal_to([(0, "a", 1), (1, "a", 1)]), label="Window")
  # ...but not from the totals so far, the router state and the counts.
  assert_that(outputs["arm_stats_so_far"] | "Final" >> beam.ParDo(final)
              | beam.Map(totals), equal_to([("a", 2, 1, 2, 1.0)]),
              label="SoFar")
  assert_that(outputs["router_state"] | "FinalState" >> beam.ParDo(final)
              | beam.Map(lambda s: [(a["arm"], a["tries"]) for a in s["arms"]]),
              equal_to([[("a", 2)]]), label="RouterState")
  assert_that(outputs["data_quality"] | "FinalCounts" >> beam.ParDo(final)
              | beam.Filter(lambda r: r["metric"] == "counted")
              | beam.Map(lambda r: (r["record_type"], r["count"])),
              equal_to([("prediction", 2), ("feedback", 1)]), label="Counted")
  with p:
    pass


@pytest.mark.parametrize("watermark,feedback_ts", [
    (25, 19),  # 6 s behind the watermark, within the 10 s lateness
    (21, 21),  # on time, at the attribution window's last second
])
def test_feedback_within_its_window_and_the_lateness_counts(watermark,
                                                            feedback_ts):
  events = (
      TestStream()
      .advance_watermark_to(T0)
      .add_elements([pred("r1", 1, "a")])
      .advance_watermark_to(T0 + watermark)
      .add_elements([fb("r1", feedback_ts, 1.0)])
      .advance_watermark_to(T0 + 100)
      .advance_watermark_to_infinity())
  p = pipeline()
  outputs = run_streaming(p, events)
  assert_that(outputs["arm_stats_so_far"] | "Final" >> beam.ParDo(final)
              | beam.Map(totals), equal_to([("a", 1, 1, 1, 1.0)]))
  with p:
    pass


@pytest.mark.parametrize("prediction_ts,watermark", [
    (20, 20),  # stamped 15 s after its feedback (clock skew), on time
    (10, 16),  # 5 s after its feedback, arriving 6 s behind the watermark
])
def test_feedback_stamped_before_its_prediction_waits_for_it(prediction_ts,
                                                             watermark):
  events = (
      TestStream()
      .advance_watermark_to(T0)
      .add_elements([fb("r1", 5, 1.0)])
      .advance_watermark_to(T0 + watermark)
      .add_elements([pred("r1", prediction_ts, "a")])
      .advance_watermark_to(T0 + 100)
      .advance_watermark_to_infinity())
  p = pipeline()
  outputs = run_streaming(p, events)
  assert_that(outputs["arm_stats_so_far"] | "Final" >> beam.ParDo(final)
              | beam.Map(totals), equal_to([("a", 1, 1, 1, 1.0)]),
              label="SoFar")
  assert_that(outputs["dead_letter"], equal_to([]), label="NoOrphan")
  with p:
    pass


def test_request_state_is_cleared_after_window_and_lateness():
  # Attribution window 20 s and lateness 10 s: r1 is decided at 30 s and its
  # state lives until 40 s.
  events = (
      TestStream()
      .advance_processing_time(T0)
      .advance_watermark_to(T0)
      .add_elements([pred("r1", 0, "a"), fb("r1", 5, 1.0), pred("r2", 0, "b")])
      .advance_processing_time(25)
      .advance_watermark_to(T0 + 35)  # decided; tombstones until 40 s
      .add_elements([pred("r1", 0, "a"), fb("r1", 6, 0.0)])  # stragglers
      .advance_processing_time(15)
      .advance_watermark_to(T0 + 45)  # both states cleared
      # After the clean-up nothing is left of r1 and r2: r1's prediction log
      # opens a new request, r2's feedback has no prediction any more.
      .add_elements([pred("r1", 0, "a"), fb("r2", 15, 1.0)])
      .advance_processing_time(60)
      .advance_watermark_to(T0 + 100)
      .advance_watermark_to_infinity())
  p = pipeline()
  outputs = run_streaming(p, events, window_s=100.0)
  assert_that(outputs["arm_stats_so_far"] | "Final" >> beam.ParDo(final)
              | beam.Map(totals),
              equal_to([("a", 2, 1, 2, 1.0), ("b", 1, 0, 1, 0.0)]),
              label="SoFar")

  def check_quality(rows):
    counts = quality_counts(rows)
    assert counts[("prediction", "counted")] == 3
    assert counts[("prediction", "duplicate")] == 1
    assert counts[("feedback", "counted")] == 1
    assert counts[("feedback", "late")] == 1
    assert counts[("feedback", "dead_letter:orphan_feedback")] == 1
    assert quality.balance(rows) == {"feedback": (3, 3), "prediction": (4, 4)}

  assert_that(outputs["data_quality"] | "FinalCounts" >> beam.ParDo(final),
              check_quality, label="DataQuality")
  with p:
    pass



def live_stream(lines, start, end, step):
  """{source: lines} -> a TestStream that publishes each line at its event time
  while the clock and the watermark advance by `step`."""
  timed = realtime_publisher.timeline(lines, start)
  events = TestStream().advance_processing_time(start).advance_watermark_to(
      start)
  next_line = 0
  for watermark in np.arange(start + step, end + step, step):
    published = []
    while next_line < len(timed) and timed[next_line].ts < watermark:
      ts, name, line = timed[next_line]
      published.append(message(name, line, published=ts))
      next_line += 1
    if published:
      events = events.add_elements(published)
    events = events.advance_processing_time(step).advance_watermark_to(
        watermark)
  return events.advance_watermark_to_infinity()


def read_jsonl(directory, table):
  return [json.loads(line) for path in directory.glob(f"{table}*")
          for line in path.read_text().splitlines()]


def test_batch_and_streaming_agree_once_every_window_has_closed(tmp_path):
  # Late feedback comes after the attribution window (600 s) but within the
  # allowed lateness (120 s), so that both count it as late.
  scenario = simulate.Scenario(
      requests=300, start=T0, duration_s=1200.0, feedback_rate=0.7,
      mean_delay_s=60.0, duplicate_feedback=0.1, late_feedback=0.05,
      late_delay_s=650.0, duplicate_predictions=0.05, shadow_arm="shadow",
      orphan_feedback=0.03, malformed=0.02, seldon_feedback=0.2, seed=3)
  predictions, feedback, _ = simulate.generate(scenario)
  for name, lines in (("predictions", predictions), ("feedback", feedback)):
    simulate.write_jsonl(str(tmp_path / f"{name}.jsonl"), lines)
  reward_batch.run([f"--predictions={tmp_path / 'predictions.jsonl'}",
                    f"--feedback={tmp_path / 'feedback.jsonl'}",
                    f"--output_dir={tmp_path / 'batch'}",
                    "--attribution_window_s=600", "--control_arm=control",
                    # 2% malformed and 3% orphan feedback, on purpose.
                    "--max_dead_letter_fraction=0.1",
                    "--runner=FnApiRunner"])
  batch_arms = [totals(r) for r in read_jsonl(tmp_path / "batch", "arm_stats")]
  batch_counts = {
      key: count for key, count in quality_counts(
          read_jsonl(tmp_path / "batch", "data_quality")).items()
      if key[1] != quality.FAST_PATH and count}  # Batch also writes zeros.
  batch_dead = collections.Counter(
      (r["record_type"], r["reason"])
      for r in read_jsonl(tmp_path / "batch", "dead_letter"))
  assert len(batch_arms) == 3 and batch_counts[("feedback", "late")] > 0

  p = pipeline()
  outputs = run_streaming(
      p, live_stream({"predictions": predictions, "feedback": feedback},
                     start=T0, end=T0 + 2100.0, step=60.0),
      attribution_window_s=600.0, lateness_s=120.0, window_s=300.0)
  assert_that(outputs["arm_stats_so_far"] | "Final" >> beam.ParDo(final)
              | beam.Map(totals), equal_to(batch_arms), label="ArmTotals")
  assert_that(outputs["data_quality"] | "FinalCounts" >> beam.ParDo(final)
              | beam.Map(lambda r: ((r["record_type"], r["metric"]),
                                    r["count"])),
              equal_to(list(batch_counts.items())), label="DataQuality")
  assert_that(outputs["dead_letter"] | beam.Map(
      lambda r: (r["record_type"], r["reason"])),
              equal_to(list(batch_dead.elements())), label="DeadLetters")
  with p:
    pass


def test_late_rows_reach_bigquery_and_refused_ones_dead_letter(bq_emulator):
  emulator, project = bq_emulator
  client = bigquery.bigquery_client(project, emulator.host)
  bigquery.ensure_tables(client, project, "streaming_sink",
                         [schemas.ARM_STATS])
  config = sinks.OutputConfig(run_id="run", partition_date="2026-11-21",
                              project=project, dataset="streaming_sink",
                              emulator_host=emulator.host, streaming=True)
  row = {"experiment_id": "exp", "impressions": 1, "feedback_count": 0,
         "samples": 1, "reward_sum": 0.0, "reward_sq_sum": 0.0}
  # Rows of a window that ended long before the watermark, as late panes are.
  events = (TestStream()
            .advance_watermark_to(T0 + 1000)
            .add_elements([
                window.TimestampedValue({**row, "arm": "good"}, T0 + 1),
                window.TimestampedValue(
                    {**row, "arm": "bad", "impressions": "many"}, T0 + 1)])
            .advance_watermark_to_infinity())
  p = pipeline()
  refused = (p
             | events
             | beam.WindowInto(window.FixedWindows(10))
             | sinks.WriteTable(schemas.ARM_STATS, config))
  assert_that(refused | beam.Map(lambda r: (
      r["record_type"], r["reason"], json.loads(r["raw"])["arm"])),
              equal_to([("arm_stats", sinks.INSERT_FAILED, "bad")]))
  with p:
    pass
  assert [r["arm"] for r in bigquery.read_rows(
      client, project, "streaming_sink", "arm_stats")] == ["good"]

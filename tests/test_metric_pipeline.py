"""reward_batch --metrics: metric_stats and decisions from logs, end to end."""

import collections
import re
import glob
import json

import numpy as np
import pandas as pd
import pytest

from pipelines import reward_batch
from transforms.decisions import metrics
from transforms.logs import quality

T0 = 1_795_219_200.0  # 2026-11-21T00:00:00Z

METRICS = """\
metrics:
  - name: clicks
    source: feedback:click
    type: proportion
    role: goal
  - name: revenue
    source: feedback:purchase
    type: mean
    reduce: sum
    cap: 50
  - name: revenue_per_click
    type: ratio
    numerator: revenue
    denominator: clicks
  - name: latency_ms
    source: prediction:latency_ms
    type: quantile
    q: 0.5
    role: guardrail
    direction: decrease
    margin: 0.05
  - name: errors
    source: prediction:error
    type: proportion
    role: guardrail
    direction: decrease
    margin: 0.5
"""


def _logs(tmp_path, seed=0, n=400):
  """Random requests over two arms, three countries; the expected frame."""
  rng = np.random.default_rng(seed)
  predictions, feedback, rows = [], [], []
  for i in range(n):
    arm = "ab"[i % 2]
    country = ("DE", "FR", "US")[rng.integers(3)]
    latency = float(rng.gamma(4, 25))
    status = ("ok", 503, "error", 200)[rng.integers(4)]
    predictions.append({
        "request_id": f"r{i}", "timestamp": T0 + i, "experiment_id": "exp",
        "arm": arm, "latency_ms": latency, "status": status,
        "attributes": {"country": country, "platform": "ios"}})
    click = purchase = None
    if rng.random() < 0.3:
      click = 1.0
      feedback.append({"request_id": f"r{i}", "timestamp": T0 + i + 1,
                       "reward": 1, "metric": "click"})
      if rng.random() < 0.5:
        amounts = rng.uniform(5, 40, rng.integers(1, 3))
        purchase = float(amounts.sum())
        for amount in amounts:
          feedback.append({"request_id": f"r{i}", "timestamp": T0 + i + 2,
                           "reward": float(amount), "metric": "purchase"})
    rows.append({"arm": arm, "country": country, "latency": latency,
                 "errors": float(status in (503, "error")),
                 "clicks": click or 0.0,
                 "revenue": min(purchase or 0.0, 50.0)})
  bad_predictions = [
      {"request_id": "x1", "timestamp": T0, "experiment_id": "exp",
       "arm": "a", "latency_ms": -3},
      {"request_id": "x2", "timestamp": T0, "experiment_id": "exp",
       "arm": "a", "status": "teapot"},
      {"request_id": "x3", "timestamp": T0, "experiment_id": "exp",
       "arm": "a", "attributes": ["DE"]}]
  bad_feedback = [{"request_id": "r1", "timestamp": T0, "reward": 1,
                   "metric": 7}]
  (tmp_path / "predictions.jsonl").write_text("".join(
      json.dumps(r) + "\n" for r in predictions + bad_predictions))
  (tmp_path / "feedback.jsonl").write_text("".join(
      json.dumps(r) + "\n" for r in feedback + bad_feedback))
  return pd.DataFrame(rows)


def _read(directory, table):
  return [json.loads(line) for path in sorted(glob.glob(
      f"{directory}/{table}*")) for line in open(path)]


def _run(tmp_path, *extra):
  (tmp_path / "metrics.yaml").write_text(METRICS)
  reward_batch.run([
      "--predictions", str(tmp_path / "predictions.jsonl"),
      "--feedback", str(tmp_path / "feedback.jsonl"),
      "--output_dir", str(tmp_path / "out"), "--join_shards", "3",
      "--metrics", str(tmp_path / "metrics.yaml"), "--control_arm", "a",
      "--partition_date", "2026-11-21", *extra])
  return {t: _read(tmp_path / "out", t) for t in (
      "metric_stats", "decisions", "data_quality", "dead_letter", "arm_stats")}


def test_metric_stats_totals_match_the_logs(tmp_path):
  expected = _logs(tmp_path)
  out = _run(tmp_path, "--dimensions", "country", "--max_segment_values", "2")
  stats = {(r["dimension"], r["segment"], r["arm"], r["metric"]): r
           for r in out["metric_stats"]}
  for arm, group in expected.groupby("arm"):
    for metric in ("clicks", "revenue", "errors"):
      row = stats[("all", "all", arm, metric)]
      assert row["n"] == len(group)
      assert row["value_sum"] == pytest.approx(group[metric].sum())
      assert row["value_m2"] == pytest.approx(
          group[metric].var(ddof=0) * len(group))
    ratio = stats[("all", "all", arm, "revenue_per_click")]
    assert ratio["estimate"] == pytest.approx(
        group["revenue"].sum() / group["clicks"].sum())
    latency = stats[("all", "all", arm, "latency_ms")]
    assert latency["estimate"] == pytest.approx(
        np.quantile(group["latency"], 0.5), rel=0.02)
  # Two countries with most requests kept, the third folded into "other".
  counts = expected["country"].value_counts()
  kept = set(counts.index[:2])
  segments = {s for d, s, _, _ in stats if d == "country"}
  assert segments == kept | {"other"}
  for arm, group in expected.groupby("arm"):
    other = group[~group["country"].isin(kept)]
    assert stats[("country", "other", arm, "clicks")]["n"] == len(other)
    assert stats[("country", "other", arm, "clicks")]["value_sum"] == (
        pytest.approx(other["clicks"].sum()))
  assert all(r["srm_p_value"] is not None for r in out["metric_stats"])
  decisions = {(r["dimension"], r["segment"]): r for r in out["decisions"]}
  assert set(decisions) == {("all", "all"), ("country", "other")} | {
      ("country", c) for c in kept}
  for decision in decisions.values():
    assert decision["arm"] == "b" and decision["control_arm"] == "a"
    assert decision["verdict"] in ("keep_running", "invalid", "rollback")
    assert decision["decide_on"] == "sequential"
    assert len(decision["reasons"]) >= 3


def test_new_fields_are_dead_lettered_and_counts_balance(tmp_path):
  _logs(tmp_path, n=40)
  # Planted bad records: more than the default dead-letter gate allows.
  out = _run(tmp_path, "--dimensions", "country", "--allow_partial")
  reasons = collections.Counter((r["record_type"], r["reason"], r["detail"])
                                for r in out["dead_letter"])
  assert reasons == {
      ("prediction", "value_out_of_range", "latency_ms"): 1,
      ("prediction", "wrong_type", "status"): 1,
      ("prediction", "wrong_type", "attributes"): 1,
      ("feedback", "wrong_type", "metric"): 1}
  balance = quality.balance(out["data_quality"])
  assert all(read == accounted for read, accounted in balance.values())


def test_without_metrics_no_metric_tables(tmp_path):
  _logs(tmp_path, n=20)
  reward_batch.run([
      "--predictions", str(tmp_path / "predictions.jsonl"),
      "--feedback", str(tmp_path / "feedback.jsonl"),
      "--output_dir", str(tmp_path / "out"),
      "--partition_date", "2026-11-21"])
  assert _read(tmp_path / "out", "arm_stats")
  assert not glob.glob(str(tmp_path / "out" / "metric_stats*"))
  assert not glob.glob(str(tmp_path / "out" / "decisions*"))


def test_bad_metrics_file_fails_before_the_run(tmp_path, capsys):
  _logs(tmp_path, n=4)
  (tmp_path / "metrics.yaml").write_text(
      "metrics:\n  - name: p95\n    source: prediction:latency_ms\n"
      "    type: quantile\n")
  with pytest.raises(SystemExit) as stop:
    reward_batch.run([
        "--predictions", str(tmp_path / "predictions.jsonl"),
        "--feedback", str(tmp_path / "feedback.jsonl"),
        "--output_dir", str(tmp_path / "out"),
        "--metrics", str(tmp_path / "metrics.yaml")])
  assert stop.value.code == 2
  assert re.search(r"metrics.yaml:2: a quantile metric needs `q`",
                   capsys.readouterr().err)
  assert not (tmp_path / "out").exists()


def test_demo_scenario_rolls_back_the_slow_winner(tmp_path):
  from pipelines import demo
  demo.write_sample_logs(str(tmp_path), demo.METRICS_SCENARIO)
  (tmp_path / "metrics.yaml").write_text(demo.METRICS_FILE)
  reward_batch.run([
      "--predictions", str(tmp_path / "predictions.jsonl"),
      "--feedback", str(tmp_path / "feedback.jsonl"),
      "--output_dir", str(tmp_path / "out"),
      "--metrics", str(tmp_path / "metrics.yaml"), "--control_arm", "control",
      "--partition_date", "2026-11-21"])
  verdicts = {r["arm"]: r for r in _read(tmp_path / "out", "decisions")}
  assert verdicts["big-model"]["verdict"] == "rollback"
  assert any("latency_ms p95" in reason and reason.endswith(": worse")
             for reason in verdicts["big-model"]["reasons"])
  assert any(reason.startswith("clicks") and reason.endswith(": better")
             for reason in verdicts["big-model"]["reasons"])
  assert verdicts["fast-model"]["verdict"] in ("ship", "keep_running")


def test_batch_and_streaming_metric_totals_agree(tmp_path):
  import apache_beam as beam
  from apache_beam.testing.util import assert_that
  from pipelines import reward_streaming
  from simulation import simulate
  from transforms.attribution import rewards
  from transforms.decisions import arm_table
  import test_reward_streaming as streaming_test

  scenario = simulate.Scenario(
      requests=300, start=T0, duration_s=1200.0, feedback_rate=0.7,
      mean_delay_s=60.0, duplicate_feedback=0.1, late_feedback=0.05,
      late_delay_s=650.0, duplicate_predictions=0.05, shadow_arm="shadow",
      orphan_feedback=0.03, malformed=0.02, seldon_feedback=0.2, seed=3,
      serving_metrics=True,
      arms=(simulate.Arm("a", 0.3), simulate.Arm("b", 0.4, latency_ms=90.0)))
  predictions, feedback, _ = simulate.generate(scenario)
  for name, lines in (("predictions", predictions), ("feedback", feedback)):
    simulate.write_jsonl(str(tmp_path / f"{name}.jsonl"), lines)
  (tmp_path / "metrics.yaml").write_text(METRICS.replace(
      "feedback:click", "feedback:reward"))
  common = [f"--metrics={tmp_path / 'metrics.yaml'}",
            "--dimensions=country,platform", "--max_segment_values=3",
            "--attribution_window_s=600", "--control_arm=a"]
  reward_batch.run([f"--predictions={tmp_path / 'predictions.jsonl'}",
                    f"--feedback={tmp_path / 'feedback.jsonl'}",
                    f"--output_dir={tmp_path / 'batch'}",
                    "--runner=FnApiRunner", *common])

  def totals(row):
    return ((row["dimension"], row["segment"], row["arm"], row["metric"]),
            (row["n"], row["value_sum"], row["value_m2"]))

  batch = dict(totals(r) for r in _read(tmp_path / "batch", "metric_stats"))
  assert len(batch) > 60

  def same_as_batch(streamed):
    streamed = dict(streamed)
    assert streamed.keys() == batch.keys()
    for key, (n, value_sum, value_m2) in batch.items():
      assert streamed[key][0] == n, key
      assert streamed[key][1:] == pytest.approx((value_sum, value_m2),
                                                rel=1e-9, abs=1e-9), key

  options = reward_batch.PipelineOptions(common)
  plan = reward_batch.metric_plan(options)
  p = streaming_test.pipeline()
  stream = p | streaming_test.live_stream(
      {"predictions": predictions, "feedback": feedback}, start=T0,
      end=T0 + 2100.0, step=60.0)
  payloads = {
      name: (stream
             | f"Only_{name}" >> beam.Filter(lambda m, n: m[0] == n, name)
             | f"Payload_{name}" >> beam.Map(lambda m: m[1]))
      for name in streaming_test.SUBSCRIPTIONS}
  outputs = payloads | reward_streaming.RewardStreaming(
      streaming_test.SUBSCRIPTIONS,
      rewards.AttributionConfig(attribution_window_s=600.0),
      arm_table.StatisticsConfig(control_arm="a"),
      reward_streaming.WindowConfig(window_s=300.0, early_firing_s=5,
                                    allowed_lateness_s=120.0), plan)
  assert_that(outputs["metric_stats"]
              | "Final" >> beam.ParDo(streaming_test.final)
              | beam.Map(totals), same_as_batch, label="MetricTotals")
  def sequential_only(modes):
    assert modes and set(modes) == {"sequential"}, modes

  assert_that(outputs["decisions"] | "FinalDecisions" >> beam.ParDo(
      streaming_test.final) | beam.Map(lambda r: r["decide_on"]),
              sequential_only, label="Sequential")
  with p:
    pass


def test_percentile_cap_winsorizes_at_the_control_arms_percentile(tmp_path):
  expected = _logs(tmp_path, seed=4, n=600)
  capped = METRICS.replace("    cap: 50\n", "    cap_percentile: 0.95\n")
  assert capped != METRICS
  (tmp_path / "capped.yaml").write_text(capped)
  reward_batch.run([
      "--predictions", str(tmp_path / "predictions.jsonl"),
      "--feedback", str(tmp_path / "feedback.jsonl"),
      "--output_dir", str(tmp_path / "out"),
      "--metrics", str(tmp_path / "capped.yaml"), "--control_arm", "a",
      "--partition_date", "2026-11-21"])
  rows = {(r["arm"], r["metric"]): r
          for r in _read(tmp_path / "out", "metric_stats")
          if r["dimension"] == "all"}
  # _logs caps its expected revenue at 50 (the fixed cap): the raw sums.
  raw = {}
  for line in open(tmp_path / "feedback.jsonl"):
    record = json.loads(line)
    if record.get("metric") == "purchase":
      raw[record["request_id"]] = raw.get(record["request_id"], 0.0) + record[
          "reward"]
  # Plus x3, a valid prediction of arm a without feedback (its attributes
  # are not read without --dimensions).
  revenue = np.array([raw.get(f"r{i}", 0.0) for i in range(len(expected))]
                     + [0.0])
  arms = np.append(expected["arm"].to_numpy(), "a")
  # The sketch holds every value at this size: its 0.95 quantile is numpy's
  # "higher" order statistic of the control's values.
  cap = np.quantile(revenue[arms == "a"], 0.95, method="higher")
  assert 0 < cap < revenue.max()
  for arm in ("a", "b"):
    assert rows[(arm, "revenue")]["value_sum"] == pytest.approx(
        np.minimum(revenue[arms == arm], cap).sum())
  assert rows[("a", "clicks")]["value_sum"] == pytest.approx(expected[
      expected["arm"] == "a"]["clicks"].sum())  # other metrics uncapped


@pytest.mark.parametrize("name", ["reward_batch", "reward_streaming"])
def test_dataflow_dry_run_with_metrics(name, monkeypatch):
  import socket
  import test_dataflow_dry_run as dry_run
  from templates import main

  def refuse(*args, **kwargs):
    raise AssertionError(f"network access during a dry run: {args}")

  monkeypatch.setattr(socket.socket, "connect", refuse)
  monkeypatch.setattr(socket, "getaddrinfo", refuse)
  monkeypatch.setenv(main.PIPELINE_ENV, name)
  inline = json.dumps({"metrics": [
      {"name": "clicks", "source": "feedback:click", "type": "proportion",
       "role": "goal"},
      {"name": "latency_ms", "source": "prediction:latency_ms",
       "type": "quantile", "q": 0.95, "role": "guardrail",
       "direction": "decrease", "margin": 0.05}]})
  job = main.main(dry_run.arguments(name, metrics=inline,
                                    dimensions="country")).job
  transforms = dry_run.check_job(name, job)
  for table in ("metric_stats", "decisions"):
    assert any(t.startswith(f"WriteOutputs/Write_{table}/WriteBigQuery")
               for t in transforms)


def test_rows_carry_the_span_of_the_predictions(tmp_path):
  _logs(tmp_path, n=30)
  out = _run(tmp_path, "--allow_partial")  # Planted dead letters.
  spans = {(r["window_start"], r["window_end"])
           for table in ("metric_stats", "decisions") for r in out[table]}
  # x1..x3 (at T0) are dead letters; r0..r29 are at T0 + i.
  assert spans == {("2026-11-21T00:00:00.000000Z",
                    "2026-11-21T00:00:29.000000Z")}

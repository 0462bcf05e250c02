"""The HTML report: rendering table rows, and the CLI on files and BigQuery."""

import base64
import datetime
import html
import json
import math
import re

import numpy as np
import pytest

from pipelines import report
from transforms.decisions import arm_table
from transforms.io import bigquery
from reporting import report_html
from transforms.attribution import rewards
from transforms.io import schemas
from transforms.decisions import stats

T0 = 1_795_219_200.0  # 2026-11-21T00:00:00Z
HOUR = 3600.0
BINARY_EXPERIMENT = 'homepage "A&B"'
CONTINUOUS_EXPERIMENT = "basket-value"
# Markup for HTML, and math (an unknown symbol) for matplotlib.
ODD_ARM = r"<b>$\x$</b>"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _binary(impressions, successes):
  return rewards.ArmAccumulator(
      impressions=impressions, feedback_count=impressions, samples=impressions,
      reward_sum=successes, reward_sq_sum=successes, ts_min=T0,
      ts_max=T0 + HOUR)


def _continuous(values, impressions=None):
  values = np.asarray(values, float)
  return rewards.ArmAccumulator(
      impressions=len(values) if impressions is None else impressions,
      feedback_count=len(values), samples=len(values),
      reward_sum=float(values.sum()), reward_sq_sum=float((values**2).sum()),
      non_binary=len(values), ts_min=T0, ts_max=T0 + HOUR)


def _run_fields(run_id, computed_at):
  return {"run_id": run_id,
          "computed_at": schemas.format_timestamp(computed_at),
          "partition_date": "2026-11-21"}


def _tables(experiment_id, accumulators, run_id="run-1",
            computed_at=T0 + 2 * HOUR):
  """(arm_stats rows, router_state row) of one experiment, as a run writes."""
  rows, state = arm_table.experiment_rows(
      experiment_id, accumulators,
      arm_table.StatisticsConfig(control_arm="control"))
  fields = _run_fields(run_id, computed_at)
  return [{**row, **fields} for row in rows], {**state, **fields}


def _continuous_values(mean, n, seed):
  return np.random.default_rng(seed).normal(mean, 5.0, n)


@pytest.fixture(scope="module")
def two_experiments():
  """A binary experiment in balance, and a continuous one with an SRM."""
  binary_rows, binary_state = _tables(BINARY_EXPERIMENT, {
      "control": _binary(1000, 100), "candidate": _binary(1000, 130),
      ODD_ARM: _binary(1000, 90)})
  continuous_rows, continuous_state = _tables(CONTINUOUS_EXPERIMENT, {
      "control": _continuous(_continuous_values(20.0, 2000, 1)),
      "bigger-basket": _continuous(_continuous_values(21.0, 1000, 2))})
  return binary_rows + continuous_rows, [binary_state, continuous_state]


def _section(page, experiment_id):
  start = page.index(f"<h2>{html.escape(experiment_id)}</h2>")
  return page[start:page.index("</section>", start)]


def _pngs(page):
  return [base64.b64decode(data)
          for data in re.findall(r'<img src="data:image/png;base64,([^"]+)"',
                                 page)]


def test_every_experiment_and_arm_with_four_charts(two_experiments):
  page = report_html.render_report(*two_experiments)

  binary = _section(page, BINARY_EXPERIMENT)
  continuous = _section(page, CONTINUOUS_EXPERIMENT)
  for arm in ("control", "candidate", html.escape(ODD_ARM)):
    assert f"<td>{arm}" in binary
  for arm in ("control", "bigger-basket"):
    assert f"<td>{arm}" in continuous
  assert binary.count("<img ") == continuous.count("<img ") == 4
  pngs = _pngs(page)
  assert len(pngs) == 8
  assert all(png.startswith(PNG_MAGIC) for png in pngs)


def test_srm_verdict(two_experiments):
  arm_stats, _ = two_experiments
  alerts = {row["experiment_id"]: row["srm_alert"] for row in arm_stats}
  assert alerts == {BINARY_EXPERIMENT: False, CONTINUOUS_EXPERIMENT: True}

  page = report_html.render_report(*two_experiments)

  assert "Sample ratio mismatch</strong>" in _section(page,
                                                      CONTINUOUS_EXPERIMENT)
  assert "No sample ratio mismatch" in _section(page, BINARY_EXPERIMENT)
  # Observed vs expected share of the continuous experiment's impressions.
  assert re.search(r"<td>bigger-basket</td><td class=\"num\">1,000</td>"
                   r"<td class=\"num\">33.3%</td><td class=\"num\">50.0%</td>",
                   page)


def test_text_from_the_data_is_escaped(two_experiments):
  page = report_html.render_report(*two_experiments,
                                   source="<out> & more")

  assert ODD_ARM not in page
  assert r"&lt;b&gt;$\x$&lt;/b&gt;" in page
  assert BINARY_EXPERIMENT not in page
  assert "homepage &quot;A&amp;B&quot;" in page
  assert "&lt;out&gt; &amp; more" in page


def test_numbers_table(two_experiments):
  arm_stats, _ = two_experiments
  candidate = next(row for row in arm_stats if row["arm"] == "candidate")

  binary = _section(report_html.render_report(*two_experiments),
                    BINARY_EXPERIMENT)

  cells = re.search(r"<tr><td>candidate</td>(.*?)</tr>", binary.split(
      "<h3>Numbers</h3>")[1]).group(1)
  assert re.findall(r'<td class="num">([^<]*)</td>', cells) == [
      "1,000", "1,000", "0.13", f"{candidate['prob_best']:.3g}",
      f"{candidate['expected_loss']:.3g}", f"{candidate['lift']:+.1%}",
      f"{candidate['p_value']:.3g}", f"{candidate['p_value_adj']:.3g}",
      f"{candidate['seq_p_value']:.3g}"]
  assert candidate["lift"] == pytest.approx(0.3)


def test_only_the_latest_run_of_an_experiment():
  old_rows, old_state = _tables("exp", {
      "control": _binary(100, 10), "retired": _binary(100, 50)},
                                run_id="run-old", computed_at=T0)
  new_rows, new_state = _tables("exp", {
      "control": _binary(100, 10), "candidate": _binary(100, 20)},
                                run_id="run-new", computed_at=T0 + HOUR)
  # As BigQuery returns them: TIMESTAMP columns as datetimes.
  for row in new_rows + [new_state]:
    row["computed_at"] = datetime.datetime.fromtimestamp(
        T0 + HOUR, datetime.timezone.utc)

  [run] = report_html.latest_runs(old_rows + new_rows, [new_state, old_state])
  page = report_html.render_report(old_rows + new_rows, [new_state, old_state])

  assert [row["arm"] for row in run.arms] == ["control", "candidate"]
  assert run.router_state["run_id"] == "run-new"
  assert run.earlier_runs == 1
  assert "run-new" in page and "1 earlier run(s)" in page
  assert "run-old" not in page and "retired" not in page


def test_posteriors_of_binary_and_continuous_arms():
  rewards_seen = np.array([1.0, 2.0, 4.0, 7.0])
  rows, _ = _tables("exp", {"control": _continuous(rewards_seen),
                            "single": _continuous([3.0])})
  continuous = {row["arm"]: report_html.arm_posterior(row) for row in rows}
  [binary_row], _ = _tables("exp", {"control": _binary(10, 3)})

  binary = report_html.arm_posterior(binary_row)

  assert binary.args == (4.0, 8.0)
  assert continuous["control"].mean() == pytest.approx(3.5)
  assert continuous["control"].std() == pytest.approx(
      math.sqrt(rewards_seen.var(ddof=1) / 4))
  assert continuous["single"] is None


def test_an_experiment_with_one_arm_has_no_lift_and_no_srm():
  rows, state = _tables("solo", {"control": _binary(50, 5)})

  page = report_html.render_report(rows, [state])

  assert rows[0]["srm_alert"] is None and rows[0]["lift"] is None
  assert page.count("<img ") == 3
  assert "no lift: no candidate arm" in page
  assert "Sample ratio not tested" in page


def test_arms_with_no_success_or_only_successes_render():
  rows, state = _tables("e", {"control": _binary(1000, 120),
                              "none": _binary(100, 0), "all": _binary(10, 10)})
  page = report_html.render_report(rows, [state])
  assert all(arm in page for arm in ("control", "none", "all"))


def test_impression_shares():
  arms = [{"arm": "a", "impressions": 300}, {"arm": "b", "impressions": 100}]

  assert report_html.impression_shares(arms) == {"a": (0.75, 0.5),
                                                 "b": (0.25, 0.5)}
  assert report_html.impression_shares(
      arms, {"a": 3.0, "b": 1.0, "gone": 4.0}) == {"a": (0.75, 0.75),
                                                    "b": (0.25, 0.25)}


@pytest.mark.parametrize("source,is_dataset", [
    ("my-project:experiments", True), ("gs://bucket/out", False),
    ("out", False), ("/tmp/out", False)])
def test_bigquery_dataset_or_directory(source, is_dataset):
  assert report.is_bigquery_dataset(source) == is_dataset


def _write_jsonl(path, rows):
  path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def test_run_on_a_jsonl_directory(tmp_path, two_experiments):
  arm_stats, router_states = two_experiments
  binary = [r for r in arm_stats if r["experiment_id"] == BINARY_EXPERIMENT]
  continuous = [r for r in arm_stats if r not in binary]
  _write_jsonl(tmp_path / "arm_stats-00000-of-00002.jsonl", binary)
  _write_jsonl(tmp_path / "arm_stats-00001-of-00002.jsonl", continuous)
  _write_jsonl(tmp_path / "router_state-00000-of-00001.json", router_states)
  # The allocation the run used comes from its own run_summary row.
  _write_jsonl(tmp_path / "run_summary-00000-of-00001.jsonl", [_summary_row(
      arm_stats, {CONTINUOUS_EXPERIMENT: "control=2,bigger-basket=1"})])
  out = tmp_path / "pages" / "report.html"

  written = report.run(["--input", str(tmp_path), "--out", str(out)])

  assert written == str(out)
  page = out.read_text()
  assert len(_pngs(page)) == 8
  assert "bigger-basket" in _section(page, CONTINUOUS_EXPERIMENT)
  assert html.escape(ODD_ARM) in _section(page, BINARY_EXPERIMENT)
  assert "the allocation control=2, bigger-basket=1" in page
  assert f"from {html.escape(str(tmp_path))}" in page


def _summary_row(arm_stats, allocations=None, gates=(), status="passed",
                 counts=()):
  """The run_summary row of the run of `arm_stats`."""
  experiments = sorted({row["experiment_id"] for row in arm_stats})
  return {**_run_fields(arm_stats[0]["run_id"], T0 + 2 * HOUR),
          "pipeline": "reward_batch", "status": status, "gates": list(gates),
          "counts": list(counts), "tables": [],
          "experiments": [{"experiment_id": e, "expected_allocation":
                           (allocations or {}).get(e)} for e in experiments]}


def test_data_quality_and_gates_of_the_run_head_each_experiment(
    two_experiments):
  arm_stats, states = two_experiments
  counts = [{"record_type": "feedback", "metric": "read", "count": 1000},
            {"record_type": "feedback", "metric": "dead_letter:wrong_type",
             "count": 700},
            {"record_type": "feedback",
             "metric": "dead_letter:orphan_feedback", "count": 100}]
  gates = [{"gate": "dead_letter_fraction", "subject": "feedback",
            "passed": False, "detail": "800 of 1,000 feedback records"},
           {"gate": "control_arm", "subject": BINARY_EXPERIMENT,
            "passed": True, "detail": "control arm control"}]
  summary = _summary_row(arm_stats, gates=gates, status="failed",
                         counts=counts)

  page = report_html.render_report(arm_stats, states, run_summary_rows=[
      summary])

  binary = _section(page, BINARY_EXPERIMENT)
  quality = binary[binary.index("<h3>Data quality</h3>"):
                   binary.index("<h3>Sample ratio</h3>")]
  assert "broke 1 quality gate(s)</strong> (status failed)" in quality
  assert ('<td>feedback</td><td class="num">1,000</td><td class="num">800'
          '</td><td class="num">80.0%</td><td class="num">100</td>') in quality
  assert "<td>FAILED</td><td>800 of 1,000 feedback records</td>" in quality
  # A gate on another experiment is not shown under this one.
  assert "control arm control" in quality
  assert "control arm control" not in _section(page, CONTINUOUS_EXPERIMENT)
  # Without a run_summary row the report says it does not know.
  unknown = report_html.render_report(arm_stats, states)
  assert "Data quality unknown: no run_summary row" in _section(
      unknown, BINARY_EXPERIMENT)


def test_binary_lift_intervals_stop_at_minus_100_percent():
  arms = [{"arm": "control", "reward_type": stats.BINARY},
          {"arm": "b", "reward_type": stats.BINARY}]
  assert report_html._lift_floor(arms) == -1.0
  assert report_html._floored(-1.7, -1.0) == -1.0
  assert report_html._floored(-0.2, -1.0) == -0.2
  continuous = [{**arm, "reward_type": stats.CONTINUOUS} for arm in arms]
  assert report_html._lift_floor(continuous) is None


def test_arm_colours_differ_from_measure_colours():
  arms = [{"arm": f"arm-{i}"} for i in range(9)]
  colours = set(report_html._colors(arms).values())
  assert len(colours) == 9
  assert not colours & set(report_html._MEASURE_COLORS)
  assert "C7" not in colours  # matplotlib's grey


def test_run_without_arm_stats_fails(tmp_path):
  with pytest.raises(ValueError, match="no arm_stats rows"):
    report.run(["--input", str(tmp_path), "--out",
                str(tmp_path / "report.html")])


def test_run_on_a_bigquery_dataset(bq_emulator, tmp_path):
  emulator, project = bq_emulator
  client = bigquery.bigquery_client(project, emulator.host)
  bigquery.ensure_tables(client, project, "report",
                         [schemas.ARM_STATS, schemas.ROUTER_STATE])
  arm_stats, state = _tables("checkout", {"control": _binary(500, 50),
                                          "candidate": _binary(500, 75)})
  assert not client.insert_rows_json(f"{project}.report.arm_stats", arm_stats)
  assert not client.insert_rows_json(f"{project}.report.router_state", [state])
  out = tmp_path / "report.html"

  report.run(["--input", f"{project}:report", "--bigquery_emulator_host",
              emulator.host, "--out", str(out)])

  section = _section(out.read_text(), "checkout")
  assert "<td>candidate</td>" in section
  assert "<td>control (control)</td>" in section
  assert section.count("<img ") == 4
  assert "best arm (router) candidate" in section
  assert "computed at 2026-11-21 02:00:00 UTC" in section


def test_metrics_section_shows_verdicts_roles_forest_and_segments(tmp_path):
  from pipelines import demo
  from pipelines import reward_batch
  demo.write_sample_logs(str(tmp_path / "logs"), demo.METRICS_SCENARIO)
  (tmp_path / "metrics.yaml").write_text(demo.METRICS_FILE)
  reward_batch.run([
      f"--predictions={tmp_path / 'logs' / 'predictions.jsonl'}",
      f"--feedback={tmp_path / 'logs' / 'feedback.jsonl'}",
      f"--output_dir={tmp_path / 'out'}", f"--metrics={tmp_path / 'metrics.yaml'}",
      "--dimensions=platform", "--control_arm=control",
      "--partition_date=2026-11-21"])
  out = tmp_path / "report.html"
  report.run(["--input", str(tmp_path / "out"), "--out", str(out)])
  text = out.read_text()
  assert '<div class="verdict rollback"><strong>big-model: rollback' in text
  assert "latency_ms p95 +" in text and "guardrail margin +5.0%: worse" in text
  assert "<h3>Metrics by role</h3>" in text
  assert text.count('alt="Metric lifts, checkout-ranker"') == 1
  assert "<h3>Segments</h3>" in text
  for platform in ("ios", "android", "web"):
    assert f"<td>{platform}</td>" in text

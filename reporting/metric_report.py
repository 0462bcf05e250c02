"""The metrics section of an experiment in the HTML report.

Pure: metric_stats and decisions rows of one experiment (its latest run) ->
HTML: the verdict of each candidate with its reasons, the metrics by role,
a forest plot of the lifts with their intervals and guardrail margins, and
the segment breakdown. Shares the page's formatting and charts helpers.
"""

from __future__ import annotations

import html
from typing import Mapping, Sequence

import matplotlib
from matplotlib import lines
from matplotlib import ticker

from reporting import report_html as page

ROLES = ("goal", "guardrail", "secondary")
VERDICT_CLASSES = {"ship": "ship", "rollback": "rollback",
                   "invalid": "rollback", "keep_running": "keep"}
CSS = """
.verdict { padding: 0.4rem 0.8rem; border-radius: 4px; margin: 0.4rem 0; }
.verdict.ship { background: #e3f4e3; border: 1px solid #2e7d32; }
.verdict.rollback { background: #fbe3e3; border: 1px solid #c62828; }
.verdict.keep { background: #f5f5f5; border: 1px solid #999; }
.verdict ul { margin: 0.2rem 0 0 0; }
"""


def latest_run(rows: Sequence[Mapping], key_columns: Sequence[str]) -> list:
  """The rows of the run with the latest computed_at; of rows with the same
  key (a streaming run's panes) the last computed."""
  if not rows:
    return []
  run = page._run_key(max(rows, key=page._computed_at))  # pylint: disable=protected-access
  latest = {}
  for row in page._latest_of_run(rows, run):  # pylint: disable=protected-access
    latest[tuple(row.get(c) for c in key_columns)] = row
  return list(latest.values())


def _metric_label(row: Mapping) -> str:
  if row.get("metric_type") == "quantile" and row.get("quantile"):
    return f"{row['metric']} p{row['quantile'] * 100:g}"
  return row["metric"]


def forest_chart(rows: Sequence[Mapping]) -> str | None:
  """PNG (base64): each candidate x metric lift with its 95% interval and
  anytime-valid interval; a guardrail's margin as a red tick on its bad side."""
  shown = [r for r in rows if page._defined(r.get("lift"))]  # pylint: disable=protected-access
  if not shown:
    return None
  shown.sort(key=lambda r: (ROLES.index(r["role"]) if r["role"] in ROLES
                            else len(ROLES), r["metric"], r["arm"]))
  arms = sorted({r["arm"] for r in shown})
  colors = {arm: f"C{i % 10}" for i, arm in enumerate(arms)}
  figure = page._figure(page._arm_rows_height(len(shown)) + 0.3)  # pylint: disable=protected-access
  axes = figure.add_subplot()
  axes.axvline(0.0, color="0.5", linewidth=1)
  for y, row in enumerate(shown):
    color = colors[row["arm"]]
    if page._defined(row.get("seq_ci_low")) and page._defined(  # pylint: disable=protected-access
        row.get("seq_ci_high")):
      axes.hlines(y, row["seq_ci_low"], row["seq_ci_high"], color=color,
                  linewidth=1.5, alpha=0.5)
    if page._defined(row.get("lift_ci_low")) and page._defined(  # pylint: disable=protected-access
        row.get("lift_ci_high")):
      axes.hlines(y, row["lift_ci_low"], row["lift_ci_high"], color=color,
                  linewidth=6)
    axes.plot([row["lift"]], [y], "o", color="black", markersize=4)
    if row["role"] == "guardrail" and row.get("margin") is not None:
      sign = 1 if row.get("direction") == "decrease" else -1
      axes.plot([sign * row["margin"]], [y], "|", color="#c62828",
                markersize=14, markeredgewidth=2)
  axes.set_yticks(range(len(shown)), [
      f"{_metric_label(r)} ({r['role']}) · {r['arm']}" for r in shown])
  axes.set_ylim(len(shown) - 0.5, -0.5)
  axes.xaxis.set_major_formatter(ticker.PercentFormatter(xmax=1.0))
  axes.set_title(f"Lift vs the control arm, {shown[0].get('control_arm')}")
  figure.legend(
      [lines.Line2D([], [], color="0.4", linewidth=6),
       lines.Line2D([], [], color="0.4", linewidth=1.5, alpha=0.5),
       lines.Line2D([], [], color="#c62828", marker="|", linestyle="",
                    markersize=10, markeredgewidth=2)],
      ["95% interval", "anytime-valid interval", "guardrail margin"],
      loc="outside lower center", ncols=3, frameon=False)
  return page._png(figure)  # pylint: disable=protected-access


def _verdicts_html(decisions: Sequence[Mapping]) -> str:
  parts = []
  for row in sorted(decisions, key=lambda r: r["arm"]):
    reasons = "".join(f"<li>{html.escape(reason)}</li>"
                      for reason in row.get("reasons") or [])
    parts.append(
        f'<div class="verdict {VERDICT_CLASSES.get(row["verdict"], "keep")}">'
        f"<strong>{html.escape(row['arm'])}: "
        f"{html.escape(row['verdict'].replace('_', ' '))}</strong> "
        f"(vs {html.escape(row['control_arm'])}, "
        f"{html.escape(row.get('decide_on') or '')} statistics)"
        f"<ul>{reasons}</ul></div>")
  return "".join(parts)


def _metrics_table(rows: Sequence[Mapping]) -> str:
  ordered = sorted(rows, key=lambda r: (
      ROLES.index(r["role"]) if r["role"] in ROLES else len(ROLES),
      r["metric"], r["arm"] != r.get("control_arm"), r["arm"]))
  fmt = page._format  # pylint: disable=protected-access
  cells = [[(r["role"], False), (_metric_label(r), False), (r["arm"], False),
            (fmt(r["n"], "count"), True), (fmt(r.get("estimate")), True),
            (f"{fmt(r.get('ci_low'))} – {fmt(r.get('ci_high'))}", True),
            (fmt(r.get("lift"), "percent"), True),
            (fmt(r.get("p_value_adj", r.get("p_value"))
                 if r["role"] == "goal" else r.get("p_value")), True),
            (fmt(r.get("seq_p_value")), True),
            (fmt(r.get("margin"), "share") if r.get("margin") is not None
             else "", True)] for r in ordered]
  return page._table(  # pylint: disable=protected-access
      ("role", "metric", "arm", "n", "estimate", "95% interval", "lift",
       "p (goals: adjusted)", "sequential p", "margin"), cells)


def _segments_html(decisions: Sequence[Mapping],
                   rows: Sequence[Mapping]) -> str:
  segmented = [d for d in decisions if d["dimension"] != "all"]
  if not segmented:
    return ""
  lifts = {(r["dimension"], r["segment"], r["arm"], r["metric"]): r
           for r in rows if r.get("lift") is not None}
  metrics = sorted({r["metric"] for r in rows if r["role"] != "secondary"})
  cells = []
  for d in sorted(segmented, key=lambda d: (d["dimension"], d["segment"],
                                            d["arm"])):
    cells.append(
        [(d["dimension"], False), (d["segment"], False), (d["arm"], False),
         (d["verdict"], False)] +
        [(page._format(lifts.get((d["dimension"], d["segment"], d["arm"], m),  # pylint: disable=protected-access
                                 {}).get("lift"), "percent"), True)
         for m in metrics])
  return ("<h3>Segments</h3>" + page._table(  # pylint: disable=protected-access
      ["dimension", "segment", "arm", "verdict"] +
      [f"{m} lift" for m in metrics], cells))


def metrics_html(experiment_id: str, metric_rows: Sequence[Mapping],
                 decision_rows: Sequence[Mapping]) -> str:
  """The section of one experiment; empty without metric rows."""
  metric_rows = latest_run(
      [r for r in metric_rows if r["experiment_id"] == experiment_id],
      ("dimension", "segment", "arm", "metric"))
  decision_rows = latest_run(
      [r for r in decision_rows if r["experiment_id"] == experiment_id],
      ("dimension", "segment", "arm"))
  if not metric_rows:
    return ""
  overall = [r for r in metric_rows if r["dimension"] == "all"]
  with matplotlib.rc_context(page._CHART_STYLE):  # pylint: disable=protected-access
    forest = forest_chart(overall)
  return "".join([
      "<h3>Verdict</h3>",
      _verdicts_html([d for d in decision_rows if d["dimension"] == "all"]),
      "<h3>Metrics by role</h3>", _metrics_table(overall),
      page._figure_html(forest,  # pylint: disable=protected-access
                        f"Metric lifts, {experiment_id}",
                        "no lift: no candidate arm or no control value."),
      _segments_html(decision_rows, metric_rows)])

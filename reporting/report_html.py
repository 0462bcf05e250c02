"""A static HTML report of experiments from their arm_stats, router_state and run_summary.

Pure: rows in (as JSON lines or BigQuery give them), one self-contained HTML
page out, its charts embedded as PNG. matplotlib draws on its Agg canvas
without pyplot, so there is no global figure state and no display. Every text
that comes from the data is escaped.
"""

from __future__ import annotations

import base64
import collections
import dataclasses
import datetime
import html
import io
import math
from typing import Iterable, Mapping, Sequence

import matplotlib
from matplotlib import lines
from matplotlib import ticker
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
import numpy as np
import scipy.stats

from reporting import policy_section
from transforms.decisions import stats
from transforms.logs import contract

# Arm names are data: "$" in one must not switch matplotlib to math mode.
_CHART_STYLE = {"text.parse_math": False, "font.size": 9}
_CHART_WIDTH_IN = 6.4
_CHART_DPI = 100
# A posterior is drawn across its quantiles _TAIL to 1 - _TAIL.
_TAIL = 1e-4
_POINTS_PER_POSTERIOR = 300
_CI_WIDTH = 6
_SEQ_CI_WIDTH = 1.5
_EARLIEST = datetime.datetime.min.replace(tzinfo=datetime.timezone.utc)
# Arms take the qualitative palette without its grey (C7), which is kept with
# the other greys for measures (served share, P(best), recommended share).
_ARM_COLORS = tuple(f"C{i}" for i in (0, 1, 2, 3, 4, 5, 6, 8, 9))
_MEASURE_COLORS = ("0.15", "0.5", "0.8")
_DEAD_LETTER = "dead_letter:"

_NUMBER_COLUMNS = (
    ("impressions", "impressions", "count"),
    ("samples", "samples", "count"),
    ("reward_mean", "reward mean", "number"),
    ("prob_best", "P(best)", "number"),
    ("expected_loss", "expected loss", "number"),
    ("lift", "lift", "percent"),
    ("p_value", "p-value", "number"),
    ("p_value_adj", "p-value (Holm)", "number"),
    ("seq_p_value", "sequential p-value", "number"),
)


@dataclasses.dataclass(frozen=True)
class ExperimentRun:
  """What the report shows of one experiment: its latest run."""
  experiment_id: str
  arms: list  # arm_stats rows of the run, the control arm first
  router_state: dict | None  # the router_state row of the same run
  earlier_runs: int  # runs of the experiment in the input not shown
  summary: dict | None = None  # the run_summary row of the same run


def _timestamp(value) -> datetime.datetime:
  """A TIMESTAMP as JSON lines (text) or BigQuery (datetime) give it, in UTC."""
  if value is None:
    return _EARLIEST
  if not isinstance(value, datetime.datetime):
    text = str(value).strip()
    if text.endswith(" UTC"):
      text = text[:-len(" UTC")] + "+00:00"
    value = datetime.datetime.fromisoformat(text)
  if value.tzinfo is None:
    return value.replace(tzinfo=datetime.timezone.utc)
  return value


def _computed_at(row: Mapping) -> datetime.datetime:
  return _timestamp(row.get("computed_at"))


def _run_key(row: Mapping) -> tuple:
  # A re-run with the same run_id on another day is another run.
  return row.get("run_id"), str(row.get("partition_date"))


def _group_by_experiment(rows: Iterable[Mapping]) -> dict[str, list]:
  groups = collections.defaultdict(list)
  for row in rows:
    groups[row["experiment_id"]].append(row)
  return groups


def _control_first(arms: Iterable[Mapping]) -> list:
  arms = list(arms)
  control = arms[0].get("control_arm") if arms else None
  return sorted(arms, key=lambda row: (row["arm"] != control, row["arm"]))


def _latest_of_run(rows: Iterable[Mapping], run: tuple) -> list:
  """The rows of `run`, by computed_at (the last of duplicates wins)."""
  return sorted((row for row in rows if _run_key(row) == run),
                key=_computed_at)


def latest_runs(arm_stats_rows: Iterable[Mapping],
                router_state_rows: Iterable[Mapping],
                run_summary_rows: Iterable[Mapping] = ()
                ) -> list[ExperimentRun]:
  """Per experiment (by id), the rows of the run with the latest computed_at."""
  states = _group_by_experiment(router_state_rows)
  summaries = {_run_key(row): row
               for row in sorted(run_summary_rows, key=_computed_at)}
  runs = []
  for experiment_id, rows in sorted(
      _group_by_experiment(arm_stats_rows).items()):
    latest = _run_key(max(rows, key=_computed_at))
    arms = {row["arm"]: row for row in _latest_of_run(rows, latest)}
    run_states = _latest_of_run(states.get(experiment_id, ()), latest)
    runs.append(ExperimentRun(
        experiment_id=experiment_id,
        arms=_control_first(arms.values()),
        router_state=run_states[-1] if run_states else None,
        summary=summaries.get(latest),
        earlier_runs=len({_run_key(row) for row in rows}) - 1))
  return runs


def arm_posterior(row: Mapping):
  """The posterior of the arm's mean reward the statistics use, or None.

  Beta(posterior_alpha, posterior_beta) for binary rewards; for continuous
  ones the normal approximation N(reward_mean, s² / n), with s² the sample
  variance. None without a posterior: under two samples or no spread.
  """
  if row.get("reward_type") == stats.BINARY:
    if row.get("posterior_alpha") is None or row.get("posterior_beta") is None:
      return None
    return scipy.stats.beta(row["posterior_alpha"], row["posterior_beta"])
  samples = row.get("samples") or 0
  variance = float(stats.sample_variance(row["reward_sum"],
                                         row["reward_sq_sum"], samples))
  if row.get("reward_mean") is None or not variance > 0:
    return None
  return scipy.stats.norm(row["reward_mean"], math.sqrt(variance / samples))


def impression_shares(
    arms: Sequence[Mapping],
    expected_allocation: Mapping[str, float] | None = None) -> dict:
  """arm -> (observed, expected) share of the impressions; None if undefined.

  Expected shares are the allocation's weights normalized over the arms
  present (equal weights when None), as in the SRM test.
  """
  total = sum(row["impressions"] for row in arms)
  weights = {row["arm"]: 1.0 if expected_allocation is None
             else float(expected_allocation.get(row["arm"], 0.0))
             for row in arms}
  weight_total = sum(weights.values())
  return {row["arm"]: (row["impressions"] / total if total else None,
                       weights[row["arm"]] / weight_total if weight_total
                       else None)
          for row in arms}


# Formatting.


def _defined(value) -> bool:
  return value is not None and math.isfinite(value)


def _format(value, kind: str = "number") -> str:
  if not _defined(value):
    return "–"
  if kind == "count":
    return f"{value:,}"
  if kind == "percent":
    return f"{value:+.1%}"
  if kind == "share":
    return f"{value:.1%}"
  return f"{value:.3g}"


def _text(value) -> str:
  return html.escape("–" if value is None else str(value))


# Charts.


def _colors(arms: Sequence[Mapping]) -> dict[str, str]:
  """One color per arm, the same in every chart of an experiment."""
  return {row["arm"]: _ARM_COLORS[i % len(_ARM_COLORS)]
          for i, row in enumerate(arms)}


def _figure(height_in: float) -> Figure:
  figure = Figure(figsize=(_CHART_WIDTH_IN, height_in), layout="constrained")
  FigureCanvasAgg(figure)
  return figure


def _arm_rows_height(n_rows: int) -> float:
  return 1.0 + 0.4 * n_rows


def _png(figure: Figure) -> str:
  buffer = io.BytesIO()
  figure.savefig(buffer, format="png", dpi=_CHART_DPI)
  return base64.b64encode(buffer.getvalue()).decode("ascii")


def _arm_label(row: Mapping) -> str:
  if row["arm"] == row.get("control_arm"):
    return f"{row['arm']} (control)"
  return row["arm"]


def posterior_chart(arms: Sequence[Mapping]) -> str | None:
  """PNG (base64) of the posterior density of every arm that has one."""
  posteriors = [(row, arm_posterior(row)) for row in arms]
  posteriors = [(row, d) for row, d in posteriors if d is not None]
  if not posteriors:
    return None
  # Each posterior gets its own points, so narrow ones are resolved next to
  # wide ones.
  x = np.unique(np.concatenate([
      np.linspace(d.ppf(_TAIL), d.isf(_TAIL), _POINTS_PER_POSTERIOR)
      for _, d in posteriors]))
  colors = _colors(arms)
  figure = _figure(3.0)
  axes = figure.add_subplot()
  for row, posterior in posteriors:
    density = posterior.pdf(x)
    axes.plot(x, density, color=colors[row["arm"]], label=_arm_label(row))
    axes.fill_between(x, density, color=colors[row["arm"]], alpha=0.15)
  binary = arms[0].get("reward_type") == stats.BINARY
  axes.set_title("Posterior of the mean reward" +
                 (" (Beta)" if binary else " (normal approximation)"))
  axes.set_xlabel("mean reward")
  axes.set_ylabel("density")
  axes.set_ylim(bottom=0)
  figure.legend(loc="outside lower center", ncols=min(len(posteriors), 4),
                frameon=False)
  return _png(figure)


def _interval_errors(center: float, low, high) -> list:
  """matplotlib's xerr of one point: distances to the interval ends."""
  if not (_defined(low) and _defined(high)):
    return [[0.0], [0.0]]
  # Floored at 0: stored tables may hold intervals a rounding off their mean
  # (written before stats.wilson_interval was clamped); matplotlib refuses them.
  return [[max(center - low, 0.0)], [max(high - center, 0.0)]]


def _lift_floor(arms: Sequence[Mapping]) -> float | None:
  """The least lift the reward type allows: -100% when rewards cannot be
  negative (binary), so no interval is drawn below it."""
  return -1.0 if arms and arms[0].get("reward_type") == stats.BINARY else None


def _floored(value: float, floor: float | None) -> float:
  return value if floor is None else max(value, floor)


def mean_chart(arms: Sequence[Mapping]) -> str | None:
  """PNG (base64) of each arm's mean reward with its 95% interval."""
  shown = [row for row in arms if _defined(row.get("reward_mean"))]
  if not shown:
    return None
  colors = _colors(arms)
  figure = _figure(_arm_rows_height(len(shown)))
  axes = figure.add_subplot()
  for y, row in enumerate(shown):
    mean = row["reward_mean"]
    axes.errorbar([mean], [y], xerr=_interval_errors(mean, row.get("ci_low"),
                                                     row.get("ci_high")),
                  fmt="o", capsize=4, color=colors[row["arm"]])
  axes.set_yticks(range(len(shown)), [_arm_label(row) for row in shown])
  axes.set_ylim(len(shown) - 0.5, -0.5)
  axes.set_title("Mean reward and 95% interval")
  axes.set_xlabel("mean reward")
  return _png(figure)


def lift_chart(arms: Sequence[Mapping]) -> str | None:
  """PNG (base64) of each candidate's lift: 95% and anytime-valid intervals."""
  shown = [row for row in arms if _defined(row.get("lift"))]
  if not shown:
    return None
  colors = _colors(arms)
  floor = _lift_floor(arms)
  figure = _figure(_arm_rows_height(len(shown)) + 0.3)
  axes = figure.add_subplot()
  axes.axvline(0.0, color="0.5", linewidth=1)
  for y, row in enumerate(shown):
    color = colors[row["arm"]]
    if _defined(row.get("seq_ci_low")) and _defined(row.get("seq_ci_high")):
      axes.hlines(y, _floored(row["seq_ci_low"], floor), row["seq_ci_high"],
                  color=color, linewidth=_SEQ_CI_WIDTH, alpha=0.5)
    if _defined(row.get("lift_ci_low")) and _defined(row.get("lift_ci_high")):
      axes.hlines(y, _floored(row["lift_ci_low"], floor), row["lift_ci_high"],
                  color=color, linewidth=_CI_WIDTH)
    axes.plot([row["lift"]], [y], "o", color="black", markersize=4)
  axes.set_yticks(range(len(shown)), [row["arm"] for row in shown])
  axes.set_ylim(len(shown) - 0.5, -0.5)
  axes.xaxis.set_major_formatter(ticker.PercentFormatter(xmax=1.0))
  control = shown[0].get("control_arm")
  axes.set_title(f"Relative lift vs the control arm, {control}")
  axes.set_xlabel("lift (candidate / control - 1)")
  figure.legend(
      [lines.Line2D([], [], color="0.4", linewidth=_CI_WIDTH),
       lines.Line2D([], [], color="0.4", linewidth=_SEQ_CI_WIDTH, alpha=0.5)],
      ["95% interval", "anytime-valid 95% interval (sequential)"],
      loc="outside lower center", ncols=2, frameon=False)
  return _png(figure)


def traffic_chart(arms: Sequence[Mapping],
                  router_state: Mapping | None) -> str | None:
  """PNG (base64) of each arm's served share, P(best) and recommended share."""
  recommended = {arm["arm"]: arm.get("traffic_share")
                 for arm in (router_state or {}).get("arms") or ()}
  observed = impression_shares(arms)
  series = [
      ("served (share of impressions)", [observed[r["arm"]][0] for r in arms]),
      ("P(best)", [r.get("prob_best") for r in arms]),
      ("recommended traffic share", [recommended.get(r["arm"]) for r in arms]),
  ]
  series = [(name, values) for name, values in series
            if any(_defined(v) for v in values)]
  if not series:
    return None
  figure = _figure(_arm_rows_height(len(arms)) + 0.4)
  axes = figure.add_subplot()
  height = 0.8 / len(series)
  for i, (name, values) in enumerate(series):
    positions = np.arange(len(arms)) + (i - (len(series) - 1) / 2) * height
    bars = axes.barh(positions, [v if _defined(v) else 0.0 for v in values],
                     height=height, label=name, color=_MEASURE_COLORS[i],
                     edgecolor="0.3", linewidth=0.5)
    axes.bar_label(bars, [_format(v, "share") for v in values], padding=2,
                   fontsize=7)
  axes.set_yticks(range(len(arms)), [_arm_label(row) for row in arms])
  axes.set_ylim(len(arms) - 0.5, -0.5)
  # Room right of a 100% bar for its label.
  axes.set_xlim(0, 1.12)
  axes.set_xticks(np.linspace(0, 1, 6))
  axes.xaxis.set_major_formatter(ticker.PercentFormatter(xmax=1.0))
  axes.set_title("Traffic allocation")
  figure.legend(loc="outside lower center", ncols=len(series), frameon=False)
  return _png(figure)


# The page.

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1400px;
       padding: 0 1rem; color: #222; }
h2 { margin-top: 2.5rem; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 0.5rem 0; }
th, td { padding: 0.2rem 0.6rem; border-bottom: 1px solid #eee; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
th { text-align: left; background: #f5f5f5; }
.meta, .note { color: #555; }
.charts { display: flex; flex-wrap: wrap; gap: 1rem; align-items: flex-start; }
.charts figure { margin: 0; }
.charts img { max-width: 100%; }
.srm { padding: 0.5rem 0.8rem; border-radius: 4px; background: #eef6ee; }
.srm.alert { background: #fbe3e3; border: 1px solid #c62828; }
.srm.untested { background: #f5f5f5; }
.quality { padding: 0.5rem 0.8rem; border-radius: 4px; background: #eef6ee; }
.quality.failed { background: #fbe3e3; border: 1px solid #c62828; }
.quality.unknown { background: #f5f5f5; }
"""


def _show_time(value) -> str:
  if value is None:
    return "–"
  return _timestamp(value).strftime("%Y-%m-%d %H:%M:%S UTC")


def _figure_html(png: str | None, title: str, missing: str,
                 caption: str = "") -> str:
  if png is None:
    return f'<p class="note">{html.escape(title)}: {html.escape(missing)}</p>'
  caption_html = (f"<figcaption class=\"note\">{html.escape(caption)}"
                  "</figcaption>" if caption else "")
  return (f'<figure><img src="data:image/png;base64,{png}" '
          f'alt="{html.escape(title)}">{caption_html}</figure>')


def _charts_html(run: ExperimentRun) -> str:
  arms = run.arms
  undrawn = [row["arm"] for row in arms if arm_posterior(row) is None]
  return "".join([
      '<div class="charts">',
      _figure_html(posterior_chart(arms),
                   f"Posterior of the mean reward, {run.experiment_id}",
                   "no arm has a posterior yet (under two samples or no "
                   "spread in the rewards).",
                   "Not drawn (no posterior): " + ", ".join(undrawn)
                   if undrawn else ""),
      _figure_html(mean_chart(arms),
                   f"Mean reward per arm, {run.experiment_id}",
                   "no arm has a reward yet."),
      _figure_html(lift_chart(arms), f"Lift vs control, {run.experiment_id}",
                   "no lift: no candidate arm, or the control's mean reward "
                   "is 0 or unknown."),
      _figure_html(traffic_chart(arms, run.router_state),
                   f"Traffic allocation, {run.experiment_id}",
                   "no impressions and no traffic shares."),
      "</div>"])


def _srm_verdict(arms: Sequence[Mapping]) -> str:
  p_value, alert = arms[0].get("srm_p_value"), arms[0].get("srm_alert")
  if p_value is None or alert is None:
    return ('<p class="srm untested">Sample ratio not tested: fewer than two '
            "arms or no impressions.</p>")
  if alert:
    return ('<p class="srm alert"><strong>Sample ratio mismatch</strong> '
            f"(p = {_format(p_value)} &lt; {stats.SRM_ALERT_P_VALUE:g}): the "
            "arms did not get their expected shares of impressions, so the "
            "comparisons below may be biased. Check the router and the "
            "prediction logging before acting on them.</p>")
  return ('<p class="srm">No sample ratio mismatch (p = '
          f"{_format(p_value)}; the alert is below "
          f"{stats.SRM_ALERT_P_VALUE:g}).</p>")


def _table(header: Sequence[str], rows: Sequence[Sequence[tuple]]) -> str:
  """An HTML table; each cell is (text, is_number)."""
  head = "".join(f"<th>{html.escape(name)}</th>" for name in header)
  body = "".join(
      "<tr>" + "".join(
          f'<td class="num">{_text(text)}</td>' if is_number
          else f"<td>{_text(text)}</td>" for text, is_number in row) + "</tr>"
      for row in rows)
  return f"<table><tr>{head}</tr>{body}</table>"


def _allocation_note(expected_allocation: Mapping[str, float] | None) -> str:
  if expected_allocation is None:
    return ("Expected shares: an equal split across the arms, as the run's "
            "sample-ratio test used.")
  weights = ", ".join(f"{arm}={weight:g}"
                      for arm, weight in expected_allocation.items())
  return (f"Expected shares: the allocation {weights} the run's sample-ratio "
          "test used, over the arms present.")


def _srm_html(arms: Sequence[Mapping],
              expected_allocation: Mapping[str, float] | None) -> str:
  shares = impression_shares(arms, expected_allocation)
  note = html.escape(_allocation_note(expected_allocation))
  rows = [((row["arm"], False), (_format(row["impressions"], "count"), True),
           (_format(shares[row["arm"]][0], "share"), True),
           (_format(shares[row["arm"]][1], "share"), True)) for row in arms]
  return (_srm_verdict(arms) +
          _table(("arm", "impressions", "observed share", "expected share"),
                 rows) +
          f'<p class="note">{note}</p>')


def _numbers_html(arms: Sequence[Mapping]) -> str:
  rows = [[(_arm_label(row), False)] +
          [(_format(row.get(column), kind), True)
           for column, _, kind in _NUMBER_COLUMNS] for row in arms]
  return _table(["arm"] + [title for _, title, _ in _NUMBER_COLUMNS], rows)


def _meta_html(run: ExperimentRun) -> str:
  first = run.arms[0]
  best = (run.router_state or {}).get("best_arm")
  parts = [f"{first.get('reward_type') or 'unknown'} rewards",
           f"control {first.get('control_arm')}",
           f"best arm (router) {best}" if best else "no router state",
           f"window {_show_time(first.get('window_start'))} – "
           f"{_show_time(first.get('window_end'))}",
           f"run {first.get('run_id')}, computed at "
           f"{_show_time(first.get('computed_at'))}"]
  if run.earlier_runs:
    parts.append(f"{run.earlier_runs} earlier run(s) in the input not shown")
  return f'<p class="meta">{" · ".join(html.escape(p) for p in parts)}</p>'


def _summary_experiment(run: ExperimentRun) -> Mapping:
  return next((e for e in (run.summary or {}).get("experiments") or ()
               if e.get("experiment_id") == run.experiment_id), {})


def expected_allocation(run: ExperimentRun) -> dict[str, float] | None:
  """The allocation the run's SRM test used (its run_summary row); None:
  equal, or unknown without that row."""
  text = _summary_experiment(run).get("expected_allocation")
  if not text:
    return None
  return {arm: float(weight) for arm, _, weight in
          (part.partition("=") for part in text.split(","))}


def _quality_html(run: ExperimentRun) -> str:
  """Data quality of the run: dead-letter shares, orphans, gate verdicts."""
  if run.summary is None:
    return ('<p class="quality unknown">Data quality unknown: no run_summary '
            f"row for run {_text(run.arms[0].get('run_id'))}.</p>")
  counts = collections.defaultdict(collections.Counter)
  for row in run.summary.get("counts") or ():
    counts[row["record_type"]][row["metric"]] += row["count"]
  rows = []
  for record_type, metrics in sorted(counts.items()):
    dead = sum(n for metric, n in metrics.items()
               if metric.startswith(_DEAD_LETTER))
    read = metrics.get("read", 0)
    orphans = (metrics.get(_DEAD_LETTER + contract.ORPHAN_FEEDBACK, 0)
               if record_type == contract.FEEDBACK else None)
    rows.append(((record_type, False), (_format(read, "count"), True),
                 (_format(dead, "count"), True),
                 (_format(dead / read if read else None, "share"), True),
                 (_format(orphans, "count"), True)))
  concerning = {run.experiment_id, *counts}
  gates = [g for g in run.summary.get("gates") or ()
           if g["subject"] in concerning or not g["passed"]]
  failed = [g for g in gates if not g["passed"]]
  status = run.summary.get("status")
  if failed:
    verdict = (f'<p class="quality failed"><strong>This run broke '
               f"{len(failed)} quality gate(s)</strong> (status {_text(status)}"
               "): do not act on these numbers before the cause is fixed.</p>")
  else:
    verdict = '<p class="quality">Every quality gate passed.</p>'
  gate_rows = [((g["gate"], False), (g["subject"], False),
                ("ok" if g["passed"] else "FAILED", False),
                (g.get("detail"), False)) for g in gates]
  return (verdict +
          _table(("record type", "read", "dead-lettered", "share",
                  "orphan feedback"), rows) +
          _table(("gate", "subject", "verdict", "detail"), gate_rows))


def _experiment_html(anchor: str, run: ExperimentRun,
                     metrics_html: str = "") -> str:
  return "".join([
      f'<section id="{anchor}"><h2>{html.escape(run.experiment_id)}</h2>',
      _meta_html(run),
      "<h3>Data quality</h3>", _quality_html(run), metrics_html,
      "<h3>Sample ratio</h3>", _srm_html(run.arms, expected_allocation(run)),
      "<h3>Charts</h3>", _charts_html(run),
      "<h3>Numbers</h3>", _numbers_html(run.arms),
      "</section>"])


def _srm_status(arms: Sequence[Mapping]) -> str:
  alert = arms[0].get("srm_alert")
  if alert is None:
    return "not tested"
  return "MISMATCH" if alert else "ok"


def _summary_html(anchors: Sequence[str],
                  runs: Sequence[ExperimentRun]) -> str:
  rows = []
  for anchor, run in zip(anchors, runs):
    best = (run.router_state or {}).get("best_arm")
    rows.append(
        f'<tr><td><a href="#{anchor}">{html.escape(run.experiment_id)}</a>'
        f"</td><td>{_text(run.arms[0].get('reward_type'))}</td>"
        f'<td class="num">{len(run.arms)}</td><td>{_text(best)}</td>'
        f"<td>{_text(_srm_status(run.arms))}</td>"
        f"<td>{_text((run.summary or {}).get('status', 'unknown'))}</td></tr>")
  return ("<table><tr><th>experiment</th><th>rewards</th><th>arms</th>"
          "<th>best arm</th><th>sample ratio</th><th>quality gates</th></tr>" +
          "".join(rows) + "</table>")


def render_report(arm_stats_rows: Iterable[Mapping],
                  router_state_rows: Iterable[Mapping] = (),
                  source: str | None = None,
                  run_summary_rows: Iterable[Mapping] = (),
                  experiment_sections: Mapping[str, str] | None = None,
                  extra_css: str = "",
                  policy_value_rows: Iterable[Mapping] = ()) -> str:
  """The HTML page of every experiment in the rows (its latest run).

  Args:
    arm_stats_rows: rows of the arm_stats table, of any runs.
    router_state_rows: rows of the router_state table, of any runs.
    source: where the rows come from, named on the page.
    run_summary_rows: rows of the run_summary table: each run's data
      quality, gates, and the expected allocation its SRM test used.
    experiment_sections: experiment id -> HTML placed after its data quality
      (the metrics section of reporting/metric_report.py); extra_css: the
      style those sections need.
    policy_value_rows: rows of the policy_value table (off-policy evaluation).
  """
  runs = latest_runs(arm_stats_rows, router_state_rows, run_summary_rows)
  anchors = [f"experiment-{i}" for i in range(len(runs))]
  with matplotlib.rc_context(_CHART_STYLE):
    sections = [_experiment_html(
        anchor, run, (experiment_sections or {}).get(run.experiment_id, ""))
                for anchor, run in zip(anchors, runs)]
  source_html = f" from {html.escape(source)}" if source else ""
  return "".join([
      '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">',
      "<title>Experiment report</title>", f"<style>{_CSS}{extra_css}</style></head><body>",
      f"<h1>Experiment report</h1><p class=\"note\">{len(runs)} "
      f"experiment(s){source_html}. Each experiment shows its latest run only "
      "(the run of its latest computed_at); earlier runs in the input are "
      "counted, not shown. Intervals are 95%.</p>",
      _summary_html(anchors, runs) if runs else "<p>No arm_stats rows.</p>",
      *sections, policy_section.render(policy_value_rows),
      "</body></html>\n"])

"""A static HTML report of model evaluation: quality, shadow vs live, canary.

Pure: rows of `model_quality`, `shadow_comparison` and `canary_verdicts` in,
one self-contained HTML page out. Per experiment (its latest run): model
quality of every arm, live and shadow, beside the shadow comparisons, the
calibration curve, and the canary's score with its per-metric classes.
Every text from the data is escaped.
"""

from __future__ import annotations

import html
from typing import Iterable, Mapping, Sequence

import matplotlib

from reporting import report_html

_FORMATS = {"count": "{:,}", "rate": "{:.3f}", "p": "{:.2g}",
            "effect": "{:+.1%}", "score": "{:.0f}"}


def _cell(value, kind: str = "rate") -> tuple:
  if value is None:
    return None, True
  if isinstance(value, (int, float)) and not isinstance(value, bool):
    return _FORMATS[kind].format(value), True
  return value, False


def _interval(row: Mapping, name: str) -> tuple:
  if row.get(name) is None:
    return None, True
  return (f"{row[name]:.3f} [{row.get(name + '_ci_low') or 0:.3f}, "
          f"{row.get(name + '_ci_high') or 0:.3f}]"), True


def _latest(rows: Iterable[Mapping]) -> dict[str, list]:
  """Per experiment, its rows of the latest run: the run of its latest
  computed_at (a run's rows are stamped as they are written)."""
  by_experiment = {}
  for row in rows:
    by_experiment.setdefault(row["experiment_id"], []).append(row)
  latest = {}
  for experiment, found in by_experiment.items():
    newest = max(found, key=lambda r: str(r.get("computed_at") or ""))
    latest[experiment] = [r for r in found
                          if r.get("run_id") == newest.get("run_id")]
  return latest


def calibration_chart(rows: Sequence[Mapping]) -> str | None:
  """PNG (base64) of observed rate against mean predicted probability per
  calibration bin, one line per arm."""
  rows = [r for r in rows if r.get("calibration")]
  if not rows:
    return None
  figure = report_html._figure(3.2)  # pylint: disable=protected-access
  axes = figure.add_subplot()
  axes.plot([0, 1], [0, 1], color="#999", linestyle=":", label="perfect")
  for row in rows:
    bins = row["calibration"]
    label = row["arm"] + (" (shadow)" if row.get("shadow") else "")
    axes.plot([b["mean_predicted"] for b in bins],
              [b["observed_rate"] for b in bins], marker="o", label=label)
  axes.set_xlabel("mean predicted probability")
  axes.set_ylabel("observed rate")
  axes.legend(loc="upper left")
  return report_html._png(figure)  # pylint: disable=protected-access


def _quality_table(rows: Sequence[Mapping]) -> str:
  regression = any(r["task"] == "regression" for r in rows)
  names = (("mae", "rmse", "mean_error") if regression else
           ("accuracy", "log_loss", "brier", "auc"))
  header = ["arm", "role", "requests", "with truth", "scored", *names]
  body = [[(r["arm"], False), ("shadow" if r["shadow"] else "live", False),
           _cell(r["requests"], "count"), _cell(r["with_truth"], "count"),
           _cell(r["scored"], "count"),
           *(_interval(r, name) for name in names)]
          for r in sorted(rows, key=lambda r: (r["shadow"], r["arm"]))]
  return report_html._table(header, body)  # pylint: disable=protected-access


def _shadow_html(rows: Sequence[Mapping]) -> str:
  if not rows:
    return "<p class=\"note\">No shadow model answered these requests.</p>"
  header = ["shadow", "live", "pairs", "agreement", "mean |diff|",
            "with truth", "accuracy diff", "McNemar p", "loss diff",
            "paired t p", "verdict"]
  body = [[(r["shadow_arm"], False), (r["live_arm"], False),
           _cell(r["pairs"], "count"), _cell(r["agreement_rate"]),
           _cell(r["mean_abs_diff"]), _cell(r["pairs_with_truth"], "count"),
           _cell(r["accuracy_diff"], "effect"), _cell(r["mcnemar_p_value"], "p"),
           _cell(r["loss_diff"]), _cell(r["paired_t_p_value"], "p"),
           (r["verdict"], False)] for r in rows]
  summaries = "".join(f"<li>{html.escape(r['summary'])}</li>" for r in rows)
  return (report_html._table(header, body)  # pylint: disable=protected-access
          + f"<ul>{summaries}</ul>")


def _canary_html(rows: Sequence[Mapping]) -> str:
  parts = []
  for row in rows:
    verdict = html.escape(row["verdict"])
    score = "–" if row["score"] is None else f"{row['score']:.0f}"
    parts.append(
        f'<p class="canary {verdict.lower()}">Canary '
        f"<b>{html.escape(row['canary_arm'])}</b> vs "
        f"{html.escape(row['baseline_arm'])}: <b>{verdict}</b>, score "
        f"{score} / 100 ({html.escape(row['reason'])})</p>")
    header = ["metric", "class", "passed", "canary", "baseline", "change",
              "p-value", "weight", "critical"]
    body = [[(m["metric"], False), (m["classification"], False),
             ("–" if m["passed"] is None else ("yes" if m["passed"] else "no"),
              False), _cell(m["canary_value"], "p"),
             _cell(m["baseline_value"], "p"), _cell(m["effect"], "effect"),
             _cell(m["p_value"], "p"), _cell(m["weight"], "p"),
             ("yes" if m["critical"] else "no", False)]
            for m in row["metrics"]]
    parts.append(report_html._table(header, body))  # pylint: disable=protected-access
  return "".join(parts)


_CSS = """
.canary { padding: 0.5rem 0.8rem; border-radius: 4px; background: #eef6ee; }
.canary.fail { background: #fbe3e3; border: 1px solid #c62828; }
.canary.marginal { background: #fff4e0; }
.side { display: flex; flex-wrap: wrap; gap: 2rem; align-items: flex-start; }
"""


def render_model_report(model_quality_rows: Iterable[Mapping],
                        shadow_rows: Iterable[Mapping] = (),
                        canary_rows: Iterable[Mapping] = (),
                        source: str | None = None) -> str:
  """The HTML page of every experiment in the rows (its latest run)."""
  quality = _latest(model_quality_rows)
  shadows = _latest(shadow_rows)
  canaries = _latest(canary_rows)
  sections = []
  with matplotlib.rc_context(report_html._CHART_STYLE):  # pylint: disable=protected-access
    for experiment in sorted(set(quality) | set(shadows) | set(canaries)):
      rows = quality.get(experiment, [])
      chart = calibration_chart(rows)
      figure = (f'<figure><img alt="calibration" src="data:image/png;base64,'
                f'{chart}"><figcaption>Calibration</figcaption></figure>'
                if chart else "")
      sections.append(
          f"<h2>{html.escape(experiment)}</h2>"
          + _canary_html(canaries.get(experiment, []))
          + '<div class="side"><div><h3>Model quality</h3>'
          + (_quality_table(rows) if rows else "<p>No rows.</p>")
          + "</div><div><h3>Shadow vs live</h3>"
          + _shadow_html(shadows.get(experiment, [])) + "</div></div>"
          + figure)
  source_html = f" from {html.escape(source)}" if source else ""
  return "".join([
      '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">',
      "<title>Model evaluation report</title>",
      f"<style>{report_html._CSS}{_CSS}</style></head><body>",  # pylint: disable=protected-access
      f"<h1>Model evaluation report</h1><p class=\"note\">"
      f"{len(sections)} experiment(s){source_html}; the latest run of each. "
      "Intervals as the pipeline's --quality_confidence.</p>",
      *sections, "</body></html>\n"])

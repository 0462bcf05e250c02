"""The report's off-policy evaluation section, from policy_value rows.

Pure: rows in, an HTML fragment out. Per experiment (its latest run), the
estimated value of each target policy by every estimator with its 95 %
interval, against the logged policy's own value, a chart of the doubly
robust estimates, and the diagnostics that say when to distrust them
(effective sample size, largest weight, target mass on unplayed arms).
"""

from __future__ import annotations

import base64
import html
import io
from typing import Iterable, Mapping

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

ESTIMATORS = ("ips", "snips", "dm", "dr", "sndr")
CHART_ESTIMATOR = "dr"
# Below this share of n the weights are too uneven to trust IPS-type values.
LOW_ESS_SHARE = 0.05


def latest_rows(rows: Iterable[Mapping]) -> dict[str, list[Mapping]]:
  """experiment -> its rows of the latest run (by computed_at, then run_id)."""
  by_experiment = {}
  for row in rows:
    by_experiment.setdefault(row["experiment_id"], []).append(row)
  latest = {}
  for experiment, experiment_rows in sorted(by_experiment.items()):
    newest = max(experiment_rows, key=lambda r: (str(r.get("computed_at")),
                                                 str(r.get("run_id"))))
    latest[experiment] = [r for r in experiment_rows
                          if r.get("run_id") == newest.get("run_id")]
  return latest


def _number(value, digits: int = 4) -> str:
  return "–" if value is None else f"{value:.{digits}f}"


def _cell(row: Mapping | None) -> str:
  if row is None or row.get("value") is None:
    return "<td>–</td>"
  interval = ""
  if row.get("ci_low") is not None:
    interval = f" [{_number(row['ci_low'])}, {_number(row['ci_high'])}]"
  return f'<td class="num">{_number(row["value"])}{interval}</td>'


def _chart(policies: dict, logged_value) -> str | None:
  """PNG (base64): each policy's DR estimate and interval, the logged value."""
  points = [(name, rows.get(CHART_ESTIMATOR)) for name, rows in
            policies.items()]
  points = [(name, row) for name, row in points
            if row and row.get("value") is not None]
  if not points:
    return None
  figure = Figure(figsize=(6.4, 1.0 + 0.4 * len(points)), layout="constrained")
  FigureCanvasAgg(figure)
  axes = figure.add_subplot()
  for y, (_, row) in enumerate(points):
    low = row.get("ci_low", row["value"]) or row["value"]
    high = row.get("ci_high", row["value"]) or row["value"]
    axes.errorbar(row["value"], y, xerr=[[row["value"] - low],
                                         [high - row["value"]]], fmt="o",
                  color="#1f77b4", capsize=3)
  if logged_value is not None:
    axes.axvline(logged_value, color="#888", linestyle="--",
                 label="logged policy")
    axes.legend(loc="best", fontsize=8)
  axes.set_yticks(range(len(points)),
                  [name.replace("$", r"\$") for name, _ in points])
  axes.set_xlabel("estimated value (doubly robust, 95 % interval)")
  buffer = io.BytesIO()
  figure.savefig(buffer, format="png", dpi=100)
  return base64.b64encode(buffer.getvalue()).decode("ascii")


def _warnings(name: str, row: Mapping) -> list[str]:
  notes = []
  if row.get("unsupported_share"):
    notes.append(f"{name}: {row['unsupported_share']:.1%} of its traffic goes "
                 "to arms the logs never played (IPS and DR cannot see it)")
  if row.get("n") and row.get("ess") is not None and (
      row["ess"] < LOW_ESS_SHARE * row["n"]):
    notes.append(f"{name}: effective sample size {row['ess']:.0f} of "
                 f"{row['n']:,} requests: weights are very uneven")
  return notes


def render(rows: Iterable[Mapping]) -> str:
  """The section's HTML ("" without rows)."""
  latest = latest_rows(rows)
  if not latest:
    return ""
  parts = ["<h2>Off-policy evaluation</h2><p class=\"note\">What each target "
           "policy would earn, estimated from the logged propensities "
           "(docs/policy.md), beside the logged policy's own mean reward. "
           "Intervals are 95 % (normal approximation).</p>"]
  for experiment, experiment_rows in latest.items():
    policies = {}
    for row in experiment_rows:
      policies.setdefault(row["policy"], {})[row["estimator"]] = row
    any_row = experiment_rows[0]
    logged_value = any_row.get("logged_value")
    head = "".join(f"<th>{e}</th>" for e in ESTIMATORS)
    body, notes = [], []
    for name, by_estimator in sorted(policies.items()):
      first = next(iter(by_estimator.values()))
      body.append(
          f"<tr><td>{html.escape(name)}</td>" +
          "".join(_cell(by_estimator.get(e)) for e in ESTIMATORS) +
          f'<td class="num">{_number(first.get("ess"), 0)}</td>'
          f'<td class="num">{_number(first.get("max_weight"), 2)}</td>'
          f'<td class="num">{_number(first.get("unsupported_share"), 3)}'
          "</td></tr>")
      notes.extend(_warnings(name, first))
    chart = _chart(dict(sorted(policies.items())), logged_value)
    parts.append(
        f"<section><h3>{html.escape(experiment)}</h3>"
        f'<p class="meta">logged policy: mean reward '
        f"{_number(logged_value)} over {any_row.get('n', 0):,} requests</p>"
        f"<table><tr><th>target policy</th>{head}<th>ESS</th>"
        "<th>max weight</th><th>unsupported</th></tr>" + "".join(body) +
        "</table>" +
        (f'<figure><img src="data:image/png;base64,{chart}" '
         f'alt="policy values of {html.escape(experiment)}"></figure>'
         if chart else "") +
        "".join(f'<p class="srm alert">{html.escape(n)}</p>' for n in notes) +
        "</section>")
  return "".join(parts)

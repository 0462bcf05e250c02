"""The report's off-policy evaluation section."""

import base64
import json

from pipelines import report
from reporting import policy_section
from reporting import report_html
from tests.test_report import PNG_MAGIC

ODD = "<b>$\\x$</b>"


def _rows(run_id, computed_at, policy, value, **fields):
  return [dict(experiment_id="exp", policy=policy, estimator=estimator,
               value=value + i * 0.001, ci_low=value - 0.02,
               ci_high=value + 0.02, n=1000, ess=fields.get("ess", 800.0),
               max_weight=3.0,
               unsupported_share=fields.get("unsupported_share", 0.0),
               logged_value=0.45, run_id=run_id, computed_at=computed_at)
          for i, estimator in enumerate(policy_section.ESTIMATORS)]


def test_latest_run_per_experiment_with_values_chart_and_warnings():
  rows = (_rows("old", "2026-11-20T00:00:00Z", "stale", 0.1) +
          _rows("new", "2026-11-21T00:00:00Z", "ctx", 0.62) +
          _rows("new", "2026-11-21T00:00:00Z", ODD, 0.48,
                unsupported_share=0.25, ess=20.0))
  page = policy_section.render(rows)
  assert "stale" not in page
  assert "0.6200 [0.6000, 0.6400]" in page  # ips of ctx
  assert "0.6230" in page  # dr of ctx (the fourth estimator)
  assert ODD not in page and "&lt;b&gt;" in page
  assert "25.0% of its traffic goes to arms the logs never played" in page
  assert "effective sample size 20 of 1,000" in page
  png = page.split("data:image/png;base64,")[1].split('"')[0]
  assert base64.b64decode(png).startswith(PNG_MAGIC)
  assert policy_section.render([]) == ""


def test_report_cli_adds_the_section(tmp_path):
  from tests.test_report import _binary
  from transforms.decisions import arm_table
  rows, state = arm_table.experiment_rows(
      "exp", {"a": _binary(1000, 100), "b": _binary(1000, 120)},
      arm_table.StatisticsConfig())
  tables = tmp_path / "out"
  tables.mkdir()
  (tables / "arm_stats-00000-of-00001.jsonl").write_text(
      "".join(json.dumps(dict(r, run_id="r", computed_at="2026-11-21T00:00:00Z"))
              + "\n" for r in rows))
  (tables / "router_state-00000-of-00001.json").write_text(
      json.dumps(state) + "\n")
  evaluation = tmp_path / "eval"
  evaluation.mkdir()
  (evaluation / "policy_value-00000-of-00001.jsonl").write_text("".join(
      json.dumps(r) + "\n" for r in _rows("r", "2026-11-21T00:00:00Z",
                                          "ctx", 0.6)))
  page_path = report.run([f"--input={tables}", f"--policy_input={evaluation}",
                          f"--out={tmp_path / 'report.html'}"])
  page = open(page_path, encoding="utf-8").read()
  assert "Off-policy evaluation" in page and "ctx" in page
  without = report_html.render_report(rows, [state])
  assert "Off-policy evaluation" not in without

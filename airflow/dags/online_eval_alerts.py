"""Alerts of the online-eval DAGs: one ERROR log line each.

Composer sends task and triggerer logs to Cloud Logging, where a log-based
alert on `ONLINE_EVAL_ALERT` notifies the owners (README, "Run on Google Cloud"). A
module of its own: deadline callbacks are imported by dotted path.
"""

from __future__ import annotations

import logging

MARKER = "ONLINE_EVAL_ALERT"

log = logging.getLogger(__name__)


def task_failed(context) -> None:
  """on_failure_callback: a task failed and has no retry left."""
  ti = context["ti"]
  log.error("%s task failed: dag %s, run %s, task %s, try %s", MARKER,
            ti.dag_id, ti.run_id, ti.task_id, ti.try_number)


async def run_late(context: dict) -> None:
  """Deadline alert: the DAG run is still not done at its deadline."""
  run = context["dag_run"]
  log.error("%s run late: dag %s, run %s, deadline %s", MARKER, run["dag_id"],
            run["dag_run_id"], context["deadline"]["deadline_time"])


ALERT_VERDICTS = ("rollback", "invalid")


def decision_alerts(rows) -> tuple[list[str], bool]:
  """The day's `decisions` rows -> (alert lines, hold back publishing).

  Every `rollback` or `invalid` verdict is one line with its reasons; an
  `invalid` one holds back the router state (its data cannot be trusted).
  """
  lines, hold_back = [], False
  for row in sorted(rows, key=lambda r: (r["experiment_id"], r["arm"],
                                         r.get("dimension") or "",
                                         r.get("segment") or "")):
    if row["verdict"] not in ALERT_VERDICTS:
      continue
    hold_back |= row["verdict"] == "invalid"
    segment = ("" if row.get("dimension") in (None, "all")
               else f" [{row['dimension']}={row['segment']}]")
    lines.append(f"{MARKER} {row['verdict']}: experiment "
                 f"{row['experiment_id']}, arm {row['arm']}{segment}: "
                 + "; ".join(row.get("reasons") or []))
  return lines, hold_back


def report_decisions(rows) -> bool:
  """Log the alert lines of the day's decisions; True: publish may go on."""
  lines, hold_back = decision_alerts(rows)
  for line in lines:
    log.error("%s", line)
  return not hold_back

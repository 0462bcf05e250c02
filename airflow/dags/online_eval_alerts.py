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

"""The run summary: one `run_summary` row per run, and the screen a person reads.

The row holds the gates' verdicts, the data_quality counts they were taken
from, the experiments and arms found (with the control arm and the expected
allocation the run used), and where the tables went. Pure Python, no Beam.
"""

from __future__ import annotations

from transforms.checks import gates

# Where a read record ends up, besides dead letters: read = these + dead-lettered.
OUTCOMES = ("counted", "scored", *gates.NOT_COUNTED)


def format_allocation(allocation: dict[str, float] | None) -> str | None:
  if not allocation:
    return None
  return ",".join(f"{arm}={weight:g}" for arm, weight in allocation.items())


def summary_row(pipeline: str, config: gates.GateConfig, tables: list[str],
                quality_rows, verdicts, arm_stats_rows=()) -> dict:
  """The run_summary row (without the run fields, which the sink adds)."""
  experiments = []
  for experiment_id, arms in sorted(gates.experiments(arm_stats_rows).items()):
    controls = {row.get("control_arm") for row in arms.values()} - {None}
    experiments.append({
        "experiment_id": experiment_id,
        "arms": ",".join(sorted(arms)),
        "control_arm": min(controls) if controls else None,
        "impressions": sum(r.get("impressions") or 0 for r in arms.values()),
        "feedback_count": sum(r.get("feedback_count") or 0
                              for r in arms.values()),
        "expected_allocation": format_allocation(config.expected_allocation),
    })
  return {
      "pipeline": pipeline,
      "status": gates.status(verdicts, config.allow_partial),
      "allow_partial": config.allow_partial,
      "gates": [v.as_row() for v in verdicts],
      "counts": sorted(({"record_type": r["record_type"], "metric": r["metric"],
                         "count": r["count"]} for r in quality_rows),
                       key=lambda r: (r["record_type"], r["metric"])),
      "experiments": experiments,
      "tables": list(tables),
  }


def _record_line(record_type: str, counts) -> str:
  read = counts.get("read", 0)
  outcomes = [name for name in OUTCOMES if name in counts]
  parts = [f"{counts[name]:,} {name}" for name in outcomes]
  dead = gates.dead_lettered(counts)
  parts.append(f"{dead:,} dead-lettered")
  accounted = dead + sum(counts[name] for name in outcomes)
  balanced = "" if not outcomes or accounted == read else (
      f" (UNBALANCED: {accounted:,} accounted for)")
  line = f"  {record_type}: {read:,} read = " + " + ".join(parts) + balanced
  reasons = [(metric[len(gates.DEAD_LETTER_PREFIX):], n)
             for metric, n in counts.most_common()
             if metric.startswith(gates.DEAD_LETTER_PREFIX)]
  if reasons:
    line += "\n    dead-lettered by reason: " + ", ".join(
        f"{reason} {n:,}" for reason, n in reasons)
  return line


def format_summary(row: dict) -> str:
  """One screen: records, experiments, tables, gates."""
  lines = [f"run {row.get('run_id', '')} ({row['pipeline']}): "
           f"{row['status'].upper()}"]
  lines.append("records:")
  for record_type, counts in sorted(
      gates.counts_by_type(row["counts"]).items()):
    lines.append(_record_line(record_type, counts))
  if row["experiments"]:
    lines.append("experiments:")
    for experiment in row["experiments"]:
      allocation = experiment["expected_allocation"] or "equal"
      lines.append(
          f"  {experiment['experiment_id']}: arms {experiment['arms']}; "
          f"control {experiment['control_arm']}; expected allocation "
          f"{allocation}; {experiment['impressions']:,} impressions, "
          f"{experiment['feedback_count']:,} counted feedback")
  lines.append("tables written:")
  lines.extend(f"  {table}" for table in row["tables"])
  lines.append("gates:")
  for verdict in row["gates"]:
    mark = "ok  " if verdict["passed"] else "FAIL"
    lines.append(f"  {mark} {verdict['gate']} [{verdict['subject']}]: "
                 f"{verdict['detail']}")
  return "\n".join(lines)


def failure_line(row: dict) -> str:
  """Why a run failed its gates, in one line."""
  failed = [v for v in row["gates"] if not v["passed"]]
  more = f" (and {len(failed) - 1} more gate(s))" if len(failed) > 1 else ""
  return (f"quality gate {failed[0]['gate']} failed: {failed[0]['detail']}"
          f"{more}; the tables are written, run_summary says why "
          "(--allow_partial accepts such a run)")

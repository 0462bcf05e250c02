"""A verdict per candidate arm from its metric statistics, with the reasons.

Pure. `decide` reads the `metric_stats` rows of one experiment segment and
returns one `decisions` row per candidate arm:
  invalid       the segment fails its sample-ratio check, or the arm or the
                control has no value of a goal or guardrail metric;
  rollback      a guardrail is significantly worse than its margin;
  ship          every goal metric significantly better after correction, every
                guardrail non-inferior, and min_samples reached by the arm
                and the control on every goal metric;
  keep_running  anything else.
"Significantly" reads the fixed-horizon statistics (p_value_adj and the lift
interval) or, with `decide_on = sequential`, the anytime-valid ones
(seq_p_value_adj and the confidence sequence). `reasons` holds one sentence
per metric.
"""

from __future__ import annotations

from transforms.decisions import metric_stats
from transforms.decisions import metrics as metric_defs

SHIP = "ship"
ROLLBACK = "rollback"
INVALID = "invalid"
KEEP_RUNNING = "keep_running"
VERDICTS = (SHIP, ROLLBACK, INVALID, KEEP_RUNNING)

BETTER = "better"
WORSE = "worse"
NON_INFERIOR = "non-inferior"
NOT_SIGNIFICANT = "not significant"
UNDECIDED = "inconclusive"  # a guardrail neither worse nor non-inferior


def _percent(value) -> str:
  return "n/a" if value is None else f"{value * 100:+.1f}%"


def _interval(row, config) -> tuple:
  if config.decide_on == metric_stats.SEQUENTIAL:
    return row.get("seq_ci_low"), row.get("seq_ci_high")
  return row.get("lift_ci_low"), row.get("lift_ci_high")


def _goal_outcome(row, config) -> str:
  column = ("seq_p_value_adj" if config.decide_on == metric_stats.SEQUENTIAL
            else "p_value_adj")
  if row["role"] != metric_defs.GOAL:  # Only goals are corrected.
    column = column.replace("_adj", "")
  p_value, lift = row.get(column), row.get("lift")
  if p_value is None or lift is None or p_value >= config.alpha:
    return NOT_SIGNIFICANT
  good = lift < 0 if row["direction"] == metric_defs.DECREASE else lift > 0
  return BETTER if good else WORSE


def _guardrail_outcome(row, config) -> str:
  """worse: the whole interval lies past the margin on the bad side;
  non-inferior: the whole interval lies inside it."""
  low, high = _interval(row, config)
  if low is None or high is None:
    return UNDECIDED
  # The lift interval turned so that larger is worse.
  if row["direction"] == metric_defs.INCREASE:
    low, high = -high, -low
  if low > row["margin"]:
    return WORSE
  if high < row["margin"]:
    return NON_INFERIOR
  return UNDECIDED


def _name(row) -> str:
  if row["metric_type"] == metric_defs.QUANTILE:
    return f"{row['metric']} p{row['quantile'] * 100:g}"
  return row["metric"]


def sentence(row, outcome: str, config) -> str:
  """E.g. "latency_ms p95 +18.0% (CI +12.0% to +25.0%), guardrail margin
  +5.0%: worse"."""
  low, high = _interval(row, config)
  text = (f"{_name(row)} {_percent(row.get('lift'))} "
          f"(CI {_percent(low)} to {_percent(high)})")
  if row["role"] == metric_defs.GUARDRAIL:
    sign = 1 if row["direction"] == metric_defs.DECREASE else -1
    text += f", guardrail margin {_percent(sign * row['margin'])}"
  elif row["role"] == metric_defs.GOAL:
    column = ("seq_p_value_adj" if config.decide_on == metric_stats.SEQUENTIAL
              else "p_value_adj")
    value = row.get(column)
    text += f", goal, adjusted p {'n/a' if value is None else f'{value:.3g}'}"
  else:
    text += ", secondary"
  return f"{text}: {outcome}"


def decide(rows: list, config: metric_stats.MetricConfig) -> list:
  """decisions rows ({arm, control_arm, verdict, reasons, ...}) of one segment."""
  if not rows:
    return []
  control = rows[0]["control_arm"]
  srm_alert = bool(rows[0]["srm_alert"])
  by_arm = {}
  for row in rows:
    by_arm.setdefault(row["arm"], []).append(row)
  control_n = {row["metric"]: row["n"] for row in by_arm.get(control, [])}
  decisions = []
  for arm, arm_rows in sorted(by_arm.items()):
    if arm == control:
      continue
    reasons, outcomes, invalid = [], {}, []
    if srm_alert:
      invalid.append(f"sample ratio mismatch (p = {rows[0]['srm_p_value']:.2g})")
    short = []
    for row in arm_rows:
      judged = row["role"] in (metric_defs.GOAL, metric_defs.GUARDRAIL)
      if judged and (row["n"] == 0 or control_n.get(row["metric"], 0) == 0):
        invalid.append(f"{_name(row)}: no data in "
                       f"{arm if row['n'] == 0 else control}")
        continue
      if row["role"] == metric_defs.GUARDRAIL:
        outcome = _guardrail_outcome(row, config)
      else:
        outcome = _goal_outcome(row, config)
      if row["role"] == metric_defs.GOAL and min(
          row["n"], control_n[row["metric"]]) < config.min_samples:
        short.append(_name(row))
      outcomes[row["metric"]] = (row["role"], outcome)
      reasons.append(sentence(row, outcome, config))
    goals = [o for role, o in outcomes.values() if role == metric_defs.GOAL]
    guardrails = [o for role, o in outcomes.values()
                  if role == metric_defs.GUARDRAIL]
    if invalid:
      verdict = INVALID
      reasons = invalid + reasons
    elif WORSE in guardrails:
      verdict = ROLLBACK
    elif (goals and all(o == BETTER for o in goals)
          and all(o == NON_INFERIOR for o in guardrails) and not short):
      verdict = SHIP
    else:
      verdict = KEEP_RUNNING
      if short:
        reasons.append(f"fewer than {config.min_samples} samples per arm: "
                       f"{', '.join(short)}")
    decisions.append({
        "arm": arm, "control_arm": control, "verdict": verdict,
        "decide_on": config.decide_on, "reasons": reasons,
        "srm_p_value": rows[0]["srm_p_value"]})
  return decisions

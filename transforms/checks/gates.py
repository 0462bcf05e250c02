"""Quality gates: verdicts on a finished run from its own output rows.

A run that breaks a gate has written its tables (nothing is lost) but its
results must not be used as they are: the command exits non-zero, and the
`run_summary` row says why, so a scheduler does not publish them. Generic
gates take the data_quality counts per record type; the reward pipelines add
checks of their options against the experiments found. Pure Python, no Beam.
"""

from __future__ import annotations

import collections
import dataclasses

DEAD_LETTER_PREFIX = "dead_letter:"
# Where a parsed record ends up besides being counted (see transforms.logs.quality).
NOT_COUNTED = ("duplicate", "late", "shadow")

PASSED = "passed"
FAILED = "failed"
ACCEPTED = "accepted"  # Broke a gate, and --allow_partial accepts that.

DEAD_LETTER_FRACTION = "dead_letter_fraction"
NOT_EMPTY = "not_empty"
CONTROL_ARM = "control_arm"
EXPECTED_ALLOCATION = "expected_allocation"
FEEDBACK_COUNTED = "feedback_counted"


@dataclasses.dataclass(frozen=True)
class GateConfig:
  """What the gates hold a run to."""
  max_dead_letter_fraction: float = 0.05
  allow_partial: bool = False
  control_arm: str | None = None
  expected_allocation: dict[str, float] | None = None
  # Whether the run decides on the `reward` feedback. A --metrics run whose
  # metrics read other signals (clicks, purchases) counts no reward, and the
  # feedback_counted gate does not apply to it.
  reward_measured: bool = True


@dataclasses.dataclass(frozen=True)
class Verdict:
  """One gate on one subject (a record type, an output, an experiment)."""
  gate: str
  subject: str
  passed: bool
  detail: str

  def as_row(self) -> dict:
    return dataclasses.asdict(self)


def counts_by_type(quality_rows) -> dict[str, collections.Counter]:
  """data_quality rows -> {record_type: Counter(metric -> count)}."""
  counts = collections.defaultdict(collections.Counter)
  for row in quality_rows:
    counts[row["record_type"]][row["metric"]] += row["count"]
  return dict(counts)


def dead_lettered(counts: collections.Counter) -> int:
  return sum(n for metric, n in counts.items()
             if metric.startswith(DEAD_LETTER_PREFIX))


# What the most frequent reason of a broken dead-letter gate usually means.
REASON_HINTS = {
    "bad_timestamp": "timestamps are RFC 3339 with a zone or epoch seconds, "
                     "not milliseconds",
    "wrong_type": "a field has the wrong JSON type, e.g. a reward true or "
                  "\"1\" instead of a number (dead_letter.detail names it)",
    "missing_field": "records lack a required field (dead_letter.detail "
                     "names it)",
    "orphan_feedback": "feedback whose prediction was not read: are all the "
                       "prediction files given?",
    "invalid_json": "lines that are not JSON",
}


def dead_letter_gates(quality_rows, max_fraction: float) -> list[Verdict]:
  """Per record type read: dead-lettered / read at most `max_fraction`."""
  verdicts = []
  for record_type, counts in sorted(counts_by_type(quality_rows).items()):
    read = counts.get("read", 0)
    if not read:
      continue
    dead = dead_lettered(counts)
    reasons = ", ".join(
        f"{metric[len(DEAD_LETTER_PREFIX):]} {n:,}"
        for metric, n in counts.most_common()
        if metric.startswith(DEAD_LETTER_PREFIX))
    detail = (f"{dead:,} of {read:,} {record_type} records dead-lettered "
              f"({dead / read:.1%}; at most {max_fraction:.1%})")
    if reasons:
      detail += f": {reasons}"
    passed = dead / read <= max_fraction
    top = next((metric[len(DEAD_LETTER_PREFIX):]
                for metric, _ in counts.most_common()
                if metric.startswith(DEAD_LETTER_PREFIX)), None)
    if not passed and top in REASON_HINTS:
      detail += f"; {REASON_HINTS[top]}"
    verdicts.append(Verdict(DEAD_LETTER_FRACTION, record_type, passed,
                            detail))
  return verdicts


def not_empty_gates(output_rows: dict[str, int]) -> list[Verdict]:
  """Each named output has rows."""
  return [Verdict(NOT_EMPTY, name, rows > 0,
                  f"{rows:,} {name} rows" if rows else
                  f"no {name} rows: no input record was usable")
          for name, rows in sorted(output_rows.items())]


def experiments(arm_stats_rows) -> dict[str, dict[str, dict]]:
  """arm_stats rows -> {experiment_id: {arm: row}}."""
  found = collections.defaultdict(dict)
  for row in arm_stats_rows:
    found[row["experiment_id"]][row["arm"]] = row
  return dict(found)


def experiment_gates(arm_stats_rows, config: GateConfig) -> list[Verdict]:
  """Per experiment: the control arm and the allocated arms exist, and
  predictions got feedback."""
  verdicts = []
  for experiment_id, arms in sorted(experiments(arm_stats_rows).items()):
    names = ", ".join(sorted(arms))
    if config.control_arm is not None:
      found = config.control_arm in arms
      verdicts.append(Verdict(
          CONTROL_ARM, experiment_id, found,
          f"control arm {config.control_arm}" if found else
          f"--control_arm {config.control_arm} is not an arm of "
          f"{experiment_id} (arms: {names})"))
    if config.expected_allocation:
      unknown = sorted(set(config.expected_allocation) - set(arms))
      missing = sorted(set(arms) - set(config.expected_allocation))
      problems = ([f"no arm {', '.join(unknown)} in the data"] if unknown
                  else []) + ([f"no weight for {', '.join(missing)}"]
                              if missing else [])
      verdicts.append(Verdict(
          EXPECTED_ALLOCATION, experiment_id, not problems,
          f"--expected_allocation of {experiment_id}: " + (
              "; ".join(problems) + f" (arms: {names})" if problems
              else "every arm has a weight")))
    impressions = sum(row.get("impressions") or 0 for row in arms.values())
    feedback = sum(row.get("feedback_count") or 0 for row in arms.values())
    if not config.reward_measured:
      continue
    verdicts.append(Verdict(
        FEEDBACK_COUNTED, experiment_id, feedback > 0 or not impressions,
        f"{experiment_id}: {impressions:,} impressions, {feedback:,} counted "
        "feedback" + ("" if feedback or not impressions else
                      ": every reward would be 0")))
  return verdicts


def status(verdicts, allow_partial: bool) -> str:
  if all(v.passed for v in verdicts):
    return PASSED
  return ACCEPTED if allow_partial else FAILED


def failures(verdicts) -> list[Verdict]:
  return [v for v in verdicts if not v.passed]


def reward_verdicts(config: GateConfig, quality_rows,
                    arm_stats_rows) -> list[Verdict]:
  """The reward pipelines' gates."""
  return (dead_letter_gates(quality_rows, config.max_dead_letter_fraction) +
          not_empty_gates({"arm_stats": len(arm_stats_rows)}) +
          experiment_gates(arm_stats_rows, config))


def inference_verdicts(config: GateConfig, quality_rows,
                       arm_stats_rows=()) -> list[Verdict]:
  """Batch inference's gates: feature rows dead-lettered, rows scored."""
  del arm_stats_rows  # Batch inference has none.
  scored = sum(row["count"] for row in quality_rows
               if row["metric"] == "scored")
  return (dead_letter_gates(quality_rows, config.max_dead_letter_fraction) +
          not_empty_gates({"predictions": scored}))

"""Quality gates and the run summary (pure): verdicts from hand-made rows."""

import pytest

from transforms.checks import gates
from transforms.checks import summary


def _quality(record_type, **metrics):
  return [{"record_type": record_type, "metric": metric.replace("__", ":"),
           "count": count} for metric, count in metrics.items()]


FEEDBACK = _quality("feedback", read=100, counted=80, duplicate=6,
                    dead_letter__wrong_type=10, dead_letter__orphan_feedback=4)
PREDICTIONS = _quality("prediction", read=50, counted=50)


def _arm(experiment, arm, impressions, feedback, control=None):
  return {"experiment_id": experiment, "arm": arm, "impressions": impressions,
          "feedback_count": feedback, "control_arm": control}


def test_dead_letter_fraction_per_record_type():
  verdicts = gates.dead_letter_gates(FEEDBACK + PREDICTIONS, 0.1)

  assert [(v.subject, v.passed) for v in verdicts] == [("feedback", False),
                                                      ("prediction", True)]
  # 14 of 100: the reasons, most frequent first.
  assert verdicts[0].detail == (
      "14 of 100 feedback records dead-lettered (14.0%; at most 10.0%): "
      "wrong_type 10, orphan_feedback 4; a field has the wrong JSON type, "
      "e.g. a reward true or \"1\" instead of a number (dead_letter.detail "
      "names it)")
  assert gates.dead_letter_gates(FEEDBACK, 0.14)[0].passed  # At the limit.


def test_counts_split_over_rows_add_up():
  # data_quality may hold one metric in several rows (several runs of a stage).
  split = FEEDBACK + _quality("feedback", read=100, counted=100)
  [verdict] = gates.dead_letter_gates(split, 0.05)
  assert verdict.detail.startswith("14 of 200 feedback records")
  assert verdict.passed is False


def test_experiment_gates_name_what_is_wrong():
  rows = [_arm("a", "control", 10, 5), _arm("a", "treatment", 10, 0),
          _arm("b", "x", 7, 0), _arm("b", "y", 3, 0)]
  config = gates.GateConfig(control_arm="control",
                            expected_allocation={"control": 1, "treatmnt": 1})

  verdicts = {(v.gate, v.subject): v for v in gates.experiment_gates(rows,
                                                                     config)}

  assert verdicts[("control_arm", "a")].passed
  assert verdicts[("control_arm", "b")].detail == (
      "--control_arm control is not an arm of b (arms: x, y)")
  assert verdicts[("expected_allocation", "a")].detail == (
      "--expected_allocation of a: no arm treatmnt in the data; no weight for "
      "treatment (arms: control, treatment)")
  assert verdicts[("feedback_counted", "a")].passed
  assert not verdicts[("feedback_counted", "b")].passed
  assert verdicts[("feedback_counted", "b")].detail == (
      "b: 10 impressions, 0 counted feedback: every reward would be 0")


def test_without_control_arm_or_allocation_only_feedback_is_checked():
  verdicts = gates.experiment_gates([_arm("a", "x", 0, 0)], gates.GateConfig())
  assert [(v.gate, v.passed) for v in verdicts] == [("feedback_counted", True)]


@pytest.mark.parametrize("passed,allow_partial,status", [
    ((True, True), False, "passed"), ((True, False), False, "failed"),
    ((True, False), True, "accepted"), ((), False, "passed")])
def test_status(passed, allow_partial, status):
  verdicts = [gates.Verdict("g", "s", p, "") for p in passed]
  assert gates.status(verdicts, allow_partial) == status


def test_reward_verdicts_on_an_empty_run():
  verdicts = gates.reward_verdicts(gates.GateConfig(), [], [])
  assert [(v.gate, v.passed, v.detail) for v in verdicts] == [
      ("not_empty", False, "no arm_stats rows: no input record was usable")]


def test_summary_row_and_screen():
  arms = [_arm("exp", "control", 30, 20, control="control"),
          _arm("exp", "treatment", 20, 10, control="control")]
  config = gates.GateConfig(max_dead_letter_fraction=0.1,
                            expected_allocation={"control": 3.0,
                                                 "treatment": 2.0})
  verdicts = gates.reward_verdicts(config, FEEDBACK + PREDICTIONS, arms)

  row = summary.summary_row("reward_batch", config, ["out/arm_stats-*.jsonl"],
                            FEEDBACK + PREDICTIONS, verdicts, arms)

  assert row["status"] == "failed"
  assert row["experiments"] == [{
      "experiment_id": "exp", "arms": "control,treatment",
      "control_arm": "control", "impressions": 50, "feedback_count": 30,
      "expected_allocation": "control=3,treatment=2"}]
  screen = summary.format_summary({**row, "run_id": "r1"})
  lines = screen.splitlines()
  assert lines[0] == "run r1 (reward_batch): FAILED"
  # read = counted + duplicate + dead-lettered: 80 + 6 + 14 = 100.
  assert ("  feedback: 100 read = 80 counted + 6 duplicate + 14 "
          "dead-lettered") in lines
  assert "    dead-lettered by reason: wrong_type 10, orphan_feedback 4" in (
      lines)
  assert "  out/arm_stats-*.jsonl" in lines
  assert any(line.startswith("  FAIL dead_letter_fraction [feedback]")
             for line in lines)
  assert summary.failure_line(row).startswith(
      "quality gate dead_letter_fraction failed: 14 of 100 feedback records")


def test_an_unbalanced_record_type_is_said_so():
  rows = _quality("feedback", read=10, counted=8)
  screen = summary.format_summary(summary.summary_row(
      "reward_batch", gates.GateConfig(), [], rows, []))
  assert "feedback: 10 read = 8 counted + 0 dead-lettered (UNBALANCED: 8 " \
         "accounted for)" in screen

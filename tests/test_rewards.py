"""Attribution semantics on hand-made shards, checked against hand-computed totals."""

import pyarrow as pa
import numpy as np
import pytest

from transforms.logs import batches
from transforms.logs import contract
from transforms.attribution import rewards

HOUR = 3600.0


def predictions(*rows):
  """rows: (request_id, ts, arm[, shadow]) in experiment "e"."""
  return pa.Table.from_pylist(
      [{"request_id": r[0], "ts": r[1], "experiment_id": "e", "arm": r[2],
        "shadow": r[3] if len(r) > 3 else False} for r in rows],
      schema=batches.PREDICTION_SCHEMA)


def feedback(*rows):
  """rows: (request_id, ts, reward[, experiment_id, arm])."""
  return pa.Table.from_pylist(
      [{"request_id": r[0], "ts": r[1], "reward": r[2],
        "experiment_id": r[3] if len(r) > 3 else None,
        "arm": r[4] if len(r) > 4 else None, "raw": f"raw-{r[0]}-{r[1]}",
        "source_file": "fb.jsonl"} for r in rows],
      schema=batches.FEEDBACK_SCHEMA)


def totals(result):
  return dict(result.partials)


PREDICTIONS = predictions(("r1", 0.0, "a"), ("r2", 10.0, "a"),
                          ("r3", 20.0, "b"), ("r4", 30.0, "b"))
# r1: two in-window rewards (0 then 1); r2: one in window and one late;
# r3: none; r4: reward 1; x: orphan.
FEEDBACK = feedback(("r1", 5.0, 0.0), ("r1", 6.0, 1.0), ("r2", 20.0, 1.0),
                    ("r2", 10.0 + 2 * HOUR, 1.0), ("r4", 40.0, 1.0),
                    ("x", 1.0, 1.0))


@pytest.mark.parametrize("reduce,r1_reward", [
    ("max", 1.0), ("sum", 1.0), ("first", 0.0), ("last", 1.0)])
def test_duplicates_reduce_to_one_reward(reduce, r1_reward):
  config = rewards.AttributionConfig(attribution_window_s=HOUR,
                                     reward_reduce=reduce)
  result = rewards.attribute(PREDICTIONS, FEEDBACK, config)
  arm_a = totals(result)[("e", "a")]
  assert arm_a.impressions == 2
  assert arm_a.feedback_count == 2
  assert arm_a.reward_sum == r1_reward + 1.0
  assert arm_a.reward_sq_sum == r1_reward**2 + 1.0
  counts = result.counts
  assert counts[(contract.FEEDBACK, rewards.DUPLICATE)] == 1
  assert counts[(contract.FEEDBACK, rewards.LATE)] == 1
  assert counts[(contract.FEEDBACK, rewards.COUNTED)] == 3


def test_sum_adds_duplicate_rewards():
  result = rewards.attribute(
      predictions(("r1", 0.0, "a")),
      feedback(("r1", 1.0, 2.0), ("r1", 2.0, 3.0)),
      rewards.AttributionConfig(reward_reduce="sum"))
  assert totals(result)[("e", "a")].reward_sum == 5.0
  assert totals(result)[("e", "a")].non_binary == 1


def test_missing_reward_zero_vs_ignore():
  zero = rewards.attribute(PREDICTIONS, FEEDBACK,
                           rewards.AttributionConfig(attribution_window_s=HOUR))
  ignore = rewards.attribute(
      PREDICTIONS, FEEDBACK,
      rewards.AttributionConfig(attribution_window_s=HOUR,
                                missing_reward="ignore"))
  assert totals(zero)[("e", "b")].samples == 2  # r3 counts as reward 0
  assert totals(ignore)[("e", "b")].samples == 1  # r3 left out
  assert totals(ignore)[("e", "b")].impressions == 2
  assert totals(zero)[("e", "b")].reward_sum == totals(
      ignore)[("e", "b")].reward_sum == 1.0


def test_orphans_keep_their_raw_record_and_source():
  result = rewards.attribute(PREDICTIONS, FEEDBACK, rewards.AttributionConfig())
  assert result.orphans == [("raw-x-1.0", "fb.jsonl", contract.Rejected(
      contract.ORPHAN_FEEDBACK, "request_id"))]


def test_shadow_predictions_are_never_impressions():
  preds = predictions(("r1", 0.0, "a"), ("s1", 0.0, "shadow-model", True))
  result = rewards.attribute(preds, feedback(("s1", 1.0, 1.0)),
                             rewards.AttributionConfig())
  assert ("e", "shadow-model") not in totals(result)
  assert result.counts[(contract.PREDICTION, rewards.SHADOW)] == 1
  assert result.counts[(contract.FEEDBACK, rewards.SHADOW)] == 1
  assert totals(result)[("e", "a")].impressions == 1


def test_duplicate_prediction_keeps_the_earliest():
  preds = predictions(("r1", 50.0, "late-copy"), ("r1", 0.0, "a"))
  result = rewards.attribute(preds, feedback(("r1", 30.0, 1.0)),
                             rewards.AttributionConfig(attribution_window_s=40))
  assert set(totals(result)) == {("e", "a")}
  assert totals(result)[("e", "a")].reward_sum == 1.0
  assert result.counts[(contract.PREDICTION, rewards.DUPLICATE)] == 1


def test_feedback_only_mode_counts_feedback_as_impressions():
  fb = feedback(("r1", 1.0, 1.0, "router", "0"), ("r1", 2.0, 0.0, "router", "0"),
                ("r2", 3.0, 0.0, "router", "1"), ("r3", 4.0, 1.0, None, "1"))
  result = rewards.attribute(
      batches.PREDICTION_SCHEMA.empty_table(), fb,
      rewards.AttributionConfig(with_predictions=False))
  assert totals(result)[("router", "0")] == rewards.ArmAccumulator(
      1, 1, 1, 1.0, 1.0, 0, 1.0, 1.0, 1.0, 0.0, 1.0, 1.0)
  assert totals(result)[("router", "1")].impressions == 1
  assert [o[2] for o in result.orphans] == [
      contract.Rejected(contract.MISSING_FIELD, "experiment_id")]


def test_accumulators_merge_associatively():
  # Rewards: a = [1], b = [0, 0], c = [0.5, 1, 1].
  a = rewards.ArmAccumulator(1, 1, 1, 1.0, 1.0, 0, 5.0, 5.0, 1.0, 0.0, 1.0,
                             1.0)
  b = rewards.ArmAccumulator(2, 0, 2, 0.0, 0.0, 1, 1.0, 9.0, 0.0, 0.0, 0.0,
                             0.0)
  c = rewards.ArmAccumulator(3, 3, 3, 2.5, 2.25, 0, 3.0, 4.0, 2.5 / 3,
                             float(np.var([0.5, 1, 1]) * 3), 0.5, 1.0)
  left, right = a.merge(b).merge(c), a.merge(b.merge(c))
  assert left[:8] == right[:8] == rewards.merge_all([c, b, a])[:8]
  assert left[:8] == (6, 4, 6, 3.5, 3.25, 1, 1.0, 9.0)
  everything = [1, 0, 0, 0.5, 1, 1]
  for merged in (left, right, rewards.merge_all([c, b, a])):
    assert merged.reward_mean == pytest.approx(np.mean(everything))
    assert merged.reward_m2 == pytest.approx(np.var(everything) * 6)
    assert (merged.reward_min, merged.reward_max) == (0.0, 1.0)


def test_invalid_config_is_refused():
  with pytest.raises(ValueError):
    rewards.AttributionConfig(reward_reduce="mean")
  with pytest.raises(ValueError):
    rewards.AttributionConfig(missing_reward="drop")

"""Per-experiment output rows: arm_stats with its statistics, and router_state.

Pure: from the combined per-arm accumulators of one experiment to table rows.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

from transforms.decisions import router_state as router
from transforms.io import schemas
from transforms.decisions import stats
from transforms.attribution.rewards import ArmAccumulator


@dataclasses.dataclass(frozen=True)
class StatisticsConfig:
  """What the decision statistics compare against."""
  control_arm: str | None = None
  expected_allocation: Mapping[str, float] | None = None
  seq_tuning: float = stats.DEFAULT_SEQ_TUNING
  traffic_floor: float = 0.0


def arm_totals(arm: str, accumulator: ArmAccumulator) -> stats.ArmTotals:
  # Accumulators built from sums alone (no min/max) fall back to the sums.
  has_moments = accumulator.reward_min <= accumulator.reward_max
  return stats.ArmTotals(arm=arm, impressions=accumulator.impressions,
                         samples=accumulator.samples,
                         reward_sum=accumulator.reward_sum,
                         reward_sq_sum=accumulator.reward_sq_sum,
                         binary=accumulator.non_binary == 0,
                         reward_m2=(accumulator.reward_m2 if has_moments
                                    else None),
                         reward_mean=(accumulator.reward_mean if has_moments
                                      else None),
                         reward_min=accumulator.reward_min,
                         reward_max=accumulator.reward_max)


def experiment_rows(experiment_id: str, accumulators: Mapping[str,
                                                              ArmAccumulator],
                    config: StatisticsConfig,
                    window: tuple[float, float] | None = None):
  """(arm_stats rows, router_state row) of one experiment.

  `window` is (start, end) epoch seconds; by default the span of the
  experiment's predictions.
  """
  arms = [arm_totals(arm, acc) for arm, acc in sorted(accumulators.items())]
  per_arm = stats.experiment_statistics(
      arms, control_arm=config.control_arm,
      expected_allocation=config.expected_allocation,
      seq_tuning=config.seq_tuning)
  if window is None:
    window = (min(a.ts_min for a in accumulators.values()),
              max(a.ts_max for a in accumulators.values()))
  window_fields = {"window_start": schemas.format_timestamp(window[0]),
                   "window_end": schemas.format_timestamp(window[1])}
  rows = []
  for arm in arms:
    acc = accumulators[arm.arm]
    rows.append({
        "experiment_id": experiment_id, "arm": arm.arm, **window_fields,
        "impressions": acc.impressions, "feedback_count": acc.feedback_count,
        "samples": acc.samples, "reward_sum": acc.reward_sum,
        "reward_sq_sum": acc.reward_sq_sum, **per_arm[arm.arm]})
  state = router.router_state(experiment_id, arms, per_arm,
                              traffic_floor=config.traffic_floor)
  return rows, {**state, **window_fields}

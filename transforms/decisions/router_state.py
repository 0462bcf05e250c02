"""The bandit router state of an experiment: what a router continues from.

Pure Python, no Beam. One record per experiment, stored as a row of the
`router_state` table and as one JSON line of DIR/router_state*.json, which a
router such as examples/thompson_router.py loads at start-up.
"""

from __future__ import annotations

import json
import math
from typing import Mapping, Sequence

from transforms.decisions.stats import ArmTotals


def traffic_shares(prob_best: Sequence[float | None],
                   traffic_floor: float = 0.0) -> list[float]:
  """Recommended traffic split: the floor per arm, the rest by prob_best.

  Each arm gets `traffic_floor`, and the remaining 1 - n_arms * floor is
  split in proportion to prob_best (Thompson sampling's split in
  expectation). An arm without prob_best gets the floor only; when no arm has one the
  split is equal. A floor above 1 / n_arms, which the data's arm count can
  make of any setting, is capped there (an equal split). The shares sum to 1.
  """
  n_arms = len(prob_best)
  if traffic_floor < 0:
    raise ValueError(f"traffic_floor must be at least 0: {traffic_floor}")
  traffic_floor = min(traffic_floor, 1 / n_arms) if n_arms else 0.0
  weights = [p or 0.0 for p in prob_best]
  total = sum(weights)
  if total == 0:
    return [1 / n_arms for _ in prob_best]
  rest = 1 - traffic_floor * n_arms
  return [traffic_floor + rest * w / total for w in weights]


def _best_arm(arms: Sequence[dict]) -> str | None:
  """Highest prob_best, then highest value, then first name."""

  def rank(arm):
    prob_best = arm["prob_best"] if arm["prob_best"] is not None else -1.0
    value = arm["value"] if arm["value"] is not None else -math.inf
    return (-prob_best, -value, arm["arm"])

  return min(arms, key=rank)["arm"] if arms else None


def router_state(experiment_id: str, arms: Sequence[ArmTotals],
                 stats: Mapping[str, dict],
                 traffic_floor: float = 0.0) -> dict:
  """One experiment's router state from its totals and their statistics.

  Args:
    experiment_id: the experiment.
    arms: the totals of every arm of the experiment.
    stats: arm name -> statistics, as returned by
      `transforms.decisions.stats.experiment_statistics(arms)`.
    traffic_floor: the smallest traffic share of any arm.
  """
  records = []
  for arm in sorted(arms, key=lambda a: a.arm):
    row = stats[arm.arm]
    records.append(dict(
        arm=arm.arm,
        tries=arm.samples,
        successes=arm.reward_sum,
        value=arm.reward_sum / arm.samples if arm.samples else None,
        alpha=row["posterior_alpha"],
        beta=row["posterior_beta"],
        prob_best=row["prob_best"],
        reward_sq_sum=arm.reward_sq_sum))
  shares = traffic_shares([r["prob_best"] for r in records], traffic_floor)
  for record, share in zip(records, shares):
    record["traffic_share"] = share
  return dict(experiment_id=experiment_id,
              reward_type=stats[arms[0].arm]["reward_type"] if arms else None,
              best_arm=_best_arm(records),
              arms=records)


def to_json(state: dict) -> str:
  """One line of a router_state*.json file (no trailing newline)."""
  return json.dumps(state, separators=(",", ":"), allow_nan=False)


def from_json(text: str) -> dict:
  """The state of one line of a router_state*.json file."""
  state = json.loads(text)
  if not isinstance(state, dict) or "experiment_id" not in state:
    raise ValueError("a router state line is a JSON object with experiment_id")
  return state

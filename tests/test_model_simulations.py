"""Error rates over 200 simulated days at the demo's volume (30,000 requests,
truth for half): a shadow 2 points less accurate, a canary 30 % slower."""

import dataclasses

import numpy as np

from simulation import model_logs
from transforms.decisions import canary
from transforms.decisions import shadow

SEEDS = range(200)
SCENARIO = model_logs.ModelScenario(canary_arm=None)


def _shadow_verdict(scenario) -> str:
  (key, accumulator), = shadow.partials(
      model_logs.requests_table(scenario), "classification")
  return shadow.comparison_row(key, accumulator, "classification")["verdict"]


def test_a_worse_shadow_is_found_and_an_equal_one_is_not_blamed():
  worse = [_shadow_verdict(dataclasses.replace(
      SCENARIO, shadow_accuracy=SCENARIO.live_accuracy - 0.02, seed=seed))
           for seed in SEEDS]
  equal = [_shadow_verdict(dataclasses.replace(
      SCENARIO, shadow_accuracy=SCENARIO.live_accuracy, seed=seed))
           for seed in SEEDS]
  assert np.mean([v == shadow.WORSE for v in worse]) >= 0.90
  assert np.mean([v == shadow.WORSE for v in equal]) <= 0.05


def _canary_verdict(scenario) -> str:
  arms = dict((arm, acc) for (_, arm), acc in canary.arm_partials(
      model_logs.requests_table(scenario)))
  return canary.experiment_verdict(scenario.experiment_id, arms,
                                   canary.JudgeConfig())["verdict"]


def test_a_slower_canary_fails_and_an_equal_one_passes():
  base = model_logs.ModelScenario(shadow_arm=None)
  slow = [_canary_verdict(dataclasses.replace(
      base, canary_latency_factor=1.3, seed=seed)) for seed in SEEDS]
  equal = [_canary_verdict(dataclasses.replace(base, seed=seed))
           for seed in SEEDS]
  assert np.mean([v == canary.FAIL for v in slow]) >= 0.95
  assert np.mean([v == canary.PASS for v in equal]) >= 0.95

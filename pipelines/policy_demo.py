"""Contextual routing and off-policy evaluation on a simulated router.

Day 1: a router explores uniformly; `reward_batch --contextual_policy`
turns its logs into a router state with a contextual part. Day 2: the
context-free router of that state (its recommended split, with 20 % uniform
exploration) serves and logs its propensities; `policy_evaluation`
estimates from day 2's logs what the contextual policies of day 1's state
would have earned, and the demo prints the estimates beside the true values
the simulator knows (the best arm depends on the context, so the contextual
policies should win).

  python -m pipelines.policy_demo --workdir local/policy_demo
"""

from __future__ import annotations

import argparse
import glob
import json
import logging
import os

import numpy as np

from pipelines import policy_evaluation
from pipelines import reward_batch
from simulation import contextual
from transforms.policy import linear

EXPLORATION = 0.2
TARGETS = (("linear_thompson", "linear_thompson"), ("linucb", "linucb"),
           ("context_free", "router_state"))


def _write_logs(directory: str, env, logged, prefix: str):
  os.makedirs(directory, exist_ok=True)
  predictions, feedback = contextual.log_records(env, logged, prefix=prefix)
  contextual.write_jsonl(f"{directory}/predictions.jsonl", predictions)
  contextual.write_jsonl(f"{directory}/feedback.jsonl", feedback)


def _rows(pattern: str) -> list[dict]:
  return [json.loads(line) for path in sorted(glob.glob(pattern))
          for line in open(path, encoding="utf-8") if line.strip()]


def _true_values(env, state: dict) -> dict[str, float]:
  fields = state["contextual"]
  models = linear.models_from_state(fields)
  values = {}
  for name, policy in TARGETS[:2]:
    values[name] = env.true_value(lambda c, p=policy: linear.action_probabilities(
        models, contextual.with_intercept(c), p, fields["alpha"],
        fields["epsilon"]))
  values["context_free"] = env.true_value(
      contextual.policy_of(env, state, contextual=False))
  return values


def run_policy_demo(workdir: str, requests: int = 20_000,
                    seed: int = 3) -> dict:
  """Run both days; print and return {target: (DR row, true value)}."""
  env = contextual.Environment()
  rng = np.random.default_rng(seed)
  uniform = lambda c: np.full((len(c), len(env.arms)), 1 / len(env.arms))  # noqa: E731
  day1, day2 = f"{workdir}/day1", f"{workdir}/day2"
  _write_logs(f"{day1}/logs", env,
              contextual.route(env, rng, requests // 4, uniform), "d1-")
  reward_batch.run([
      f"--predictions={day1}/logs/predictions.jsonl",
      f"--feedback={day1}/logs/feedback.jsonl", "--context_dim=2",
      "--contextual_policy=linear_thompson", "--policy_epsilon=0.05",
      f"--output_dir={day1}/out", "--runner=FnApiRunner"])
  state_pattern = f"{day1}/out/router_state*.json"
  [state] = _rows(state_pattern)

  context_free = contextual.policy_of(env, state, contextual=False)
  logging_policy = lambda c: ((1 - EXPLORATION) * context_free(c) +  # noqa: E731
                              EXPLORATION * uniform(c))
  _write_logs(f"{day2}/logs", env,
              contextual.route(env, rng, requests, logging_policy), "d2-")
  policy_evaluation.run([
      f"--predictions={day2}/logs/predictions.jsonl",
      f"--feedback={day2}/logs/feedback.jsonl", "--context_dim=2",
      *[f"--target_policy={name}={kind}:{state_pattern}"
        for name, kind in TARGETS],
      "--bootstrap=100", f"--output_dir={day2}/eval", "--runner=FnApiRunner"])
  values = {(r["policy"], r["estimator"]): r
            for r in _rows(f"{day2}/eval/policy_value*.jsonl")}
  truth = _true_values(env, state)
  logged_true = env.true_value(logging_policy)
  print(f"\noff-policy evaluation on {requests:,} requests of day 2, logged "
        f"by the context-free router (+{EXPLORATION:.0%} uniform):")
  print(f"{'target policy':>18}  {'DR estimate [95% CI]':>24}  "
        f"{'IPS':>7}  {'SNIPS':>7}  {'true value':>10}")
  results = {}
  for name, _ in TARGETS:
    dr = values[(name, "dr")]
    print(f"{name:>18}  {dr['value']:.4f} [{dr['ci_low']:.4f}, "
          f"{dr['ci_high']:.4f}]  {values[(name, 'ips')]['value']:7.4f}  "
          f"{values[(name, 'snips')]['value']:7.4f}  {truth[name]:10.4f}")
    results[name] = (dr, truth[name])
  print(f"{'logged (on-policy)':>18}  {dr['logged_value']:.4f}"
        f"{'':>18}  {'':>7}  {'':>7}  {logged_true:10.4f}")
  best = max(TARGETS[:2], key=lambda t: values[(t[0], "dr")]["value"])[0]
  beats = (values[(best, "dr")]["ci_low"] >
           values[("context_free", "dr")]["ci_high"])
  print(f"contextual ({best}) estimated value "
        f"{'beats' if beats else 'does not clearly beat'} the context-free "
        f"one: {values[(best, 'dr')]['value']:.4f} vs "
        f"{values[('context_free', 'dr')]['value']:.4f} (true "
        f"{truth[best]:.4f} vs {truth['context_free']:.4f})")
  return results


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", default="local/policy_demo",
                      help="where the logs and outputs go")
  parser.add_argument("--requests", type=int, default=20_000,
                      help="simulated requests of day 2 (day 1: a quarter)")
  args = parser.parse_args(argv)
  logging.basicConfig(level=logging.WARNING)
  run_policy_demo(args.workdir, args.requests)


if __name__ == "__main__":
  main()

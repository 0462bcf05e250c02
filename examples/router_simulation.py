"""Simulations of the example router: a new branch's prior, continuous rewards.

Each run writes the pipeline's router state of known arms, serves requests
with `thompson_router.BanditRouter`, draws each reward from the routed arm's
true distribution and sends it back as feedback, as Seldon's wrapper would,
`--feedback_delay` requests later.

1. A new branch without data (binary rewards): three known arms converting at
   3 %, 3.5 % and 4 % (10,000 tries each) and a new branch converting at 2 %
   (worse) or 6 % (better), for `new_arm_prior_weight` 0 (Seldon's uniform
   Beta(1, 1)) to 1,000. Reported: the new branch's share of the requests
   before any feedback, of the first 5,000 and of the last 5,000, and the
   regret (reward lost against always serving the best arm) per 1,000
   requests.
2. Continuous rewards: two arms the state saw as equal (N(1, 1) rewards, 200
   tries each) of which one has become better (mean 1.2). The router, which
   updates each arm's normal posterior from feedback, against the fixed split
   of the state's `traffic_share` (what the router did before).

  PYTHONPATH=. python -m examples.router_simulation [--seeds 5] [--requests 20000] [--feedback_delay 500]
"""

from __future__ import annotations

import argparse
import os
import tempfile

import numpy as np

from examples.thompson_router import BanditRouter
from transforms.decisions import router_state, stats
from transforms.decisions.stats import ArmTotals

KNOWN_RATES = (0.03, 0.035, 0.04)
KNOWN_TRIES = 10_000
PRIOR_WEIGHTS = (0, 10, 100, 1000)
FIRST, LAST = 5_000, 5_000
FEATURES = np.zeros((1, 1))


def write_state(directory: str, arms: list[ArmTotals]) -> str:
  """The pipeline's router state of experiment "sim" with these totals."""
  state = router_state.router_state("sim", arms,
                                    stats.experiment_statistics(arms))
  path = os.path.join(directory, "router_state-00000-of-00001.json")
  with open(path, "w", encoding="utf-8") as out:
    out.write(router_state.to_json(state) + "\n")
  return path


def binary_state(directory: str) -> str:
  arms = [ArmTotals(str(i), KNOWN_TRIES, KNOWN_TRIES, rate * KNOWN_TRIES,
                    rate * KNOWN_TRIES, True)
          for i, rate in enumerate(KNOWN_RATES)]
  return write_state(directory, arms)


def serve(router, draw_reward, requests: int, rng, delay: int) -> np.ndarray:
  """The branch of each request; its reward is sent back as feedback when
  `delay` more requests have been routed (a click or a purchase comes later)."""
  routes = np.empty(requests, int)
  rewards = np.empty(requests)
  for i in range(requests):
    if i >= delay:
      router.send_feedback(FEATURES, [], rewards[i - delay], None,
                           routing=int(routes[i - delay]))
    routes[i] = router.route(FEATURES, [])
    rewards[i] = draw_reward(routes[i], rng)
  return routes


def new_branch_run(state_path: str, new_rate: float, weight: float,
                   requests: int, seed: int, delay: int) -> dict:
  """One run of a new branch (index 3) beside the known arms."""
  rates = np.array(KNOWN_RATES + (new_rate,))
  router = BanditRouter(state_path, "sim", seed=seed,
                        branch_names="0:1:2:new", new_arm_prior_weight=weight)
  rng = np.random.default_rng(10_000 + seed)
  routes = serve(router, lambda b, r: float(r.random() < rates[b]), requests,
                 rng, delay)
  regret = (rates.max() - rates[routes]).sum() / requests * 1000
  return dict(before=np.mean(routes[:delay] == 3),
              first=np.mean(routes[:FIRST] == 3),
              last=np.mean(routes[-LAST:] == 3), regret=regret)


def new_branch_table(seeds: int, requests: int, delay: int) -> list[dict]:
  """Mean over seeds of each (new rate, prior weight) run."""
  rows = []
  with tempfile.TemporaryDirectory() as directory:
    path = binary_state(directory)
    for new_rate in (0.02, 0.06):
      for weight in PRIOR_WEIGHTS:
        runs = [new_branch_run(path, new_rate, weight, requests, seed, delay)
                for seed in range(seeds)]
        rows.append(dict(new_rate=new_rate, weight=weight, **{
            key: float(np.mean([run[key] for run in runs]))
            for key in ("before", "first", "last", "regret")}))
  return rows


def continuous_state(directory: str, seed: int) -> str:
  rng = np.random.default_rng(seed)
  arms = []
  for name in ("0", "1"):
    rewards = rng.normal(1.0, 1.0, 200)
    arms.append(ArmTotals(name, 200, 200, float(rewards.sum()),
                          float((rewards**2).sum()), False))
  return write_state(directory, arms)


def continuous_run(seed: int, requests: int, delay: int) -> dict:
  """Share of the better arm (1) in the last requests and regret per 1,000
  requests: the updating router against the state's fixed split."""
  means = np.array([1.0, 1.2])

  def draw(branch, rng):
    return float(rng.normal(means[branch], 1.0))

  with tempfile.TemporaryDirectory() as directory:
    path = continuous_state(directory, seed)
    router = BanditRouter(path, "sim", seed=seed)
    shares = [arm["traffic_share"] for arm in router_state.from_json(
        open(path, encoding="utf-8").read())["arms"]]
  rng = np.random.default_rng(20_000 + seed)
  updating = serve(router, draw, requests, rng, delay)
  fixed = np.random.default_rng(30_000 + seed).choice(2, requests, p=shares)
  result = {}
  for name, routes in (("updating", updating), ("fixed", fixed)):
    result[f"{name}_last"] = np.mean(routes[-LAST:] == 1)
    result[f"{name}_regret"] = (means.max() - means[routes]).sum(
        ) / requests * 1000
  return result


def continuous_table(seeds: int, requests: int, delay: int) -> dict:
  runs = [continuous_run(seed, requests, delay) for seed in range(seeds)]
  return {key: float(np.mean([run[key] for run in runs])) for key in runs[0]}


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--seeds", type=int, default=5)
  parser.add_argument("--requests", type=int, default=20_000)
  parser.add_argument("--feedback_delay", type=int, default=500,
                      help="requests routed before a request's feedback")
  args = parser.parse_args(argv)
  print(f"New branch beside arms at {KNOWN_RATES} ({KNOWN_TRIES} tries each), "
        f"{args.requests} requests, feedback after {args.feedback_delay} more, "
        f"mean of {args.seeds} seeds")
  print("new rate  prior weight  share before feedback  share first 5k  "
        "share last 5k  regret / 1k requests")
  for row in new_branch_table(args.seeds, args.requests, args.feedback_delay):
    print(f"{row['new_rate']:8.2f}  {row['weight']:12g}  "
          f"{row['before']:21.3f}  {row['first']:14.3f}  {row['last']:13.3f}"
          f"  {row['regret']:20.2f}")
  result = continuous_table(args.seeds, args.requests, args.feedback_delay)
  print("Continuous rewards, arm 1 has become better (1.2 vs 1.0): "
        f"share of arm 1 in the last 5k, updating {result['updating_last']:.3f}"
        f" vs fixed split {result['fixed_last']:.3f}; regret / 1k requests "
        f"{result['updating_regret']:.1f} vs {result['fixed_regret']:.1f}")


if __name__ == "__main__":
  main()

"""Contextual state and off-policy evaluation pipelines vs single-process numpy.

Generates logged predictions (a 10-dimensional context, 3 arms, logged
propensities) and their feedback as JSONL, then times, on the same files:
  state: `reward_batch --contextual_policy linucb` (the whole reward job
    plus the contextual router state) against numpy reading the files with
    pyarrow, joining rewards and solving the per-arm ridge models;
  OPE: `policy_evaluation` (IPS, SNIPS, DM, DR, SNDR with normal intervals,
    no bootstrap) of a fixed split and a LinUCB state, against the same
    estimators in numpy (with the same reward models);
and prints the marginal rate between a tenth of the input and all of it
(start-up, imports and pipeline construction left out; each the fastest of
--repeats runs), the ratios and the largest difference between the
pipelines' numbers and numpy's.

  PYTHONPATH=. python benchmarks/policy_benchmark.py [--requests 1000000]
"""

from __future__ import annotations

import os

# Both engines with single-threaded BLAS, set before numpy loads it: on a
# loaded 2-core machine OpenBLAS's threads made the small products here
# (n x 11 by 11 x 11) up to 100 times slower.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import glob  # noqa: E402
import json  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.compute as pc  # noqa: E402
import pyarrow.json as pa_json  # noqa: E402

from benchmarks import common  # noqa: E402
from pipelines import policy_evaluation  # noqa: E402
from pipelines import reward_batch  # noqa: E402
from simulation import contextual  # noqa: E402
from transforms.policy import estimators  # noqa: E402
from transforms.policy import linear  # noqa: E402

DIM = 10
ENV = contextual.Environment(
    arms=("arm-a", "arm-b", "arm-c"), base=(0.45, 0.5, 0.4),
    beta=tuple(tuple(0.03 * ((k + j) % 3 - 1) for j in range(DIM))
               for k in range(3)),
    experiment_id="bench")
SPLIT = {"arm-a": 0.2, "arm-b": 0.5, "arm-c": 0.3}
LAMBDA = 1.0
ALPHA = 1.0


def generate(directory: str, requests: int, seed: int = 11) -> dict:
  """Full logs and their first tenth; returns records per size."""
  rng = np.random.default_rng(seed)
  logged = contextual.route(ENV, rng, requests,
                            lambda c: np.full((len(c), 3), 1 / 3))
  predictions, feedback = contextual.log_records(ENV, logged)
  sizes = {"tenth": requests // 10, "full": requests}
  events = {}
  for name, n in sizes.items():
    os.makedirs(f"{directory}/{name}", exist_ok=True)
    contextual.write_jsonl(f"{directory}/{name}/predictions.jsonl",
                           predictions[:n])
    kept = [f for f in feedback if int(f["request_id"][1:]) < n]
    contextual.write_jsonl(f"{directory}/{name}/feedback.jsonl", kept)
    events[name] = n + len(kept)
  return events


def _read(directory: str):
  """numpy arrays of the logs: x (with intercept), arm index, propensity, reward."""
  predictions = pa_json.read_json(
      f"{directory}/predictions.jsonl", parse_options=pa_json.ParseOptions(
          explicit_schema=pa.schema([
              ("request_id", pa.string()), ("arm", pa.string()),
              ("propensity", pa.float64()),
              ("features", pa.list_(pa.float64()))]),
          unexpected_field_behavior="ignore"))
  feedback = pa_json.read_json(
      f"{directory}/feedback.jsonl", parse_options=pa_json.ParseOptions(
          explicit_schema=pa.schema([("request_id", pa.string()),
                                     ("reward", pa.float64())]),
          unexpected_field_behavior="ignore"))
  match = pc.index_in(predictions["request_id"], feedback["request_id"])
  reward = pc.fill_null(pc.take(feedback["reward"], match), 0.0).to_numpy()
  n = predictions.num_rows
  features = pc.list_flatten(predictions["features"]).to_numpy().reshape(n,
                                                                        DIM)
  x = np.hstack([np.ones((n, 1)), features])
  arm = pc.index_in(predictions["arm"], pa.array(ENV.arms)).to_numpy()
  return x, arm, predictions["propensity"].to_numpy(), reward


def _ridge(x, arm, reward):
  models = []
  for k, name in enumerate(ENV.arms):
    rows = arm == k
    a = x[rows].T @ x[rows] + LAMBDA * np.eye(DIM + 1)
    models.append((name, np.linalg.solve(a, x[rows].T @ reward[rows]),
                   np.linalg.cholesky(a)))
  return models


def numpy_state(directory: str):
  start = time.perf_counter()
  models = _ridge(*(lambda x, arm, _, r: (x, arm, r))(*_read(directory)))
  return time.perf_counter() - start, {name: theta for name, theta, _ in
                                       models}


def _estimates(reward, logged, propensity, target, predicted):
  w = target[np.arange(len(reward)), logged] / propensity
  dm = np.sum(target * predicted, axis=1)
  residual = reward - predicted[np.arange(len(reward)), logged]
  dr = dm + w * residual
  n = len(reward)
  values = {"ips": np.mean(w * reward), "dm": np.mean(dm), "dr": np.mean(dr),
            "snips": np.sum(w * reward) / np.sum(w)}
  se = {"ips": np.std(w * reward, ddof=1), "dm": np.std(dm, ddof=1),
        "dr": np.std(dr, ddof=1)}
  se = {k: v / np.sqrt(n) for k, v in se.items()}
  se["snips"] = np.sqrt(np.sum((w * (reward - values["snips"]))**2)) / np.sum(w)
  return {k: (values[k], values[k] - estimators.Z_95 * se[k]) for k in values}


def numpy_ope(directory: str, state_models):
  start = time.perf_counter()
  x, arm, propensity, reward = _read(directory)
  models = _ridge(x, arm, reward)
  predicted = np.stack([x @ theta for _, theta, _ in models], axis=1)
  split = np.broadcast_to([SPLIT[a] for a in ENV.arms], (len(x), 3))
  linucb = linear.action_probabilities(state_models, x, "linucb", ALPHA)
  results = {("split", e): v for e, v in _estimates(
      reward, arm, propensity, split, predicted).items()}
  results.update({("linucb", e): v for e, v in _estimates(
      reward, arm, propensity, linucb, predicted).items()})
  return time.perf_counter() - start, results


def _rows(pattern: str):
  return [json.loads(line) for path in glob.glob(pattern)
          for line in open(path, encoding="utf-8")]


def beam_state(directory: str, out: str, runner_args):
  start = time.perf_counter()
  reward_batch.run([
      f"--predictions={directory}/predictions.jsonl",
      f"--feedback={directory}/feedback.jsonl", f"--context_dim={DIM}",
      "--contextual_policy=linucb", f"--policy_alpha={ALPHA}",
      f"--ridge_lambda={LAMBDA}", f"--output_dir={out}", "--run_id=bench",
      *runner_args])
  elapsed = time.perf_counter() - start
  [state] = _rows(f"{out}/router_state*.json")
  return elapsed, {a["arm"]: np.array(a["theta"])
                   for a in state["contextual"]["arms"]}, state


def beam_ope(directory: str, state_file: str, out: str, runner_args):
  start = time.perf_counter()
  split = ",".join(f"{arm}={share}" for arm, share in SPLIT.items())
  policy_evaluation.run([
      f"--predictions={directory}/predictions.jsonl",
      f"--feedback={directory}/feedback.jsonl", f"--context_dim={DIM}",
      f"--target_policy=split=split:{split}",
      f"--target_policy=linucb=linucb:{state_file}", "--bootstrap=0",
      f"--ridge_lambda={LAMBDA}", f"--output_dir={out}", "--run_id=bench",
      *runner_args])
  elapsed = time.perf_counter() - start
  return elapsed, {(r["policy"], r["estimator"]): (r["value"], r["ci_low"])
                   for r in _rows(f"{out}/policy_value*.jsonl")}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--requests", type=int, default=1_000_000)
  parser.add_argument("--repeats", type=int, default=2,
                      help="runs per engine and size; the fastest counts")
  parser.add_argument("--workers", type=int, default=1,
                      help="FnApiRunner workers (multi_processing when > 1)")
  args = parser.parse_args(argv)
  runner_args = common.runner_args(args.workers)

  with tempfile.TemporaryDirectory() as tmp:
    start = time.perf_counter()
    events = generate(tmp, args.requests)
    print(f"generated {events['full']:,} records (predictions and feedback)"
          f" in {time.perf_counter() - start:.1f}s")
    seconds = {}
    state_file, state_models, worst = None, None, 0.0
    for name in ("tenth", "full"):
      data = f"{tmp}/{name}"
      runs = [numpy_state(data) for _ in range(args.repeats)]
      seconds[("numpy_state", name)], thetas = min(runs, key=lambda r: r[0])
      runs = [beam_state(data, f"{tmp}/state-{name}-{i}", runner_args)
              for i in range(args.repeats)]
      seconds[("beam_state", name)], beam_thetas, state = min(
          runs, key=lambda r: r[0])
      worst = max([worst] + [float(np.max(np.abs(beam_thetas[a] - thetas[a])))
                             for a in thetas])
      if state_file is None:  # The tenth's state is the LinUCB target.
        state_file = f"{tmp}/target_state.json"
        with open(state_file, "w", encoding="utf-8") as f:
          f.write(json.dumps(state) + "\n")
        state_models = linear.models_from_state(state["contextual"])
      runs = [numpy_ope(data, state_models) for _ in range(args.repeats)]
      seconds[("numpy_ope", name)], numpy_values = min(runs,
                                                       key=lambda r: r[0])
      runs = [beam_ope(data, state_file, f"{tmp}/ope-{name}-{i}",
                       runner_args) for i in range(args.repeats)]
      seconds[("beam_ope", name)], beam_values = min(runs, key=lambda r: r[0])
      worst = max([worst] + [abs(beam_values[k][j] - numpy_values[k][j])
                             for k in numpy_values for j in (0, 1)])
      print(f"{name}: {events[name]:,} records  " + "  ".join(
          f"{engine} {seconds[(engine, name)]:.2f}s" for engine in
          ("numpy_state", "beam_state", "numpy_ope", "beam_ope")))
    rate = {engine: common.marginal_rate(
        events["tenth"], seconds[(engine, "tenth")], events["full"],
        seconds[(engine, "full")]) for engine in
            ("numpy_state", "beam_state", "numpy_ope", "beam_ope")}
    for engine, value in rate.items():
      print(f"{engine:>12} throughput: {value:,.0f} records/s")
    print(f"ratio state beam/numpy: "
          f"{rate['beam_state'] / rate['numpy_state']:.3f} (target >= 0.3)")
    print(f"ratio OPE beam/numpy:   "
          f"{rate['beam_ope'] / rate['numpy_ope']:.3f} (target >= 0.3)")
    print(f"largest difference of theta, values and interval bounds: "
          f"{worst:.2e}")
    print(f"peak memory: {common.peak_memory_mib():,.0f} MiB")


if __name__ == "__main__":
  main()

"""What the benchmarks share: runner options, marginal rates, peak memory."""

from __future__ import annotations

import resource


def runner_args(workers: int) -> list[str]:
  """FnApiRunner options: in this process, or `workers` processes."""
  args = ["--runner=FnApiRunner"]
  if workers > 1:
    args += [f"--direct_num_workers={workers}",
             "--direct_running_mode=multi_processing"]
  return args


def marginal_rate(events_small, seconds_small, events_big, seconds_big):
  """Events per second once running: fixed costs of a run cancel out.

  NaN when the big run was not slower: its input is too small to measure.
  """
  if seconds_big <= seconds_small:
    return float("nan")
  return (events_big - events_small) / (seconds_big - seconds_small)


def peak_memory_mib() -> float:
  """Peak resident memory of this process plus that of its largest child."""
  return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss +
          resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024

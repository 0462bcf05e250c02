"""Decision statistics and router state per experiment, from per-arm totals."""

from __future__ import annotations

import apache_beam as beam
from apache_beam import pvalue

from transforms.decisions import arm_table
from transforms.attribution import rewards

ROUTER_STATE = "router_state"


class _ExperimentRows(beam.DoFn):

  def __init__(self, config: arm_table.StatisticsConfig):
    self._config = config

  def process(self, element, window=beam.DoFn.WindowParam):
    experiment_id, arms = element
    bounds = None
    if isinstance(window, beam.window.IntervalWindow):
      bounds = (float(window.start), float(window.end))
    rows, state = arm_table.experiment_rows(experiment_id, dict(arms),
                                            self._config, bounds)
    yield from rows
    yield pvalue.TaggedOutput(ROUTER_STATE, state)


class _ArmsOfExperiment(beam.CombineFn):
  """(arm, ArmAccumulator) pairs -> {arm: merged ArmAccumulator}.

  A combine rather than a GroupByKey: behind accumulating panes a GroupByKey
  would hold every earlier pane of an arm as well as the latest one.
  """

  def create_accumulator(self):
    return {}

  def add_input(self, arms, arm_and_partial):
    arm, partial = arm_and_partial
    arms[arm] = arms.get(arm, rewards.ArmAccumulator()).merge(partial)
    return arms

  def merge_accumulators(self, accumulators):
    merged = {}
    for arms in accumulators:
      for arm_and_partial in arms.items():
        merged = self.add_input(merged, arm_and_partial)
    return merged

  def extract_output(self, arms):
    return arms


class ExperimentStatistics(beam.PTransform):
  """((experiment_id, arm), ArmAccumulator) -> arm_stats rows; router_state rows tagged.

  Partials of one arm are merged, so the input may be per-request
  contributions as well as per-arm totals. In a fixed event-time window the
  rows carry the window's bounds; in the global window, the span of the
  experiment's predictions.
  """

  def __init__(self, config: arm_table.StatisticsConfig):
    super().__init__()
    self._config = config

  def expand(self, arm_totals):
    return (arm_totals
            | "ByExperiment" >> beam.MapTuple(
                lambda key, acc: (key[0], (key[1], acc)))
            | "CombineArms" >> beam.CombinePerKey(_ArmsOfExperiment())
            | "Statistics" >> beam.ParDo(_ExperimentRows(
                self._config)).with_outputs(ROUTER_STATE, main="arm_stats"))

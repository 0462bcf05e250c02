"""Decision statistics and router state per experiment, from per-arm totals."""

from __future__ import annotations

import apache_beam as beam
from apache_beam import pvalue

from transforms import arm_table

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


class ExperimentStatistics(beam.PTransform):
  """((experiment_id, arm), ArmAccumulator) -> arm_stats rows; router_state rows tagged.

  In a fixed event-time window the rows carry the window's bounds; in the
  global window, the span of the experiment's predictions.
  """

  def __init__(self, config: arm_table.StatisticsConfig):
    super().__init__()
    self._config = config

  def expand(self, arm_totals):
    return (arm_totals
            | "ByExperiment" >> beam.MapTuple(
                lambda key, acc: (key[0], (key[1], acc)))
            | "GroupArms" >> beam.GroupByKey()
            | "Statistics" >> beam.ParDo(_ExperimentRows(
                self._config)).with_outputs(ROUTER_STATE, main="arm_stats"))

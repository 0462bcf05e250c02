"""Attribute feedback to predictions as they stream in: state and timers per request_id.

The records of one request wait in state until its attribution window has
closed in event time and every record of it that is at most `lateness_s`
behind the watermark has arrived (prediction time + attribution window +
lateness). Then the request is decided once, with the batch semantics
(`rewards.attribute_request`), and its contribution to its arm is emitted at
the prediction's event time, so that event-time windows downstream group it
with the other predictions of its window. One event-time timer per request
drives its life (W: attribution window, L: lateness):

  a prediction ───► timer at its ts + W + L
                      fires: decide, emit the contribution; timer += L
                      fires: clear the state
  feedback first ─► timer at the latest feedback ts + W + L: its prediction
                    may be stamped up to W later (clock skew) and arrive up to
                    L late; a prediction coming meanwhile sets it as above
                      fires: orphan_feedback dead letters; clear the state

A request's state is gone `lateness_s` after it is decided. During that
tombstone, straggling feedback counts as late (or shadow) and straggling
prediction logs as duplicates instead of starting a new request.
"""

from __future__ import annotations

import typing

import apache_beam as beam
from apache_beam import coders
from apache_beam import pvalue
from apache_beam.metrics import Metrics
from apache_beam.transforms import userstate

from transforms.logs import contract
from transforms.logs import messages
from transforms.logs import quality
from transforms.attribution import rewards

METRICS_NAMESPACE = "streaming_attribution"
# Tagged output of decided requests as joined-request rows (with signals or
# extras): {experiment_id, arm, ts, <extras>, <feedback extras>, <signal
# columns>}.
REQUESTS = "requests"
REQUESTS_OPENED = "requests_opened"
REQUESTS_CLEARED = "requests_cleared"


def _count(record_type: str, metric: str, count: int = 1):
  return pvalue.TaggedOutput(quality.COUNTS, ((record_type, metric), count))


class _AttributeRequestFn(beam.DoFn):
  """(request_id, (record_type, record)) -> ((experiment_id, arm), ArmAccumulator)
  once per served request; tagged orphan dead letters and counts."""

  # (ts, experiment_id, arm, shadow) of the earliest prediction log.
  PREDICTION = userstate.ReadModifyWriteStateSpec(
      "prediction", coders.TupleCoder((coders.FloatCoder(),
                                       coders.StrUtf8Coder(),
                                       coders.StrUtf8Coder(),
                                       coders.BooleanCoder())))
  # (ts, reward, raw, signal) of each feedback record, until the request is
  # decided; signal is the feedback's `metric` ("reward" when absent).
  FEEDBACK = userstate.BagStateSpec(
      "feedback", coders.TupleCoder((coders.FloatCoder(), coders.FloatCoder(),
                                     coders.StrUtf8Coder(),
                                     coders.StrUtf8Coder())))
  # The kept prediction's optional fields, when asked for.
  EXTRAS = userstate.ReadModifyWriteStateSpec("extras", coders.PickleCoder())
  # (ts, {name: value}) of each feedback record's optional fields, when asked
  # for, until the request is decided.
  FEEDBACK_EXTRAS = userstate.BagStateSpec("feedback_extras",
                                           coders.PickleCoder())
  DECIDED = userstate.ReadModifyWriteStateSpec("decided",
                                               coders.BooleanCoder())
  DEADLINE = userstate.TimerSpec("deadline", userstate.TimeDomain.WATERMARK)

  def __init__(self, config: rewards.AttributionConfig, lateness_s: float,
               feedback_source: str, signals=(), extras=(),
               feedback_extras=()):
    self._config = config
    self._lateness_s = lateness_s
    self._feedback_source = feedback_source
    self._signals = tuple(signals)
    self._extras = tuple(extras)
    self._feedback_extras = tuple(feedback_extras)
    self._opened = Metrics.counter(METRICS_NAMESPACE, REQUESTS_OPENED)
    self._cleared = Metrics.counter(METRICS_NAMESPACE, REQUESTS_CLEARED)

  def process(self, element, prediction=beam.DoFn.StateParam(PREDICTION),
              feedback=beam.DoFn.StateParam(FEEDBACK),
              decided=beam.DoFn.StateParam(DECIDED),
              extras=beam.DoFn.StateParam(EXTRAS),
              feedback_extras=beam.DoFn.StateParam(FEEDBACK_EXTRAS),
              deadline=beam.DoFn.TimerParam(DEADLINE)):
    _, (record_type, record) = element
    kept = prediction.read()
    pending = list(feedback.read())
    if kept is None and not pending:
      self._opened.inc()
    if record_type == contract.PREDICTION:
      yield from self._on_prediction(record, kept, prediction, decided,
                                     extras, deadline)
    else:
      yield from self._on_feedback(record, kept, pending, feedback, decided,
                                   deadline)
      if self._feedback_extras and not decided.read():
        feedback_extras.add((record["ts"], {
            name: record.get(name) for name in self._feedback_extras}))

  def _on_prediction(self, record, kept, prediction, decided, extras,
                     deadline):
    if kept is not None:
      yield _count(contract.PREDICTION, rewards.DUPLICATE)
      if decided.read() or kept[0] <= record["ts"]:
        return
    # The earliest prediction log of a request is the one kept, as in batch.
    prediction.write((record["ts"], record["experiment_id"], record["arm"],
                      record["shadow"]))
    if self._extras:
      extras.write({name: record.get(name) for name in self._extras})
    deadline.set(self._decision_time(record["ts"]))

  def _on_feedback(self, record, kept, pending, feedback, decided, deadline):
    if decided.read():
      yield _count(contract.FEEDBACK,
                   rewards.SHADOW if kept[3] else rewards.LATE)
      return
    feedback.add((record["ts"], record["reward"], record["raw"],
                  record.get("metric") or rewards.DEFAULT_SIGNAL))
    if kept is None:
      # Its prediction may still come: stamped up to an attribution window
      # after the latest feedback, and up to the lateness behind the watermark.
      latest = max([f[0] for f in pending] + [record["ts"]])
      deadline.set(self._decision_time(latest))

  def _decision_time(self, ts: float) -> float:
    return ts + self._config.attribution_window_s + self._lateness_s

  @userstate.on_timer(DEADLINE)
  def on_deadline(self, prediction=beam.DoFn.StateParam(PREDICTION),
                  feedback=beam.DoFn.StateParam(FEEDBACK),
                  decided=beam.DoFn.StateParam(DECIDED),
                  extras=beam.DoFn.StateParam(EXTRAS),
                  feedback_extras=beam.DoFn.StateParam(FEEDBACK_EXTRAS),
                  deadline=beam.DoFn.TimerParam(DEADLINE)):
    kept = prediction.read()
    if kept is None:
      yield from self._orphans(feedback.read())
      feedback.clear()
      feedback_extras.clear()
      self._cleared.inc()
    elif not decided.read():
      yield from self._decide(kept, feedback.read(), extras.read(),
                              feedback_extras.read())
      feedback.clear()
      extras.clear()
      feedback_extras.clear()
      decided.write(True)
      deadline.set(self._decision_time(kept[0]) + self._lateness_s)
    else:
      prediction.clear()
      decided.clear()
      self._cleared.inc()

  def _latest_feedback_extras(self, prediction_ts, feedback_extras) -> dict:
    """Per feedback extra, its latest value among the feedback in the
    attribution window (the counted feedback), as the batch join's truth."""
    in_window = sorted(
        (f for f in feedback_extras
         if f[0] - prediction_ts <= self._config.attribution_window_s),
        key=lambda f: f[0])
    latest = dict.fromkeys(self._feedback_extras)
    for _, values in in_window:
      latest.update({name: value for name, value in values.items()
                     if value is not None})
    return latest

  def _decide(self, kept, pending, extras, feedback_extras):
    ts, experiment_id, arm, shadow = kept
    outcome, values = rewards.attribute_request_signals(
        ts, shadow, [(f_ts, reward, signal)
                     for f_ts, reward, _, signal in pending],
        self._config, self._signals)
    for (record_type, metric), count in outcome.counts.items():
      yield _count(record_type, metric, count)
    if outcome.contribution is not None:
      yield beam.window.TimestampedValue(
          ((experiment_id, arm), outcome.contribution), ts)
      if self._signals or self._extras or self._feedback_extras:
        row = {"experiment_id": experiment_id, "arm": arm, "ts": ts,
               **(extras or {})}
        if self._feedback_extras:
          row.update(self._latest_feedback_extras(ts, feedback_extras))
        for signal, how in self._signals:
          row[rewards.signal_column(signal, how)] = values.get((signal, how))
        yield pvalue.TaggedOutput(REQUESTS,
                                  beam.window.TimestampedValue(row, ts))

  def _orphans(self, pending):
    rejected = contract.Rejected(contract.ORPHAN_FEEDBACK, "request_id")
    for _, _, raw, _ in pending:
      yield pvalue.TaggedOutput(quality.DEAD_LETTER, quality.dead_letter(
          contract.FEEDBACK, self._feedback_source, raw, rejected))
      yield _count(contract.FEEDBACK,
                   quality.dead_letter_metric(contract.ORPHAN_FEEDBACK))


class AttributeRequests(beam.PTransform):
  """{"predictions", "feedback"} records -> ((experiment_id, arm), ArmAccumulator)
  per served request, at the prediction's event time.

  `lateness_s`: how late (behind the watermark) a record may arrive and still
  join its request. Tagged outputs: `quality.DEAD_LETTER` (orphan feedback,
  source_file = `feedback_source`), `quality.COUNTS`, and with `signals`
  ((signal, reduce), ...), prediction `extras` or `feedback_extras`,
  `REQUESTS`: one joined row per served request (feedback deduplicated per
  signal, as in batch; a feedback extra such as `truth` is the latest value
  among its counted feedback, as in batch).
  """

  def __init__(self, config: rewards.AttributionConfig, lateness_s: float,
               feedback_source: str, signals=(), extras=(),
               feedback_extras=()):
    super().__init__()
    self._config = config
    self._lateness_s = lateness_s
    self._feedback_source = feedback_source
    self._signals = tuple(signals)
    self._extras = tuple(extras)
    self._feedback_extras = tuple(feedback_extras)

  def expand(self, records):
    keyed = [
        records[name] | f"Key_{name}" >> beam.Map(
            lambda record, record_type: (record["request_id"],
                                         (record_type, record)),
            record_type).with_output_types(typing.Tuple[str, typing.Any])
        for name, record_type in messages.SOURCES.items()
    ]
    return (keyed
            | "FlattenRecords" >> beam.Flatten()
            | "AttributePerRequest" >> beam.ParDo(_AttributeRequestFn(
                self._config, self._lateness_s, self._feedback_source,
                self._signals, self._extras,
                self._feedback_extras)).with_outputs(
                    quality.DEAD_LETTER, quality.COUNTS, REQUESTS,
                    main="contributions"))

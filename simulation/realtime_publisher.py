"""Publish serving logs to Pub/Sub in real time: each record when its event time comes.

`timeline` puts the log lines of a router (e.g. from `simulation.simulate`) in
event-time order; `publish` sends each one at that moment with its event time
in the `ts` attribute (epoch milliseconds), which the pipeline's Pub/Sub
source reads as the message timestamp (`--timestamp_attribute ts`).
"""

from __future__ import annotations

import collections
import threading
import time
from typing import Mapping, NamedTuple

from transforms.logs import contract
from transforms.logs import messages

TIMESTAMP_ATTRIBUTE = "ts"


class Timed(NamedTuple):
  """A log line of a source ("predictions" or "feedback") at its event time."""
  ts: float
  source: str
  line: str


def timeline(lines: Mapping[str, list], start: float) -> list[Timed]:
  """{source: lines} -> every line at its event time, in time order.

  A line without a valid timestamp (it will be dead-lettered) goes at `start`.
  """
  timed = []
  for source, source_lines in lines.items():
    parse = contract.PARSERS[messages.SOURCES[source]]
    for line in source_lines:
      parsed = parse(line)
      ts = start if isinstance(parsed, contract.Rejected) else parsed["ts"]
      timed.append(Timed(ts, source, line))
  return sorted(timed, key=lambda t: t.ts)


def publish(publisher, topics: Mapping[str, str], records,
            stop: threading.Event) -> dict:
  """Publishes each record when the clock reaches its event time, until
  `stop` is set; returns {source: records published}."""
  published = collections.Counter()
  futures = []
  for record in records:
    if stop.wait(max(0.0, record.ts - time.time())):
      break
    futures.append(publisher.publish(
        topics[record.source], record.line.encode("utf-8"),
        **{TIMESTAMP_ATTRIBUTE: str(int(record.ts * 1000))}))
    published[record.source] += 1
  for future in futures:
    future.result()
  return dict(published)

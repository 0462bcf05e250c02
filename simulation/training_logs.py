"""Serving logs with features, users and free text, for the training loop.

Pure (numpy). Each request carries the demo's 16 click features, a user, the
arm that served it with its propensity, and sometimes a chat-like request
text holding personal data (for the de-identification); a click (from
`click_data.click_probability`) sends feedback with reward 1.
"""

from __future__ import annotations

import datetime
import json

import numpy as np

from simulation import click_data

EXPERIMENT_ID = "homepage-ranker"
START = datetime.datetime(2026, 11, 21, tzinfo=datetime.timezone.utc).timestamp()
TEXTS = (
    "show me running shoes",
    "my email is {email}, send the receipt",
    "call me back at 010-{a:04d}-{b:04d}",
    "refund to card 4111 1111 1111 1111 please",
    "배송 언제 오나요?",
    "",
)


def generate(requests: int, seed: int = 0, users: int = 2000,
             arms=("control", "candidate"), start: float = START):
  """(prediction JSON lines, feedback JSON lines) of one day."""
  rng = np.random.default_rng(seed)
  features, clicks = click_data.generate_clicks(requests, seed)
  request_ids = click_data.request_ids(requests, f"req{seed}")
  times = start + np.sort(rng.uniform(0, 86_400, requests))
  served = rng.integers(0, len(arms), requests)
  user = rng.integers(0, users, requests)
  text = rng.integers(0, len(TEXTS), requests)
  predictions, feedback = [], []
  for i in range(requests):
    record = {"request_id": request_ids[i], "timestamp": round(times[i], 3),
              "experiment_id": EXPERIMENT_ID, "arm": arms[served[i]],
              "propensity": 1.0 / len(arms), "user_id": f"user-{user[i]}",
              "features": [round(float(v), 5) for v in features[i]]}
    if TEXTS[text[i]]:
      record["request"] = {"text": TEXTS[text[i]].format(
          email=f"user{user[i]}@example.com", a=int(user[i]), b=i % 10_000)}
    predictions.append(json.dumps(record, ensure_ascii=False))
    if clicks[i]:
      feedback.append(json.dumps({
          "request_id": request_ids[i], "reward": 1.0,
          "timestamp": round(times[i] + rng.exponential(300.0), 3)}))
  return predictions, feedback


def write(path: str, lines) -> None:
  with open(path, "w", encoding="utf-8") as f:
    f.writelines(line + "\n" for line in lines)

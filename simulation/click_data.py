"""A synthetic click data set: 16 float features and a binary click label.

Pure (numpy). The click probability is a logistic function of a fixed linear
term plus one feature interaction, so a small MLP can beat a logistic
regression on it: the demo's shadow comparison then has something to find.
"""

from __future__ import annotations

import numpy as np

NUM_FEATURES = 16
# The click model itself does not depend on the sample's seed.
_WEIGHTS = np.random.default_rng(20240101).normal(scale=0.6, size=NUM_FEATURES)
_INTERACTION = 1.5
_BIAS = -1.0


def click_probability(features: np.ndarray) -> np.ndarray:
  """The true click probability of each row of a [rows, 16] matrix."""
  logit = (features @ _WEIGHTS + _INTERACTION * features[:, 0] * features[:, 1]
           + _BIAS)
  return 1.0 / (1.0 + np.exp(-logit))


def generate_clicks(rows: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """(features: float32 [rows, 16] standard normal, clicks: int8 [rows] 0/1)."""
  rng = np.random.default_rng(seed)
  features = rng.standard_normal((rows, NUM_FEATURES), dtype=np.float32)
  clicks = (rng.random(rows) < click_probability(features)).astype(np.int8)
  return features, clicks


def request_ids(rows: int, prefix: str = "req") -> list[str]:
  return [f"{prefix}-{i:08d}" for i in range(rows)]

"""Train two small click models and write sample features to score with them.

  DIR/logreg.keras     logistic regression (one sigmoid unit)
  DIR/mlp.keras        two dense layers of 64 units, then a sigmoid
  DIR/features.parquet and DIR/features.jsonl: held-out rows, request_id and
                       the list column `features` (the JSONL also carries a
                       few malformed rows, for the dead-letter table)

Seeded and quick (seconds on a laptop CPU); no download:
  python -m pipelines.train_demo_models --out demo/
"""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from simulation import click_data
from transforms import options as opts

MALFORMED_JSON_LINES = (
    '{"request_id": "bad-json", "features": [0.1, ',
    '{"features": [' + ", ".join(["0.0"] * click_data.NUM_FEATURES) + ']}',
    '{"request_id": "short", "features": [0.1, 0.2]}',
    '{"request_id": "text", "features": ["a"' + ", 0.0" * (
        click_data.NUM_FEATURES - 1) + ']}',
)


def build_models(seed: int):
  import keras  # TensorFlow loads in seconds: only when training.
  keras.utils.set_random_seed(seed)
  logreg = keras.Sequential([
      keras.Input((click_data.NUM_FEATURES,)),
      keras.layers.Dense(1, activation="sigmoid"),
  ], name="logreg")
  mlp = keras.Sequential([
      keras.Input((click_data.NUM_FEATURES,)),
      keras.layers.Dense(64, activation="relu"),
      keras.layers.Dense(64, activation="relu"),
      keras.layers.Dense(1, activation="sigmoid"),
  ], name="mlp")
  return {"logreg": logreg, "mlp": mlp}


def accuracy(probabilities: np.ndarray, clicks: np.ndarray) -> float:
  return float(((probabilities[:, 0] > 0.5) == clicks).mean())


def write_features(out: str, features: np.ndarray) -> None:
  request_ids = click_data.request_ids(len(features))
  values = pa.array(features.reshape(-1))
  table = pa.table({
      "request_id": request_ids,
      "features": pa.FixedSizeListArray.from_arrays(values,
                                                    features.shape[1]),
  })
  pq.write_table(table, os.path.join(out, "features.parquet"))
  with open(os.path.join(out, "features.jsonl"), "w") as f:
    for request_id, row in zip(request_ids, features.tolist()):
      f.write(json.dumps({"request_id": request_id, "features": row}) + "\n")
    f.writelines(line + "\n" for line in MALFORMED_JSON_LINES)


def main(argv=None) -> None:
  parser = opts.OneLineParser(prog="pipelines.train_demo_models",
                              description=__doc__.splitlines()[0],
                              formatter_class=opts.HelpFormatter)
  parser.add_argument("--out", required=True, help="Output directory.")
  parser.add_argument("--train_rows", type=int, default=50_000,
                      help="Generated rows the models are trained on.")
  parser.add_argument("--sample_rows", type=int, default=10_000,
                      help="Held-out rows written as sample features.")
  parser.add_argument("--epochs", type=int, default=5,
                      help="Training epochs.")
  parser.add_argument("--seed", type=int, default=0,
                      help="Seed of the generated data and the models.")
  args = parser.parse_args(argv)

  os.makedirs(args.out, exist_ok=True)
  train_x, train_y = click_data.generate_clicks(args.train_rows, args.seed)
  test_x, test_y = click_data.generate_clicks(args.sample_rows, args.seed + 1)
  for name, model in build_models(args.seed).items():
    model.compile(optimizer="adam", loss="binary_crossentropy")
    model.fit(train_x, train_y, batch_size=256, epochs=args.epochs, verbose=0)
    path = os.path.join(args.out, f"{name}.keras")
    model.save(path)
    print(f"{path}: held-out accuracy "
          f"{accuracy(model.predict_on_batch(test_x), test_y):.3f}")
  write_features(args.out, test_x)
  print(f"{args.out}/features.parquet, features.jsonl: {args.sample_rows} "
        f"rows (the JSONL with {len(MALFORMED_JSON_LINES)} malformed more)")


if __name__ == "__main__":
  main()

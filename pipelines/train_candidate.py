"""Train a candidate model on a training export: plain TensorFlow, no Beam.

  EXPORT/train-*.tfrecord.gz ─tf.data (parallel reads, schema.json)─ Keras fit ─┐
  EXPORT/eval-*.tfrecord.gz ──────────────────────────────────────── evaluate ──┴─ OUT/candidate.keras,
                                                      OUT/model_card.json, (--registry mlflow) NAME@ALIAS

The label is `reward > 0` (a click); the model is one of the demo's click
models (logreg, mlp). The model card records the data window, the rows of
each split and the eval metrics beside those of the majority-class baseline.
With --registry mlflow the run (parameters, metrics, model card, .keras) is
logged to an embedded MLflow store (SQLite under --registry_dir, no server)
and registered as --model_name with the alias --alias; batch_inference then
loads `models:/NAME@ALIAS` (set MLFLOW_TRACKING_URI to the same store).

  python -m pipelines.train_candidate --export out/export/dt=2026-11-21/ \\
      --out out/candidate/ --registry mlflow --registry_dir out/registry/
"""

from __future__ import annotations

import argparse
import datetime
import json
import os

import numpy as np

from transforms.export import examples

REGISTRIES = ("none", "mlflow")
MODEL_FILE = "candidate.keras"
CARD_FILE = "model_card.json"


def registry_uri(registry_dir: str) -> str:
  """The embedded MLflow store of a registry directory (SQLite)."""
  return f"sqlite:///{os.path.abspath(os.path.join(registry_dir, 'mlflow.db'))}"


def dataset(export: str, split: str, schema, batch_size: int,
            shuffle_seed: int | None = None):
  """(features, label) batches of one split, read in parallel."""
  import tensorflow as tf
  files = sorted(path for directory in export.split(",") for path in
                 tf.io.gfile.glob(f"{directory.rstrip('/')}/{split}-*.tfrecord.gz"))
  if not files:
    raise ValueError(f"no {split} files under {export}")
  records = tf.data.TFRecordDataset(files, compression_type="GZIP",
                                    num_parallel_reads=tf.data.AUTOTUNE)
  if shuffle_seed is not None:
    records = records.shuffle(50_000, seed=shuffle_seed)
  spec = {name: value for name, value in examples.parse_spec(schema).items()
          if name in ("features", "reward", "timestamp_us")}
  return (records.batch(batch_size)
          .map(lambda batch: tf.io.parse_example(batch, spec),
               num_parallel_calls=tf.data.AUTOTUNE)
          .map(lambda parsed: (parsed["features"], tf.cast(
              parsed["reward"] > 0, tf.float32), parsed["timestamp_us"]),
               num_parallel_calls=tf.data.AUTOTUNE)
          .prefetch(tf.data.AUTOTUNE))


def _collect(batches):
  features, labels, times = [], [], []
  for x, y, t in batches:
    features.append(x.numpy())
    labels.append(y.numpy())
    times.append(t.numpy())
  return np.concatenate(features), np.concatenate(labels), np.concatenate(times)


def build_model(architecture: str, width: int, seed: int):
  import keras
  keras.utils.set_random_seed(seed)
  hidden = [keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(64, activation="relu")] if (
                architecture == "mlp") else []
  model = keras.Sequential([keras.Input((width,)), *hidden,
                            keras.layers.Dense(1, activation="sigmoid")],
                           name=architecture)
  model.compile(optimizer="adam", loss="binary_crossentropy")
  return model


def metrics(probabilities: np.ndarray, labels: np.ndarray,
            train_positive_rate: float) -> dict:
  """Accuracy, log loss and AUC of the model, and of the majority class
  (accuracy) and the training base rate (log loss) as baselines."""
  majority = float(train_positive_rate >= 0.5)
  return {
      "accuracy": float(((probabilities >= 0.5) == labels).mean()),
      "log_loss": log_loss(labels, probabilities),
      "auc": auc(labels, probabilities),
      "baseline_accuracy": float((labels == majority).mean()),
      "baseline_log_loss": log_loss(labels, np.full_like(
          probabilities, train_positive_rate)),
  }


def log_loss(labels: np.ndarray, probabilities: np.ndarray) -> float:
  p = np.clip(probabilities.astype(np.float64), 1e-7, 1 - 1e-7)
  return float(-np.mean(labels * np.log(p) + (1 - labels) * np.log1p(-p)))


def auc(labels: np.ndarray, scores: np.ndarray) -> float | None:
  """Area under the ROC curve (Mann-Whitney, ties counted half); None with
  one class only."""
  from scipy import stats
  positives = labels == 1
  n_pos, n_neg = int(positives.sum()), int((~positives).sum())
  if not n_pos or not n_neg:
    return None
  ranks = stats.rankdata(scores)
  return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2) /
               (n_pos * n_neg))


def _window(times: np.ndarray) -> dict:
  iso = lambda us: datetime.datetime.fromtimestamp(
      int(us) / 1e6, datetime.timezone.utc).isoformat()
  return {"start": iso(times.min()), "end": iso(times.max())} if len(
      times) else {}


def read_schema(export: str) -> list:
  """The features of the exports (comma-separated directories), which must
  all declare the same."""
  import tensorflow as tf
  schemas = []
  for directory in export.split(","):
    with tf.io.gfile.GFile(f"{directory.rstrip('/')}/schema.json") as f:
      schemas.append(examples.load_schema(f.read()))
  if any(schema != schemas[0] for schema in schemas):
    raise ValueError(f"the exports {export} declare different features")
  return schemas[0]


def train(args) -> dict:
  schema = read_schema(args.export)
  width = next(f.length for f in schema if f.name == "features")
  train_x, train_y, train_t = _collect(dataset(args.export, "train", schema,
                                               args.batch_size))
  eval_x, eval_y, eval_t = _collect(dataset(args.export, "eval", schema,
                                            args.batch_size))
  model = build_model(args.architecture, width, args.seed)
  model.fit(dataset(args.export, "train", schema, args.batch_size,
                    shuffle_seed=args.seed).map(lambda x, y, t: (x, y)),
            epochs=args.epochs, shuffle=False, verbose=0)
  probabilities = model.predict(eval_x, batch_size=8192, verbose=0)[:, 0]
  os.makedirs(args.out, exist_ok=True)
  model_path = os.path.join(args.out, MODEL_FILE)
  model.save(model_path)
  card = {
      "model": args.model_name,
      "architecture": args.architecture,
      "export": args.export,
      "features": width,
      "label": "reward > 0",
      "data_window": _window(np.concatenate([train_t, eval_t])),
      "rows": {"train": int(len(train_y)), "eval": int(len(eval_y))},
      "train_positive_rate": float(train_y.mean()),
      "eval": metrics(probabilities, eval_y, float(train_y.mean())),
      "epochs": args.epochs,
      "seed": args.seed,
  }
  with open(os.path.join(args.out, CARD_FILE), "w") as f:
    json.dump(card, f, indent=2, sort_keys=True)
  if args.registry == "mlflow":
    card["registry"] = register(args, card, model_path)
  return card


def register(args, card: dict, model_path: str) -> dict:
  """Log the run to the embedded MLflow store and register the model."""
  import mlflow  # The [mlflow] extra.
  os.makedirs(args.registry_dir, exist_ok=True)
  uri = registry_uri(args.registry_dir)
  mlflow.set_tracking_uri(uri)
  mlflow.set_registry_uri(uri)
  client = mlflow.MlflowClient()
  experiment = client.get_experiment_by_name(args.model_name)
  experiment_id = experiment.experiment_id if experiment else (
      client.create_experiment(args.model_name, artifact_location=os.path.abspath(
          os.path.join(args.registry_dir, "artifacts"))))
  with mlflow.start_run(experiment_id=experiment_id) as run:
    mlflow.log_params({"architecture": args.architecture,
                       "epochs": args.epochs, "export": args.export})
    mlflow.log_metrics({name: value for name, value in card["eval"].items()
                        if value is not None})
    mlflow.log_artifact(model_path, artifact_path="model")
    mlflow.log_artifact(os.path.join(args.out, CARD_FILE),
                        artifact_path="model")
    source = mlflow.get_artifact_uri("model")
  if not client.search_registered_models(f"name = '{args.model_name}'"):
    client.create_registered_model(args.model_name)
  version = client.create_model_version(args.model_name, source=source,
                                        run_id=run.info.run_id)
  client.set_registered_model_alias(args.model_name, args.alias,
                                    version.version)
  return {"uri": uri, "model": f"models:/{args.model_name}@{args.alias}",
          "version": int(version.version), "run_id": run.info.run_id}


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--export", required=True,
                      help="Directory of a training export (schema.json, "
                      "train-*, eval-*), local or gs://; several days: "
                      "comma-separated.")
  parser.add_argument("--out", required=True,
                      help="Directory for candidate.keras and model_card.json.")
  parser.add_argument("--architecture", default="mlp", choices=("logreg", "mlp"),
                      help="One of the demo's click models.")
  parser.add_argument("--epochs", type=int, default=5)
  parser.add_argument("--batch_size", type=int, default=256)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--registry", default="none", choices=REGISTRIES,
                      help="mlflow: log the run and register the model.")
  parser.add_argument("--registry_dir", default="registry",
                      help="Directory of the embedded MLflow store "
                      "(mlflow.db, artifacts/).")
  parser.add_argument("--model_name", default="ranker",
                      help="Registered model name.")
  parser.add_argument("--alias", default="candidate",
                      help="Alias the new version gets in the registry.")
  card = train(parser.parse_args(argv))
  print(json.dumps(card["eval"], indent=2))
  return card


if __name__ == "__main__":
  main()

"""train_candidate reads an export, beats the majority class, and registers the model."""

import json
import os

import numpy as np
import pytest

from pipelines import train_candidate
from pipelines import training_export
from simulation import click_data
from simulation import training_logs
from transforms.scoring import inference

KEY_ENV = "TRAIN_CANDIDATE_TEST_KEY"


@pytest.fixture(name="export_dir", scope="module")
def _export_dir(tmp_path_factory):
  tmp_path = tmp_path_factory.mktemp("train")
  predictions, feedback = training_logs.generate(12_000, seed=3)
  training_logs.write(str(tmp_path / "p.jsonl"), predictions)
  training_logs.write(str(tmp_path / "f.jsonl"), feedback)
  os.environ[KEY_ENV] = "train-test-key"
  prefix = str(tmp_path / "export")
  training_export.run([
      "--runner", "FnApiRunner", "--predictions", str(tmp_path / "p.jsonl"),
      "--feedback", str(tmp_path / "f.jsonl"), "--feature_count",
      str(click_data.NUM_FEATURES), "--pseudonymize_key_env", KEY_ENV,
      "--output_prefix", prefix, "--output_dir", str(tmp_path / "tables"),
      "--text_fields", "request.text"])
  return tmp_path, prefix


def test_candidate_beats_the_majority_class_and_is_registered(
    export_dir, monkeypatch):
  tmp_path, prefix = export_dir
  out = str(tmp_path / "candidate")
  registry = str(tmp_path / "registry")
  card = train_candidate.main([
      "--export", prefix, "--out", out, "--epochs", "4", "--registry",
      "mlflow", "--registry_dir", registry])
  metrics = card["eval"]
  assert card["rows"]["train"] + card["rows"]["eval"] == 12_000
  assert 0.1 < card["rows"]["eval"] / 12_000 < 0.3
  assert metrics["accuracy"] > metrics["baseline_accuracy"] + 0.02
  assert metrics["log_loss"] < metrics["baseline_log_loss"]
  with open(os.path.join(out, train_candidate.CARD_FILE)) as f:
    assert json.load(f)["data_window"]["start"].startswith("2026-11-21")

  monkeypatch.setenv("MLFLOW_TRACKING_URI",
                     train_candidate.registry_uri(registry))
  path = inference.resolve_model_path("models:/ranker@candidate")
  import keras
  registered = keras.models.load_model(path)
  saved = keras.models.load_model(os.path.join(out,
                                               train_candidate.MODEL_FILE))
  x = np.random.default_rng(0).normal(size=(8, click_data.NUM_FEATURES))
  np.testing.assert_allclose(registered.predict(x, verbose=0),
                             saved.predict(x, verbose=0))
  assert inference.saved_input_width(path) == click_data.NUM_FEATURES


def test_metrics_agree_with_scikit_learn():
  from sklearn import metrics as sk
  rng = np.random.default_rng(1)
  labels = (rng.random(500) < 0.3).astype(np.float32)
  scores = np.round(np.clip(labels * 0.3 + rng.random(500) * 0.7, 0, 1), 2)
  computed = train_candidate.metrics(scores, labels, 0.3)
  assert computed["auc"] == pytest.approx(sk.roc_auc_score(labels, scores))
  assert computed["log_loss"] == pytest.approx(sk.log_loss(labels, scores),
                                               rel=1e-6)
  assert computed["baseline_accuracy"] == pytest.approx(1 - labels.mean())
  assert train_candidate.auc(np.ones(3), np.arange(3.0)) is None

"""The batch inference pipeline with tiny Keras models, on the FnApiRunner.

Scores, ensembles and shadow comparisons equal direct Keras calls; bad rows
and batches that fail to score are dead-lettered; every row read is either
scored or dead-lettered; the models load once per process.
"""

import json

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that
from apache_beam.testing.util import equal_to
import keras
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines import batch_inference
from pipelines import train_demo_models
from transforms.io import bigquery
from simulation import click_data
from transforms.logs import contract
from transforms.scoring import features
from transforms.scoring import inference
from transforms.io import json_lines
from transforms.scoring import predictions

WIDTH = 4
ROWS = 30


def pipeline(*options):
  # The default DirectRunner would download the Prism runner.
  return TestPipeline(runner="FnApiRunner", options=PipelineOptions(options))


def dense_model(seed, hidden=(), outputs=1, activation="sigmoid"):
  keras.utils.set_random_seed(seed)
  layers = [keras.Input((WIDTH,))]
  layers += [keras.layers.Dense(units, activation="relu") for units in hidden]
  layers.append(keras.layers.Dense(outputs, activation=activation))
  return keras.Sequential(layers)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
  """name -> .keras path of tiny models taking WIDTH features."""
  directory = tmp_path_factory.mktemp("models")
  built = {"lin": dense_model(1), "mlp": dense_model(2, hidden=(8,)),
           "mlp2": dense_model(3, hidden=(8, 8)),
           "softmax": dense_model(4, outputs=3, activation="softmax")}
  paths = {}
  for name, model in built.items():
    paths[name] = str(directory / f"{name}.keras")
    model.save(paths[name])
  return paths


def keras_outputs(paths, names, x):
  """Each model's output, by a direct Keras call on the saved model."""
  return {name: np.asarray(keras.models.load_model(paths[name])(x))
          for name in names}


def feature_matrix(seed, rows=ROWS):
  return np.random.default_rng(seed).normal(
      scale=2.0, size=(rows, WIDTH)).astype(np.float32)


def write_parquet(path, request_ids, lists):
  pq.write_table(pa.table({
      "request_id": pa.array(request_ids, pa.string()),
      "features": pa.array(lists, pa.list_(pa.float32())),
  }), path)
  return str(path)


def write_jsonl(path, lines):
  path.write_text("".join(line + "\n" for line in lines))
  return str(path)


def json_row(request_id, values):
  return json.dumps({"request_id": request_id, "features": values})


def batch_inference_transform(file_pattern, paths, scoring, batch_size=7,
                              columns=()):
  read = inference.ReadFeatures(features.FeatureSpec(WIDTH, columns),
                                batch_size, file_pattern=file_pattern)
  return batch_inference.BatchInference(
      read, inference.KerasModelsHandler(
          {name: paths[name] for name in scoring.models}), scoring)


def prediction_rows(result):
  """The predictions of a BatchInference result, as row dicts."""
  return result["predictions"] | "PredictionRows" >> beam.FlatMap(
      json_lines.RowBatch.rows)


def by_key(rows):
  return {(r["request_id"], r["model"]): r for r in rows}


def check_predictions(expected: dict):
  """A matcher: rows carry exactly the expected (request_id, model) scores."""

  def check(rows):
    got = by_key(rows)
    assert sorted(got) == sorted(expected)
    keys = sorted(expected)
    np.testing.assert_allclose([got[k]["prediction"] for k in keys],
                               [expected[k] for k in keys], rtol=1e-5,
                               atol=1e-7)
    assert [got[k]["predicted_class"] for k in keys] == [
        int(expected[k] > 0.5) for k in keys]

  return check


def test_score_mode_on_parquet_and_jsonl_with_bad_rows(tmp_path, models):
  parquet_x, json_x = feature_matrix(1), feature_matrix(2)
  parquet_ids = [f"p-{i}" for i in range(ROWS)]
  json_ids = [f"j-{i}" for i in range(ROWS)]
  write_parquet(tmp_path / "features-1.parquet",
                parquet_ids + [None, "p-short", "p-nan"],
                parquet_x.tolist() + [[0.0] * WIDTH, [1.0, 2.0],
                                      [0.0, float("nan"), 0.0, 0.0]])
  write_jsonl(tmp_path / "features-2.jsonl", [
      json_row(i, row) for i, row in zip(json_ids, json_x.tolist())] + [
          '{"request_id": "j-cut", "features": [0.1,',
          json.dumps({"features": [0.0] * WIDTH}),
          json_row("j-long", [0.0] * (WIDTH + 1)),
          json_row("j-text", ["0.5"] + [0.0] * (WIDTH - 1))])
  outputs = keras_outputs(models, ("lin", "mlp"),
                          np.concatenate([parquet_x, json_x]))
  expected = {(request_id, name): outputs[name][i, 0]
              for name in outputs
              for i, request_id in enumerate(parquet_ids + json_ids)}

  p = pipeline()
  result = p | batch_inference_transform(
      str(tmp_path / "features-*"), models,
      predictions.ScoringConfig(("lin", "mlp")))
  assert_that(prediction_rows(result), check_predictions(expected),
              label="Predictions")
  assert_that(result["dead_letter"] | beam.Map(lambda row: (
      row["reason"], row["source_file"].rsplit("/", 1)[-1],
      json.loads(row["raw"]).get("request_id") if row["reason"] !=
      contract.INVALID_JSON else row["raw"])), equal_to([
          (contract.MISSING_FIELD, "features-1.parquet", None),
          (features.WRONG_FEATURE_LENGTH, "features-1.parquet", "p-short"),
          (features.NON_FINITE_FEATURE, "features-1.parquet", "p-nan"),
          (contract.INVALID_JSON, "features-2.jsonl",
           '{"request_id": "j-cut", "features": [0.1,'),
          (contract.MISSING_FIELD, "features-2.jsonl", None),
          (features.WRONG_FEATURE_LENGTH, "features-2.jsonl", "j-long"),
          (contract.WRONG_TYPE, "features-2.jsonl", "j-text"),
      ]), label="DeadLetters")
  assert_that(result["data_quality"] | beam.Map(lambda row: (
      row["record_type"], row["metric"], row["count"])), equal_to([
          ("features", "read", 2 * ROWS + 7),
          ("features", "parsed", 2 * ROWS),
          ("features", "scored", 2 * ROWS),
          ("features", "dead_letter:missing_field", 2),
          ("features", "dead_letter:wrong_feature_length", 2),
          ("features", "dead_letter:non_finite_feature", 1),
          ("features", "dead_letter:invalid_json", 1),
          ("features", "dead_letter:wrong_type", 1),
      ]), label="DataQuality")
  p.run().wait_until_finish()


@pytest.mark.parametrize("combine", [predictions.MEAN, predictions.VOTE])
def test_ensemble_of_feature_columns(tmp_path, models, combine):
  x = feature_matrix(3)
  columns = tuple(f"x{i}" for i in range(WIDTH))
  pq.write_table(pa.table({"request_id": [f"r-{i}" for i in range(ROWS)],
                           **{name: x[:, i] for i, name in enumerate(columns)},
                           "label": np.zeros(ROWS)}),
                 tmp_path / "columns.parquet")
  names = ("lin", "mlp", "mlp2")
  outputs = keras_outputs(models, names, x)
  if combine == predictions.MEAN:
    combined = np.mean([outputs[name][:, 0] for name in names], axis=0)
  else:
    combined = np.mean([outputs[name][:, 0] > 0.5 for name in names], axis=0)
  expected = {(f"r-{i}", f"{combine}(lin,mlp,mlp2)"): combined[i]
              for i in range(ROWS)}

  with pipeline() as p:
    result = p | batch_inference_transform(
        str(tmp_path / "columns.parquet"), models,
        predictions.ScoringConfig(names, predictions.ENSEMBLE, combine),
        columns=columns)
    assert_that(prediction_rows(result), check_predictions(expected))


def test_shadow_mode_compares_every_model_with_the_baseline(tmp_path, models):
  x = feature_matrix(4)
  ids = [f"r-{i}" for i in range(ROWS)]
  write_parquet(tmp_path / "features.parquet", ids, x.tolist())
  names = ("lin", "mlp", "mlp2")
  outputs = {name: output[:, 0] for name, output in
             keras_outputs(models, names, x).items()}
  baseline = outputs["lin"]
  expected = {(request_id, name): outputs[name][i]
              for name in names for i, request_id in enumerate(ids)}

  def check_shadow_columns(rows):
    got = by_key(rows)
    for name in ("mlp", "mlp2"):
      shadow_rows = [got[(request_id, name)] for request_id in ids]
      np.testing.assert_allclose(
          [r["baseline_prediction"] for r in shadow_rows], baseline, rtol=1e-5)
      np.testing.assert_allclose([r["abs_diff"] for r in shadow_rows],
                                 np.abs(outputs[name] - baseline), rtol=1e-4,
                                 atol=1e-6)
      assert [r["agrees"] for r in shadow_rows] == list(
          (outputs[name] > 0.5) == (baseline > 0.5))
    assert not any("abs_diff" in got[(request_id, "lin")]
                   for request_id in ids)

  def check_summary(rows):
    assert sorted(r["model"] for r in rows) == ["mlp", "mlp2"]
    for row in rows:
      diff = outputs[row["model"]] - baseline
      assert (row["baseline"], row["rows"]) == ("lin", ROWS)
      np.testing.assert_allclose(
          [row["mean_diff"], row["mean_abs_diff"], row["max_abs_diff"]],
          [diff.mean(), np.abs(diff).mean(), np.abs(diff).max()], rtol=1e-4)
      assert row["agreement_rate"] == pytest.approx(
          ((outputs[row["model"]] > 0.5) == (baseline > 0.5)).mean())

  with pipeline() as p:
    result = p | batch_inference_transform(
        str(tmp_path / "features.parquet"), models,
        predictions.ScoringConfig(names, predictions.SHADOW, baseline="lin"))
    rows = prediction_rows(result)
    assert_that(rows, check_predictions(expected), label="Predictions")
    assert_that(rows, check_shadow_columns, label="ShadowColumns")
    assert_that(result["shadow_summary"], check_summary, label="Summary")


class _CountBundles(beam.DoFn):

  def start_bundle(self):
    beam.metrics.Metrics.counter("test", "bundles").inc()

  def process(self, element):
    return []


def test_models_load_once_per_process_not_per_bundle(tmp_path, models):
  for shard in range(3):
    x = feature_matrix(10 + shard, rows=20)
    write_parquet(tmp_path / f"features-{shard}.parquet",
                  [f"{shard}-{i}" for i in range(20)], x.tolist())
  # Three SDK worker threads in this one process, each with its own bundles.
  p = pipeline("--direct_running_mode=multi_threading",
               "--direct_num_workers=3")
  read = p | inference.ReadFeatures(features.FeatureSpec(WIDTH), 2,
                                    file_pattern=str(tmp_path / "*.parquet"))
  _ = read["batches"] | "CountBundles" >> beam.ParDo(_CountBundles())
  _ = read["batches"] | inference.ScoreBatches(inference.KerasModelsHandler(
      {"lin": models["lin"], "mlp": models["mlp"]}))
  result = p.run()
  result.wait_until_finish()

  report = batch_inference.metrics_report(result)
  bundles = result.metrics().query(beam.metrics.MetricsFilter().with_name(
      "bundles"))["counters"][0].committed
  assert bundles >= 3
  assert report["model_loads"] == 2
  assert report["rows_per_batch"].count == 30
  assert report["rows_per_batch"].max == 2
  assert report["inference_batch_latency_micro_secs"].count == 30
  assert report["rows_read"] == report["rows_scored"] == 60
  assert report["rows_dead_lettered"] == 0


def test_large_model_scores_through_one_copy_per_machine(tmp_path, models):
  x = feature_matrix(6, rows=5)
  path = write_jsonl(tmp_path / "features.jsonl", [
      json_row(f"r-{i}", row) for i, row in enumerate(x.tolist())])
  outputs = keras_outputs(models, ("lin",), x)
  read = inference.ReadFeatures(features.FeatureSpec(WIDTH), 2,
                                file_pattern=path)
  # The models live in a separate server process; calls go through a proxy.
  handler = inference.KerasModelsHandler({"lin": models["lin"]},
                                         large_model=True)
  p = pipeline()
  result = p | batch_inference.BatchInference(
      read, handler, predictions.ScoringConfig(("lin",)))
  assert_that(prediction_rows(result), check_predictions(
      {(f"r-{i}", "lin"): outputs["lin"][i, 0] for i in range(5)}))
  assert batch_inference.metrics_report(p.run())["model_loads"] == 1


class _FailingModel:

  def predict_on_batch(self, batch):
    if (batch[:, 0] > 100).any():
      raise ValueError("feature out of range")
    return batch[:, :1]


class _FailingHandler(inference.KerasModelsHandler):

  def load_model(self):
    return inference.ModelSet({"first": _FailingModel()})


def test_batches_that_fail_to_score_are_dead_lettered(tmp_path):
  x = np.arange(9 * WIDTH, dtype=np.float32).reshape(9, WIDTH)
  x[4, 0] = 1000.0  # Fails the second batch of three.
  path = write_jsonl(tmp_path / "features.jsonl", [
      json_row(f"r-{i}", row) for i, row in enumerate(x.tolist())])
  scoring = predictions.ScoringConfig(("first",))
  read = inference.ReadFeatures(features.FeatureSpec(WIDTH), 3,
                                file_pattern=path)
  p = pipeline()
  result = p | batch_inference.BatchInference(
      read, _FailingHandler({"first": "unused.keras"}), scoring)
  assert_that(prediction_rows(result) | beam.Map(lambda row: (
      row["request_id"], row["prediction"])), equal_to([
          (f"r-{i}", x[i, 0]) for i in (0, 1, 2, 6, 7, 8)]),
              label="Predictions")
  assert_that(result["dead_letter"] | beam.Map(lambda row: (
      row["reason"], "feature out of range" in row["detail"],
      row["source_file"], json.loads(row["raw"]))), equal_to([
          (features.INFERENCE_FAILED, True, path,
           {"request_id": f"r-{i}", "features": x[i].tolist()})
          for i in (3, 4, 5)]), label="DeadLetters")
  assert_that(result["data_quality"] | beam.Map(lambda row: (
      row["metric"], row["count"])), equal_to([
          ("read", 9), ("parsed", 9), ("scored", 6),
          ("dead_letter:inference_failed", 3)]), label="DataQuality")
  report = batch_inference.metrics_report(p.run())
  assert (report["rows_read"], report["rows_scored"],
          report["rows_dead_lettered"]) == (9, 6, 3)


def test_run_writes_jsonl_and_bigquery(bq_emulator, tmp_path, models, capsys):
  emulator, project = bq_emulator
  x = feature_matrix(5, rows=3)
  path = write_jsonl(tmp_path / "features.jsonl", [
      json_row(f"r-{i}", row) for i, row in enumerate(x.tolist())] + [
          json_row("r-short", [1.0])])
  batch_inference.run([
      f"--features={path}", f"--model=lin={models['lin']}",
      f"--model=softmax={models['softmax']}",
      f"--output_dir={tmp_path / 'out'}",
      f"--output_dataset={project}:inference_it",
      f"--bigquery_emulator_host={emulator.host}",
      "--partition_date=2026-11-21", "--runner=FnApiRunner",
      "--max_dead_letter_fraction=0.25"])  # One bad row of four, on purpose.

  assert "rows read 4 = scored 3 + dead-lettered 1\nmodel loads: 2" in (
      capsys.readouterr().out)
  client = bigquery.bigquery_client(project, emulator.host)
  stored = by_key(bigquery.read_rows(client, project, "inference_it",
                                     "predictions"))
  written = by_key(json.loads(line)
                   for out in (tmp_path / "out").glob("predictions*")
                   for line in out.read_text().splitlines())
  assert sorted(stored) == sorted(written) == sorted(
      (f"r-{i}", name) for i in range(3) for name in ("lin", "softmax"))
  outputs = keras_outputs(models, ("lin", "softmax"), x)
  for i in range(3):
    lin, softmax = stored[(f"r-{i}", "lin")], stored[(f"r-{i}", "softmax")]
    assert lin["prediction"] == pytest.approx(outputs["lin"][i, 0], rel=1e-5)
    assert lin["scores"] == []
    assert softmax["prediction"] is None
    assert softmax["scores"] == pytest.approx(outputs["softmax"][i], rel=1e-5)
    assert softmax["predicted_class"] == outputs["softmax"][i].argmax()
    assert str(lin["partition_date"]) == "2026-11-21"
    for key in ("scores", "predicted_class"):
      assert written[(f"r-{i}", "lin")][key] == lin[key]
    # The JSON line holds the shortest text of the float32 output, BigQuery
    # its double: the same float32.
    assert np.float32(written[(f"r-{i}", "lin")]["prediction"]) == (
        np.float32(lin["prediction"]))
  [dead] = bigquery.read_rows(client, project, "inference_it", "dead_letter")
  assert (dead["reason"], json.loads(dead["raw"])["request_id"]) == (
      features.WRONG_FEATURE_LENGTH, "r-short")
  quality_rows = bigquery.read_rows(client, project, "inference_it",
                                    "data_quality")
  assert {r["metric"]: r["count"] for r in quality_rows}["read"] == 4


def test_run_writes_parquet_files(tmp_path, models):
  x = feature_matrix(6, rows=20)
  path = write_parquet(tmp_path / "features.parquet",
                       [f"r-{i}" for i in range(20)] + ["r-short"],
                       x.tolist() + [[1.0]])
  batch_inference.run([
      f"--features={path}", f"--model=lin={models['lin']}",
      f"--output_dir={tmp_path / 'out'}", "--output_format=parquet",
      "--batch_size=8", "--runner=FnApiRunner"])
  # The run summary is read back from its Parquet file too.
  [summary] = pq.read_table(next((tmp_path / "out").glob(
      "run_summary*.parquet"))).to_pylist()
  assert summary["status"] == "passed"
  assert {(g["gate"], g["subject"]) for g in summary["gates"]} == {
      ("dead_letter_fraction", "features"), ("not_empty", "predictions")}

  stored = {name: pq.read_table(next((tmp_path / "out").glob(
      f"{name}*.parquet"))).to_pylist()
            for name in ("predictions", "dead_letter", "data_quality")}
  expected = keras_outputs(models, ("lin",), x)["lin"][:, 0]
  got = {row["request_id"]: row["prediction"] for row in stored["predictions"]}
  assert sorted(got) == sorted(f"r-{i}" for i in range(20))
  np.testing.assert_allclose([got[f"r-{i}"] for i in range(20)], expected,
                             rtol=1e-5)
  assert [(row["reason"], json.loads(row["raw"])["request_id"])
          for row in stored["dead_letter"]] == [
              (features.WRONG_FEATURE_LENGTH, "r-short")]
  counts = {row["metric"]: row["count"] for row in stored["data_quality"]}
  assert (counts["read"], counts["scored"]) == (21, 20)


def test_feature_table_input_builds_a_storage_read(models, tmp_path):
  options = PipelineOptions([
      "--features_table=my-project:features.requests",
      f"--model=lin={models['lin']}", f"--output_dir={tmp_path}"])
  p = beam.Pipeline(runner="FnApiRunner", options=options)
  batch_inference.build(p, options)
  reads = []

  class FindReads(beam.pipeline.PipelineVisitor):

    def enter_composite_transform(self, node):
      if isinstance(node.transform, beam.io.ReadFromBigQuery):
        reads.append(node.transform)

  p.visit(FindReads())
  [read] = reads
  assert read.method == beam.io.ReadFromBigQuery.Method.DIRECT_READ


def test_options_and_feature_width(models, tmp_path):
  options = PipelineOptions([
      "--features=f.parquet", f"--model=lin={models['lin']}",
      f"--model=mlp={models['mlp']}", "--large_model", "--mode=shadow",
      "--baseline=lin"])
  model_options = options.view_as(batch_inference.ModelOptions)
  assert (model_options.large_model, model_options.mode,
          model_options.baseline) == (True, "shadow", "lin")
  paths = batch_inference.model_paths(model_options.model)
  assert paths == {"lin": models["lin"], "mlp": models["mlp"]}
  inputs = options.view_as(batch_inference.BatchInferenceOptions)
  assert batch_inference.feature_spec(inputs, paths) == features.FeatureSpec(
      WIDTH)

  wide = keras.Sequential([keras.Input((WIDTH + 1,)), keras.layers.Dense(1)])
  wide.save(tmp_path / "wide.keras")
  with pytest.raises(ValueError, match="different input widths"):
    batch_inference.feature_spec(inputs, {**paths,
                                          "wide": str(tmp_path / "wide.keras")})
  two_columns = PipelineOptions(["--feature_columns=a,b"]).view_as(
      batch_inference.BatchInferenceOptions)
  with pytest.raises(ValueError, match="2 --feature_columns for 4 features"):
    batch_inference.feature_spec(two_columns, paths)
  given = PipelineOptions(["--num_features=2", "--feature_columns=a,b"])
  assert batch_inference.feature_spec(
      given.view_as(batch_inference.BatchInferenceOptions),
      {"unread": str(tmp_path / "missing.keras")}) == features.FeatureSpec(
          2, ("a", "b"))
  assert batch_inference.model_paths(
      ["a=x.keras,b=gs://m/y.keras", "c=z.keras"]) == {
          "a": "x.keras", "b": "gs://m/y.keras", "c": "z.keras"}
  with pytest.raises(ValueError, match="twice"):
    batch_inference.model_paths(["a=x.keras", "a=y.keras"])
  with pytest.raises(ValueError, match="NAME=PATH"):
    batch_inference.model_paths(["x.keras"])
  # No rows per block would read nothing, silently: the option's check
  # (the template's regex) refuses it on the command line too.
  with pytest.raises(SystemExit):
    batch_inference.batch_inference(PipelineOptions(
        ["--features=f.jsonl", f"--model=lin={models['lin']}",
         "--batch_size=0"]))

  functional_input = keras.Input((7,))
  functional = keras.Model(functional_input,
                           keras.layers.Dense(2)(functional_input))
  functional.save(tmp_path / "functional.keras")
  assert inference.saved_input_width(str(tmp_path / "functional.keras")) == 7


def test_train_demo_models_writes_models_and_sample_features(tmp_path):
  train_demo_models.main(["--out", str(tmp_path), "--train_rows", "2000",
                          "--sample_rows", "50", "--epochs", "1"])

  for name in ("logreg", "mlp"):
    assert inference.saved_input_width(str(tmp_path / f"{name}.keras")) == (
        click_data.NUM_FEATURES)
  table = pq.read_table(tmp_path / "features.parquet")
  block = features.parse_arrow_batch(
      table, features.FeatureSpec(click_data.NUM_FEATURES), "demo")
  assert (len(block.batch), block.rejected) == (50, [])
  lines = (tmp_path / "features.jsonl").read_bytes().splitlines()
  block = features.parse_json_lines(
      lines, features.FeatureSpec(click_data.NUM_FEATURES), "demo")
  assert block.batch.request_ids.to_pylist() == table["request_id"].to_pylist()
  assert len(block.rejected) == len(train_demo_models.MALFORMED_JSON_LINES)

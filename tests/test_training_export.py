"""Training export: round trip through TFRecords, splits, re-runs, de-identification, bad input."""

import collections
import glob
import gzip
import json
import logging
import os
import random

import numpy as np
import pyarrow as pa
import pytest
import tensorflow as tf

from pipelines import training_export
from transforms.export import examples
from transforms.export import export
from transforms.export import training_set
from transforms.logs import contract
from transforms.logs import quality

KEY = "k3y-that-must-never-leak-0123456789"
KEY_ENV = "TRAINING_EXPORT_TEST_KEY"
FEATURES = 4
EMAIL = "kim.minji@example.com"
CARD = "4111 1111 1111 1111"


def _predictions(n=300, seed=0):
  rng = random.Random(seed)
  records = []
  for i in range(n):
    record = {"request_id": f"req-{i}", "timestamp": 1_763_683_200 + 60 * i,
              "experiment_id": "ranker", "arm": ["control", "cand"][i % 2],
              "propensity": 0.5, "user_id": f"user-{i % 40}",
              "features": [round(rng.uniform(-2, 2), 3)
                           for _ in range(FEATURES)],
              "request": {"text": rng.choice([
                  f"mail me at {EMAIL}", f"card {CARD} please",
                  "just browsing", "주문 확인 부탁드려요"])}}
    if i % 7 == 0:
      del record["propensity"]
    if i % 11 == 0:
      record["shadow"] = i % 22 == 0  # Half shadow copies: never exported.
    records.append(record)
  return records


BAD_PREDICTIONS = (
    {"request_id": "no-features", "timestamp": 1_763_683_200,
     "experiment_id": "ranker", "arm": "control"},
    {"request_id": "short", "timestamp": 1_763_683_200,
     "experiment_id": "ranker", "arm": "control", "features": [1.0]},
    {"request_id": "text-not-text", "timestamp": 1_763_683_200,
     "experiment_id": "ranker", "arm": "control",
     "features": [0.0] * FEATURES, "request": {"text": 42}},
    {"request_id": "bad-time", "timestamp": "yesterday",
     "experiment_id": "ranker", "arm": "control", "user_id": "user-secret-7",
     "request": {"text": f"write to {EMAIL}"}},
    {"request_id": "short-with-pii", "timestamp": 1_763_683_200,
     "experiment_id": "ranker", "arm": "control", "features": [1.0],
     "request": {"text": f"card {CARD}"}},
)
NON_UTF8 = b'{"request_id": "latin1", "timestamp": 1763683200, ' \
    b'"experiment_id": "ranker", "arm": "control", "features": [1, 2, 3, 4], ' \
    b'"request": {"text": "caf\xe9"}}'


def _write_logs(tmp_path, records):
  predictions = tmp_path / "predictions.jsonl"
  with open(predictions, "wb") as f:
    for record in records + list(BAD_PREDICTIONS):
      f.write(json.dumps(record, ensure_ascii=False).encode("utf-8") + b"\n")
    f.write(NON_UTF8 + b"\n")
  feedback = tmp_path / "feedback.jsonl"
  with open(feedback, "w") as f:
    for record in records:
      i = int(record["request_id"].split("-")[1])
      if i % 3 == 0:
        f.write(json.dumps({"request_id": record["request_id"],
                            "timestamp": record["timestamp"] + 30,
                            "reward": 1.0}) + "\n")
  return str(predictions), str(feedback)


def _run(tmp_path, name, predictions, feedback, *extra):
  prefix = str(tmp_path / name / "dt=2025-11-21")
  output_dir = str(tmp_path / name / "tables")
  return prefix, output_dir, training_export.run([
      "--runner", "FnApiRunner", "--predictions", predictions,
      "--feedback", feedback, "--feature_count", str(FEATURES),
      "--pseudonymize_key_env", KEY_ENV, "--output_prefix", prefix,
      "--output_dir", output_dir, "--text_fields", "request.text",
      "--eval_fraction", "0.3", "--export_shards", "3",
      "--run_id", "test", "--partition_date", "2025-11-21", *extra])


class _Recorder(logging.Handler):
  """Every log record of the run, at every level, formatted."""

  def __init__(self):
    super().__init__(logging.DEBUG)
    self.lines = []

  def emit(self, record):
    self.lines.append(self.format(record))


def _rows(output_dir, table):
  rows = []
  for path in glob.glob(f"{output_dir}/{table}*.jsonl"):
    with open(path) as f:
      rows += [json.loads(line) for line in f]
  return rows


def _examples(prefix):
  schema = examples.load_schema(open(f"{prefix}/schema.json").read())
  spec = examples.parse_spec(schema)
  parsed = {}
  for split in training_set.SPLITS:
    files = sorted(glob.glob(f"{prefix}/{split}-*.tfrecord.gz"))
    assert len(files) == 3
    for record in tf.data.TFRecordDataset(files, compression_type="GZIP"):
      example = {name: value.numpy() for name, value in
                 tf.io.parse_single_example(record, spec).items()}
      parsed[example["request_id"].decode()] = (split, example)
  return parsed


@pytest.fixture(name="exported", scope="module")
def _exported(tmp_path_factory):
  tmp_path = tmp_path_factory.mktemp("export")
  os.environ[KEY_ENV] = KEY
  records = _predictions()
  predictions, feedback = _write_logs(tmp_path, records)
  recorder = _Recorder()
  root = logging.getLogger()
  level = root.level
  root.addHandler(recorder)
  root.setLevel(logging.DEBUG)
  try:
    prefix, output_dir, pipeline = _run(tmp_path, "first", predictions,
                                        feedback)
  finally:
    root.removeHandler(recorder)
    root.setLevel(level)
  (tmp_path / "run.log").write_text("\n".join(recorder.lines))
  (tmp_path / "graph.pb").write_bytes(
      pipeline.to_runner_api().SerializeToString())
  again, _, _ = _run(tmp_path, "second", predictions, feedback)
  return records, prefix, again, output_dir, tmp_path


def test_every_example_parses_against_the_schema_and_equals_its_record(
    exported):
  records, prefix, _, _, _ = exported
  parsed = _examples(prefix)
  served = [r for r in records if not r.get("shadow")]
  assert len(parsed) == len(served)
  key = KEY.encode()
  for record in served:
    split, example = parsed[contract.pseudonymize(record["request_id"], key)]
    np.testing.assert_allclose(example["features"], record["features"],
                               rtol=1e-6)
    assert example["arm"].decode() == record["arm"]
    assert example["experiment_id"].decode() == "ranker"
    assert example["propensity"] == pytest.approx(record.get("propensity",
                                                             -1.0))
    i = int(record["request_id"].split("-")[1])
    assert example["reward"] == (1.0 if i % 3 == 0 else 0.0)
    assert example["timestamp_us"] == record["timestamp"] * 1_000_000
    assert example["user_id"].decode() == contract.pseudonymize(
        record["user_id"], key)
    text = example["request.text"].decode()
    assert EMAIL not in text and CARD not in text
    assert text == record["request"]["text"].replace(EMAIL, "<EMAIL>").replace(
        CARD, "<CARD>")


def test_no_user_is_in_both_splits(exported):
  _, prefix, _, _, _ = exported
  splits = collections.defaultdict(set)
  for split, example in _examples(prefix).values():
    splits[example["user_id"]].add(split)
  assert all(len(s) == 1 for s in splits.values())
  in_eval = sum(s == {"eval"} for s in splits.values())
  assert 0 < in_eval < len(splits)  # Both splits hold users.


def test_a_rerun_writes_identical_files(exported):
  _, prefix, again, _, _ = exported
  names = sorted(os.listdir(prefix))
  assert names == sorted(os.listdir(again))
  assert "schema.json" in names and len(names) == 7
  for name in names:
    with open(f"{prefix}/{name}", "rb") as a, open(f"{again}/{name}",
                                                   "rb") as b:
      assert a.read() == b.read(), name


def test_a_rerun_with_fewer_shards_leaves_no_stale_file(tmp_path):
  predictions, feedback = _write_logs(tmp_path, _predictions(30))
  prefix, _, _ = _run(tmp_path, "day", predictions, feedback)
  _run(tmp_path, "day", predictions, feedback, "--export_shards", "2")
  assert sorted(os.listdir(prefix)) == [
      "eval-00000-of-00002.tfrecord.gz", "eval-00001-of-00002.tfrecord.gz",
      "schema.json", "train-00000-of-00002.tfrecord.gz",
      "train-00001-of-00002.tfrecord.gz"]


def test_the_key_is_in_no_output_log_or_pipeline_graph(exported, capfd):
  _, _, _, _, tmp_path = exported
  assert (tmp_path / "run.log").stat().st_size > 0  # The run did log.
  assert (tmp_path / "graph.pb").stat().st_size > 0
  for path in glob.glob(f"{tmp_path}/**/*", recursive=True):
    if os.path.isdir(path):
      continue
    with open(path, "rb") as f:
      data = f.read()
    if path.endswith(".gz"):
      data += gzip.decompress(data)
    assert KEY.encode() not in data, path
  out, err = capfd.readouterr()
  assert KEY not in out + err


def test_bad_records_are_dead_lettered_with_a_reason(exported):
  _, _, _, output_dir, _ = exported
  dead_rows = _rows(output_dir, "dead_letter")
  dead = {(row["record_type"], row["reason"]) for row in dead_rows}
  assert {("export", training_set.MISSING_FEATURES),
          ("export", training_set.FEATURE_LENGTH),
          ("export", contract.WRONG_TYPE),
          ("prediction", contract.INVALID_JSON),
          ("prediction", contract.BAD_TIMESTAMP)} <= dead
  # Rejected records keep their raw text, scrubbed, at every stage.
  raws = " ".join(row["raw"] for row in dead_rows)
  assert EMAIL not in raws and CARD not in raws
  assert "<EMAIL>" in raws and "<CARD>" in raws
  assert "user-secret-7" not in raws and contract.pseudonymize(
      "user-secret-7", KEY.encode()) in raws
  quality_rows = _rows(output_dir, "data_quality")
  export_counts = {row["metric"]: row["count"] for row in quality_rows
                   if row["record_type"] == "export"}
  accounted = sum(count for metric, count in export_counts.items()
                  if metric.split(":")[0] in ("exported", "filtered",
                                              "dead_letter"))
  assert accounted == export_counts["joined"]
  assert export_counts["deid:EMAIL"] > 0 and export_counts["deid:CARD"] > 0
  read, counted = quality.balance(quality_rows)["prediction"]
  assert read == counted


def test_export_summary_counts_rows_and_labels(exported):
  records, prefix, _, output_dir, _ = exported
  summary = _rows(output_dir, "export_summary")
  parsed = _examples(prefix)
  assert sum(row["rows"] for row in summary) == len(parsed)
  for row in summary:
    matching = [e for split, e in parsed.values() if split == row["split"]
                and e["arm"].decode() == row["arm"]]
    assert row["rows"] == len(matching)
    assert row["positive_rows"] == sum(e["reward"] > 0 for e in matching)


def test_a_missing_key_variable_fails_at_start(tmp_path, monkeypatch):
  monkeypatch.delenv(KEY_ENV, raising=False)
  predictions, feedback = _write_logs(tmp_path, _predictions(5))
  with pytest.raises(ValueError, match=f"\\${KEY_ENV} is not set$"):
    _run(tmp_path, "nokey", predictions, feedback)


# The pure core, block by block.


def _joined(n=200, **overrides):
  rng = np.random.default_rng(0)
  columns = {
      "request_id": pa.array([f"r{i}" for i in range(n)]),
      "ts": pa.array(1_700_000_000.0 + np.arange(n)),
      "experiment_id": pa.array(["e"] * n).dictionary_encode(),
      "arm": pa.array(["a" if i < n * 0.8 else "b" for i in range(n)]
                      ).dictionary_encode(),
      "shadow": pa.array([False] * n),
      "raw": pa.array(["{}"] * n),
      "features": pa.array(rng.normal(size=(n, 3)).tolist(),
                           pa.list_(pa.float64())),
      "user_id": pa.array([f"u{i % 50}" for i in range(n)]),
      "propensity": pa.array([0.5] * n),
      "reward": pa.array([1.0 if i % 4 == 0 else None for i in range(n)],
                         pa.float64()),
  }
  columns.update(overrides)
  return pa.table(columns)


def test_filters_are_counted_and_balance():
  table = _joined()
  config = training_set.ExportConfig(
      feature_count=3, start=1_700_000_010.0, end=1_700_000_190.0,
      missing_reward="ignore", min_arm_count=50, num_shards=2)
  prepared = training_set.prepare(table, config, b"k",
                                  training_set.arm_totals(table))
  counts = prepared.counts
  assert counts["filtered:time_range"] == 20
  # Arm b has 40 rows in all: below the minimum.
  assert counts["filtered:arm_below_min"] == len(
      [i for i in range(160, 190) if i % 4 == 0])
  exported = counts["exported:train"] + counts["exported:eval"]
  assert exported == len([i for i in range(10, 160) if i % 4 == 0])
  assert counts["joined"] == exported + sum(
      v for k, v in counts.items() if k.startswith("filtered:"))


def test_a_text_field_may_not_take_a_features_name():
  with pytest.raises(ValueError, match="text field arm has the name"):
    training_set.ExportConfig(feature_count=3, text_fields=("arm",))
  with pytest.raises(ValueError, match="bad text field path"):
    training_set.ExportConfig(feature_count=3, text_fields=("a..b",))
  with pytest.raises(ValueError, match="given twice"):
    training_set.ExportConfig(feature_count=3, text_fields=("a", "a"))


def test_max_arm_count_keeps_about_that_many_the_same_rows_each_time():
  table = _joined(4000)
  config = training_set.ExportConfig(feature_count=3, max_arm_count=500)
  totals = training_set.arm_totals(table)
  first = training_set.prepare(table, config, b"k", totals)
  again = training_set.prepare(table, config, b"k", totals)
  assert first.shards == again.shards
  for arm in ("a", "b"):
    rows = sum(v[0] for k, v in first.summary.items() if k[2] == arm)
    assert 400 < rows < 600


def test_split_follows_the_user_and_its_share():
  users = [f"user-{i}" for i in range(20000)]
  fractions = training_set.hash_fraction(
      [contract.pseudonymize(u, b"k") for u in users])
  assert abs((fractions < 0.2).mean() - 0.2) < 0.01
  np.testing.assert_array_equal(fractions, training_set.hash_fraction(
      [contract.pseudonymize(u, b"k") for u in users]))


@pytest.mark.parametrize("seed", range(5))
def test_encoder_writes_protobufs_deterministic_serialization(seed):
  rng = np.random.default_rng(seed)
  n = 50
  features = [examples.Feature("vector", examples.FLOAT, 5),
              examples.Feature("label", examples.FLOAT),
              examples.Feature("count", examples.INT64),
              examples.Feature("name", examples.BYTES),
              examples.Feature("maybe", examples.FLOAT, default=-1.0),
              examples.Feature("gone", examples.BYTES)]
  values = [rng.normal(size=(n, 5)).tolist(), rng.normal(size=n).tolist(),
            rng.integers(-2**62, 2**62, n).tolist(),
            ["".join(rng.choice(list("ab한\x00"), rng.integers(0, 300)))
             for _ in range(n)],
            [None if x < 0 else x for x in rng.normal(size=n)],
            [None if x < 0 else "t" for x in rng.normal(size=n)]]
  columns = [pa.array(values[0], pa.list_(pa.float64())), pa.array(values[1]),
             pa.array(values[2], pa.int64()), pa.array(values[3]),
             pa.array(values[4], pa.float64()),
             pa.array(values[5], pa.string())]
  encoded = examples.encode(list(zip(features, columns))).to_pylist()
  for i in range(n):
    feature = {
        "vector": tf.train.Feature(float_list=tf.train.FloatList(
            value=values[0][i])),
        "label": tf.train.Feature(float_list=tf.train.FloatList(
            value=[values[1][i]])),
        "count": tf.train.Feature(int64_list=tf.train.Int64List(
            value=[values[2][i]])),
        "name": tf.train.Feature(bytes_list=tf.train.BytesList(
            value=[values[3][i].encode()])),
        "maybe": tf.train.Feature(float_list=tf.train.FloatList(
            value=[-1.0 if values[4][i] is None else values[4][i]])),
    }
    if values[5][i] is not None:
      feature["gone"] = tf.train.Feature(bytes_list=tf.train.BytesList(
          value=[b"t"]))
    expected = tf.train.Example(features=tf.train.Features(feature=feature))
    assert encoded[i] == expected.SerializeToString(deterministic=True)


def test_export_shards_are_deterministic_paths():
  assert export.shard_path("gs://b/x/", "eval", 2, 4) == (
      "gs://b/x/eval-00002-of-00004.tfrecord.gz")


def test_rows_sent_to_cloud_dlp_come_back_as_the_same_table():
  """Offline, the DLP call itself is left out: what it receives and returns."""
  table = _joined(20, features=pa.array([[1.0, 2.0, 3.0]] * 20,
                                        pa.list_(pa.float64())))
  table = table.cast(export._REQUEST_SCHEMA)
  rows = [json.loads(line) for line in export._rows_as_json(table)]
  assert export._to_table(rows).equals(table)
  dead = list(export._RowsBack().process('{"request_id": "r1", broken'))
  assert dead[0].value["reason"] == export.DLP_BROKE_RECORD


def test_pseudonymizer_is_contracts_hmac():
  pseudonymize = training_set.pseudonymizer(b"key")
  for value in ("u1", "사용자", ""):
    assert pseudonymize(value) == contract.pseudonymize(value, b"key")

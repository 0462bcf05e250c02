"""Model inputs and outputs without Beam: feature parsing and validation (one
JSON record, a whole Arrow batch), ensembles and shadow comparisons."""

import json

import numpy as np
import pyarrow as pa
import pytest

from simulation import click_data
from transforms.logs import contract
from transforms.scoring import features
from transforms.scoring import predictions

SPEC = features.FeatureSpec(3)
COLUMNS_SPEC = features.FeatureSpec(3, ("a", "b", "c"))


def record(**fields):
  row = {"request_id": "r1", "features": [1.0, 2, -3.5]}
  row.update(fields)
  return {k: v for k, v in row.items() if v is not ...}


def test_valid_record():
  assert features.parse_json_line(json.dumps(record()), SPEC) == (
      "r1", [1.0, 2, -3.5])
  assert features.parse_record(record(request_id=7), SPEC) == (
      "7", [1.0, 2, -3.5])
  assert features.parse_record({"request_id": "r", "a": 1, "b": 2.5, "c": 0},
                               COLUMNS_SPEC) == ("r", [1, 2.5, 0])


@pytest.mark.parametrize("line,reason,detail", [
    ('{"request_id": "r1", "features": [1, ', contract.INVALID_JSON, ""),
    ("[1, 2, 3]", contract.NOT_AN_OBJECT, ""),
    (json.dumps(record(request_id=...)), contract.MISSING_FIELD, "request_id"),
    (json.dumps(record(request_id="")), contract.MISSING_FIELD, "request_id"),
    (json.dumps(record(request_id=None)), contract.MISSING_FIELD,
     "request_id"),
    (json.dumps(record(request_id=["r"])), contract.WRONG_TYPE, "request_id"),
    (json.dumps(record(request_id=True)), contract.WRONG_TYPE, "request_id"),
    (json.dumps(record(features=...)), contract.MISSING_FIELD, "features"),
    (json.dumps(record(features="1,2,3")), contract.WRONG_TYPE, "features"),
    (json.dumps(record(features=[1.0, 2.0])), features.WRONG_FEATURE_LENGTH,
     "2 != 3"),
    (json.dumps(record(features=[1, 2, 3, 4])), features.WRONG_FEATURE_LENGTH,
     "4 != 3"),
    (json.dumps(record(features=[1, "2", 3])), contract.WRONG_TYPE,
     "features"),
    (json.dumps(record(features=[1, True, 3])), contract.WRONG_TYPE,
     "features"),
    (json.dumps(record(features=[1, None, 3])), contract.WRONG_TYPE,
     "features"),
    ('{"request_id": "r1", "features": [1, NaN, 3]}',
     features.NON_FINITE_FEATURE, "features"),
    ('{"request_id": "r1", "features": [1, 2, Infinity]}',
     features.NON_FINITE_FEATURE, "features"),
    ('{"request_id": "\\ud800", "features": [1, 2, 3]}', contract.WRONG_TYPE,
     "request_id"),
    # Infinite as the model's float32; and an integer no float holds.
    ('{"request_id": "r1", "features": [1, 2, 1e39]}',
     features.NON_FINITE_FEATURE, "features"),
    ('{"request_id": "r1", "features": [1, 2, 1%s]}' % ("0" * 400),
     features.NON_FINITE_FEATURE, "features"),
])
def test_rejected_records(line, reason, detail):
  assert features.parse_json_line(line, SPEC) == contract.Rejected(reason,
                                                                   detail)


@pytest.mark.parametrize("row,reason,detail", [
    ({"request_id": "r", "a": 1, "c": 3}, contract.MISSING_FIELD, "b"),
    ({"request_id": "r", "a": 1, "b": None, "c": 3}, contract.MISSING_FIELD,
     "b"),
    ({"request_id": "r", "a": 1, "b": "2", "c": 3}, contract.WRONG_TYPE,
     "a,b,c"),
])
def test_rejected_feature_columns(row, reason, detail):
  assert features.parse_record(row, COLUMNS_SPEC) == contract.Rejected(
      reason, detail)


def test_json_block_keeps_valid_rows_as_one_float32_matrix():
  lines = [json.dumps(record(request_id="a")).encode(), b"{oops",
           json.dumps(record(request_id="b", features=[4, 5, 6])).encode()]
  block = features.parse_json_lines(lines, SPEC, "f.jsonl")
  assert block.read == 3
  assert block.batch.request_ids.to_pylist() == ["a", "b"]
  assert block.batch.source == "f.jsonl"
  assert block.batch.features.dtype == np.float32
  np.testing.assert_array_equal(block.batch.features,
                                [[1.0, 2.0, -3.5], [4, 5, 6]])
  assert block.rejected == [("{oops", contract.Rejected(contract.INVALID_JSON))]


def test_block_without_valid_rows_has_an_empty_batch():
  block = features.parse_json_lines([b"{oops"], SPEC, "f.jsonl")
  assert len(block.batch) == 0
  assert block.batch.features.shape == (0, 3)


MIXED_ROWS = [
    record(request_id="ok-1"),
    record(request_id=None),
    record(request_id=""),
    record(features=None),
    record(request_id="short", features=[1.0, 2.0]),
    record(request_id="null-value", features=[1.0, None, 3.0]),
    record(request_id="nan", features=[1.0, float("nan"), 3.0]),
    record(request_id="inf", features=[1.0, 2.0, float("-inf")]),
    record(request_id="ok-2", features=[7.0, 8.0, 9.0]),
]
MIXED_REASONS = [
    contract.MISSING_FIELD, contract.MISSING_FIELD, contract.MISSING_FIELD,
    features.WRONG_FEATURE_LENGTH, contract.WRONG_TYPE,
    features.NON_FINITE_FEATURE, features.NON_FINITE_FEATURE,
]


@pytest.mark.parametrize("list_type", [
    pa.list_(pa.float64()), pa.large_list(pa.float32()),
])
def test_arrow_batch_validates_every_row_like_the_record_parser(list_type):
  rows = MIXED_ROWS
  table = pa.table({
      "request_id": pa.array([r.get("request_id") for r in rows], pa.string()),
      "features": pa.array([r.get("features") for r in rows], list_type),
  })
  block = features.parse_arrow_batch(table, SPEC, "f.parquet")

  assert block.read == len(rows)
  assert block.batch.request_ids.to_pylist() == ["ok-1", "ok-2"]
  np.testing.assert_array_equal(block.batch.features,
                                [[1.0, 2.0, -3.5], [7.0, 8.0, 9.0]])
  got = [rejected for _, rejected in block.rejected]
  expected = [r for r in (features.parse_record(row, SPEC) for row in rows)
              if isinstance(r, contract.Rejected)]
  assert [r.reason for r in got] == [r.reason for r in expected] == (
      MIXED_REASONS)
  # Only the Arrow path does not name each row's length.
  assert [r for r in got if r.reason != features.WRONG_FEATURE_LENGTH] == [
      r for r in expected if r.reason != features.WRONG_FEATURE_LENGTH]
  raws = [json.loads(raw) for raw, _ in block.rejected]
  assert [raw["request_id"] for raw in raws] == [
      r["request_id"] for r in rows if r["request_id"] not in ("ok-1", "ok-2")]


def test_arrow_fixed_size_integer_list_and_integer_request_ids():
  values = pa.array(np.arange(9, dtype=np.int16))
  table = pa.table({
      "request_id": pa.array([10, 11, None], pa.int64()),
      "features": pa.FixedSizeListArray.from_arrays(values, 3),
  })
  block = features.parse_arrow_batch(table.to_batches()[0], SPEC, "f.parquet")
  assert block.batch.request_ids.to_pylist() == ["10", "11"]
  np.testing.assert_array_equal(block.batch.features, [[0, 1, 2], [3, 4, 5]])
  assert [r.reason for _, r in block.rejected] == [contract.MISSING_FIELD]


def test_json_and_parquet_agree_on_the_float32_overflow():
  largest = float(np.finfo(np.float32).max)
  overflow = 2.0**128 - 2.0**103  # the smallest magnitude float32 makes inf
  below = np.nextafter(overflow, 0.0)
  for value, accepted in ((largest * (1 + 1e-9), True), (below, True),
                          (overflow, False)):
    line = json.dumps(record(features=[1.0, 2.0, value]))
    from_json = features.parse_json_line(line, SPEC)
    table = pa.table({"request_id": ["r1"],
                      "features": [[1.0, 2.0, value]]})
    from_parquet = features.parse_arrow_batch(table, SPEC, "f.parquet")
    assert (not isinstance(from_json, contract.Rejected)) is accepted
    assert (len(from_parquet.batch) == 1) is accepted


def test_arrow_dictionary_encoded_request_ids():
  # pandas categories arrive from Parquet as dictionaries of strings.
  table = pa.table({
      "request_id": pa.array(["a", "b", "a"]).dictionary_encode(),
      "features": [[1.0, 2.0, 3.0]] * 3,
  })
  block = features.parse_arrow_batch(table, SPEC, "f.parquet")
  assert block.batch.request_ids.to_pylist() == ["a", "b", "a"]
  assert block.rejected == []


def test_arrow_feature_columns():
  table = pa.table({"request_id": ["x", "y", "z"], "a": [1.0, 2.0, 3.0],
                    "b": pa.array([1, None, 3], pa.int32()),
                    "c": [0.5, 0.5, float("nan")], "ignored": ["p", "q", "r"]})
  block = features.parse_arrow_batch(table, COLUMNS_SPEC, "f.parquet")
  assert block.batch.request_ids.to_pylist() == ["x"]
  np.testing.assert_array_equal(block.batch.features, [[1.0, 1.0, 0.5]])
  assert [(r.reason, r.detail) for _, r in block.rejected] == [
      (contract.MISSING_FIELD, "b"), (features.NON_FINITE_FEATURE, "a,b,c")]
  assert json.loads(block.rejected[0][0]) == {"request_id": "y", "a": 2.0,
                                              "b": None, "c": 0.5}


@pytest.mark.parametrize("table,reason,detail", [
    (pa.table({"features": [[1.0, 2.0, 3.0]]}), contract.MISSING_FIELD,
     "request_id"),
    (pa.table({"request_id": [1.5], "features": [[1.0, 2.0, 3.0]]}),
     contract.WRONG_TYPE, "request_id"),
    (pa.table({"request_id": ["r"]}), contract.MISSING_FIELD, "features"),
    (pa.table({"request_id": ["r"], "features": [["1", "2", "3"]]}),
     contract.WRONG_TYPE, "features"),
    (pa.table({"request_id": ["r"], "features": [1.0]}), contract.WRONG_TYPE,
     "features"),
])
def test_arrow_column_problems_reject_every_row(table, reason, detail):
  block = features.parse_arrow_batch(table, SPEC, "f.parquet")
  assert len(block.batch) == 0
  assert [(r.reason, r.detail) for _, r in block.rejected] == [(reason,
                                                                detail)]


def test_feature_batch_raw_rows_are_json_records():
  batch = features.FeatureBatch(pa.array(["a"]),
                                np.array([[0.5, 1.0, 2.0]], np.float32))
  assert [json.loads(raw) for raw in batch.raw_rows()] == [
      {"request_id": "a", "features": [0.5, 1.0, 2.0]}]


# Model outputs.

SIGMOID_A = np.array([[0.9], [0.2], [0.6], [0.4]])
SIGMOID_B = np.array([[0.7], [0.4], [0.3], [0.45]])
SIGMOID_C = np.array([[0.1], [0.8], [0.55], [0.3]])
SOFTMAX_A = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]])
SOFTMAX_B = np.array([[0.2, 0.5, 0.3], [0.2, 0.2, 0.6]])


def test_predicted_classes():
  np.testing.assert_array_equal(predictions.predicted_classes(SIGMOID_A),
                                [1, 0, 1, 0])
  np.testing.assert_array_equal(predictions.predicted_classes(SOFTMAX_A),
                                [0, 2])
  assert predictions.as_matrix(np.array([0.1, 0.9])).shape == (2, 1)


def test_mean_and_vote_ensembles():
  np.testing.assert_allclose(
      predictions.combine([SIGMOID_A, SIGMOID_B, SIGMOID_C], predictions.MEAN),
      (SIGMOID_A + SIGMOID_B + SIGMOID_C) / 3)
  # Votes for class 1: row 0: a, b; row 1: c; row 2: a, c; row 3: none.
  votes = predictions.combine([SIGMOID_A, SIGMOID_B, SIGMOID_C],
                              predictions.VOTE)
  np.testing.assert_allclose(votes, [[2 / 3], [1 / 3], [2 / 3], [0]])
  np.testing.assert_array_equal(predictions.predicted_classes(votes),
                                [1, 0, 1, 0])
  multi = predictions.combine([SOFTMAX_A, SOFTMAX_B], predictions.VOTE)
  np.testing.assert_allclose(multi, [[0.5, 0.5, 0], [0, 0, 1]])
  # A tie goes to the lower class.
  np.testing.assert_array_equal(predictions.predicted_classes(multi), [0, 2])
  with pytest.raises(ValueError, match="output shape"):
    predictions.combine([SIGMOID_A, SOFTMAX_A], predictions.MEAN)


def scored(**outputs):
  rows = len(next(iter(outputs.values())))
  return predictions.ScoredBatch(pa.array([f"r{i}" for i in range(rows)]),
                                 {k: np.asarray(v, np.float32)
                                  for k, v in outputs.items()},
                                 "2026-11-21T00:00:00.000000Z")


def rows_of(batches):
  return [row for batch in batches for row in batch.rows()]


def test_score_batches_single_and_multi_output():
  batches = predictions.score_batches(scored(s=SIGMOID_A[:2], m=SOFTMAX_A),
                                      predictions.CLASSIFICATION)
  assert [batch.table.num_rows for batch in batches] == [2, 2]
  rows = rows_of(batches)
  assert [(r["model"], r["request_id"], r["predicted_class"]) for r in rows] \
      == [("s", "r0", 1), ("s", "r1", 0), ("m", "r0", 0), ("m", "r1", 2)]
  # Values are the model's float32 outputs, exactly.
  assert rows[0]["prediction"] == np.float32(0.9)
  assert batches[0].table["prediction"].type == pa.float32()
  assert list(rows[0]["scores"]) == []
  assert "prediction" not in rows[2]
  assert rows[3]["scores"] == SOFTMAX_A[1].astype(np.float32).tolist()
  assert {r["scored_at"] for r in rows} == {"2026-11-21T00:00:00.000000Z"}
  [regression] = predictions.score_batches(scored(s=SIGMOID_A),
                                           predictions.REGRESSION)
  assert "predicted_class" not in regression.rows()[0]


def test_ensemble_batch():
  config = predictions.ScoringConfig(("a", "b"), predictions.ENSEMBLE,
                                     predictions.MEAN)
  rows = predictions.ensemble_batch(scored(a=SIGMOID_A, b=SIGMOID_B),
                                    config).rows()
  assert [r["model"] for r in rows] == ["mean(a,b)"] * 4
  assert [r["prediction"] for r in rows] == pytest.approx([0.8, 0.3, 0.45,
                                                           0.425])
  assert [r["predicted_class"] for r in rows] == [1, 0, 0, 0]


def test_shadow_batches_and_totals():
  config = predictions.ScoringConfig(("base", "new"), predictions.SHADOW,
                                     baseline="base")
  batches, totals = predictions.shadow_batches(
      scored(base=SIGMOID_A, new=SIGMOID_B), config)
  rows = rows_of(batches)
  base_rows = [r for r in rows if r["model"] == "base"]
  new_rows = [r for r in rows if r["model"] == "new"]
  assert all("abs_diff" not in r for r in base_rows)
  assert [r["abs_diff"] for r in new_rows] == pytest.approx([0.2, 0.2, 0.3,
                                                             0.05])
  assert [r["baseline_prediction"] for r in new_rows] == pytest.approx(
      SIGMOID_A[:, 0])
  assert [r["agrees"] for r in new_rows] == [True, True, False, True]
  assert list(totals) == ["new"]
  summary = totals["new"].summary()
  assert summary["rows"] == 4
  assert summary["mean_abs_diff"] == pytest.approx(0.75 / 4)
  assert summary["mean_diff"] == pytest.approx((-0.2 + 0.2 - 0.3 + 0.05) / 4)
  assert summary["max_abs_diff"] == pytest.approx(0.3)
  assert summary["agreement_rate"] == 0.75


def test_shadow_totals_merge_like_one_batch():
  whole = predictions.compare(SIGMOID_C, SIGMOID_A,
                              predictions.CLASSIFICATION)[1]
  parts = [predictions.compare(SIGMOID_C[i:i + 1], SIGMOID_A[i:i + 1],
                               predictions.CLASSIFICATION)[1]
           for i in range(4)]
  merged = predictions.sum_totals(reversed(parts))
  assert merged.rows == whole.rows and merged.agreements == whole.agreements
  assert merged.summary() == pytest.approx(whole.summary())
  regression = predictions.sum_totals([predictions.compare(
      SIGMOID_C, SIGMOID_A, predictions.REGRESSION)[1]])
  assert regression.summary()["agreement_rate"] is None
  assert predictions.sum_totals([]).summary()["mean_abs_diff"] is None


@pytest.mark.parametrize("config,message", [
    (predictions.ScoringConfig(()), "at least one"),
    (predictions.ScoringConfig(("a", "b"), predictions.ENSEMBLE,
                               predictions.VOTE,
                               task=predictions.REGRESSION), "vote"),
    (predictions.ScoringConfig(("a", "b"), predictions.SHADOW), "baseline"),
    (predictions.ScoringConfig(("a", "b"), predictions.SHADOW,
                               baseline="c"), "baseline"),
    (predictions.ScoringConfig(("a",), predictions.SHADOW, baseline="a"),
     "besides"),
])
def test_invalid_scoring_configs(config, message):
  with pytest.raises(ValueError, match=message):
    config.validate()


def test_click_data_is_seeded_and_learnable():
  x, y = click_data.generate_clicks(20_000, seed=3)
  again, _ = click_data.generate_clicks(20_000, seed=3)
  assert x.shape == (20_000, click_data.NUM_FEATURES) and x.dtype == np.float32
  np.testing.assert_array_equal(x, again)
  assert set(np.unique(y)) == {0, 1}
  # The true probabilities separate clicks from non-clicks.
  p = click_data.click_probability(x)
  assert ((p > 0.5) == y).mean() > 0.75
  assert click_data.request_ids(2) == ["req-00000000", "req-00000001"]

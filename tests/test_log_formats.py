"""Serving stacks' own logs (Vertex AI, KServe v2, Seldon Core v2 / Open
Inference Protocol): fixtures written from the formats' public documentation
run through the batch pipeline; malformed records are dead-lettered."""

import collections
import json
import pathlib
import re

import apache_beam as beam
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that
from apache_beam.testing.util import equal_to
import pytest

from pipelines import reward_batch
from transforms.attribution import rewards
from transforms.decisions import arm_table
from transforms.logs import batches
from transforms.logs import contract
from transforms.logs import formats
from transforms.logs import sources

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "log_sources"
ENDPOINT = "projects/123/locations/us-central1/endpoints/456"

# (experiment, arm, impressions, feedback_count, reward_sum) per format, and
# the dead letters' (reason, detail), counted by hand from the fixtures.
EXPECTED = {
    "vertex": (
        [(ENDPOINT, "7001", 3, 2, 1.0), (ENDPOINT, "7002", 2, 2, 2.0)],
        [(contract.MISSING_FIELD, "deployed_model_id"),
         (contract.WRONG_TYPE, "request_id"),
         (contract.BAD_TIMESTAMP, "logging_time")]),
    "kserve_v2": (
        [("sklearn-iris", "default", 2, 1, 1.0),
         ("sklearn-iris", "canary", 1, 1, 1.0),
         ("sklearn-iris", "sklearn-iris:v2", 1, 1, 0.0)],
        [(contract.MISSING_FIELD, "inferenceservicename"),
         (contract.MISSING_FIELD, "timestamp")]),
    "seldon_v2": (
        [("iris", "iris_1", 1, 1, 1.0), ("iris", "iris2_1", 2, 1, 1.0),
         ("tfsimple-ab", "tfsimple1_1", 1, 1, 0.5)],
        [(contract.WRONG_TYPE, "headers.x-seldon-route"),
         (contract.WRONG_TYPE, "model_version"),
         (contract.WRONG_TYPE, "outputs")]),
}


def fixture(name):
  return str(FIXTURES / name)


def run_fixture(name, log_format=contract.AUTO):
  p = TestPipeline(runner="FnApiRunner")
  outputs = p | reward_batch.RewardAggregation(
      sources.LogSource(files=fixture(f"{name}_predictions.jsonl"),
                        log_format=log_format),
      fixture(f"{name}_feedback.jsonl"),
      rewards.AttributionConfig(with_predictions=True),
      arm_table.StatisticsConfig(), join_shards=2,
      sampling_rates={None: 0.5})
  return p, outputs


@pytest.mark.parametrize("name,log_format", [
    ("vertex", contract.AUTO), ("vertex", formats.VERTEX),
    ("kserve_v2", contract.AUTO), ("seldon_v2", contract.AUTO)])
def test_each_format_gives_the_expected_arms_and_dead_letters(name,
                                                              log_format):
  arms, dead = EXPECTED[name]
  p, outputs = run_fixture(name, log_format)
  assert_that(outputs["arm_stats"] | beam.Map(lambda r: (
      r["experiment_id"], r["arm"], r["impressions"], r["feedback_count"],
      r["reward_sum"])), equal_to(arms), label="Arms")
  assert_that(outputs["dead_letter"] | beam.Map(lambda r: (
      r["reason"], r["detail"])), equal_to(dead), label="DeadLetters")
  # Sampled at half the requests: twice the logged predictions per experiment.
  per_experiment = collections.Counter()
  for experiment, _, impressions, _, _ in arms:
    per_experiment[experiment] += impressions
  assert_that(
      outputs["data_quality"]
      | beam.Filter(lambda r: r["metric"].startswith("estimated_requests:"))
      | beam.Map(lambda r: (r["metric"], r["count"])),
      equal_to([(f"estimated_requests:{e}", 2 * n)
                for e, n in per_experiment.items()]), label="Estimated")
  with p:
    pass


def test_numeric_feedback_ids_match_their_predictions():
  import decimal
  import pyarrow as pa
  feedback = pa.table({
      "request_id": pa.array([decimal.Decimal("1001"), None],
                             pa.decimal128(38, 9)),
      "timestamp": pa.array([1.7e9, 1.7e9]), "reward": [1.0, 1.0]})
  result = batches.parse_arrow_batch(feedback, contract.FEEDBACK, "bq")
  assert result.table["request_id"].to_pylist() == ["1001"]
  assert [r.detail for _, r in result.rejected] == ["request_id"]


def test_vertex_format_flag_reads_vertex_rows_column_wise_and_agrees():
  block = pathlib.Path(fixture("vertex_predictions.jsonl")).read_bytes()
  # The first four: request ids as text, as BigQuery exports NUMERIC.
  valid = b"".join(line for line in block.splitlines(keepends=True)[:4])
  flagged = batches.parse_json_block(valid, contract.PREDICTION, "f",
                                     log_format=formats.VERTEX)
  detected = batches.parse_json_block(valid, contract.PREDICTION, "f")
  assert flagged.fast_rows == 4 and detected.fast_rows == 0
  assert flagged.table.to_pylist() == detected.table.to_pylist()
  assert flagged.table["request_id"].to_pylist()[3] == (
      "98765432109876543210987")


def test_vertex_flag_dead_letters_records_of_other_formats():
  record = json.dumps({"request_id": "12", "timestamp": 1.0,
                       "experiment_id": "e", "arm": "a"})
  assert contract.parser(contract.PREDICTION, formats.VERTEX)(record) == (
      contract.Rejected(contract.MISSING_FIELD, "logging_time"))
  assert contract.parser(contract.FEEDBACK, formats.VERTEX) is (
      contract.parse_feedback)


@pytest.mark.parametrize("value,expected", [
    (12, "12"), ("12", "12"), ("12.000000000", "12"), ("1.500000000", "1.5"),
    ("98765432109876543210987.000000000", "98765432109876543210987"),
    ("-0.000000000", "0"), ("0.000000001", "0.000000001")])
def test_numeric_request_ids_are_exact_decimal_text(value, expected):
  assert formats.decimal_text(value) == expected


@pytest.mark.parametrize("value", [1.5, True, "1e3", "12.", "", None, "0x1"])
def test_request_ids_that_are_not_exact_decimals_are_wrong_types(value):
  with pytest.raises(formats.FormatError):
    formats.decimal_text(value)


@pytest.mark.parametrize("values", [
    ["12", "1.5", "98765432109876543210987", "-3.25"],
    ["12", "0.000000001"]])  # Arrow writes 1e-9 as "1E-9".
def test_numeric_column_and_per_record_parser_agree(values):
  import decimal
  import pyarrow as pa
  table = pa.table({
      "endpoint": ["e"] * len(values),
      "deployed_model_id": ["m"] * len(values),
      "logging_time": pa.array([1.7e9] * len(values)),
      "request_id": pa.array([decimal.Decimal(v) for v in values],
                             pa.decimal128(38, 9))})
  result = batches.parse_arrow_batch(table, contract.PREDICTION, "bq")
  assert result.fast_rows == len(values)
  # The text BigQuery's JSON gives for NUMERIC, at its scale of 9 digits.
  scaled = [whole + "." + fraction.ljust(9, "0")
            for whole, _, fraction in (v.partition(".") for v in values)]
  assert result.table["request_id"].to_pylist() == [
      formats.decimal_text(text) for text in scaled] == values


@pytest.mark.parametrize("split,expected", [
    ({"7001": 80, "7002": 20}, "7001=0.8,7002=0.2"),
    ({"7002": 50, "7001": 50, "7003": 0}, "7001=0.5,7002=0.5"),
    ({"7001": 100}, "7001=1"),
    ({"a": 1, "b": 2}, "a=0.333333,b=0.666667"),
])
def test_traffic_split_to_expected_allocation(split, expected):
  text = formats.allocation_from_traffic_split(split)
  assert text == expected
  # ... in the form --expected_allocation takes, shares summing to 1.
  from transforms import options as opts
  assert sum(opts.parse_allocation(text).values()) == pytest.approx(1.0,
                                                                    abs=1e-5)


@pytest.mark.parametrize("split", [{}, {"a": 0}, {"a": -5, "b": 105},
                                   {"a": "80"}])
def test_bad_traffic_splits_are_refused(split):
  with pytest.raises(ValueError):
    formats.allocation_from_traffic_split(split)


def test_seldon_route_header_beats_model_name_and_case_is_ignored():
  response = {"model_name": "iris", "model_version": "3", "id": "r",
              "outputs": [], "timestamp": 1.7e9,
              "headers": {"X-SELDON-ROUTE": ":iris2_1:"}}
  assert contract.parse_prediction(json.dumps(response))["arm"] == "iris2_1"
  del response["headers"]
  assert contract.parse_prediction(json.dumps(response))["arm"] == "iris:3"
  response["experiment_id"] = "ab"
  assert contract.parse_prediction(json.dumps(response))[
      "experiment_id"] == "ab"


def doc_examples():
  """(record type, expected fields, record) of each example in the doc."""
  text = (pathlib.Path(__file__).parent.parent / "docs" /
          "log-sources.md").read_text()
  found = re.findall(r"<!-- tested: (\w+) (.*?) -->\n```json\n(.*?)\n```",
                     text)
  return [(record_type, dict(pair.split("=", 1) for pair in fields.split()),
           record) for record_type, fields, record in found]


def test_the_doc_has_an_example_for_every_stack():
  text = (pathlib.Path(__file__).parent.parent / "docs" /
          "log-sources.md").read_text()
  sections = dict(re.findall(r"^## (.+?)\n(.*?)(?=^## |\Z)", text,
                             flags=re.M | re.S))
  stacks = ("Vertex AI", "KServe", "Seldon Core v1", "Seldon Core v2 / MLServer",
            "Your own service")
  assert [stack for stack in stacks
          if "<!-- tested:" not in sections.get(stack, "")] == []


@pytest.mark.parametrize("record_type,expected,record", doc_examples())
def test_each_doc_example_parses_to_what_the_doc_says(record_type, expected,
                                                      record):
  parsed = contract.PARSERS[record_type](record)
  assert not isinstance(parsed, contract.Rejected), parsed
  assert {name: parsed[name] for name in expected} == expected


@pytest.mark.parametrize("text,expected", [
    ("0.1", {None: 0.1}), ("1", {None: 1.0}),
    ("projects/1/locations/x/endpoints/42=0.25,e2=1",
     {"projects/1/locations/x/endpoints/42": 0.25, "e2": 1.0}), (None, {})])
def test_sampling_rates(text, expected):
  from transforms import options as opts
  assert opts.parse_sampling_rate(text) == expected


@pytest.mark.parametrize("text", ["0", "1.5", "e=0", "e=2"])
def test_sampling_rates_outside_zero_to_one_are_refused(text):
  from transforms import options as opts
  with pytest.raises(ValueError, match="not in|positive weight"):
    opts.parse_sampling_rate(text)


def test_a_run_without_any_feedback_source_says_so(tmp_path, capsys):
  with pytest.raises(SystemExit) as stop:
    reward_batch.run([f"--predictions={fixture('vertex_predictions.jsonl')}",
                      f"--output_dir={tmp_path}"])
  assert stop.value.code == 2
  assert ("required: --feedback, --feedback_table or --feedback_query"
          in capsys.readouterr().err)

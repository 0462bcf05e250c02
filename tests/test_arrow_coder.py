"""Arrow tables cross the shuffle as compressed IPC streams."""

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
import pyarrow as pa

from pipelines import reward_batch
from transforms.io import arrow_coder


def test_round_trip_keeps_values_types_and_dictionaries():
  table = pa.table({
      "request_id": ["a", None, "c"],
      "ts": [1.5, 2.0, None],
      "arm": pa.array(["x", "y", "x"]).dictionary_encode(),
      "raw": ['{"request_id": "a"}', "", "naïve"],
  })
  coder = arrow_coder.ArrowTableCoder()
  decoded = coder.decode(coder.encode(table))
  assert decoded.equals(table)
  assert decoded.schema == table.schema


def test_repetitive_log_lines_encode_smaller_than_pickled():
  line = '{"request_id": "r-%07d", "timestamp": 1700000000, "reward": 1.0}'
  table = pa.table({"raw": [line % i for i in range(5000)]})
  assert len(arrow_coder.ArrowTableCoder().encode(table)) < (
      table.nbytes / 2)


def test_the_attribution_shuffle_encodes_tables_with_it(tmp_path):
  pipeline = beam.Pipeline(options=PipelineOptions(["--runner=FnApiRunner"]))
  reward_batch.build(pipeline, PipelineOptions([
      f"--predictions={tmp_path}/p.jsonl", f"--feedback={tmp_path}/f.jsonl",
      f"--output_dir={tmp_path}/out"]))
  components = pipeline.to_runner_api().components
  [group] = [t for t in components.transforms.values()
             if t.unique_name.endswith("AttributeRewards/JoinRequests/GroupShards")]
  [input_id] = group.inputs.values()

  def coder_names(coder_id):
    coder = components.coders[coder_id]
    yield coder_id
    for component in coder.component_coder_ids:
      yield from coder_names(component)

  assert any("ArrowTableCoder" in name for name in coder_names(
      components.pcollections[input_id].coder_id))

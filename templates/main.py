"""Flex Template entry point: submits the pipeline this image was built for.

The launcher runs `python templates/main.py --PARAMETER=VALUE ...` with the
template parameters and Dataflow's options; $ONLINE_EVAL_PIPELINE (the
Dockerfile's PIPELINE build argument) names the pipeline in
`templates.registry.PIPELINES`.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from templates import registry

PIPELINE_ENV = "ONLINE_EVAL_PIPELINE"


def build_pipeline(name: str, argv) -> beam.Pipeline:
  """The pipeline `name` built from command-line arguments, not yet run."""
  template = registry.PIPELINES[name]
  module = importlib.import_module(template.module)
  # Set before build(): the sinks choose their BigQuery write method by it.
  mode = {"streaming": True} if template.streaming else {}
  pipeline_options = PipelineOptions(argv, **mode)
  pipeline = beam.Pipeline(options=pipeline_options)
  module.build(pipeline, pipeline_options)
  return pipeline


def main(argv=None):
  """Submit without waiting: the launcher only has to create the job."""
  return build_pipeline(os.environ[PIPELINE_ENV], argv).run()


if __name__ == "__main__":
  logging.getLogger().setLevel(logging.INFO)
  main(sys.argv[1:])

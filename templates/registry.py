"""The pipelines that have a Flex Template, and their launch parameters.

One line per pipeline in `PIPELINES`; `python -m templates.generate` writes
templates/<name>/metadata.json from that pipeline's options. Standard library
only: the Airflow DAGs import this module to check their parameters against
the metadata, without Beam installed.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib

TEMPLATES_DIR = pathlib.Path(__file__).resolve().parent


@dataclasses.dataclass(frozen=True)
class Pipeline:
  module: str  # Defines OPTION_CLASSES and build(pipeline, options).
  streaming: bool = False


PIPELINES = {
    "reward_batch": Pipeline("pipelines.reward_batch"),
    "reward_streaming": Pipeline("pipelines.reward_streaming", streaming=True),
    "batch_inference": Pipeline("pipelines.batch_inference"),
    "training_export": Pipeline("pipelines.training_export"),
    "policy_evaluation": Pipeline("pipelines.policy_evaluation"),
    "model_evaluation": Pipeline("pipelines.model_evaluation"),
}


def metadata_path(name: str) -> pathlib.Path:
  if name not in PIPELINES:
    raise KeyError(f"no template {name!r}; known: {', '.join(PIPELINES)}")
  return TEMPLATES_DIR / name / "metadata.json"


def load_metadata(name: str) -> dict:
  return json.loads(metadata_path(name).read_text())


def template_parameters(name: str, **values) -> dict[str, str]:
  """Launch parameters of template `name`, checked against its metadata.

  None values are left out (the pipeline's default applies); the others
  become strings, as Flex Templates take them. Raises ValueError for a name
  the template does not declare or a required parameter left out.
  """
  declared = {p["name"]: p for p in load_metadata(name)["parameters"]}
  unknown = sorted(set(values) - set(declared))
  if unknown:
    raise ValueError(f"template {name} has no parameter {', '.join(unknown)}")
  parameters = {}
  for key, value in values.items():
    if isinstance(value, (list, tuple, dict, set)):
      raise TypeError(f"{name}.{key}: a template parameter is one string")
    if value is not None:
      parameters[key] = str(value)
  missing = sorted(key for key, spec in declared.items()
                   if not spec["isOptional"] and key not in parameters)
  if missing:
    raise ValueError(f"template {name} needs {', '.join(missing)}")
  return parameters

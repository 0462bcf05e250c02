"""Write every template's metadata.json from its pipeline's options.

  python -m templates.generate           # write templates/<name>/metadata.json
  python -m templates.generate --check   # exit 1 if a checked-in file differs

Parameters come from the pipeline's `OPTION_CLASSES`, i.e. the `Option`
declarations (transforms/options.py and the pipeline module): name, label,
help text, regexes (plus one for `choices`) and Flex Template paramType.
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
import sys
from unittest import mock

from templates import registry
from transforms import options as opts


class _NoRawArguments:
  """Parser stand-in: the options classes must add only declared `Option`s."""

  def add_argument(self, *flags, **kwargs):
    raise ValueError(f"{flags[0]} is added without an Option declaration "
                     "(transforms/options.py): it cannot be a template "
                     "parameter")


def declared_options(option_classes) -> list[opts.Option]:
  """The `Option`s the classes add to their parser, in order."""
  declared = []

  def record(parser, options):
    declared.extend(options)

  # Every class adds its options through `opts.add_options`: recording its
  # calls yields the declarations themselves, labels and regexes included.
  with mock.patch.object(opts, "add_options", record):
    for option_class in option_classes:
      option_class._add_argparse_args(_NoRawArguments())
  names = [option.name for option in declared]
  duplicates = sorted({name for name in names if names.count(name) > 1})
  if duplicates:
    raise ValueError(f"options declared twice: {', '.join(duplicates)}")
  return declared


def parameter(option: opts.Option) -> dict:
  regexes = list(option.regexes)
  if option.choices:
    regexes.append("^(" + "|".join(re.escape(str(choice))
                                   for choice in option.choices) + ")$")
  return {"name": option.name, "label": option.label, "helpText": option.help,
          "isOptional": option.is_optional, "regexes": regexes,
          "paramType": option.param_type or "TEXT"}


def metadata(name: str) -> dict:
  pipeline = registry.PIPELINES[name]
  module = importlib.import_module(pipeline.module)
  return {
      "name": name,
      "description": module.__doc__.strip().splitlines()[0],
      "streaming": pipeline.streaming,
      "parameters": [parameter(option)
                     for option in declared_options(module.OPTION_CLASSES)],
  }


def render(name: str) -> str:
  return json.dumps(metadata(name), indent=2) + "\n"


def outdated() -> list[str]:
  """Templates whose checked-in metadata.json differs from the options."""
  stale = []
  for name in registry.PIPELINES:
    path = registry.metadata_path(name)
    if not path.exists() or path.read_text() != render(name):
      stale.append(name)
  return stale


def write_all() -> None:
  for name in registry.PIPELINES:
    path = registry.metadata_path(name)
    path.parent.mkdir(exist_ok=True)
    path.write_text(render(name))


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--check", action="store_true",
                      help="write nothing; exit 1 if a metadata.json differs")
  args = parser.parse_args(argv)
  if not args.check:
    write_all()
    return 0
  stale = outdated()
  for name in stale:
    print(f"{registry.metadata_path(name)} differs from the options of "
          f"{registry.PIPELINES[name].module}: run python -m templates.generate")
  return 1 if stale else 0


if __name__ == "__main__":
  sys.exit(main())

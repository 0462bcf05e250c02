"""The layout holds: the pure core imports no Beam, imports run one way, no cycles."""

import ast
import pathlib
import subprocess
import sys

import pytest

import transforms

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGES = ("pipelines", "transforms", "emulators", "simulation", "reporting")
TOOLING = ("emulators", "simulation", "reporting")

_BLOCK_BEAM = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path=None, target=None):
    if name == "apache_beam" or name.startswith("apache_beam."):
      raise ImportError(f"{name} is blocked: this module must not need Beam")
sys.meta_path.insert(0, Block())
import importlib
importlib.import_module(sys.argv[1])
"""


def _modules():
  """Our module names -> their source files."""
  found = {}
  for package in PACKAGES:
    for path in (ROOT / package).rglob("*.py"):
      parts = path.relative_to(ROOT).with_suffix("").parts
      if parts[-1] == "__init__":
        parts = parts[:-1]
      found[".".join(parts)] = path
  return found


def _imports(path: pathlib.Path, modules) -> dict[str, bool]:
  """Our modules imported by a file -> whether at module level."""
  tree = ast.parse(path.read_text())
  top_level = {id(node) for node in tree.body}
  found = {}

  def add(name, node):
    while name and name not in modules:
      name = name.rpartition(".")[0]
    if name:
      found[name] = found.get(name, False) or id(node) in top_level

  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      for alias in node.names:
        add(alias.name, node)
    elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
      for alias in node.names:
        full = f"{node.module}.{alias.name}"
        add(full if full in modules else node.module, node)
  return found


def _tier(module: str) -> int:
  if module in transforms.PURE_CORE:
    return 0
  if module.split(".")[0] == "transforms":
    return 1
  if module.split(".")[0] in TOOLING:
    return 2
  return 3


MODULES = _modules()
GRAPH = {name: _imports(path, MODULES) for name, path in MODULES.items()}


def test_the_pure_core_is_named_and_exists():
  missing = [name for name in transforms.PURE_CORE if name not in MODULES]
  assert not missing


@pytest.mark.parametrize("module", transforms.PURE_CORE)
def test_pure_core_imports_without_beam(module):
  result = subprocess.run([sys.executable, "-c", _BLOCK_BEAM, module],
                          cwd=ROOT, capture_output=True, text=True)
  assert result.returncode == 0, result.stderr.strip().splitlines()[-1]


def test_imports_run_one_way():
  """pipelines -> tooling -> Beam composites -> pure core, never back."""
  tier_names = ("pure core", "Beam transforms", "local tooling", "pipelines")
  wrong = [f"{source} ({tier_names[_tier(source)]}) imports {target} "
           f"({tier_names[_tier(target)]})"
           for source, targets in GRAPH.items() for target in targets
           if _tier(target) > _tier(source)
           or (target.split(".")[0] == "pipelines"
               and source.split(".")[0] != "pipelines")]
  assert not wrong


def test_no_import_cycles():
  edges = {source: [t for t, top in targets.items() if top and t != source
                    and not source.startswith(t + ".")]
           for source, targets in GRAPH.items()}
  cycles = []
  state = {}

  def visit(node, path):
    state[node] = "open"
    for target in edges.get(node, ()):
      if state.get(target) == "open":
        cycles.append(path[path.index(target):] + [target])
      elif target not in state:
        visit(target, path + [target])
    state[node] = "done"

  for node in edges:
    if node not in state:
      visit(node, [node])
  assert not cycles

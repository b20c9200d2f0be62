"""The house rules of the package layout: the machinery (`reasonjax.training`) never imports a
program (`reasonjax.programs`), and no two modules of the package or the configs import each
other, directly or through others (module-level imports and imports inside functions alike)."""

import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _modules() -> dict[str, str]:
  """Module name -> file, for reasonjax/ and configs/."""
  out = {}
  for top in ("reasonjax", "configs"):
    for folder, _, files in os.walk(os.path.join(ROOT, top)):
      for name in files:
        if name.endswith(".py"):
          rel = os.path.relpath(os.path.join(folder, name), ROOT)[:-3].replace(os.sep, ".")
          out[rel.removesuffix(".__init__")] = os.path.join(folder, name)
  return out


def _imports(path: str, modules: dict[str, str]) -> set[str]:
  """The project modules a file imports (`from a import b` counts a.b, not a, when b is a
  module: importing a package's submodule is not importing the package's other modules)."""
  with open(path, encoding="utf-8") as f:
    tree = ast.parse(f.read())
  found = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
      subs = [f"{node.module}.{a.name}" for a in node.names]
      names = [n if n in modules else node.module for n in subs]
    else:
      continue
    found.update(n for n in names if n in modules)
  return found


def _graph() -> dict[str, set[str]]:
  modules = _modules()
  # A package's __init__ importing its own submodules is how packages expose them, not a cycle.
  return {m: {d for d in _imports(p, modules) if not d.startswith(m + ".")}
          for m, p in modules.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
  """One import cycle as a path of module names, or None."""
  state: dict[str, int] = {}  # 1: on the current path, 2: done.
  stack: list[str] = []

  def visit(m):
    state[m] = 1
    stack.append(m)
    for d in sorted(graph.get(m, ())):
      if state.get(d) == 1:
        return stack[stack.index(d):] + [d]
      if d not in state and (found := visit(d)):
        return found
    state[m] = 2
    stack.pop()
    return None

  for m in sorted(graph):
    if m not in state and (found := visit(m)):
      return found
  return None


def test_the_machinery_never_imports_a_program():
  graph = _graph()
  bad = {m: sorted(d for d in deps if d.startswith("reasonjax.programs"))
         for m, deps in graph.items() if m.startswith("reasonjax.training")}
  assert not {m: d for m, d in bad.items() if d}


def test_no_import_cycles():
  assert _cycle(_graph()) is None


def test_the_cycle_finder_finds_one():
  graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
  assert _cycle(graph) == ["a", "b", "c", "a"]
  assert _cycle({"a": {"b"}, "b": set()}) is None

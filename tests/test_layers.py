"""The layers of adapt3d, enforced: a package imports only itself and packages below it, and no modules import each
other in a cycle. Every import counts: top-level, inside functions (they run too), relative, and
``importlib.import_module("adapt3d....")`` with a constant name.

``LAYERS`` is the one written statement of the order (docs/architecture.md points here). Lowest first:

- ``configs``: the architecture configs of the released models (JSON data; imports nothing of adapt3d);
- ``utils`` .. ``metrics``: the shared core, each layer using only those below it;
- ``training``, ``baselines``, ``dst``, ``inversion``: the methods (``baselines`` holds what the methods are measured
  against, e.g. per-prompt SDS; it needs only diffusion, models, cameras);
- ``pipelines``: one module per command, the shared stages, and the command registry;
- ``studio``: the browser front end over the registry (jobs run as ``python -m adapt3d`` subprocesses, so it never
  needs the command line);
- ``cli``: the ``adapt3d`` command, the top front end: it offers every registry command and ``studio``, so it
  sits above the studio;
- ``testing``: pytest fixtures and test helpers; no production module imports it. (The tiny model builders that
  the ``tiny`` presets need live in ``diffusion.tiny_models``.)

Modules directly under ``adapt3d/``: ``__init__`` imports nothing of adapt3d (every import runs it), ``__main__`` is
the ``python -m adapt3d`` entry point and may import anything.
"""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path

import pytest

LAYERS = ("configs", "utils", "cameras", "rendering", "models", "diffusion", "clip", "export", "data", "metrics", "training",
          "baselines", "dst", "inversion", "pipelines", "studio", "cli", "testing")

SRC = Path(__file__).resolve().parents[1] / "src"


def module_files(src: Path, top: str = "adapt3d") -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package ``top`` under ``src``."""
    mods = {}
    for path in sorted((src / top).rglob("*.py")):
        parts = path.relative_to(src).with_suffix("").parts
        mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return mods


def _targets(module: str, is_package: bool, node: ast.AST, known: dict[str, Path]) -> list[str]:
    """The modules an import node loads, resolved to names in ``known`` (a package and the submodules it names)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
        if node.level:
            base = module.split(".") if is_package else module.split(".")[:-1]
            base = base[:len(base) - node.level + 1]
            mod = ".".join(base + ([node.module] if node.module else []))
        else:
            mod = node.module or ""
        names = [mod] + [f"{mod}.{a.name}" for a in node.names if f"{mod}.{a.name}" in known]
    elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
          and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
        names = [node.args[0].value]
    else:
        return []
    out = []
    for name in names:
        while name and name not in known and "." in name:  # `from pkg.mod import function` -> pkg.mod
            name = name.rsplit(".", 1)[0]
        if name in known and name != module:
            out.append(name)
    return out


def import_graph(src: Path, top: str = "adapt3d") -> dict[str, list[tuple[int, str]]]:
    """module -> [(line, imported module)] over every import in the module, at any depth."""
    known = module_files(src, top)
    graph: dict[str, list[tuple[int, str]]] = {}
    for module, path in known.items():
        edges = graph.setdefault(module, [])
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            for target in _targets(module, path.name == "__init__.py", node, known):
                edges.append((node.lineno, target))
    return graph


def layer_violations(src: Path, layers: tuple[str, ...] = LAYERS, top: str = "adapt3d") -> list[str]:
    """'file:line: a -> b (layer x imports higher layer y)' for every import that goes up (or out of the order)."""
    rank = {name: i for i, name in enumerate(layers)}
    files = module_files(src, top)
    bad = []
    for module, edges in import_graph(src, top).items():
        where = files[module].relative_to(src)
        for line, target in edges:
            if module == top:
                bad.append(f"{where}:{line}: {module} -> {target} ({top}/__init__.py must import nothing of {top})")
                continue
            if module == f"{top}.__main__":
                continue
            a, b = module.split(".")[1], target.split(".")[1] if "." in target else None
            if b is None or a == b:
                continue
            if a not in rank or b not in rank:
                bad.append(f"{where}:{line}: {module} -> {target} (package {a if a not in rank else b} has no "
                           "layer: add it to LAYERS)")
            elif rank[b] > rank[a]:
                bad.append(f"{where}:{line}: {module} -> {target} (layer {a} imports the higher layer {b})")
    return sorted(bad)


def import_cycles(src: Path, top: str = "adapt3d") -> list[list[str]]:
    """The strongly connected components (of more than one module) of the module import graph."""
    graph = {m: sorted({t for _, t in edges}) for m, edges in import_graph(src, top).items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles = []

    def visit(v: str) -> None:  # Tarjan; the graph has a few hundred nodes, recursion depth stays small
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return cycles


def test_every_package_has_a_layer():
    packages = {p.name for p in (SRC / "adapt3d").iterdir() if (p / "__init__.py").is_file()}
    assert packages == set(LAYERS), (f"packages without a layer: {sorted(packages - set(LAYERS))}; layers without "
                                     f"a package: {sorted(set(LAYERS) - packages)}")


def test_no_import_goes_up_a_layer():
    bad = layer_violations(SRC)
    assert not bad, "imports against the layer order (tests/test_layers.py LAYERS):\n" + "\n".join(bad)


def test_no_import_cycles():
    cycles = import_cycles(SRC)
    assert not cycles, "module import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def _tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / "src" / "pkg" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root / "src"


@pytest.mark.parametrize("code", [
    "from pkg.high.mod import thing\n",  # top level
    "def f():\n    from pkg.high import mod\n",  # inside a function
    "def f():\n    from ..high.mod import thing\n",  # relative, inside a function
    "import importlib\nm = importlib.import_module('pkg.high.mod')\n",  # by name
])
def test_the_checker_catches_an_upward_import(tmp_path, code):
    """A planted upward import is reported with its file and line, whatever form it takes."""
    src = _tree(tmp_path, {"__init__.py": "", "low/__init__.py": "", "low/core.py": code,
                           "high/__init__.py": "", "high/mod.py": "from pkg.low import core\nthing = 1\n"})
    bad = layer_violations(src, ("low", "high"), top="pkg")
    assert bad and all(b.startswith("pkg/low/core.py:") and "layer low imports the higher layer high" in b
                       for b in bad), bad
    assert layer_violations(src, ("high", "low"), top="pkg") != []  # the other order: high -> low is now upward


def test_the_checker_catches_cycles_and_unplaced_packages(tmp_path):
    src = _tree(tmp_path, {"__init__.py": "", "a/__init__.py": "", "a/x.py": "def f():\n    from pkg.a import y\n",
                           "a/y.py": "from . import x\n", "b/__init__.py": "", "b/z.py": "from pkg.a import x\n"})
    assert import_cycles(src, top="pkg") == [["pkg.a.x", "pkg.a.y"]]
    assert any("package b has no layer" in line for line in layer_violations(src, ("a",), top="pkg"))
    assert layer_violations(src, ("a", "b"), top="pkg") == []

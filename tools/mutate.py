"""Mutation testing of adapt3d's numerical core: plant one small bug at a time, run the tests that should catch it.

    python tools/mutate.py                                   # every target of [tool.adapt3d.mutation] in pyproject.toml
    python tools/mutate.py src/adapt3d/training/losses.py    # one target (as listed in the configuration)
    python tools/mutate.py src/adapt3d/diffusion/sds.py --list          # only list the mutants
    python tools/mutate.py src/adapt3d/metrics/lpips.py --max 40 --json out.json

Each mutant is one change of the module's syntax tree: an arithmetic operator (``+``/``-``, ``*``/``/``, ``**`` ->
``*``, ``//`` -> ``/``), an augmented assignment, a comparison (``<``/``<=``, ``>``/``>=``, ``==``/``!=``, ``is``,
``in``), ``and``/``or``, a dropped unary minus or ``not``, ``True``/``False``, an integer ``n -> n + 1`` or a float
``x -> x + 1``. Strings, docstrings, annotations, ``__all__`` and ``raise`` statements are left alone. A target may
restrict mutation to some functions (``functions = ["Trainer._phase_D", ...]``).

How it runs (2 CPU cores are scarce): the module is copied with the rest of ``src/`` into a temporary folder, torch
and the other heavy libraries are imported once, and every mutant runs in a forked child (``pytest.main`` on the
target's tests, ``-x``, the copy first on ``sys.path``), so nothing in the checkout is ever modified and a crash
leaves nothing behind. One unmutated run first records which lines of the module the tests execute; a mutant on a
line they never run is reported as ``uncovered`` without running. A mutant is ``killed`` when the tests fail (or it
does not import), ``timeout`` when they take more than ``--timeout-factor`` times the unmutated run (+30 s), else
it ``survived``. Survivors are printed with their line; docs/testing.md lists them with a reason or a killing test.

This is a habit, not a CI step: a module takes minutes to an hour. Requires Linux (fork) and Python 3.11+.
"""

from __future__ import annotations

import argparse
import ast
import copy
import json
import os
import shutil
import signal
import sys
import tempfile
import time
import tomllib
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PRELOAD = ("numpy", "torch", "scipy", "PIL.Image", "safetensors.torch", "transformers", "diffusers", "pytest")

BINOP_SWAPS = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult, ast.Pow: ast.Mult,
               ast.FloorDiv: ast.Div, ast.Mod: ast.FloorDiv}
CMP_SWAPS = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq,
             ast.NotEq: ast.Eq, ast.Is: ast.IsNot, ast.IsNot: ast.Is, ast.In: ast.NotIn, ast.NotIn: ast.In}
SYMBOL = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.Pow: "**", ast.FloorDiv: "//", ast.Mod: "%",
          ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=", ast.Eq: "==", ast.NotEq: "!=", ast.Is: "is",
          ast.IsNot: "is not", ast.In: "in", ast.NotIn: "not in", ast.And: "and", ast.Or: "or"}


@dataclass(frozen=True)
class Mutant:
    index: int  # position of the node in ast.walk order of the module
    slot: int  # which operator of a Compare
    kind: str
    line: int
    description: str


@dataclass
class Result:
    module: str
    mutant: Mutant
    status: str  # killed / survived / timeout / uncovered
    seconds: float
    source_line: str


# -- finding mutants ---------------------------------------------------------------------------------------------
def _excluded_nodes(tree: ast.Module) -> set[int]:
    """ids of nodes never mutated: docstrings, strings, annotations, __all__, raise statements."""
    out: set[int] = set()

    def drop(node):
        out.update(id(n) for n in ast.walk(node))
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) \
                    and isinstance(first.value.value, str):
                drop(first)
        if isinstance(node, (ast.JoinedStr, ast.Raise)):
            drop(node)
        if isinstance(node, ast.AnnAssign):
            drop(node.annotation)
        if isinstance(node, ast.arg) and node.annotation is not None:
            drop(node.annotation)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            if node.returns is not None:
                drop(node.returns)
            for d in node.decorator_list:
                drop(d)
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            drop(node)
    return out


def _function_nodes(tree: ast.Module, functions: list[str]) -> set[int] | None:
    """ids of nodes inside the named functions (``name`` or ``Class.name``); None: no restriction."""
    if not functions:
        return None
    wanted, found, inside = set(functions), set(), set()

    def visit(node, prefix):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                qual = f"{prefix}{child.name}"
                if isinstance(child, ast.ClassDef):
                    visit(child, qual + ".")
                elif qual in wanted or child.name in wanted:
                    found.add(qual if qual in wanted else child.name)
                    inside.update(id(n) for n in ast.walk(child))
                else:
                    visit(child, qual + ".")
            else:
                visit(child, prefix)
    visit(tree, "")
    missing = wanted - found
    if missing:
        raise SystemExit(f"functions not found: {sorted(missing)}")
    return inside


def find_mutants(source: str, functions: list[str] | None = None) -> list[Mutant]:
    tree = ast.parse(source)
    excluded = _excluded_nodes(tree)
    allowed = _function_nodes(tree, functions or [])
    out = []
    for i, node in enumerate(ast.walk(tree)):
        if id(node) in excluded or (allowed is not None and id(node) not in allowed):
            continue
        line = getattr(node, "lineno", 0)
        if isinstance(node, (ast.BinOp, ast.AugAssign)) and type(node.op) in BINOP_SWAPS:
            new = BINOP_SWAPS[type(node.op)]
            eq = "=" if isinstance(node, ast.AugAssign) else ""
            out.append(Mutant(i, 0, "operator", line, f"{SYMBOL[type(node.op)]}{eq} -> {SYMBOL[new]}{eq}"))
        elif isinstance(node, ast.Compare):
            for k, op in enumerate(node.ops):
                if type(op) in CMP_SWAPS:
                    out.append(Mutant(i, k, "compare", line,
                                      f"{SYMBOL[type(op)]} -> {SYMBOL[CMP_SWAPS[type(op)]]}"))
        elif isinstance(node, ast.BoolOp):
            other = ast.Or if isinstance(node.op, ast.And) else ast.And
            out.append(Mutant(i, 0, "boolop", line, f"{SYMBOL[type(node.op)]} -> {SYMBOL[other]}"))
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.Not)):
            what = "-" if isinstance(node.op, ast.USub) else "not "
            out.append(Mutant(i, 0, "unary", line, f"drop '{what.strip()}' in {ast.unparse(node)}"))
        elif isinstance(node, ast.Constant) and isinstance(node.value, bool):
            out.append(Mutant(i, 0, "constant", line, f"{node.value} -> {not node.value}"))
        elif isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            out.append(Mutant(i, 0, "constant", line, f"{node.value!r} -> {node.value + 1!r}"))
    return sorted(out, key=lambda m: (m.line, m.index, m.slot))


def apply_mutant(source: str, mutant: Mutant) -> str:
    tree = ast.parse(source)
    node = next(n for i, n in enumerate(ast.walk(tree)) if i == mutant.index)
    if mutant.kind == "operator":
        node.op = BINOP_SWAPS[type(node.op)]()
    elif mutant.kind == "compare":
        node.ops[mutant.slot] = CMP_SWAPS[type(node.ops[mutant.slot])]()
    elif mutant.kind == "boolop":
        node.op = ast.Or() if isinstance(node.op, ast.And) else ast.And()
    elif mutant.kind == "unary":
        # Replace the UnaryOp by its operand in the parent.
        for parent in ast.walk(tree):
            for field, value in ast.iter_fields(parent):
                if value is node:
                    setattr(parent, field, node.operand)
                elif isinstance(value, list):
                    for j, item in enumerate(value):
                        if item is node:
                            value[j] = node.operand
    elif mutant.kind == "constant":
        node.value = (not node.value) if isinstance(node.value, bool) else node.value + 1
    else:  # pragma: no cover
        raise ValueError(mutant.kind)
    return ast.unparse(ast.fix_missing_locations(tree))


# -- running -----------------------------------------------------------------------------------------------------
def _fork_pytest(src_root: Path, test_args: list[str], timeout: float | None, trace_file: Path | None = None,
                 log: Path | None = None) -> tuple[str, float]:
    """Run pytest in a forked child with ``src_root`` first on sys.path; ('passed'|'failed'|'timeout', seconds)."""
    t0 = time.time()
    pid = os.fork()
    if pid == 0:  # child
        code = 3
        try:
            fd = os.open(log or os.devnull, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            sys.path.insert(0, str(src_root))
            for name in [m for m in sys.modules if m == "adapt3d" or m.startswith("adapt3d.")]:
                del sys.modules[name]
            if trace_file is not None:
                _trace_lines(trace_file)
            import pytest
            code = int(pytest.main(["-x", "-q", "-p", "no:cacheprovider", "--rootdir", str(REPO), *test_args]))
            if trace_file is not None:
                _trace_lines(trace_file, stop=True)
        finally:
            os._exit(code)
    deadline = None if timeout is None else t0 + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            code = os.waitstatus_to_exitcode(status)
            return ("passed" if code == 0 else "failed"), time.time() - t0
        if deadline is not None and time.time() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return "timeout", time.time() - t0
        time.sleep(0.05)


_TRACE: dict = {}


def _trace_lines(trace_file: Path, stop: bool = False) -> None:
    """Record the executed lines of the file named in ``trace_file`` (``{"file": path}``) into ``"lines"``."""
    import threading
    if stop:
        sys.settrace(None)
        threading.settrace(None)  # type: ignore[arg-type]
        data = json.loads(trace_file.read_text())
        data["lines"] = sorted(_TRACE["lines"])
        trace_file.write_text(json.dumps(data))
        return
    target = os.path.realpath(json.loads(trace_file.read_text())["file"])
    lines: set[int] = set()
    _TRACE["lines"] = lines

    def local(frame, event, arg):
        if event == "line":
            lines.add(frame.f_lineno)
        return local

    def global_(frame, event, arg):
        if event == "call" and os.path.realpath(frame.f_code.co_filename) == target:
            lines.add(frame.f_lineno)
            return local
        return None
    sys.settrace(global_)
    threading.settrace(global_)


def load_targets() -> list[dict]:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    return config["tool"]["adapt3d"]["mutation"]["targets"]


def mutate_target(target: dict, args: argparse.Namespace) -> list[Result]:
    module = target["module"]
    source = (REPO / module).read_text()
    mutants = find_mutants(source, target.get("functions"))
    if args.lines:  # "75,101-105"
        spans = [tuple(int(v) for v in (part.split("-") * 2)[:2]) for part in args.lines.split(",") if part]
        mutants = [m for m in mutants if any(lo <= m.line <= hi for lo, hi in spans)]
    if args.max and len(mutants) > args.max:  # an even spread over the module
        step = len(mutants) / args.max
        mutants = [mutants[int(k * step)] for k in range(args.max)]
    lines = source.splitlines()
    if args.list:
        for m in mutants:
            print(f"{module}:{m.line}: {m.description}    | {lines[m.line - 1].strip()}")
        return []
    tests = list(target["tests"])
    work = Path(tempfile.mkdtemp(prefix="adapt3d-mutate-"))
    results: list[Result] = []
    try:
        shutil.copytree(REPO / "src", work / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        dest = work / module
        trace = work / "trace.json"
        trace.write_text(json.dumps({"file": str(dest)}))
        status, base_s = _fork_pytest(work / "src", tests, None, trace, log=work / "baseline.log")
        if status != "passed":
            raise SystemExit(f"{module}: the tests fail without any mutation ({work / 'baseline.log'}):\n"
                             + (work / "baseline.log").read_text()[-3000:])
        covered = set(json.loads(trace.read_text())["lines"])
        timeout = base_s * args.timeout_factor + 30
        print(f"{module}: {len(mutants)} mutants; unmutated tests {base_s:.1f} s, timeout {timeout:.0f} s; "
              f"{len(covered)} lines run", flush=True)
        for n, m in enumerate(mutants, 1):
            line_text = lines[m.line - 1].strip()
            if m.line not in covered:
                results.append(Result(module, m, "uncovered", 0.0, line_text))
            else:
                dest.write_text(apply_mutant(source, m))
                st, sec = _fork_pytest(work / "src", tests, timeout)
                results.append(Result(module, m, {"failed": "killed", "passed": "survived"}.get(st, st), sec,
                                      line_text))
            r = results[-1]
            if r.status in ("survived", "uncovered") or args.verbose:
                print(f"  [{n}/{len(mutants)}] {r.status:9s} {module}:{m.line}: {m.description}    | {line_text}",
                      flush=True)
        dest.write_text(source)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    counts = {s: sum(r.status == s for r in results) for s in ("killed", "timeout", "survived", "uncovered")}
    print(f"{module}: " + ", ".join(f"{v} {k}" for k, v in counts.items()), flush=True)
    return results


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("modules", nargs="*", help="targets to run (default: all of [tool.adapt3d.mutation])")
    p.add_argument("--list", action="store_true", help="only list the mutants")
    p.add_argument("--max", type=int, default=0, help="at most this many mutants per module (an even spread)")
    p.add_argument("--lines", default=None, help="only mutants on these lines, e.g. 75,101-105")
    p.add_argument("--timeout-factor", type=float, default=3.0, help="mutant timeout: factor x unmutated + 30 s")
    p.add_argument("--json", type=Path, default=None, help="write every result here")
    p.add_argument("--verbose", action="store_true", help="print every mutant, not only survivors")
    args = p.parse_args(argv)
    os.chdir(REPO)  # the targets' test paths are relative to the repository
    targets = load_targets()
    if args.modules:
        known = {t["module"]: t for t in targets}
        unknown = [m for m in args.modules if m not in known]
        if unknown:
            p.error(f"not in [tool.adapt3d.mutation] targets: {unknown}; known: {sorted(known)}")
        targets = [known[m] for m in args.modules]
    if not args.list:
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        for env in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "ADAPT3D_OFFLINE"):
            os.environ.setdefault(env, "1")
        for name in PRELOAD:  # once, so that every forked mutant run starts warm
            try:
                __import__(name)
            except ImportError:
                pass
        sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != (REPO / "src").resolve()]
    all_results = []
    for target in targets:
        all_results += mutate_target(copy.deepcopy(target), args)
    if args.json:
        args.json.write_text(json.dumps([{"module": r.module, **asdict(r.mutant), "status": r.status,
                                          "seconds": round(r.seconds, 1), "source_line": r.source_line}
                                         for r in all_results], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

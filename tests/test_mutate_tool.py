"""tools/mutate.py: which mutants it makes, what it leaves alone, and that every mutant is valid Python that differs
from the original in exactly the intended way. (Running mutants takes minutes: docs/testing.md.)"""

from __future__ import annotations

import ast
import importlib.util
import sys
import tomllib

import pytest

from conftest import REPO

spec = importlib.util.spec_from_file_location("adapt3d_mutate_tool", REPO / "tools" / "mutate.py")
mutate = sys.modules.setdefault(spec.name, importlib.util.module_from_spec(spec))
spec.loader.exec_module(mutate)

SOURCE = '''"""Module docstring 1 + 2."""
__all__ = ["f", "g"]
SHIFT = (-0.03, 0.5)


def f(x: int = 3) -> float:
    """Docstring < 2."""
    if x < 0 or x is None:
        raise ValueError(f"x must be >= {0 + 1}")
    y = x * 2 + SHIFT[1]
    y += 1
    return not (y == 4.0) and True


class C:
    def g(self, a):
        return a ** 2 - a // 3 % 2
'''


def test_mutants_cover_operators_comparisons_and_constants():
    got = sorted((m.line, m.description) for m in mutate.find_mutants(SOURCE))
    assert got == sorted([
        (3, "drop '-' in -0.03"), (3, "0.03 -> 1.03"), (3, "0.5 -> 1.5"),
        (6, "3 -> 4"),
        (8, "or -> and"), (8, "< -> <="), (8, "is -> is not"), (8, "0 -> 1"),
        (10, "+ -> -"), (10, "* -> /"), (10, "2 -> 3"), (10, "1 -> 2"),
        (11, "+= -> -="), (11, "1 -> 2"),
        (12, "and -> or"), (12, "drop 'not' in not y == 4.0"), (12, "True -> False"), (12, "== -> !="),
        (12, "4.0 -> 5.0"),
        (17, "- -> +"), (17, "** -> *"), (17, "% -> //"), (17, "2 -> 3"), (17, "// -> /"), (17, "3 -> 4"),
        (17, "2 -> 3"),
    ])
    # Docstrings, __all__, annotations and the raise statement (its f-string included) are left alone.
    assert not any(m.line in (1, 2, 7, 9) for m in mutate.find_mutants(SOURCE))


def test_every_mutant_is_valid_and_changes_one_thing():
    original = ast.dump(ast.parse(SOURCE))
    seen = set()
    for m in mutate.find_mutants(SOURCE):
        code = mutate.apply_mutant(SOURCE, m)
        compile(code, "mutant", "exec")
        assert ast.dump(ast.parse(code)) != original, m
        seen.add(code)
    assert len(seen) == len(mutate.find_mutants(SOURCE))
    sign = next(m for m in mutate.find_mutants(SOURCE) if m.description == "drop '-' in -0.03")
    assert "SHIFT = (0.03, 0.5)" in mutate.apply_mutant(SOURCE, sign)
    pow_ = next(m for m in mutate.find_mutants(SOURCE) if m.description == "** -> *")
    assert "return a * 2 - a // 3 % 2" in mutate.apply_mutant(SOURCE, pow_)


def test_functions_restrict_the_mutants():
    only_g = mutate.find_mutants(SOURCE, ["C.g"])
    assert only_g and {m.line for m in only_g} == {17}
    assert {m.line for m in mutate.find_mutants(SOURCE, ["f"])} == {6, 8, 10, 11, 12}  # with its defaults
    with pytest.raises(SystemExit, match="not found"):
        mutate.find_mutants(SOURCE, ["h"])


def test_configured_targets_exist():
    targets = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["adapt3d"]["mutation"]["targets"]
    assert {"src/adapt3d/training/losses.py", "src/adapt3d/diffusion/sds.py", "src/adapt3d/metrics/lpips.py",
            "src/adapt3d/clip/model.py", "src/adapt3d/cameras/conventions.py"} <= {t["module"] for t in targets}
    for t in targets:
        source = (REPO / t["module"]).read_text()
        assert mutate.find_mutants(source, t.get("functions")), t["module"]  # functions exist, mutants found
        assert all((REPO / a.split("::")[0]).is_file() for a in t["tests"] if a.startswith("tests/")), t

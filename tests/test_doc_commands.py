"""Every command in the docs parses against the real CLI, and the fast tiny-preset ones run.

Collected from README.md and docs/*.md: every line of a shell code block (```bash, ```sh, ```console or a bare
```), and every inline code span that starts like a command, of these forms:

    adapt3d <command> [options]                           python -m adapt3d <command> [options]
    torchrun [torchrun options] -m adapt3d <command> ...  ... -m adapt3d.pipelines.<job> [options]
    bench/<script>.py [options]                           python bench/<script>.py [options]

``adapt3d`` commands are parsed by the CLI's own parser (:func:`adapt3d.cli.main.parse`, tyro): the command must
exist, every option must exist and every value must parse. Nothing runs. Bench scripts are parsed by their
``parse_args``. Python code (```python blocks and inline spans calling ``adapt3d...(...Config(...))``) has its
imports executed and every ``<Job>Config(name=...)`` keyword checked against the dataclass.

Conventions (docs/testing.md): a trailing ``...`` / ``…`` means "further options" and is dropped; ``<command>``
in the command position stands for every command (each must accept the rest, e.g. ``--help``); an inline span of
just ``adapt3d <command>`` names the command (it must exist); a span whose command word ends in a colon is a message
the CLI prints (``adapt3d render: error: ...``), not a command. Any other ``...`` is an error: write a concrete value.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import functools
import importlib
import importlib.util
import io
import re
import shlex
from dataclasses import dataclass, fields
from pathlib import Path

import pytest

from adapt3d.cli import main as cli
from conftest import REPO

DOC_FILES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
SHELL_FENCES = {"", "bash", "sh", "shell", "console"}
ELLIPSES = {"...", "…"}
SEPARATORS = {"&&", "||", ";", "|"}


@dataclass(frozen=True)
class DocCommand:
    where: str  # "docs/x.md:12"
    kind: str  # "adapt3d", "module" (python -m adapt3d.pipelines.<job>), "bench"
    target: str  # "" / module name / script path relative to the repository
    argv: tuple[str, ...]
    inline: bool
    text: str

    def __str__(self) -> str:
        return f"{self.where}: {self.text.strip()}"


# -- extraction ------------------------------------------------------------------------------------------------
def _blocks(text: str):
    """(fence info, first line number, body) of fenced blocks, and the text outside them (fences blanked)."""
    blocks, outside, lines = [], [], text.splitlines()
    i = 0
    while i < len(lines):
        m = re.match(r"^\s*```\s*([\w+-]*)", lines[i])
        if m:
            j = i + 1
            while j < len(lines) and not re.match(r"^\s*```", lines[j]):
                j += 1
            blocks.append((m.group(1).lower(), i + 2, lines[i + 1:j]))
            outside += [""] * (j - i + 1)
            i = j + 1
        else:
            outside.append(lines[i])
            i += 1
    return blocks, "\n".join(outside)


def _segments(tokens: list[str]):
    seg: list[str] = []
    for tok in tokens:
        if tok in SEPARATORS:
            if seg:
                yield seg
            seg = []
        else:
            seg.append(tok)
    if seg:
        yield seg


def _classify(seg: list[str]) -> tuple[str, str, list[str]] | None:
    """(kind, target, argv) of a command segment, or None for commands the docs may use freely (pip, pytest...)."""
    while seg and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", seg[0]):  # VAR=value prefixes
        seg = seg[1:]
    if not seg:
        return None
    head, rest = seg[0], seg[1:]
    if head == "adapt3d":
        return "adapt3d", "", rest
    if re.fullmatch(r"(\./)?bench/\w+\.py", head):
        return "bench", head.removeprefix("./"), rest
    if re.fullmatch(r"python3?|torchrun", head):
        if rest and re.fullmatch(r"(\./)?bench/\w+\.py", rest[0]):
            return "bench", rest[0].removeprefix("./"), rest[1:]
        if "-m" in rest:
            k = rest.index("-m")
            if k + 1 < len(rest):
                module, args = rest[k + 1], rest[k + 2:]
                if module == "adapt3d":
                    return "adapt3d", "", args
                if module.startswith("adapt3d."):
                    return "module", module, args
    return None


def _commands_in(line: str, where: str, inline: bool) -> list[DocCommand]:
    try:
        tokens = shlex.split(line, comments=True)
    except ValueError as e:
        raise AssertionError(f"{where}: cannot split {line!r} like a shell: {e}") from e
    out = []
    for seg in _segments(tokens):
        found = _classify(seg)
        if found:
            kind, target, argv = found
            out.append(DocCommand(where, kind, target, tuple(argv), inline, line))
    return out


def extract_commands(text: str, name: str) -> list[DocCommand]:
    """All commands of one Markdown document (see the module docstring)."""
    blocks, outside = _blocks(text)
    commands: list[DocCommand] = []
    for info, first, body in blocks:
        if info not in SHELL_FENCES:
            continue
        joined, start = "", first
        for k, line in enumerate(body):
            if not joined:
                start = first + k
            if line.rstrip().endswith("\\"):
                joined += line.rstrip()[:-1] + " "
                continue
            joined += line
            commands += _commands_in(joined, f"{name}:{start}", inline=False)
            joined = ""
    for m in re.finditer(r"(?<!`)`([^`]+)`(?!`)", outside):
        span = m.group(1).replace("\n", " ")
        if re.match(r"^\s*adapt3d\s+\S+:(\s|$)", span):  # a printed message: `adapt3d render: error: ...`
            continue
        if re.match(r"^\s*(adapt3d\s|python3?\s+-m\s+adapt3d|torchrun\s|(python3?\s+)?(\./)?bench/\w+\.py)", span):
            line_no = outside.count("\n", 0, m.start()) + 1
            commands += _commands_in(span, f"{name}:{line_no}", inline=True)
    return commands


def extract_python(text: str, name: str) -> list[tuple[str, str]]:
    """(where, source) of every ```python block and of inline spans that call an adapt3d ``...Config(...)``."""
    blocks, outside = _blocks(text)
    out = [(f"{name}:{first}", "\n".join(body)) for info, first, body in blocks if info in ("python", "py")]
    for m in re.finditer(r"(?<!`)`([^`]+)`(?!`)", outside):
        if re.search(r"\w+Config\(", m.group(1)):
            out.append((f"{name}:{outside.count(chr(10), 0, m.start()) + 1}", m.group(1).replace("\n", " ")))
    return out


def all_doc_commands() -> list[DocCommand]:
    return [c for f in DOC_FILES for c in extract_commands(f.read_text(), str(f.relative_to(REPO)))]


# -- checking ----------------------------------------------------------------------------------------------------
def _strip_ellipsis(cmd: DocCommand, argv: list[str]) -> list[str]:
    if argv and argv[-1] in ELLIPSES:
        argv = argv[:-1]
    bad = [a for a in argv if a in ELLIPSES]
    if bad:
        raise AssertionError(f"{cmd}: '...' stands for an option value; write a concrete value (conventions: "
                             "docs/testing.md)")
    return argv


def _run_parser(parse, argv: list[str]) -> tuple[int, str]:
    """(exit code, stderr + stdout) of a parse: 0 when it parsed or printed help, else tyro's code and message."""
    err, out = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            parse(argv)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
        return code, re.sub(r"[ \t│─╭╮╰╯━┃]+", " ", err.getvalue() + out.getvalue()).strip()
    return 0, ""


@functools.lru_cache(maxsize=None)
def _parse_adapt3d(argv: tuple[str, ...]) -> tuple[int, str]:
    return _run_parser(cli.parse, list(argv))  # cached: `<command> --help` lines repeat across docs


def _module_config(module_name: str):
    """The config class a ``python -m adapt3d.pipelines.<job>`` entry point parses (its ``tyro.cli(<Config>)``)."""
    spec = importlib.util.find_spec(module_name)
    if spec is None or spec.origin is None:
        raise AssertionError(f"no module {module_name}")
    source = Path(spec.origin).read_text()
    m = re.search(r'if __name__ == "__main__":.*?tyro\.cli\((\w+)\)', source, re.S)
    if not m:
        raise AssertionError(f"{module_name} has no `if __name__ == '__main__'` entry point parsing a config")
    return getattr(importlib.import_module(module_name), m.group(1))


def _load_bench(script: str):
    path = REPO / script
    if not path.is_file():
        raise AssertionError(f"{script} does not exist")
    spec = importlib.util.spec_from_file_location(f"_doc_bench_{path.stem}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class _Parsed(Exception):
    def __init__(self, namespace):
        super().__init__("parsed")
        self.namespace = namespace


def _bench_parse(cmd: DocCommand, mod, argv: list[str], what: str = ""):
    """Parse ``argv`` with a bench script's argparse parser, stopping right after parsing (the script's own checks
    of the machine, e.g. that tcmalloc is installed, and its work never run)."""
    original = argparse.ArgumentParser.parse_args

    def parse_and_stop(self, args=None, namespace=None):
        raise _Parsed(original(self, args, namespace))

    entry = getattr(mod, "parse_args", None) or getattr(mod, "main", None)
    if entry is None:
        raise AssertionError(f"{cmd}: {cmd.target} has no parse_args(argv) or main(argv)")
    argparse.ArgumentParser.parse_args = parse_and_stop
    try:
        code, msg = _run_parser(entry, argv)
    except _Parsed as p:
        return p.namespace
    finally:
        argparse.ArgumentParser.parse_args = original
    if code != 0:
        raise AssertionError(f"{cmd}\n  {what}`{cmd.target} {shlex.join(argv)}` does not parse: {msg}")
    if "--help" in argv or "-h" in argv:
        return None
    raise AssertionError(f"{cmd}: {cmd.target}'s entry point returned without parsing its arguments")


def check_command(cmd: DocCommand) -> None:
    """Raise AssertionError (naming the doc line and the parser's message) unless ``cmd`` parses."""
    argv = _strip_ellipsis(cmd, list(cmd.argv))
    if cmd.kind == "adapt3d":
        if not argv:
            raise AssertionError(f"{cmd}: no command (expected one of {', '.join(cli.COMMANDS)})")
        if cmd.inline and len(argv) == 1 and argv[0] != "<command>":  # names a command
            if argv[0] not in cli.COMMANDS:
                raise AssertionError(f"{cmd}: no command {argv[0]!r} (commands: {', '.join(cli.COMMANDS)})")
            return
        if argv[0] == "<command>":
            rest = argv[1:]
            if any(a != "--help" for a in rest):
                raise AssertionError(f"{cmd}: `<command>` lines may only carry --help")
            runs = [[name, "--help"] for name in cli.COMMANDS]
        else:
            runs = [argv]
        for run_argv in runs:
            code, msg = _parse_adapt3d(tuple(run_argv))
            if code != 0:
                raise AssertionError(f"{cmd}\n  `adapt3d {shlex.join(run_argv)}` does not parse: {msg}")
    elif cmd.kind == "module" and not re.search(r'if __name__ == "__main__":.*?tyro\.cli\(',
                                                 Path(importlib.util.find_spec(cmd.target).origin).read_text(), re.S):
        _bench_parse(cmd, importlib.import_module(cmd.target), argv)  # an argparse main(argv), e.g. testing.full_size
    elif cmd.kind == "module":
        config = _module_config(cmd.target)
        import tyro

        code, msg = _run_parser(lambda a: tyro.cli(config, args=a), argv)
        if code != 0:
            raise AssertionError(f"{cmd}\n  `python -m {cmd.target} {shlex.join(argv)}` does not parse: {msg}")
    elif cmd.kind == "bench":
        mod = _load_bench(cmd.target)
        parsed = _bench_parse(cmd, mod, argv)
        if cmd.target == "bench/render_ab.py":  # --a / --b carry bench/render.py options
            render = _load_bench("bench/render.py")
            for side in ("a", "b"):
                _bench_parse(cmd, render, _strip_ellipsis(cmd, shlex.split(getattr(parsed, side))), f"--{side}: ")
    else:  # pragma: no cover
        raise AssertionError(f"unknown kind {cmd.kind}")


def check_python(where: str, source: str) -> None:
    """Run the imports of a doc snippet; check each ``<Job>Config(...)`` keyword is a field of that config."""
    try:
        tree = ast.parse(source)
    except SyntaxError as e:
        raise AssertionError(f"{where}: not valid Python: {e}") from e
    configs = {cls.__name__: cls for cls, _, _ in cli.COMMANDS.values()}
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            try:
                exec(compile(ast.Module(body=[node], type_ignores=[]), where, "exec"), {})
            except ImportError as e:
                raise AssertionError(f"{where}: {ast.unparse(node)} fails: {e}") from e
        elif isinstance(node, ast.Call):
            func = ast.unparse(node.func)
            if func.startswith("adapt3d."):
                module, _, attr = func.rpartition(".")
                if not hasattr(importlib.import_module(module), attr):
                    raise AssertionError(f"{where}: {func} does not exist")
            name = func.rsplit(".", 1)[-1]
            if name in configs:
                known = {f.name for f in fields(configs[name])}
                unknown = [k.arg for k in node.keywords if k.arg not in known]
                if unknown:
                    raise AssertionError(f"{where}: {name} has no field(s) {unknown}")


# -- the tests ---------------------------------------------------------------------------------------------------
COMMANDS = all_doc_commands()


def test_docs_name_commands():
    """The extraction finds the docs' commands (a broken extractor would make every other test vacuous)."""
    where = {c.where.split(":")[0] for c in COMMANDS}
    assert "README.md" in where and len(where) >= 8, where
    firsts = {c.argv[0] for c in COMMANDS if c.kind == "adapt3d" and c.argv}
    assert {"adapt", "render", "synth", "distill", "invert", "eval", "studio", "convert"} <= firsts
    assert any(c.kind == "bench" for c in COMMANDS) and any(c.kind == "module" for c in COMMANDS)


@pytest.mark.parametrize("cmd", COMMANDS, ids=[f"{c.where}:{' '.join(c.argv[:2])}" for c in COMMANDS])
def test_doc_command_parses(cmd):
    check_command(cmd)


PYTHON = [p for f in DOC_FILES for p in extract_python(f.read_text(), str(f.relative_to(REPO)))]


@pytest.mark.parametrize("where, source", PYTHON, ids=[w for w, _ in PYTHON])
def test_doc_python_api_names_exist(where, source):
    check_python(where, source)


# The checker fails on what it should catch: a misspelt option, a bad value, an unknown command, a placeholder
# value, bench options, options inside render_ab's --b, and a Config keyword that does not exist.
@pytest.mark.parametrize("doc, needle", [
    ("```bash\nadapt3d render --preset tiny --no-such-option 3 --out runs/x\n```", "--no-such-option"),
    ("```bash\nadapt3d render --preset tiny --seeds 0-3 \\\n    --video-frames many --out runs/x\n```", "many"),
    ("```bash\nadapt3d rendr --preset tiny\n```", "rendr"),
    ("```bash\ntorchrun --nproc_per_node 8 -m adapt3d finetune --dataset ... --out runs/t\n```", "concrete value"),
    ("Run `adapt3d finetune --datasett runs/d` first.", "--datasett"),
    ("Run `adapt3d rendr` first.", "no command 'rendr'"),
    ("- `bench/render.py --preset tiny --batchsize 4` — x", "--batchsize"),
    ("- `bench/render_ab.py --pairs 2 --b \"--impl nope\"` — x", "--b"),
    ("```bash\npython -m adapt3d.pipelines.make_dataset --preset tiny --num-imgs 4\n```", "--num-imgs"),
])
def test_checker_rejects_wrong_docs(doc, needle):
    cmds = extract_commands(doc, "fake.md")
    assert len(cmds) == 1
    with pytest.raises(AssertionError) as e:
        check_command(cmds[0])
    assert needle in str(e.value) and "fake.md:" in str(e.value)


def test_checker_accepts_conventions_and_rejects_bad_python():
    doc = ("```bash\npip install -e . && pytest   # not ours\nadapt3d <command> --help\n"
           "adapt3d render --checkpoint ffhq ...   # more options\n```\n"
           "Pattern: `python -m adapt3d <command> …`; see `adapt3d invert`;\n"
           "it prints `adapt3d <command>: error: ...`.")
    cmds = extract_commands(doc, "fake.md")
    assert [c.argv[0] for c in cmds] == ["<command>", "render", "<command>", "invert"]
    for c in cmds:
        check_command(c)
    check_python("fake.md:1", 'run(RenderConfig(preset="tiny", seeds="0-3"))')
    with pytest.raises(AssertionError, match="no field"):
        check_python("fake.md:1", 'run(RenderConfig(preset="tiny", seedz="0-3"))')
    with pytest.raises(AssertionError, match="does not exist"):
        check_python("fake.md:1", "adapt3d.pipelines.render.rnu(RenderConfig())")


# -- the fast tiny-preset doc commands run for real -----------------------------------------------------------
# Run here (seconds each): `adapt3d render --preset tiny ...`. The slower tiny-preset doc commands are covered by
# tests that run the same command with fewer steps/images: adapt (tests/test_adapt.py), adapt --method itportrait
# (tests/test_itportrait.py), make-dataset (tests/test_make_dataset.py), distill (tests/test_distill.py), synth
# (tests/test_dst_pipeline.py), eval (tests/test_eval_pipeline.py), studio (tests/test_studio.py).
FAST = [c for c in COMMANDS if c.kind == "adapt3d" and c.argv[:1] == ("render",) and "tiny" in c.argv
        and "--preset" in c.argv and "--out" in c.argv]


@pytest.mark.parametrize("cmd", FAST, ids=[c.where for c in FAST])
def test_fast_tiny_doc_command_runs(cmd, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative --out folders land in tmp_path
    argv = _strip_ellipsis(cmd, list(cmd.argv)) + ["--no-progress"]
    assert cli.main(argv) == 0
    out = Path(argv[argv.index("--out") + 1])
    assert (tmp_path / out / "grid.png").is_file()


def test_some_tiny_doc_command_is_run():
    assert FAST, "no `adapt3d render --preset tiny` command in the docs any more: pick another fast one to run"

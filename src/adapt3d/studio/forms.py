"""Job forms generated from a command's config dataclass, and the form -> command line -> checked config path.

A form is the list of the dataclass fields (type, default, docstring as help). The browser sends back one value
per field (a string, a bool for checkboxes); :func:`form_argv` turns the values that differ from the defaults
into the command line ``adapt3d <command> ...`` would get, :func:`check_job` parses it with tyro exactly as the
CLI does and then runs the pipeline's own validation (its ``validate(cfg)``-like function) without running the
job. Errors come back as ``FieldError`` (field name + message) so the page can show them beside the input.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import inspect
import io
import math
import os
import re
import shlex
import sys
import textwrap
import threading
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import tyro

from adapt3d.utils.parsing import flag_name

__all__ = ["FormField", "FieldError", "JobCheck", "form_fields", "form_argv", "check_job", "find_validator",
           "field_docstrings", "basic_checks"]

_PARSE_LOCK = threading.Lock()  # redirect_stdout/stderr swap process-wide streams: one parse at a time
_POSITIONAL = typing.get_args(tyro.conf.Positional[int])[1]
_NONE_TYPE = type(None)
Kind = Literal["bool", "int", "float", "str", "path", "choice", "list", "tuple"]


@dataclass
class FormField:
    """One input of a job form; ``kind`` decides the widget and how the value becomes command-line tokens."""

    name: str
    flag: str  # "--trunc-cutoff", or "TRUNC" for a positional argument
    kind: Kind
    default: Any = None  # JSON-able; None also for "no default" (see required)
    required: bool = False
    optional: bool = False  # None is a valid value (an empty input means None)
    positional: bool = False
    choices: list | None = None  # for "choice", and for the items of "list"
    item_kind: str | None = None  # "int" | "float" | "str" | "choice" for "list"/"tuple"
    length: int | None = None  # fixed tuple length
    help: str = ""

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


class FieldError(ValueError):
    """An invalid form value; ``field`` is the field name (None: the form as a whole)."""

    def __init__(self, field_name: str | None, message: str):
        super().__init__(message)
        self.field = field_name
        self.message = message


@dataclass
class JobCheck:
    """The outcome of :func:`check_job`: the command line, the parsed config, errors (empty when valid)."""

    command: str
    argv: list[str] = field(default_factory=list)
    config: Any = None
    errors: list[FieldError] = field(default_factory=list)
    validator: str | None = None  # the pipeline function that checked the config ("module.name")

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_json(self) -> dict:
        return {"ok": self.ok, "command": self.command, "argv": self.argv, "validator": self.validator,
                "command_line": shlex.join(["adapt3d", self.command, *self.argv]),
                "errors": [{"field": e.field, "message": e.message} for e in self.errors]}


def field_docstrings(cls: type) -> dict[str, str]:
    """Docstrings written under dataclass fields (``x: int = 1`` then a string literal), base classes included."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError, SyntaxError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for stmt, nxt in zip(body, body[1:] + [None]):
            if (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and isinstance(nxt, ast.Expr)
                    and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str)):
                docs[stmt.target.id] = inspect.cleandoc(nxt.value.value)
    return docs


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _describe(tp: Any) -> tuple[str, dict]:
    """(kind, extras) of a field type; raises TypeError for types a form cannot show."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is bool:
        return "bool", {}
    if tp in (int, float, str):
        return tp.__name__, {}
    if isinstance(tp, type) and issubclass(tp, Path):
        return "path", {}
    if origin is Literal:
        return "choice", {"choices": list(args)}
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            kind, extra = _describe(args[0])
            return "list", {"item_kind": kind, "choices": extra.get("choices")}
        kinds = {_describe(a)[0] for a in args}
        if len(kinds) == 1 and kinds <= {"int", "float", "str", "path"}:
            return "tuple", {"item_kind": kinds.pop(), "length": len(args)}
    raise TypeError(f"unsupported field type {tp!r}")


def form_fields(config_cls: type) -> list[FormField]:
    """The form of a config dataclass: one :class:`FormField` per field, in declaration order."""
    hints = typing.get_type_hints(config_cls, include_extras=True)  # each base class in its own module's names
    docs = field_docstrings(config_cls)
    out = []
    for f in dataclasses.fields(config_cls):
        tp, positional = hints[f.name], False
        if typing.get_origin(tp) is typing.Annotated:
            positional = any(m is _POSITIONAL for m in tp.__metadata__)
            tp = typing.get_args(tp)[0]
        optional = False
        if typing.get_origin(tp) in (typing.Union, types.UnionType):
            members = [a for a in typing.get_args(tp) if a is not _NONE_TYPE]
            optional = len(members) < len(typing.get_args(tp))
            tp = members[0] if len(members) == 1 else tp
        try:
            kind, extra = _describe(tp)
        except TypeError:
            continue  # not representable: the CLI default is used
        if f.default is not dataclasses.MISSING:
            default, required = f.default, False
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default, required = f.default_factory(), False  # type: ignore[misc]
        else:
            default, required = None, True
        out.append(FormField(f.name, f.name.upper() if positional else flag_name(f.name), kind, _jsonable(default),
                             required, optional, positional, help=docs.get(f.name, ""), **extra))
    return out


def _scalar(text: str, kind: str, choices: list | None, ff: FormField) -> Any:
    label = ff.flag
    if kind == "int":
        try:
            return int(text)
        except ValueError:
            raise FieldError(ff.name, f"{label}: {text!r} is not an integer") from None
    if kind == "float":
        try:
            return float(text)
        except ValueError:
            raise FieldError(ff.name, f"{label}: {text!r} is not a number") from None
    if kind == "choice":
        for c in choices or []:
            if str(c) == text:
                return c
        raise FieldError(ff.name, f"{label}: {text!r} is not one of {', '.join(map(str, choices or []))}")
    return text


def _value(ff: FormField, raw: Any) -> Any:
    """The Python value of one form input (None for an empty optional input)."""
    if ff.kind == "bool":
        if isinstance(raw, bool):
            return raw
        if str(raw).lower() in ("true", "1", "on", "yes"):
            return True
        if str(raw).lower() in ("false", "0", "off", "no", ""):
            return False
        raise FieldError(ff.name, f"{ff.flag}: {raw!r} is not true or false")
    if isinstance(raw, list):
        raw = "\n".join(str(r) for r in raw)
    text = "" if raw is None else str(raw).strip()
    if ff.kind in ("list", "tuple"):
        if not text and ff.optional:
            return None
        items = [t.strip() for t in (text.splitlines() if ff.kind == "list" else text.replace(",", " ").split())]
        items = [t for t in items if t]
        if ff.kind == "tuple" and len(items) != ff.length:
            raise FieldError(ff.name, f"{ff.flag}: expected {ff.length} values separated by spaces, got {text!r}")
        return [_scalar(t, ff.item_kind or "str", ff.choices, ff) for t in items]
    if not text or (ff.optional and text == "None"):
        if ff.optional:
            return None
        if ff.kind in ("str", "path") and not ff.required:
            return ""
        raise FieldError(ff.name, f"{ff.flag}: a value is required")
    return _scalar(text, ff.kind, ff.choices, ff)


def _tokens(ff: FormField, value: Any) -> list[str]:
    if ff.kind == "bool":
        return [flag_name(ff.name) if value else "--no-" + ff.name.replace("_", "-")]
    vals = ["None"] if value is None else [str(v) for v in value] if isinstance(value, list) else [str(value)]
    return vals if ff.positional else [ff.flag, *vals]


def form_argv(fields: list[FormField], values: dict[str, Any]) -> list[str]:
    """The command-line arguments for ``values`` (name -> form value); fields left at their default are omitted.

    Raises the first :class:`FieldError` (unknown field, bad number, missing required value).
    """
    by_name = {f.name: f for f in fields}
    for name in values:
        if name not in by_name:
            raise FieldError(None, f"unknown option {name!r}; expected one of {', '.join(by_name)}")
    positional, flags = [], []
    for ff in fields:
        if ff.name not in values or values[ff.name] is None and not ff.optional:
            if ff.required:
                raise FieldError(ff.name, f"{ff.flag}: a value is required")
            continue
        value = _value(ff, values[ff.name])
        if not ff.required and value == ff.default:
            continue
        (positional if ff.positional else flags).extend(_tokens(ff, value))
    return positional + flags


def find_validator(config_cls: type, run_fn: Callable | None = None) -> Callable | None:
    """The pipeline's check-only function for ``config_cls``: ``validate(cfg)`` in the run function's module, else
    a ``validate*`` function there or in the config's module whose first parameter is the config and whose other
    parameters have defaults. None when the pipeline has none."""
    modules = [sys.modules.get(getattr(run_fn, "__module__", "")), sys.modules.get(config_cls.__module__)]
    for module in filter(None, modules):
        names = sorted((n for n in vars(module) if n.lstrip("_").startswith("validate")),
                       key=lambda n: (n != "validate", n))
        for name in names:
            fn = getattr(module, name)
            if not inspect.isfunction(fn):
                continue
            params = list(inspect.signature(fn).parameters.values())
            if not params or any(p.default is inspect.Parameter.empty for p in params[1:]):
                continue
            ann = params[0].annotation
            if ann is config_cls or ann == config_cls.__name__:
                return fn
    return None


def basic_checks(cfg: Any) -> None:
    """The checks every command shares, for pipelines without a validate function: the generator source
    (--preset vs --generator/--checkpoint), the device, and a writable output folder (created)."""
    from adapt3d.models.loading import check_generator_source
    from adapt3d.utils.io import check_output_folder
    from adapt3d.utils.parsing import resolve_device
    if hasattr(cfg, "preset"):
        for name in ("generator", "checkpoint"):
            if hasattr(cfg, name):
                check_generator_source(cfg.preset, getattr(cfg, name), flag=flag_name(name))
                break
    if isinstance(getattr(cfg, "device", None), str):
        resolve_device(cfg.device)
    if isinstance(getattr(cfg, "out", None), Path):
        check_output_folder(cfg.out)


def _tyro_message(text: str) -> str:
    """tyro's boxed error text as one line."""
    lines = [ln.strip() for ln in text.splitlines()]
    keep = []
    for ln in lines:
        if ln.startswith(("Argument helptext", "For full helptext")):
            break
        if ln and not set(ln) <= set("-─━│┃╭╮╰╯ "):
            keep.append(ln.strip("│┃ "))
    return " ".join(keep[1:] if len(keep) > 1 else keep) or text.strip()


def error_field(message: str, fields: list[FormField]) -> str | None:
    """The field a pipeline error message names (``--trunc: ...`` or ``OUT: ...``), if any."""
    flags = {f.flag: f.name for f in fields}
    for m in re.finditer(r"--[a-z0-9][a-z0-9-]*|\b[A-Z][A-Z0-9_]+\b", message):
        token = m.group(0)
        if token in flags:
            return flags[token]
        if token.startswith("--no-") and "--" + token[5:] in flags:
            return flags["--" + token[5:]]
    return None


def confined_candidates(value: Any, cwd: Path) -> list[str]:
    """The parts of a job option that name files it would read: Path values, and strings that look like a path
    (absolute, '~', './', '../', or an existing file or folder) and are not a preset or known checkpoint name."""
    if isinstance(value, (list, tuple)):
        return [c for v in value for c in confined_candidates(v, cwd)]
    if isinstance(value, Path):
        return [str(value)]
    if not isinstance(value, str) or not value.strip() or "\n" in value:
        return []
    from adapt3d.models.hub import known_checkpoints
    from adapt3d.models.triplane import PRESETS
    if value in PRESETS or value.lower().replace("_", "-") in known_checkpoints() or value == "tiny":
        return []
    parts = [p for p in value.split(";")] if ";" in value else [value]
    return [p for p in parts if p.strip() and (os.path.isabs(p) or p.startswith(("~", "./", "../"))
                                               or (cwd / p).exists())]


def check_job(command: str, config_cls: type, run_fn: Callable | None, values: dict[str, Any],
              extra_check: Callable[[Any, list[FormField]], None] | None = None) -> JobCheck:
    """Form values -> argv -> tyro-parsed config -> ``extra_check`` -> the pipeline's validation. Runs nothing."""
    result = JobCheck(command)
    fields = form_fields(config_cls)
    try:
        result.argv = form_argv(fields, values)
    except FieldError as e:
        result.errors.append(e)
        return result
    buf = io.StringIO()
    try:
        with _PARSE_LOCK, contextlib.redirect_stderr(buf), contextlib.redirect_stdout(buf):
            result.config = tyro.cli(config_cls, args=result.argv, prog=f"adapt3d {command}")
    except SystemExit:
        msg = _tyro_message(buf.getvalue())
        result.errors.append(FieldError(error_field(msg, fields), msg))
        return result
    except Exception as e:  # noqa: BLE001 - e.g. a __post_init__ check of the config
        result.errors.append(FieldError(error_field(str(e), fields), str(e) or type(e).__name__))
        return result
    checks = [lambda cfg: extra_check(cfg, fields)] if extra_check else []
    validator = find_validator(config_cls, run_fn)
    if validator is not None:
        result.validator = f"{validator.__module__}.{validator.__name__}"
    checks.append(validator or basic_checks)
    for check in checks:
        try:
            check(result.config)
        except FieldError as e:
            result.errors.append(e)
        except Exception as e:  # noqa: BLE001 - every failure of a check is a message for the form
            msg = str(e) or type(e).__name__
            result.errors.append(FieldError(error_field(msg, fields), msg))
        if result.errors:
            break
    return result

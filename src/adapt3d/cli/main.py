"""The ``adapt3d`` command: one subcommand per job, generated from the jobs' config dataclasses (tyro).

The top layer: the commands come from :mod:`adapt3d.pipelines.registry`, plus ``studio``
(:mod:`adapt3d.studio.command`)."""

from __future__ import annotations

import os
import sys
from typing import Sequence

import tyro

from adapt3d.cli.errors import split_debug_flag, user_error_message
from adapt3d.pipelines.registry import COMMANDS as PIPELINE_COMMANDS
from adapt3d.pipelines.registry import Command
from adapt3d.studio.command import StudioConfig
from adapt3d.studio.command import run as studio
from adapt3d.utils.io import new_folder_removed_if_empty

# Every pipeline command of the registry, and the studio (a front end over the same registry).
COMMANDS: dict[str, Command] = {
    **PIPELINE_COMMANDS,
    "studio": Command(StudioConfig, studio, "Web studio: explore generators side by side, start and watch jobs, "
                      "browse run folders (127.0.0.1)."),
}


def main(argv: Sequence[str] | None = None) -> int:
    argv, debug = split_debug_flag(sys.argv[1:] if argv is None else argv)
    name = argv[0] if argv and argv[0] in COMMANDS else None
    cfg = tyro.extras.subcommand_cli_from_dict(
        {name: config for name, (config, _, _) in COMMANDS.items()},
        args=argv, prog="adapt3d", description="adapt3d: diffusion models as teachers for 3D-aware generators.")
    # by name: a command with nested subcommands (instance candidates|adapt) has a Union, not a class
    run = COMMANDS[name][1] if name else next(fn for config, fn, _ in COMMANDS.values() if isinstance(cfg, config))
    try:
        out = getattr(cfg, "out", None)
        with new_folder_removed_if_empty(out if isinstance(out, (str, os.PathLike)) else None):
            result = run(cfg)
    except Exception as e:  # errors a user can fix: one line (cli/errors.py); anything else: the traceback
        message = None if debug else user_error_message(e)
        if message is None:
            raise
        print(f"adapt3d {name or ''}: error: {message}", file=sys.stderr)
        return 2
    if os.environ.get("RANK", "0") != "0":  # under torchrun only rank 0 reports
        return 0
    if hasattr(result, "out"):
        print(f"adapt3d {name}: wrote {result.out}")
        for note in getattr(result, "notes", []):
            print(f"  note: {note}")
    else:
        print(f"adapt3d {name}: wrote {result}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

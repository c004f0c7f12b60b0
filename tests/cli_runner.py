"""Running one group of ``fhirwall`` commands in-process, as ``proxy.cli.main`` does (problems on stdout)."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import Any

from proxy.settings import ConfigError

AddCommands = Callable[[Any], None]


def run_commands(add_commands: AddCommands, argv: Sequence[str]) -> int:
    """Parse ``argv`` with only the commands ``add_commands`` registers and run the chosen one."""
    parser = argparse.ArgumentParser(prog="fhirwall")
    add_commands(parser.add_subparsers(title="commands"))
    args = parser.parse_args(argv)
    try:
        result: int = args.handler(args)
    except ConfigError as error:
        print(f"configuration invalid: {len(error.problems)} problem(s)")
        for path, message in error.problems:
            print(f"  {path}: {message}")
        return 2
    return result

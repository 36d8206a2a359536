"""``reconvla``: one entry point, subcommands registered by the parts of the core.

Conventions for every subcommand:
- ``--json`` prints exactly one JSON object on stdout (``emit_result``); logs and
  progress bars go to stderr.
- Errors a user can cause raise ``CLIError`` (or ``ValueError``/``FileNotFoundError``)
  and become one clear line on stderr with exit code 2 (1 for unexpected errors).

A part adds commands by exposing ``register(subparsers)`` in one of COMMAND_MODULES;
each ``register`` adds parsers whose ``func(args) -> int`` does the work. Modules are
imported only to build the parser, so they must keep torch/pybullet imports inside
their command functions (``reconvla --help`` stays fast).
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from typing import Any

from reconvla_core import __version__

COMMAND_MODULES: tuple[str, ...] = (
    "reconvla_core.model.cli",  # model info
    "reconvla_core.sim.cli",  # sim collect, eval sim|probe|recovery, dagger
    "reconvla_core.data.cli",  # dataset build | info | view
    "reconvla_core.train.cli",  # train
    "reconvla_core.bench.cli",  # bench infer | ros | train | data | all
    "reconvla_core.demo.cli",  # demo, study recon
)


class CLIError(Exception):
    """A user-facing error: printed as one line, exit code 2."""


def emit_result(result: dict[str, Any], as_json: bool) -> None:
    """Print a command's result: one JSON object with --json, else readable key: value lines."""
    if as_json:
        sys.stdout.write(json.dumps(result, default=json_default) + "\n")
    else:
        for key, value in result.items():
            sys.stdout.write(f"{key}: {json.dumps(value, default=json_default)}\n")
    sys.stdout.flush()


def json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "__fspath__"):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reconvla",
        description="ReconVLA-ROS: record, build datasets, train, evaluate and deploy a reconstructive VLA.",
    )
    parser.add_argument("--version", action="version", version=f"reconvla {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging on stderr")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if not error.name or not module_name.startswith(error.name):
                raise  # a real missing dependency inside the module
            continue  # that part has not landed in this checkout
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except (CLIError, ValueError, FileNotFoundError, NotADirectoryError, KeyError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        sys.stderr.write(f"reconvla {args.command}: error: {message}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write(f"reconvla {args.command}: interrupted\n")
        return 130


if __name__ == "__main__":
    sys.exit(main())

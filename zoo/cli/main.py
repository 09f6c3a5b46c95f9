"""Entry point of the ``zoo`` command: parses arguments and dispatches to a command module."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import pkgutil
import sys
from collections.abc import Iterator, Sequence

from zoo._version import __version__
from zoo.cli import commands
from zoo.cli.output import Output
from zoo.core.plugins import STRICT_ENV
from zoo.errors import ZooError

EXIT_OK = 0
EXIT_ERROR = 1


def _command_modules() -> list:
    modules = [
        importlib.import_module(f"{commands.__name__}.{info.name}")
        for info in pkgutil.iter_modules(commands.__path__)
        if not info.name.startswith("_")
    ]
    return sorted(modules, key=lambda m: (getattr(m, "ORDER", 100), m.__name__))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zoo",
        description="A model zoo for transfer learning: backbones and freeze policies as plugins.",
    )
    parser.add_argument("--version", action="version", version=f"zoo {__version__}")
    parser.add_argument(
        "--strict",
        action="store_true",
        help="exit non-zero when any plugin failed to load or raised (also ZOO_STRICT_PLUGINS=1)",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in _command_modules():
        module.register(subparsers)
    return parser


@contextlib.contextmanager
def _stray_output_to_stderr(json_mode: bool) -> Iterator[None]:
    """With ``--json``, stdout carries one JSON document: anything else that code the command
    calls prints (a plugin's ``create``, a library's notice) goes to stderr. ``Output`` keeps
    the real stdout it was given."""
    if not json_mode:
        yield
        return
    with contextlib.redirect_stdout(sys.stderr):
        yield


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``zoo`` command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_OK
    previous_strict = os.environ.get(STRICT_ENV)
    if args.strict:
        os.environ[STRICT_ENV] = "1"
    out = Output(json_mode=getattr(args, "json", False))
    try:
        with _stray_output_to_stderr(out.json_mode):
            status = args.handler(args, out)
    except ZooError as exc:
        out.error(str(exc))
        return EXIT_ERROR
    except KeyboardInterrupt:
        out.error("interrupted")
        return 130
    finally:
        if previous_strict is None:
            os.environ.pop(STRICT_ENV, None)
        else:
            os.environ[STRICT_ENV] = previous_strict
    return EXIT_OK if status is None else int(status)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

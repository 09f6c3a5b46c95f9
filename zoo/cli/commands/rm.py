"""``zoo rm NAME...``: delete models from the store — all names checked first, each reported."""

from __future__ import annotations

import argparse
from typing import Any

from zoo.cli.output import Output

ORDER = 52


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "rm",
        help="delete saved models from the store",
        description="Delete store entries (the folder $ZOO_HOME/models/NAME) and their lock "
        "files. Every name is checked before anything is removed: one unknown or invalid name "
        "removes nothing. Broken entries can be removed too. A model that other saved deltas "
        "are based on is kept unless --force (or unless those deltas are removed with it), "
        "since they could no longer load. Each name's outcome is reported; the exit status is "
        "1 if any could not be removed.",
    )
    parser.add_argument("names", metavar="NAME", nargs="+", help="store name(s) to delete")
    parser.add_argument(
        "--force", action="store_true", help="delete even when saved deltas depend on it"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, out: Output) -> int:
    from zoo.errors import StoreError, ZooError
    from zoo.io.store import removal_order, removal_problems, remove

    names = list(dict.fromkeys(args.names))
    problems = removal_problems(names, force=args.force)
    if problems:
        message = _refusal(names, problems)
        if not args.json:
            raise StoreError(message)
        out.json(
            _document(
                [
                    _result(n, error=problems.get(n, "not removed: another name was refused"))
                    for n in names
                ]
            )
        )
        out.error(message)
        return 1
    results = []
    for name in removal_order(names):
        try:
            results.append(_result(name, path=str(remove(name, force=args.force))))
        except ZooError as exc:
            results.append(_result(name, error=str(exc)))
    if args.json:
        out.json(_document(results))
    else:
        from zoo.cli.output import printable

        for result in results:
            if result["removed"]:
                out.print(printable(f"removed {result['name']} ({result['path']})"))
            else:
                out.error(printable(result["error"]))
    return 0 if all(r["removed"] for r in results) else 1


def _refusal(names: list[str], problems: dict[str, str]) -> str:
    if len(problems) == 1:
        return f"{next(iter(problems.values()))} (nothing was removed)"
    lines = [f"cannot remove {len(problems)} of the {len(names)} names (nothing was removed):"]
    lines += [f"  {problem}" for problem in problems.values()]
    return "\n".join(lines)


def _result(name: str, *, path: str | None = None, error: str | None = None) -> dict[str, Any]:
    return {"name": name, "removed": error is None, "path": path, "error": error}


def _document(results: list[dict[str, Any]]) -> dict[str, Any]:
    """``removed``: the folders removed (as before); ``results``: every name's outcome."""
    return {"removed": [r["path"] for r in results if r["removed"]], "results": results}

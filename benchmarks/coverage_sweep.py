"""Coverage of the parameter table over every timm architecture, built on the meta device.

For each name in ``timm.list_models()`` this builds the model the way ``zoo.params(name)`` does
(``torch.device("meta")``, no weights, nothing downloaded) and checks that its table has:

* ``meta``   - every parameter on the meta device (no storage allocated);
* ``stem``   - the group at depth 0 is ``stem``;
* ``stage``  - at least one body group ``stage.N``;
* ``head``   - the head is exactly the parameters of ``get_classifier()``, at the highest depth.

An architecture whose default build has no classifier parameters (``num_classes=0`` by
default, feature models) is checked again with ``num_classes=10``, as a user fine-tuning it
would build it; the summary counts those apart. Every architecture that fails a check is listed
with the reason. Output: a summary on stdout and one JSON line per architecture in ``--out``.

Usage::

    nohup python benchmarks/coverage_sweep.py --out .zoo-bench/coverage.jsonl > \\
        .zoo-bench/coverage.txt 2>&1 &
    python benchmarks/coverage_sweep.py --pattern 'resnet*' --limit 20
    python benchmarks/coverage_sweep.py --recheck .zoo-bench/coverage.jsonl --out new.jsonl

Runs sequentially (one core): about a second per architecture on a quiet machine.
"""

from __future__ import annotations

import argparse
import fnmatch
import gc
import json
import os
import sys
import time
import traceback
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
NO_HEAD = "head: get_classifier() has no parameters"


def check(name: str, num_classes: int | None = None) -> dict[str, Any]:
    """Build ``name`` on meta and check its table; returns a result record."""
    from zoo.api import get_catalog
    from zoo.tables.build import build_meta, classifier_param_names, describe, spec_of

    catalog = get_catalog()
    started = time.perf_counter()
    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    model = build_meta(f"timm:{name}", catalog=catalog, **kwargs)
    table = describe(model, spec=spec_of(model, catalog), catalog=catalog)
    seconds = time.perf_counter() - started
    problems: list[str] = []
    if not all(p.is_meta for p in model.parameters()):
        problems.append("meta: some parameters were allocated")
    groups = table.groups
    if not groups or groups[0] != "stem":
        problems.append(f"stem: depth 0 is {groups[0] if groups else None!r}")
    if not any(g.startswith("stage.") for g in groups):
        problems.append(f"stage: no body stage in {groups}")
    classifier = classifier_param_names(model)
    head = [r.name for r in table.head()]
    if not classifier:
        problems.append(NO_HEAD)
    elif set(head) != set(classifier):
        problems.append(f"head: table head {head[:4]} != get_classifier() {classifier[:4]}")
    return {
        "name": name,
        "ok": not problems,
        "problems": problems,
        "groups": len(groups),
        "max_depth": table.max_depth,
        "params": table.total_numel,
        "norms": len(table.norms),
        "grouped_by": table.grouped_by,
        "notes": list(table.notes),
        "seconds": round(seconds, 3),
        "num_classes": num_classes,
    }


def run_one(name: str) -> dict[str, Any]:
    try:
        result = check(name)
        if not result["ok"] and result["problems"] == [NO_HEAD]:
            retry = check(name, num_classes=10)
            retry["default_head_empty"] = True
            if retry["problems"] == [NO_HEAD]:
                retry["problems"] = [
                    "head: no classifier even with num_classes=10 (timm builds this "
                    "architecture as an encoder without one)"
                ]
            return retry
        return result
    except Exception as exc:
        return {
            "name": name,
            "ok": False,
            "problems": [f"build: {type(exc).__name__}: {str(exc)[:300]}"],
            "trace": traceback.format_exc(limit=-3)[-800:],
        }
    finally:
        gc.collect()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pattern", default="*", help="fnmatch pattern over timm names")
    parser.add_argument("--limit", type=int, default=0, help="check at most N architectures")
    parser.add_argument("--out", type=Path, default=Path(".zoo-bench/coverage.jsonl"))
    parser.add_argument(
        "--recheck",
        type=Path,
        default=None,
        metavar="JSONL",
        help="keep the passing results of an earlier run's --out file, check its failures again",
    )
    args = parser.parse_args(argv)

    warnings.filterwarnings("ignore")
    import timm
    import torch

    torch.set_num_threads(1)
    names = [n for n in timm.list_models() if fnmatch.fnmatchcase(n, args.pattern)]
    if args.limit:
        names = names[: args.limit]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    kept: dict[str, dict[str, Any]] = {}
    if args.recheck is not None:
        earlier = [json.loads(line) for line in args.recheck.read_text().splitlines() if line]
        kept = {r["name"]: r for r in earlier if r["ok"]}
    results = []
    with args.out.open("w") as sink:
        for i, name in enumerate(names, 1):
            result = kept.get(name) or run_one(name)
            results.append(result)
            sink.write(json.dumps(result) + "\n")
            sink.flush()
            if i % 50 == 0:
                ok = sum(r["ok"] for r in results)
                print(
                    f"[{i}/{len(names)}] {ok} ok, {time.perf_counter() - started:.0f}s", flush=True
                )
    elapsed = time.perf_counter() - started

    ok = [r for r in results if r["ok"]]
    retried = [r for r in ok if r.get("default_head_empty")]
    fallback = [r for r in results if any("one at a time" in n for n in r.get("notes", ()))]
    failed = [r for r in results if not r["ok"]]
    generic = [r["name"] for r in ok if r.get("grouped_by") not in (None, "timm")]
    print()
    print(
        f"timm {timm.__version__}, torch {torch.__version__}: {len(names)} architectures, "
        f"{elapsed:.0f}s ({elapsed / max(len(names), 1):.2f}s each)"
    )
    timed = sorted((r["seconds"], r["name"]) for r in results if "seconds" in r)
    if timed:
        print(
            f"build + table per architecture: median {timed[len(timed) // 2][0]:.2f}s, "
            f"slowest {timed[-1][0]:.1f}s ({timed[-1][1]})"
        )
    if kept:
        print(
            f"  ({len(kept)} passing results kept from {args.recheck}; the time above is the "
            f"recheck of the other {len(names) - len(kept)})"
        )
    print(f"covered: {len(ok)}/{len(names)} = {100 * len(ok) / max(len(names), 1):.1f}%")
    print(
        f"  of which default build has no classifier (checked with num_classes=10): {len(retried)}"
    )
    print(
        f"  built with the per-parameter meta fallback (constructor reads values): {len(fallback)}"
    )
    print(
        f"  grouped by the generic fallback (no timm group_matcher): {len(generic)}"
        + (f" ({', '.join(generic[:12])}{', ...' if len(generic) > 12 else ''})" if generic else "")
    )
    if failed:
        print(f"not covered: {len(failed)}")
        kinds = Counter(r["problems"][0].split(":")[0] for r in failed)
        print("  by first problem: " + ", ".join(f"{k}={v}" for k, v in kinds.most_common()))
        for r in failed:
            print(f"  {r['name']}: {'; '.join(r['problems'])}")
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())

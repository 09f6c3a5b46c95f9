"""How fast ``zoo show`` / ``zoo.params`` describe a model, next to building it with timm.

Target: ``zoo show vit_large_patch16_224`` in at most 10% of the time that
``timm.create_model('vit_large_patch16_224')`` takes, and a billion-parameter model
(``vit_giant_patch14_224``) shown without its weights ever being allocated.

Three measurements, side by side in one run:

1. **in process** (the target's ratio): with torch, timm and the zoo catalog already imported,
   ``zoo.params(name)`` (meta-device build + table) against ``timm.create_model(name)``
   (real weights, initialised on the CPU). Medians of ``--repeat`` runs, interleaved; the
   first ``zoo.params`` call of the process is printed too.
2. **end to end**: the whole ``zoo show NAME`` command in a fresh interpreter against a fresh
   interpreter that runs ``import timm; timm.create_model(NAME)``; ``zoo show`` both without
   its disk cache (it pays ``import torch, timm``, printed separately as the fixed cost, and
   builds the plugin catalog) and warm (the table cached on disk, keyed by the installed
   plugins: no torch import at all).
3. **billion parameters**: ``zoo show vit_giant_patch14_224`` in a fresh interpreter, its peak
   resident memory next to the size its float32 weights would have, and in process that every
   parameter and buffer is on the meta device (zero bytes of storage).

Usage: ``python benchmarks/show_speed.py [--name vit_large_patch16_224] [--repeat 3]``
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

_PEAK_RSS = (
    "import resource, subprocess, sys, time;"
    "t = time.perf_counter();"
    "r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL);"
    "dt = time.perf_counter() - t;"
    "print(dt, r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
)


def run_child(argv: list[str], env: dict[str, str] | None = None) -> tuple[float, int]:
    """Wall seconds and peak RSS (bytes) of one fresh process running ``argv``."""
    result = subprocess.run(
        [sys.executable, "-c", _PEAK_RSS, *argv],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    seconds, returncode, max_rss_kb = result.stdout.split()
    if int(returncode) != 0:
        raise RuntimeError(f"{argv} exited with {returncode}: {result.stderr[-2000:]}")
    return float(seconds), int(max_rss_kb) * 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", default="vit_large_patch16_224")
    parser.add_argument("--giant", default="vit_giant_patch14_224")
    parser.add_argument("--repeat", type=int, default=3, help="in-process repeats")
    parser.add_argument("--proc-repeat", type=int, default=3, help="end-to-end repeats")
    parser.add_argument("--json", action="store_true", help="also print the numbers as JSON")
    args = parser.parse_args(argv)
    py = sys.executable
    numbers: dict[str, float] = {}

    # ------------------------------------------------------------ 1. in process
    t0 = time.perf_counter()
    import timm
    import torch

    import zoo
    from zoo.api import get_catalog
    from zoo.tables.build import build_meta, storage_bytes

    numbers["import_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    get_catalog()
    numbers["catalog_s"] = time.perf_counter() - t0
    print(f"torch {torch.__version__}, timm {timm.__version__}, {torch.get_num_threads()} threads")
    print(
        f"in process: import torch+timm+zoo {numbers['import_s']:.2f}s, "
        f"plugin catalog {numbers['catalog_s']:.2f}s (both excluded below)"
    )

    t0 = time.perf_counter()
    zoo.params(args.name)
    numbers["params_first_s"] = time.perf_counter() - t0  # pays timm's and torch's lazy imports
    params_s, create_s = [], []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        table = zoo.params(args.name)
        params_s.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        model = timm.create_model(args.name)
        create_s.append(time.perf_counter() - t0)
        del model
    numbers["params_s"] = statistics.median(params_s)
    numbers["create_s"] = statistics.median(create_s)
    numbers["in_process_ratio"] = numbers["params_s"] / numbers["create_s"]
    print(
        f"  zoo.params({args.name!r})          {numbers['params_s']:7.2f}s  "
        f"({table.total_numel / 1e6:.0f}M parameters, {len(table)} tensors)"
    )
    print(f"  zoo.params, first call in the process  {numbers['params_first_s']:7.2f}s")
    print(f"  timm.create_model({args.name!r})   {numbers['create_s']:7.2f}s")
    print(
        f"  ratio params/create = {100 * numbers['in_process_ratio']:.1f}% (first call: "
        f"{100 * numbers['params_first_s'] / numbers['create_s']:.1f}%)  (target <= 10%)"
    )

    # ------------------------------------------------------------ 2. end to end
    show = [py, "-m", "zoo.cli.main", "show", args.name]
    create = [py, "-c", f"import timm; timm.create_model({args.name!r})"]
    bare = [py, "-c", "import torch, timm"]
    cache = tempfile.mkdtemp(prefix="zoo-show-bench-")
    cold_env = {**os.environ, "ZOO_NO_CACHE": "1"}
    warm_env = {**os.environ, "ZOO_CACHE_DIR": cache}
    run_child(show, warm_env)  # primes the listing and table cache of the warm runs
    runs: dict[str, list[float]] = {"bare": [], "show": [], "warm": [], "create": []}
    for _ in range(args.proc_repeat):  # interleaved, so a busy moment hurts all alike
        for key, cmd, env in (
            ("bare", bare, None),
            ("show", show, cold_env),
            ("warm", show, warm_env),
            ("create", create, None),
        ):
            runs[key].append(run_child(cmd, env)[0])
    shutil.rmtree(cache, ignore_errors=True)
    numbers["bare_import_proc_s"] = statistics.median(runs["bare"])
    numbers["show_proc_s"] = statistics.median(runs["show"])
    numbers["show_warm_proc_s"] = statistics.median(runs["warm"])
    numbers["create_proc_s"] = statistics.median(runs["create"])
    numbers["process_ratio"] = numbers["show_proc_s"] / numbers["create_proc_s"]
    numbers["warm_process_ratio"] = numbers["show_warm_proc_s"] / numbers["create_proc_s"]
    fixed = numbers["bare_import_proc_s"]
    numbers["process_ratio_beyond_import"] = (numbers["show_proc_s"] - fixed) / max(
        numbers["create_proc_s"] - fixed, 1e-9
    )
    print(f"end to end (fresh interpreters, medians of {args.proc_repeat}):")
    print(f"  python -c 'import torch, timm'        {fixed:7.2f}s  (fixed cost of both)")
    print(f"  zoo show {args.name} (no cache)  {numbers['show_proc_s']:7.2f}s")
    print(f"  zoo show {args.name} (warm)      {numbers['show_warm_proc_s']:7.2f}s")
    print(f"  import timm + create_model            {numbers['create_proc_s']:7.2f}s")
    print(
        f"  ratio without cache = {100 * numbers['process_ratio']:.1f}% of the whole process "
        f"({100 * numbers['process_ratio_beyond_import']:.1f}% of the time beyond the shared "
        "import)"
    )
    print(
        f"  ratio warm (table cached on disk) = {100 * numbers['warm_process_ratio']:.1f}%  "
        "(target <= 10%)"
    )

    # ------------------------------------------------------------ 3. a billion parameters
    giant_table = zoo.params(args.giant)
    model = build_meta(args.giant, catalog=get_catalog())
    notes = model.zoo.notes
    numbers["giant_numel"] = giant_table.total_numel
    numbers["giant_storage_bytes"] = storage_bytes(model)
    all_meta = all(t.is_meta for t in (*model.parameters(), *model.buffers()))
    del model
    weights_bytes = sum(r.numel * 4 for r in giant_table)
    numbers["giant_show_proc_s"], numbers["giant_show_peak_rss"] = run_child(
        [py, "-m", "zoo.cli.main", "show", args.giant]
    )
    _, numbers["bare_import_peak_rss"] = run_child(bare)
    gib = 1 << 30
    print(
        f"billion parameters: {args.giant}, {giant_table.total_numel / 1e9:.2f}B parameters "
        f"({weights_bytes / gib:.1f} GiB as float32)"
    )
    print(
        f"  in process: every parameter and buffer on meta: {all_meta}; storage allocated: "
        f"{numbers['giant_storage_bytes']} bytes{'; ' + '; '.join(notes) if notes else ''}"
    )
    print(
        f"  zoo show {args.giant}: {numbers['giant_show_proc_s']:.2f}s, peak RSS "
        f"{numbers['giant_show_peak_rss'] / gib:.2f} GiB (python -c 'import torch, timm' "
        f"alone: {numbers['bare_import_peak_rss'] / gib:.2f} GiB)"
    )
    if args.json:
        print(json.dumps(numbers, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

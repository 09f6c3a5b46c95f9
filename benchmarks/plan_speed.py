"""What a dry run costs: `zoo.plan` per policy against building the table it reads, side by side.

For each model: the median time of `zoo.params(name)` (the model built on the meta device and
described), of `zoo.plan(table, policy)` for every built-in policy, and of applying the plan to
the meta model (`zoo.plans.freeze.apply_plan`); ratios are plan / params. A plan should cost a
small fraction of building the table, so `zoo plan` is as fast as `zoo show`.

    python benchmarks/plan_speed.py [--rounds 5] [--models timm:resnet50,timm:vit_base_patch16_224]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

POLICIES = [
    "full",
    "linear-probe",
    "freeze-to:depth=2",
    "train-last:n=1",
    "bitfit",
    "norm-only",
    "pattern:exclude=*.bias",
    "layer-decay:decay=0.7",
    "gradual:every=2",
    "auto:samples_per_class=300",
]
DEFAULT_MODELS = "timm:resnet50,timm:vit_base_patch16_224,timm:vit_giant_patch14_clip_224"


def median_time(fn: Callable[[], object], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--models", default=DEFAULT_MODELS)
    args = parser.parse_args()

    import zoo
    from zoo.plans.freeze import apply_plan
    from zoo.tables.build import build_meta

    zoo.get_catalog()  # built once, outside the timings
    for name in args.models.split(","):
        table = zoo.params(name)
        t_params = median_time(lambda name=name: zoo.params(name), args.rounds)
        model = build_meta(name, catalog=zoo.get_catalog())
        print(
            f"\n{name}: {len(table)} tensors, {table.total_numel / 1e6:.1f}M parameters, "
            f"{len(table.norms)} norm layers; zoo.params {t_params * 1e3:.1f} ms"
        )
        print(f"  {'policy':<28} {'plan ms':>8} {'plan/params':>12} {'apply ms':>9}")
        for policy in POLICIES:
            plan = zoo.plan(table, policy)
            t_plan = median_time(
                lambda policy=policy, table=table: zoo.plan(table, policy), args.rounds
            )
            t_apply = median_time(
                lambda plan=plan, model=model: apply_plan(model, plan), args.rounds
            )
            print(
                f"  {policy:<28} {t_plan * 1e3:>8.2f} {t_plan / t_params:>12.3f} "
                f"{t_apply * 1e3:>9.2f}"
            )


if __name__ == "__main__":
    main()

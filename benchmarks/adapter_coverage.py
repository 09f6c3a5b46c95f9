"""Coverage of the adapter policies (``lora``, ``ssf``, ``vpt``) over a seeded sample of timm.

The sample: ``timm.list_models()`` sorted, shuffled with ``random.Random(--seed)`` (default 15),
walked in that order, keeping the first ``--size`` (default 120) architectures whose parameter
count (``zoo.params`` on the meta device, ``num_classes=10``) is at most ``--max-params``
(default 100M, so the sweep fits a busy laptop CPU); the larger ones met on the way are listed
as skipped. The sample is written to ``--sample`` and reused while seed, size, bound and timm's
version are the same.

Each architecture is built with random weights (``zoo.create(..., num_classes=10)``) at a small
input: first with ``img_size=--img`` (ViT-like models accept it) and an ``--img`` input, then
the default build at ``--img``, then the default build at its default input size. All-zero
weights and tiny gains that would hide a branch (zero-initialised heads, residual gains and
last-BN gammas; layer scales at 1e-5) are refilled (ones for 1-D tensors, N(0, 0.02) otherwise)
so that every branch carries a signal.
Then, for each policy, on a fresh copy of the model (eval mode, float32, batch 2):

* ``inject``     - ``zoo.freeze(model, policy)`` adds at least one adapter, keeps every original
                   parameter name, and ``zoo.adapters(model)`` agrees with the plan;
* ``forward``    - the injected model runs;
* ``identity``   - (lora, ssf) outputs equal the base model's at init, within 1e-5 of the output
                   scale (LoRA's B = 0, SSF's scale 1 and shift 0);
* ``live``       - after adding noise (N(0, 0.05)) to every adapter parameter the outputs change
                   (by more than 1e-5 of the output scale);
* ``grads``      - ``backward`` reaches exactly the adapter and head parameters: only they
                   require grad, and each adapter tensor gets a non-zero gradient (no dead
                   adapter);
* ``merge``      - (lora, ssf) ``zoo.merge_adapters`` leaves a plain model (the base model's
                   state-dict keys, no adapter) whose outputs match the perturbed adapted model
                   within 1e-5 of the output scale (the max error is recorded; above it the
                   check runs again in float64, to tell float32 rounding, counted apart, from a
                   wrong merge); (vpt) it raises
                   ``zoo.AdapterMergeError`` and changes nothing.

``vpt`` must work on every ViT-family architecture: a timm model with a ``blocks`` container and
a ``num_prefix_tokens`` attribute (ViT, DeiT, BEiT, EVA, ...). Elsewhere it must either work or
refuse with a ``zoo.ZooError`` (a clear error); anything else is a failure.

Usage::

    nice python benchmarks/adapter_coverage.py --jobs 2 > .zoo-bench/adapter_coverage.txt
    python benchmarks/adapter_coverage.py --limit 10
    python benchmarks/adapter_coverage.py --names vit_tiny_patch16_224,resnet18
    python benchmarks/adapter_coverage.py --recheck .zoo-bench/adapter_coverage.jsonl
    python benchmarks/adapter_coverage.py --summary .zoo-bench/adapter_coverage.jsonl

Output: a summary on stdout (pass rate per policy, each failure with its reason) and one JSON
line per architecture in ``--out``.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import multiprocessing
import os
import random
import signal
import sys
import time
import traceback
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

POLICIES = ("lora:rank=8", "ssf", "vpt")
MERGEABLE = ("lora", "ssf")
TOLERANCE = 1e-5
ROUNDING = 1e-10  # a float64 merge error below this means the float32 error is rounding


class Timeout(Exception):
    pass


def _on_alarm(signum: int, frame: Any) -> None:
    raise Timeout("timed out")


def kind(policy: str) -> str:
    return policy.split(":")[0]


# --- the sample ---------------------------------------------------------------------------


def select(seed: int, size: int, max_params: float, sample_file: Path | None) -> dict[str, Any]:
    """The first ``size`` names of a seeded shuffle of timm with at most ``max_params``."""
    import timm

    key = {"seed": seed, "size": size, "max_params": max_params, "timm": timm.__version__}
    if sample_file is not None and sample_file.exists():
        cached = json.loads(sample_file.read_text())
        if {k: cached.get(k) for k in key} == key:
            return cached
    import zoo

    order = sorted(timm.list_models())
    random.Random(seed).shuffle(order)
    names: list[str] = []
    skipped: list[list[Any]] = []
    sizes: dict[str, int | None] = {}
    for name in order:
        if len(names) == size:
            break
        try:
            numel: int | None = zoo.params(f"timm:{name}", num_classes=10).total_numel
        except Exception:  # the run reports the build failure; it stays in the sample
            numel = None
        if numel is not None and numel > max_params:
            skipped.append([name, numel])
            continue
        names.append(name)
        sizes[name] = numel
        gc.collect()
    result = {**key, "names": names, "params": sizes, "skipped_too_large": skipped}
    if sample_file is not None:
        sample_file.parent.mkdir(parents=True, exist_ok=True)
        sample_file.write_text(json.dumps(result, indent=1) + "\n")
    return result


# --- one architecture ---------------------------------------------------------------------


def as_tensor(output: Any) -> Any:
    while isinstance(output, (tuple, list)):
        output = output[0]
    if isinstance(output, dict):
        output = next(iter(output.values()))
    return output


def rel_err(a: Any, b: Any) -> float:
    scale = max(float(b.abs().max()), 1e-12)
    return float((a - b).abs().max()) / scale


def refill_zeros(model: Any) -> int:
    """Give zero or tiny initial weights a value so no branch is silent; returns how many.

    1-D tensors that are zero or below 1e-3 everywhere (layer-scale gains start at 1e-5 or 1e-6,
    zero-initialised residual gains and last-BN gammas at 0) become 1; other all-zero tensors
    (zero-initialised heads) N(0, 0.02). Biases stay as they are.
    """
    import torch

    count = 0
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or p.numel() == 0:
                continue
            tiny_gain = p.ndim <= 1 and float(p.abs().max()) < 1e-3  # layer scale at 1e-5
            if bool(p.any()) and not tiny_gain:
                continue
            if p.ndim <= 1:
                p.fill_(1.0)
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
            count += 1
    return count


def build(name: str, img: int) -> tuple[Any, Any, dict[str, Any]]:
    """A random-weight model and an input it accepts, smallest first."""
    import torch

    import zoo

    attempts: list[tuple[dict[str, Any], int | None]] = [({"img_size": img}, img), ({}, img)]
    attempts.append(({}, None))
    errors = []
    for kwargs, size in attempts:
        try:
            torch.manual_seed(0)
            model = zoo.create(f"timm:{name}", num_classes=10, **kwargs)
            model.eval()
            if size is None:
                size = int(model.pretrained_cfg["input_size"][-1])
            x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
            with torch.no_grad():
                as_tensor(model(x))
            info = {"build_kwargs": kwargs, "input": size, "errors": errors}
            return model, x, info
        except Timeout:
            raise
        except Exception as exc:
            errors.append(f"{kwargs or 'default'} @ {size}: {type(exc).__name__}: {exc}"[:200])
            gc.collect()
    raise RuntimeError("; ".join(errors))


def vit_family(model: Any) -> bool:
    return hasattr(model, "blocks") and hasattr(model, "num_prefix_tokens")


def check_policy(base: Any, x: Any, policy: str, head: set[str], ref: Any) -> dict[str, Any]:
    """Run the checks of one policy on a copy of ``base``; returns a record."""
    import torch

    import zoo

    rec: dict[str, Any] = {"policy": policy, "ok": False, "problems": []}
    problems: list[str] = rec["problems"]
    model = copy.deepcopy(base)
    base_keys = list(base.state_dict())
    stage = "inject"
    try:
        plan = zoo.freeze(model, policy)
        additions = list(plan.additions)
        rec["additions"] = len(additions)
        added = {f"{a.target}.{rel}" for a in additions for rel in a.params}
        rec["added_numel"] = sum(p.numel() for n, p in model.named_parameters() if n in added)
        total = sum(p.numel() for p in model.parameters())
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        rec["trained_fraction"] = sum(
            p.numel() for n, p in model.named_parameters() if n in trainable
        ) / max(total, 1)
        rec["targets"] = sorted({a.target.split(".")[-1] for a in additions})[:12]
        names = dict(model.named_parameters())
        if not additions:
            problems.append("inject: the plan adds nothing")
        missing = added - set(names)
        if missing:
            problems.append(
                f"inject: {len(missing)} planned tensors not in the model, e.g. "
                f"{sorted(missing)[:2]}"
            )
        lost = [k for k in base_keys if k not in model.state_dict()]
        if lost:
            problems.append(f"inject: original names changed, e.g. {lost[:2]}")
        injected = {(a.target, a.kind) for a in zoo.adapters(model)}
        if injected != {(a.target, a.kind) for a in additions}:
            problems.append(
                f"inject: zoo.adapters() lists {len(injected)} adapters, the plan {len(additions)}"
            )
        extra = trainable - added - head
        if extra:
            problems.append(
                f"grads: {len(extra)} trainable tensors beyond adapters and head, e.g. "
                f"{sorted(extra)[:3]}"
            )
        frozen_head = head - trainable
        if frozen_head:
            problems.append(f"grads: head tensors frozen: {sorted(frozen_head)[:3]}")

        stage = "forward"
        with torch.no_grad():
            y0 = as_tensor(model(x))
        if kind(policy) in MERGEABLE:
            stage = "identity"
            rec["init_error"] = rel_err(y0, ref)
            if not rec["init_error"] <= TOLERANCE:
                problems.append(f"identity: outputs differ at init by {rec['init_error']:.2e}")

        stage = "live"
        g = torch.Generator().manual_seed(2)
        with torch.no_grad():
            for n in sorted(added & set(names)):
                p = names[n]
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
        y1 = as_tensor(model(x))
        rec["live_change"] = rel_err(y1.detach(), y0)
        if not rec["live_change"] > 1e-5:
            problems.append(
                f"live: perturbing the adapters changed outputs by only {rec['live_change']:.1e}"
            )

        stage = "grads"
        weights = torch.randn(y1.shape, generator=g)
        (y1 * weights).sum().backward()
        with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
        stray = with_grad - added - head
        if stray:
            problems.append(
                f"grads: {len(stray)} tensors outside adapters and head got "
                f"gradients, e.g. {sorted(stray)[:3]}"
            )
        dead = sorted(
            n for n in added & set(names) if names[n].grad is None or not bool(names[n].grad.any())
        )
        rec["dead"] = len(dead)
        if dead:
            problems.append(
                f"grads: {len(dead)} of {len(added)} adapter tensors got no gradient "
                f"(dead adapters), e.g. {dead[:3]}"
            )
        model.zero_grad(set_to_none=True)
        y1 = y1.detach()

        stage = "merge"
        if kind(policy) in MERGEABLE:
            merged = zoo.merge_adapters(model)
            with torch.no_grad():
                y2 = as_tensor(merged(x))
            rec["merge_error"] = rel_err(y2, y1)
            if not rec["merge_error"] <= TOLERANCE:
                exact = merge_error_float64(base, x, policy)
                rec["merge_error_float64"] = exact
                problems.append(
                    f"merge: outputs differ by {rec['merge_error']:.2e} (> 1e-5) in float32, "
                    f"{exact:.1e} in float64"
                    + (
                        " (float32 rounding: the error scales with the precision)"
                        if exact <= ROUNDING or exact <= 1e-6 * rec["merge_error"]
                        else ""
                    )
                )
            if list(merged.state_dict()) != base_keys:
                extra_keys = sorted(set(merged.state_dict()) - set(base_keys))
                problems.append(
                    f"merge: state dict keys differ from the base model's, e.g. {extra_keys[:2]}"
                )
            if zoo.adapters(merged):
                problems.append("merge: zoo.adapters() still lists adapters after merging")
        else:
            try:
                zoo.merge_adapters(model)
                problems.append("merge: a non-mergeable adapter merged without an error")
            except zoo.AdapterMergeError:
                with torch.no_grad():
                    y3 = as_tensor(model(x))
                if rel_err(y3, y1) > 1e-6:
                    problems.append("merge: the refused merge changed the model")
    except Timeout:
        raise
    except Exception as exc:
        rec["error_type"] = type(exc).__name__
        rec["zoo_error"] = _is_zoo_error(exc)
        problems.append(f"{stage}: {type(exc).__name__}: {str(exc)[:300]}")
        rec["trace"] = traceback.format_exc(limit=-4)[-1200:]
    rec["ok"] = not problems
    del model
    gc.collect()
    return rec


def merge_error_float64(base: Any, x: Any, policy: str) -> float:
    """The merge check again in float64: tells float32 rounding from a wrong merge."""
    import torch

    import zoo

    model = copy.deepcopy(base).double()
    plan = zoo.freeze(model, policy)
    names = dict(model.named_parameters())
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for n in sorted({f"{a.target}.{rel}" for a in plan.additions for rel in a.params}):
            p = names[n]
            p.add_(torch.randn(p.shape, generator=g).double() * 0.05)
        y1 = as_tensor(model(x.double()))
        y2 = as_tensor(zoo.merge_adapters(model)(x.double()))
    return rel_err(y2, y1)


def _is_zoo_error(exc: BaseException) -> bool:
    import zoo

    return isinstance(exc, zoo.ZooError)


def run_one(task: tuple[str, tuple[str, ...], int, int]) -> dict[str, Any]:
    name, policies, img, timeout = task
    import torch

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.alarm(timeout)
    started = time.perf_counter()
    result: dict[str, Any] = {"name": name, "policies": {}}
    try:
        import zoo

        base, x, info = build(name, img)
        result.update(info)
        result["refilled_zero_tensors"] = refill_zeros(base)
        result["vit_family"] = vit_family(base)
        result["params"] = sum(p.numel() for p in base.parameters())
        head = {r.name for r in zoo.params(base).with_role("head")}
        with torch.no_grad():
            ref = as_tensor(base(x))
        for policy in policies:
            result["policies"][policy] = check_policy(base, x, policy, head, ref)
    except Timeout:
        result["base_error"] = f"timed out after {timeout}s"
    except Exception as exc:
        result["base_error"] = f"{type(exc).__name__}: {str(exc)[:400]}"
    finally:
        signal.alarm(0)
    result["seconds"] = round(time.perf_counter() - started, 2)
    return result


# --- verdicts and summary -----------------------------------------------------------------


def is_rounding(rec: dict[str, Any]) -> bool:
    """A merge error that is float32 rounding: tiny in float64, or shrinking with the precision
    (a deep random-weight network amplifies rounding alike in both: error64 / error32 ~ 1e-9)."""
    exact = rec.get("merge_error_float64")
    if exact is None:
        return False
    return exact <= ROUNDING or exact <= 1e-6 * rec["merge_error"]


def verdict(result: dict[str, Any], policy: str) -> tuple[str, str]:
    """``("pass" | "fail" | "refused" | "n/a", reason)`` for one policy on one architecture."""
    if "base_error" in result:
        return "n/a", result["base_error"]
    rec = result["policies"].get(policy)
    if rec is None:
        done = ", ".join(result["policies"]) or "none"
        return "fail", f"not checked (timed out; policies done: {done})"
    if rec["ok"]:
        return "pass", ""
    reason = "; ".join(rec["problems"])
    if len(rec["problems"]) == 1 and is_rounding(rec):
        return "rounding", reason
    if kind(policy) == "vpt" and not result.get("vit_family") and rec.get("zoo_error"):
        return "refused", reason
    return "fail", reason


def summarize(results: list[dict[str, Any]], policies: tuple[str, ...], elapsed: float) -> int:
    import timm
    import torch

    print(
        f"\ntimm {timm.__version__}, torch {torch.__version__}: {len(results)} architectures, "
        + (f"{elapsed:.0f}s wall" if elapsed else "summary of a stored run")
    )
    base_failed = [r for r in results if "base_error" in r]
    built = [r for r in results if "base_error" not in r]
    small = sum(1 for r in built if r.get("input", 0) <= 64)
    print(
        f"  {len(built)} built and ran with random weights ({small} at an input of 64 px or "
        f"less); {len(base_failed)} could not be built or run at all (not counted below)"
    )
    for r in base_failed:
        print(f"    {r['name']}: {r['base_error']}")
    vits = [r for r in built if r.get("vit_family")]
    print(f"  ViT family (blocks + num_prefix_tokens): {len(vits)}")
    failed_any = 0
    for policy in policies:
        verdicts = [(r, *verdict(r, policy)) for r in built]
        if kind(policy) == "vpt":
            fam = [v for v in verdicts if v[0].get("vit_family")]
            other = [v for v in verdicts if not v[0].get("vit_family")]
            ok = sum(v[1] == "pass" for v in fam)
            print(
                f"\n{policy}: ViT family {ok}/{len(fam)} pass"
                + (f" = {100 * ok / len(fam):.1f}%" if fam else "")
            )
            clear = [
                v[0]["name"]
                for v in fam
                if v[1] != "pass" and v[0]["policies"].get(policy, {}).get("zoo_error")
            ]
            if clear:
                print(
                    f"  of the other {len(fam) - ok}: {len(clear)} refused with a clear zoo "
                    f"error ({', '.join(clear)}), {len(fam) - ok - len(clear)} failed otherwise"
                )
            refused = sum(v[1] == "refused" for v in other)
            worked = sum(v[1] == "pass" for v in other)
            print(
                f"  other architectures ({len(other)}): {refused} refused with a zoo error, "
                f"{worked} work, {len(other) - refused - worked} fail otherwise"
            )
            bad = [v for v in fam if v[1] != "pass"] + [v for v in other if v[1] == "fail"]
        else:
            ok = sum(v[1] == "pass" for v in verdicts)
            rate = 100 * ok / max(len(verdicts), 1)
            print(f"\n{policy}: {ok}/{len(verdicts)} pass = {rate:.1f}%")
            rounding = sum(v[1] == "rounding" for v in verdicts)
            if rounding:
                loose = 100 * (ok + rounding) / max(len(verdicts), 1)
                print(
                    f"  + {rounding} whose merge error above 1e-5 is float32 rounding (float64: "
                    f"1e-9 of it or less): {ok + rounding}/{len(verdicts)} = {loose:.1f}%"
                )
            recs = [r["policies"][policy] for r in built if policy in r["policies"]]
            merges = [x["merge_error"] for x in recs if "merge_error" in x]
            inits = [x["init_error"] for x in recs if "init_error" in x]
            if merges:
                passed = [x["merge_error"] for x in recs if x["ok"] and "merge_error" in x]
                print(
                    f"  merge: max relative error {max(merges):.2e} over {len(merges)} merges; "
                    f"{max(passed, default=0.0):.2e} over the {len(passed)} that pass"
                )
            if inits:
                print(f"  identity at init: max relative error {max(inits):.2e}")
            fractions = sorted(x["trained_fraction"] for x in recs if "trained_fraction" in x)
            if fractions:
                print(
                    f"  trained fraction (adapters + head): median "
                    f"{100 * fractions[len(fractions) // 2]:.2f}%, max {100 * fractions[-1]:.2f}%"
                )
            bad = [v for v in verdicts if v[1] != "pass"]
        if bad:
            failed_any += len(bad)
            stages = Counter(v[2].split(":")[0] for v in bad)
            print("  failures by first stage: " + ", ".join(f"{k}={n}" for k, n in stages.items()))
            for r, how, reason in bad:
                label = "ROUNDING" if how == "rounding" else "FAIL"
                print(f"  {label} {r['name']}: {reason}")
    timed = sorted((r["seconds"], r["name"]) for r in results)
    if timed:
        print(
            f"\nper architecture: median {timed[len(timed) // 2][0]:.1f}s, "
            f"slowest {timed[-1][0]:.0f}s ({timed[-1][1]})"
        )
    return 0 if not failed_any else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=15)
    parser.add_argument("--size", type=int, default=120, help="architectures in the sample")
    parser.add_argument("--max-params", type=float, default=100e6)
    parser.add_argument("--limit", type=int, default=0, help="run only the first N of the sample")
    parser.add_argument("--names", default="", help="comma-separated timm names instead")
    parser.add_argument("--policies", default=",".join(POLICIES), help="semicolon-separated")
    parser.add_argument("--img", type=int, default=64, help="input size tried first")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes")
    parser.add_argument("--timeout", type=int, default=600, help="seconds per architecture")
    parser.add_argument("--out", type=Path, default=Path(".zoo-bench/adapter_coverage.jsonl"))
    parser.add_argument("--sample", type=Path, default=Path(".zoo-bench/adapter_sample.json"))
    parser.add_argument(
        "--recheck",
        type=Path,
        default=None,
        metavar="JSONL",
        help="keep the passing results of an earlier --out file, run its other ones again",
    )
    parser.add_argument(
        "--summary",
        type=Path,
        default=None,
        metavar="JSONL",
        help="print the summary of an earlier (or still running) --out file and exit",
    )
    args = parser.parse_args(argv)
    policies = tuple(p for p in args.policies.replace(";", ",").split(",") if p)
    # "lora:rank=8,alpha=16" cannot be split on commas: keep argument continuations together
    merged: list[str] = []
    for p in policies:
        if merged and "=" in p and ":" not in p:
            merged[-1] += "," + p
        else:
            merged.append(p)
    policies = tuple(merged)

    warnings.filterwarnings("ignore")
    if args.summary is not None:
        done = [json.loads(line) for line in args.summary.read_text().splitlines() if line]
        return summarize(done, policies, 0.0)
    import torch

    torch.set_num_threads(1)
    if args.names:
        names = [n.strip() for n in args.names.split(",") if n.strip()]
    else:
        sample = select(args.seed, args.size, args.max_params, args.sample)
        names = sample["names"]
        print(
            f"sample: seed {args.seed}, {len(names)} timm architectures with <= "
            f"{args.max_params / 1e6:.0f}M parameters; {len(sample['skipped_too_large'])} larger "
            f"ones skipped on the way: " + ", ".join(n for n, _ in sample["skipped_too_large"]),
            flush=True,
        )
    if args.limit:
        names = names[: args.limit]
    kept: dict[str, dict[str, Any]] = {}
    if args.recheck is not None:
        earlier = [json.loads(line) for line in args.recheck.read_text().splitlines() if line]
        kept = {
            r["name"]: r
            for r in earlier
            if "base_error" not in r and all(verdict(r, p)[0] != "fail" for p in policies)
        }
    todo = [(n, policies, args.img, args.timeout) for n in names if n not in kept]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    results = [kept[n] for n in names if n in kept]
    with args.out.open("w") as sink:
        for r in results:
            sink.write(json.dumps(r) + "\n")
        context = multiprocessing.get_context("fork")
        with context.Pool(max(args.jobs, 1), maxtasksperchild=1) as pool:
            for i, result in enumerate(pool.imap_unordered(run_one, todo), 1):
                results.append(result)
                sink.write(json.dumps(result) + "\n")
                sink.flush()
                marks = " ".join(f"{kind(p)}={verdict(result, p)[0]}" for p in policies)
                print(
                    f"[{i}/{len(todo)}] {result['name']} {result['seconds']}s {marks}", flush=True
                )
    order = {n: i for i, n in enumerate(names)}
    results.sort(key=lambda r: order.get(r["name"], 0))
    return summarize(results, policies, time.perf_counter() - started)


if __name__ == "__main__":
    sys.exit(main())

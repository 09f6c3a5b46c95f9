"""The trust boundary, PEFT side: a PEFT adapter folder is untrusted input, and so is what it
names; exporting one fails cleanly when the disk is full; a failed merge changes nothing.

By threat:

* **the folder chooses a file** -- ``base_model_name_or_path`` is a backbone name or a timm hub
  id, never a path or a store entry, whatever ``..``, ``/`` or ``\\`` it holds; the file it
  points at is never opened (an audit hook in a forked child records every ``open``);
* **messages echo a file's bytes** -- a file that is no safetensors file is refused without
  quoting its first bytes;
* **a few KB allocate gigabytes** -- shapes are checked from the header, against the rank and
  against the base built on the ``meta`` device, before anything is allocated (peak memory of
  a forked child measured);
* **values zoo would silently change** -- NaN/inf, integer, boolean and complex tensors are
  refused by name;
* **links and special files** -- a linked config or weights file or folder, a FIFO, an
  oversized config: refused before a byte is read;
* **disk full during export** -- ``ENOSPC`` injected before every file-system operation and a
  real file-size limit in a child: a :class:`zoo.ZooError` saying how many bytes were needed,
  the folder as it was, nothing half-written;
* **a plugin's adapter kind whose merge raises** -- the model keeps every adapter and weight.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import struct
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from fileformat_helpers import write_file
from reliability_helpers import FORK, Injector, child_init, enospc, tree_snapshot
from safetensors.torch import save_file
from torch import nn
from trust_helpers import HANG, cli, run_bounded, write_raw

import zoo
from zoo.io.fileformat import read_file
from zoo.io.peft_format import CONFIG_FILE, MAX_CONFIG_BYTES, WEIGHTS_FILE
from zoo.io.store import entry_dir

VIT = "timm:vit_tiny_patch16_224"
VIT_ARGS = {"img_size": 32, "patch_size": 8, "depth": 2}
PREFIX = "base_model.model."
HEAD = f"{PREFIX}head.weight"
LORA_A = f"{PREFIX}blocks.0.attn.qkv.lora_A.weight"
LORA_B = f"{PREFIX}blocks.0.attn.qkv.lora_B.weight"
X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
#: The most a refused import may grow a process's peak memory (the old behaviour: 8.8 GB).
MAX_GROWTH_MB = 150


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """``(base, folder)``: a saved 2-block ViT (a file) and a PEFT export of a LoRA (rank 2) on
    it, made once; tests copy the folder before changing it."""
    root = tmp_path_factory.mktemp("peft")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ZOO_HOME", str(root / "home"))
        model = zoo.create(VIT, num_classes=3, **VIT_ARGS)
        base = zoo.save(model, root / "base.safetensors")
        adapted = zoo.load(base)
        zoo.freeze(adapted, "lora:rank=2")
        with torch.no_grad():
            for param in adapted.parameters():
                if param.requires_grad:
                    param.add_(0.01)
        folder = zoo.export_peft(adapted, root / "adapter", without_base=True)
    yield base, folder


@pytest.fixture
def peft(exported: tuple[Path, Path], tmp_path: Path) -> tuple[Path, Path]:
    """``(base, folder)`` with a private copy of the exported folder."""
    base, folder = exported
    return base, Path(shutil.copytree(folder, tmp_path / "adapter"))


def set_config(folder: Path, **changes: Any) -> None:
    config = json.loads((folder / CONFIG_FILE).read_text())
    config.update(changes)
    (folder / CONFIG_FILE).write_text(json.dumps(config))


def set_tensors(folder: Path, changes: dict[str, torch.Tensor]) -> None:
    """Rewrite the weights with some tensors changed, as a plain (unsealed) PEFT file."""
    tensors = {**read_file(folder / WEIGHTS_FILE).tensors, **changes}
    save_file(tensors, str(folder / WEIGHTS_FILE), metadata={"format": "pt"})


def tensors_of(folder: Path) -> dict[str, torch.Tensor]:
    return read_file(folder / WEIGHTS_FILE).tensors


def peak_growth_mb(call: Callable[[], Any]) -> Callable[[], tuple[str, str, float]]:
    """``call`` wrapped to report what it raised and how much the peak resident memory of the
    (forked) process running it grew, in MB."""

    def measured() -> tuple[str, str, float]:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        try:
            call()
            outcome = ("returned", "")
        except Exception as exc:
            outcome = (type(exc).__name__, str(exc))
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return (*outcome, (after - before) / 1024)

    return measured


# ---------------------------------------------------------------- the folder chooses a file


def _opened_while(call: Callable[[], Any], needle: str) -> Callable[[], tuple[str, list[str]]]:
    """``call`` wrapped to report what it raised and every path containing ``needle`` that was
    opened meanwhile (a ``sys`` audit hook: only in a forked child, hooks cannot be removed)."""

    def audited() -> tuple[str, list[str]]:
        opened: list[str] = []

        def hook(event: str, args: tuple[Any, ...]) -> None:
            if event == "open" and needle in str(args[0]):
                opened.append(str(args[0]))

        sys.addaudithook(hook)
        try:
            call()
            raised = "returned"
        except zoo.ZooError as exc:
            raised = f"{type(exc).__name__}: {exc}"
        return raised, opened

    return audited


HOSTILE_BASES = [
    "timm/../../../../{victim}",
    "{victim}",
    "timm/../{name}",
    "../{name}",
    "./{name}",
    "~/{name}",
    "..\\..\\{name}",
    "timm\\{name}",
    "file:///{victim}",
    "https://example.com/{name}",
    "timm/vit_tiny_patch16_224/../../{name}",
    "timm/..",
    "a" * 200,
    "victim",  # a store name
    "timm/victim\0",
]


@pytest.mark.parametrize("template", HOSTILE_BASES)
def test_base_model_name_or_path_is_never_a_path_or_a_store_name(peft, template):
    base, folder = peft
    victim = shutil.copy(base, folder.parent / "someones.safetensors")
    zoo.save(zoo.load(base), "victim")  # a store entry of that name exists
    named = template.format(victim=str(victim).lstrip("/"), name=Path(victim).name)
    set_config(folder, base_model_name_or_path=named)
    outcomes = run_bounded(
        {
            "file": _opened_while(lambda: zoo.import_peft(folder), str(victim)),
            "store entry": _opened_while(lambda: zoo.import_peft(folder), str(entry_dir("victim"))),
        }
    )
    for outcome in outcomes.values():
        raised, opened = outcome.value
        assert raised.startswith("ZooError: ") and "pass the base" in raised, raised
        assert "--base" in raised and str(folder / CONFIG_FILE) in raised
        assert opened == [], f"{named!r} made zoo open {opened}"


def test_the_cli_refuses_a_folder_naming_a_file_and_saves_nothing(peft):
    base, folder = peft
    set_config(folder, base_model_name_or_path=f"timm/../../../..{base}")
    status, _out, err = run_bounded(
        {"cli": lambda: cli("import-peft", str(folder), "--name", "x")}
    )["cli"].value
    assert status == 1 and "--base" in err and "Traceback" not in err
    assert zoo.list_saved() == []
    assert zoo.import_peft(folder, base=str(base))  # the user names the base: it imports


@pytest.mark.parametrize(
    ("named", "fragment"),
    [
        ("vit_tiny_patch16_224", "names the architecture timm:vit_tiny_patch16_224 but not"),
        # zoo's export records the base's hash: a hub id is looked up (and checked by hash)
        ("google/vit-base-patch16-224", "hf-hub:google/vit-base-patch16-224: not in the"),
        ("no_such_arch.tag", "no backbone zoo knows"),
        ("vit_tiny_patch16_224.no_such_tag", "no backbone zoo knows"),
        (None, "base_model_name_or_path is None"),
    ],
)
def test_names_zoo_cannot_build_ask_for_the_base(peft, named, fragment):
    _base, folder = peft
    set_config(folder, base_model_name_or_path=named)
    with pytest.raises(zoo.ZooError, match="--base") as info:
        zoo.import_peft(folder)
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    "named",
    [
        "timm/vit_tiny_patch16_224.augreg_in21k",
        "vit_tiny_patch16_224.augreg_in21k",
        "timm/vit_tiny_patch16_224",  # timm's default weights
    ],
)
def test_a_timm_hub_id_or_catalog_name_is_built_as_a_pretrained_backbone(peft, named):
    """Offline, the pretrained weights are not cached: the import got as far as building the
    pretrained backbone (the shapes fit), which is what the name means."""
    _base, folder = peft
    set_config(folder, base_model_name_or_path=named)
    with pytest.raises(zoo.WeightsUnavailableError, match="timm/vit_tiny_patch16_224"):
        zoo.import_peft(folder)


def test_a_base_named_by_the_user_is_read_by_the_store_rules(peft, tmp_path):
    """``--base NAME`` is the user's word, but a store entry linked out of the store is not
    followed, as for ``zoo.load``."""
    base, folder = peft
    entry = entry_dir("linked")
    entry.mkdir(parents=True)
    os.symlink(base, entry / "model.safetensors")
    with pytest.raises(zoo.StoreError, match="outside the store"):
        zoo.import_peft(folder, base="linked")


# ---------------------------------------------------------------- messages echo a file's bytes


def test_a_file_that_is_no_safetensors_file_is_refused_without_quoting_it(peft, tmp_path):
    _base, folder = peft
    secret = tmp_path / "passwd"
    secret.write_bytes(b"root:x:0:0:root:/root:/bin/bash\n" * 4)
    (first,) = struct.unpack("<Q", secret.read_bytes()[:8])
    for call in (
        lambda: zoo.import_peft(folder, base=str(secret)),
        lambda: zoo.inspect(secret),
        lambda: zoo.load(secret),
    ):
        with pytest.raises(zoo.CorruptFileError) as info:
            call()
        message = str(info.value)
        assert str(secret) in message and "header length" in message
        assert str(first) not in message and "root" not in message.replace(str(secret), "")
    spaced = tmp_path / "spaced.safetensors"
    write_raw(spaced, None, raw=b"\t{}")
    with pytest.raises(zoo.CorruptFileError, match="must begin with") as info:
        zoo.inspect(spaced)
    assert "\\t" not in str(info.value)


# ---------------------------------------------------------------- a few KB allocate gigabytes


def test_a_zero_byte_huge_head_is_refused_from_the_header(peft):
    """The issue's 250 KB folder: a head of shape [4000000, 0] (no bytes) used to build a
    4,000,000-class model (8.8 GB) before any shape was checked."""
    base, folder = peft
    set_tensors(folder, {HEAD: torch.zeros(4_000_000, 0)})
    assert (folder / WEIGHTS_FILE).stat().st_size < 300_000
    outcomes = run_bounded(
        {
            "named base": peak_growth_mb(lambda: zoo.import_peft(folder, base=str(base))),
            "backbone": peak_growth_mb(lambda: zoo.import_peft(folder, base=VIT)),
        }
    )
    for outcome in outcomes.values():
        error, message, growth = outcome.value
        assert error == "CorruptFileError", outcome.value
        assert HEAD in message and "(4000000, 0)" in message and "num_classes" in message
        assert growth < MAX_GROWTH_MB, f"peak memory grew {growth:.0f} MB"


def test_a_head_that_does_not_fit_the_base_is_refused_before_the_base_is_built(peft):
    """[400000, 1] with a matching bias: 1.6 MB of tensors whose head would take 300 MB built
    (400000 x 192); the meta-built base refuses it."""
    base, folder = peft
    set_tensors(
        folder,
        {
            HEAD: torch.zeros(400_000, 1, dtype=torch.float16),
            f"{PREFIX}head.bias": torch.zeros(400_000, dtype=torch.float16),
        },
    )
    outcome = run_bounded({"import": peak_growth_mb(lambda: zoo.import_peft(folder, base=base))})
    error, message, growth = outcome["import"].value
    assert error == "WeightsMismatchError", outcome["import"].value
    assert "'head.weight' (400000, 1) does not fit the model ((400000, 192))" in message
    assert growth < MAX_GROWTH_MB, f"peak memory grew {growth:.0f} MB"


def test_lora_shapes_are_checked_against_the_rank(peft):
    base, folder = peft
    set_tensors(folder, {LORA_A: torch.zeros(3, 192)})
    with pytest.raises(zoo.CorruptFileError, match=r"has shape \(3, 192\); PEFT's lora_A") as info:
        zoo.import_peft(folder, base=base)
    assert LORA_A in str(info.value) and "r=2" in str(info.value)
    set_tensors(folder, {LORA_A: torch.zeros(2, 0)})
    with pytest.raises(zoo.CorruptFileError, match=r"\(2, 0\)"):
        zoo.import_peft(folder, base=base)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"embed_dim": 30_000}, "asks for a pretrained base"),
        ({"depth": 100_000}, "registered more than"),
    ],
)
def test_architecture_arguments_in_the_folder_cannot_inflate_the_base(peft, kwargs, fragment):
    """zoo writes the base's architecture arguments into its exports; from a folder they are
    untrusted: a base many times its backbone's default size is refused on ``meta``."""
    _base, folder = peft
    metadata = {
        "format": "pt",
        "zoo.backbone": VIT,
        "zoo.build_kwargs": json.dumps({**VIT_ARGS, **kwargs}),
    }
    write_file(folder / WEIGHTS_FILE, tensors_of(folder), metadata)  # sealed, as zoo writes
    outcome = run_bounded({"import": peak_growth_mb(lambda: zoo.import_peft(folder, base=VIT))})
    error, message, growth = outcome["import"].value
    assert error == "CorruptFileError", outcome["import"].value
    assert fragment in message
    assert growth < MAX_GROWTH_MB, f"peak memory grew {growth:.0f} MB"


def test_many_targets_and_long_names_are_refused_without_quadratic_work(peft):
    """20,000 LoRA pairs checked against an 80,000-name ``target_modules`` (a few MB), and a
    key of 500,000 dots: refused at once (PEFT's name rule is a set lookup, keys are bounded),
    not after billions of string comparisons or a slice of every suffix."""
    base, folder = peft
    pair = {"lora_A": torch.zeros(2, 1, dtype=torch.float16), "lora_B": torch.zeros(1, 2)}
    tensors = {
        f"{PREFIX}t{i}.{which}.weight": t.clone()
        for i in range(20_000)
        for which, t in pair.items()
    }
    save_file(tensors, str(folder / WEIGHTS_FILE), metadata={"format": "pt"})
    set_config(folder, target_modules=[f"t{i}" for i in range(80_000)])
    many = run_bounded({"import": lambda: zoo.import_peft(folder, base=base)})["import"]
    assert many.raised("ZooError") and "targets module 't0', which this" in many.message, many
    key = PREFIX + "a." * 500_000 + "weight"
    save_file({key: torch.zeros(1)}, str(folder / WEIGHTS_FILE), metadata={"format": "pt"})
    set_config(folder, modules_to_save=["a"])
    long = run_bounded({"import": lambda: zoo.import_peft(folder, base=base)})["import"]
    assert long.raised("CorruptFileError") and "longer than 1024 characters" in long.message
    assert len(long.message) < 1000


# ---------------------------------------------------------------- values zoo would change


@pytest.mark.parametrize(
    ("key", "make", "fragment"),
    [
        (HEAD, lambda t: t.index_fill(0, torch.tensor([1]), float("nan")), "NaN or infinite"),
        (LORA_B, lambda t: t.index_fill(0, torch.tensor([0]), float("inf")), "NaN or infinite"),
        (LORA_A, lambda t: t.index_fill(0, torch.tensor([0]), -float("inf")), "NaN or infinite"),
        (HEAD, lambda t: (t * 100).to(torch.int8), "is I8, not a floating-point tensor"),
        (LORA_A, lambda t: t.to(torch.int32), "is I32, not a floating-point tensor"),
        (HEAD, lambda t: t.to(torch.complex64), "is C64"),
        (LORA_B, lambda t: t > 0, "is BOOL"),
        (f"{PREFIX}head.bias", lambda t: t.to(torch.int64), "is I64, but the model's 'head.bias'"),
    ],
)
def test_values_zoo_would_change_are_refused_by_name(peft, key, make, fragment):
    base, folder = peft
    set_tensors(folder, {key: make(tensors_of(folder)[key])})
    with pytest.raises(zoo.CorruptFileError) as info:
        zoo.import_peft(folder, base=base)
    assert key in str(info.value) and fragment in str(info.value)


def test_an_untouched_folder_still_imports_exactly(peft):
    base, folder = peft
    model = zoo.import_peft(folder, base=base).eval()
    saved = tensors_of(folder)
    assert torch.equal(model.blocks[0].attn.qkv.lora.A, saved[LORA_A])
    assert torch.equal(model.head.weight, saved[HEAD])
    set_tensors(folder, {LORA_A: saved[LORA_A].to(torch.bfloat16)})
    assert zoo.import_peft(folder, base=base)  # another floating-point type is fine


# ---------------------------------------------------------------- links and special files


@pytest.mark.parametrize("name", [CONFIG_FILE, WEIGHTS_FILE])
def test_a_linked_file_is_refused(peft, tmp_path, name):
    base, folder = peft
    real = tmp_path / f"elsewhere-{name}"
    shutil.move(folder / name, real)
    os.symlink(real, folder / name)
    with pytest.raises(zoo.CorruptFileError, match="symbolic link") as info:
        zoo.import_peft(folder, base=base)
    assert str(folder / name) in str(info.value)


def test_a_linked_folder_a_fifo_and_an_oversized_config_are_refused(peft, tmp_path):
    base, folder = peft
    link = tmp_path / "link"
    os.symlink(folder, link)
    with pytest.raises(zoo.ZooError, match="symbolic link, not a folder"):
        zoo.import_peft(link, base=base)
    config = (folder / CONFIG_FILE).read_bytes()
    (folder / CONFIG_FILE).write_bytes(config[:-1] + b" " * MAX_CONFIG_BYTES + b"}")
    with pytest.raises(zoo.CorruptFileError, match=f"over the {MAX_CONFIG_BYTES}-byte limit"):
        zoo.import_peft(folder, base=base)
    (folder / CONFIG_FILE).write_bytes(config)
    (folder / WEIGHTS_FILE).unlink()
    os.mkfifo(folder / WEIGHTS_FILE)
    outcome = run_bounded({"fifo": lambda: zoo.import_peft(folder, base=base)})["fifo"]
    assert outcome.raised("CorruptFileError") and "FIFO" in outcome.message, outcome
    (folder / CONFIG_FILE).unlink()
    os.mkfifo(folder / CONFIG_FILE)
    outcome = run_bounded({"fifo": lambda: zoo.import_peft(folder, base=base)})["fifo"]
    assert outcome.raised("CorruptFileError") and "FIFO" in outcome.message, outcome


# ---------------------------------------------------------------- disk full during export


@pytest.fixture
def lora_model(exported: tuple[Path, Path]) -> nn.Module:
    base, folder = exported
    return zoo.import_peft(folder, base=base)


def export_events(model: nn.Module, folder: Path) -> list[str]:
    injector = Injector(None, enospc)
    with injector.armed():
        zoo.export_peft(model, folder, overwrite=True, without_base=True)
    return injector.events


def export_of(folder: Path) -> tuple[list[str], str, dict[str, str]]:
    """What an export folder holds: its names, the config, the weights' (verified) metadata
    (the byte layout of a safetensors header varies from one write to the next)."""
    saved = read_file(folder / WEIGHTS_FILE)
    assert saved.verified
    return sorted(os.listdir(folder)), (folder / CONFIG_FILE).read_text(), saved.metadata


@pytest.mark.parametrize("previous", [False, True], ids=["new folder", "replacing an export"])
def test_enospc_at_every_step_of_an_export_leaves_the_folder_as_it_was(
    lora_model, exported, tmp_path, previous
):
    folder = tmp_path / "out"

    def fresh() -> dict[str, str] | None:
        shutil.rmtree(folder, ignore_errors=True)
        if previous:
            shutil.copytree(exported[1], folder)
        return tree_snapshot(folder) if previous else None

    fresh()
    events = export_events(lora_model, folder)
    size = sum(p.stat().st_size for p in folder.iterdir())
    expected = export_of(folder)
    failed = []
    for at in [i + 1 for i, e in enumerate(events) if e.startswith("before ")]:
        before = fresh()
        try:
            with Injector(at, enospc).armed():
                zoo.export_peft(lora_model, folder, overwrite=True, without_base=True)
        except zoo.ZooError as exc:
            message = str(exc)
            assert "No space left on device" in message and str(folder) in message, message
            if previous:
                assert tree_snapshot(folder) == before, f"ENOSPC at event {at} changed it"
            else:
                assert not folder.exists(), f"ENOSPC at event {at} left {os.listdir(folder)}"
            if "it needs" in message:  # a write failed (not the injected failure of a read)
                needed = int(message.split("it needs ")[1].split(" bytes")[0].replace(",", ""))
                assert size <= needed <= size + 1024, (needed, size)
                kept = f"{folder} is as it was" if previous else "nothing was written there"
                assert kept in message
                failed.append(at)
        else:  # a step whose failure does not matter (a directory fsync): a whole export
            assert export_of(folder) == expected, f"ENOSPC at event {at}: a partial export"
    assert len(failed) >= 8, failed


def _export_under_limit(limit: int, name: str, folder: str, conn: Any) -> None:
    child_init()
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
    hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    conn.send(cli("export", name, "--peft", folder, "--overwrite"))


def test_a_full_disk_fails_the_cli_export_with_the_space_it_needs(lora_model, exported, tmp_path):
    zoo.save(lora_model, "adapted")
    folder = tmp_path / "out"
    shutil.copytree(exported[1], folder)
    before = tree_snapshot(folder)
    for limit in (0, 1000, 20_000):
        parent, child = FORK.Pipe()
        process = FORK.Process(
            target=_export_under_limit, args=(limit, "adapted", str(folder), child)
        )
        process.start()
        process.join(HANG)
        assert process.exitcode == 0, "the exporting process died or hung"
        status, _out, err = parent.recv()
        assert status == 1 and "File too large" in err and "it needs" in err, err
        assert "Traceback" not in err
        assert tree_snapshot(folder) == before, f"a failed export at {limit} bytes changed it"
    assert cli("export", "adapted", "--peft", str(folder), "--overwrite")[0] == 0


# ---------------------------------------------------------------- a merge that raises


#: What a buggy ``merge_into`` may do to the head before it raises.
HARMS: dict[str, Callable[[nn.Module], Any]] = {
    "values": lambda head: head.weight.mul_(0.0),
    "dtype": lambda head: setattr(head.weight, "data", head.weight.data.half()),
    "device-shape": lambda head: setattr(head.weight, "data", torch.zeros(1)),
    "replaced": lambda head: setattr(head, "weight", nn.Parameter(head.weight * 0)),
    "deleted": lambda head: (delattr(head, "bias"), setattr(head, "bias", None)),
    "added": lambda head: head.register_buffer("folded", torch.ones(1)),
    "adapter-gone": lambda head: delattr(head, "flaky"),
    "attribute": lambda head: setattr(head, "in_features", 0),
}


class Flaky(zoo.Adapter):
    """A plugin's mergeable adapter (a shift of a Linear's output) whose ``merge_into`` fails
    on the head, after changing it (``harm``), as a buggy third-party kind may."""

    mergeable = True
    harm = staticmethod(HARMS["values"])

    def __init__(self, n: int) -> None:
        super().__init__()
        self.shift = nn.Parameter(torch.zeros(n))

    def post_forward(self, target: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
        return output + self.shift

    def merge_into(self, target: nn.Module) -> None:
        target.bias.add_(self.shift)
        if self.zoo_addition.target == "head":
            self.harm(target)
            raise ValueError("cannot fold a shift into this target")


def shift_every_linear(table: zoo.ParamTable) -> zoo.Plan:
    """A flaky adapter on every Linear (the head last, in model order); the head trains."""
    additions = [
        zoo.Addition(
            target=row.module,
            kind="acme:flaky",
            params={"flaky.shift": (row.shape[0],)},
            depth=row.depth,
            group=row.group,
        )
        for row in table
        if row.module_type == "Linear" and row.role in ("bias", "head") and "bias" in row.name
    ]
    return zoo.Plan.from_table(table, [], additions=additions)


class FlakyPlugin:
    @staticmethod
    @zoo.hookimpl
    def zoo_register_policies(register: Callable[[Any], None]) -> None:
        register(zoo.AdapterSpec(name="flaky", build=lambda target, a: Flaky(target.out_features)))
        register(zoo.PolicySpec("shift", shift_every_linear, summary="a flaky shift per Linear"))


@pytest.mark.parametrize("harm", HARMS)
def test_a_merge_that_raises_changes_nothing(zoo_register_plugin, monkeypatch, harm):
    monkeypatch.setattr(Flaky, "harm", staticmethod(HARMS[harm]))
    zoo_register_plugin(FlakyPlugin(), name="acme")
    model = zoo.create(VIT, num_classes=3, **VIT_ARGS).eval()
    zoo.freeze(model, "acme:shift")
    added = zoo.adapters(model)
    assert len(added) == 9 and added[-1].target == "head"
    with torch.no_grad():
        for addition in added:
            model.get_submodule(f"{addition.target}.flaky").shift.fill_(0.25)
        expected = model(X)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    tensors = [*model.parameters(), *model.buffers()]  # an optimizer holds these objects
    with pytest.raises(zoo.AdapterMergeError) as info:
        zoo.merge_adapters(model)
    message = str(info.value)
    assert "acme:flaky" in message and "'head'" in message
    assert "ValueError: cannot fold a shift" in message and "Nothing was changed" in message
    assert zoo.adapters(model) == added
    now = model.state_dict()
    assert now.keys() == state.keys()
    assert all(now[k].dtype == state[k].dtype and torch.equal(now[k], state[k]) for k in state)
    after = [*model.parameters(), *model.buffers()]
    assert len(after) == len(tensors) and all(a is b for a, b in zip(after, tensors, strict=True))
    assert model.head.in_features == state["head.weight"].shape[1]
    with torch.no_grad():
        assert torch.equal(model(X), expected)
    if harm != "values":
        return  # the rest is the same for every harm
    zoo.save(model, "flaky")
    with pytest.raises(zoo.AdapterMergeError, match=r"acme:flaky.*'head'.*Nothing was changed"):
        zoo.load("flaky", merge=True)
    assert zoo.adapters(zoo.load("flaky")) == added

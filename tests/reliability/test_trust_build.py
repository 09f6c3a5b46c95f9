"""The trust boundary: a saved file's metadata never steers how its model is built.

Every file here is a real save whose metadata was rewritten and *re-sealed* (the seal is two
public hashes, so anyone can do this): the architecture arguments (``zoo.build.kwargs``), the
class names, ``zoo.num_classes``, the trained names, the plan, the backbone. Loading,
inspecting and resolving a delta's base must refuse what is unsafe with a ``ZooError`` naming
the key and the file, without reading another file, unpickling, touching the network or
building a model larger than the file's own tensors, and must refuse metadata that contradicts
the tensors. Plugins that return garbage from ``create`` are named.
"""

from __future__ import annotations

import json
import os
import pickle
import resource
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from fileformat_helpers import v1_copy, write_file
from reliability_helpers import PLUGIN_NAME, TinyPlugin
from torch import nn
from trust_helpers import HANG

import zoo
from zoo.builtin import standard_policies, timm_backbones
from zoo.core.catalog import Catalog
from zoo.core.plugins import make_plugin_host
from zoo.errors import CorruptFileError, ModelBuildError, UnknownNameError
from zoo.io.fileformat import hash_tensors, read_file
from zoo.io.metadata import V1_KEYS
from zoo.testing import installed_catalog

RESNET = "timm:resnet18"
VIT = "timm:vit_tiny_patch16_224"


# ---------------------------------------------------------------- helpers


def rewrite(
    path: Path,
    change: Callable[[dict[str, str]], None],
    *,
    tensors: Callable[[dict[str, torch.Tensor]], None] | None = None,
) -> Path:
    """Rewrite ``path``'s metadata with ``change`` and re-seal it (a valid seal)."""
    saved = read_file(path)
    metadata, state = dict(saved.metadata), dict(saved.tensors)
    change(metadata)
    if tensors is not None:
        tensors(state)
    write_file(path, state, metadata)
    return path


def set_json(key: str, value: Any) -> Callable[[dict[str, str]], None]:
    def change(metadata: dict[str, str]) -> None:
        metadata[key] = json.dumps(value)

    return change


def set_kwargs(kwargs: dict[str, Any]) -> Callable[[dict[str, str]], None]:
    def change(metadata: dict[str, str]) -> None:
        build = json.loads(metadata["zoo.build"])
        build["kwargs"] = kwargs
        metadata["zoo.build"] = json.dumps(build)

    return change


def loaders() -> dict[str, Callable[[Path], Any]]:
    return {
        "load": zoo.load,
        "inspect": zoo.inspect,
        "inspect(verify=False)": lambda p: zoo.inspect(p, verify=False),
    }


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.fixture
def no_io(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Unpicklers, socket connections and timm's weight check all fail (and record the call)."""
    calls: list[str] = []

    def refuse(name: str) -> Callable[..., Any]:
        def refused(*args: Any, **kwargs: Any) -> Any:
            calls.append(name)
            raise AssertionError(f"{name} was called while refusing a hostile file")

        return refused

    for module, attr in [
        (torch, "load"),
        (torch.serialization, "load"),
        (pickle, "load"),
        (pickle, "loads"),
        (pickle, "Unpickler"),
        (socket, "create_connection"),
        (timm_backbones, "ensure_weights_available"),
    ]:
        monkeypatch.setattr(module, attr, refuse(f"{module.__name__}.{attr}"))
    return calls


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    """A real torch.save checkpoint of resnet18 a hostile file could point timm at."""
    path = tmp_path / "elsewhere.pth"
    torch.save(zoo.create(RESNET, num_classes=2).state_dict(), path)
    return path


@pytest.fixture
def resnet_file(tmp_path: Path) -> Path:
    return zoo.save(zoo.create(RESNET, num_classes=2), tmp_path / "resnet.safetensors")


# ---------------------------------------------------------------- item 1: unsafe kwargs


HOSTILE_KWARGS = {
    "checkpoint_path": lambda ckpt: {"checkpoint_path": str(ckpt)},
    "weights": lambda ckpt: {"weights": str(ckpt)},
    "pretrained": lambda ckpt: {"pretrained": True},
    "pretrained_cfg": lambda ckpt: {"pretrained_cfg": {"file": str(ckpt)}},
    "pretrained_cfg_overlay": lambda ckpt: {"pretrained_cfg_overlay": {"url": "http://x/y"}},
    "cache_dir": lambda ckpt: {"cache_dir": str(ckpt.parent)},
    "num_classes": lambda ckpt: {"num_classes": 3},
    "name": lambda ckpt: {"name": "timm:resnet50"},
}


@pytest.mark.parametrize("key", sorted(HOSTILE_KWARGS))
def test_unsafe_build_arguments_are_refused_naming_key_and_file(
    key, resnet_file, checkpoint, no_io
):
    rewrite(resnet_file, set_kwargs(HOSTILE_KWARGS[key](checkpoint)))
    for how, loader in loaders().items():
        with pytest.raises(CorruptFileError) as info:
            loader(resnet_file)
        message = str(info.value)
        assert repr(key) in message and str(resnet_file) in message, (how, message)
    assert no_io == []


def test_a_fifo_named_by_the_file_is_refused_without_opening_it(resnet_file, tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    for kwargs in ({"weights": str(fifo)}, {"checkpoint_path": str(fifo)}):
        rewrite(resnet_file, set_kwargs(kwargs))
        error = raised_unless_hung(lambda: zoo.load(resnet_file), fifo)
        assert isinstance(error, CorruptFileError), error
        assert next(iter(kwargs)) in str(error)


def raised_unless_hung(call: Callable[[], Any], fifo: Path) -> BaseException | None:
    """What ``call`` raised, run in a thread; a hang on ``fifo`` (longer than the generous
    :data:`HANG` guard) fails the test instead of hanging it."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            call()
        except BaseException as exc:
            errors.append(exc)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(timeout=HANG)
    if worker.is_alive():  # unblock the reader so the thread can end, then fail
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("zoo.load hung on a FIFO named by the file's zoo.build kwargs")
    return errors[0] if errors else None


def pretrained_delta(path: Path, backbone: str, kwargs: dict[str, Any]) -> Path:
    """Turn a full save into a delta on ``backbone``'s pretrained weights, with ``kwargs``."""
    state = read_file(path).tensors
    head = {n for n in state if n.startswith(("fc.", "head."))}

    def to_delta(metadata: dict[str, str]) -> None:
        metadata["zoo.kind"] = "delta"
        metadata["zoo.base"] = json.dumps(
            {"kind": "pretrained", "ref": backbone, "sha256": "0" * 64}
        )
        metadata["zoo.base_tensors"] = json.dumps(
            {n: list(state[n].shape) for n in sorted(set(state) - head)}
        )
        metadata["zoo.state_sha256"] = hash_tensors(state)
        set_kwargs(kwargs)(metadata)

    return rewrite(path, to_delta, tensors=lambda t: [t.pop(n) for n in set(t) - head])


def test_a_delta_on_pretrained_weights_filters_its_arguments(resnet_file, checkpoint, no_io):
    """A pretrained base legitimately uses the hub, but never with the file's unsafe kwargs."""
    pretrained_delta(resnet_file, RESNET, {"checkpoint_path": str(checkpoint)})
    with pytest.raises(CorruptFileError, match="'checkpoint_path'") as info:
        zoo.load(resnet_file)
    assert str(resnet_file) in str(info.value)
    with pytest.raises(CorruptFileError, match="'checkpoint_path'"):
        zoo.create(RESNET, num_classes=2, weights=resnet_file)
    assert no_io == []  # no torch.load, no weight check, no connection was even attempted


def test_a_delta_cannot_inflate_its_pretrained_base(tmp_path, no_io):
    path = zoo.save(zoo.create(VIT, num_classes=2), tmp_path / "vit.safetensors")
    pretrained_delta(path, VIT, {"embed_dim": 4096, "depth": 48, "num_heads": 16})
    with pytest.raises(CorruptFileError, match="more than twice its default size") as info:
        zoo.load(path)
    assert str(path) in str(info.value) and no_io == []


def test_a_delta_cannot_deepen_its_pretrained_base(tmp_path, no_io):
    """``depth=100000`` costs no memory on ``meta`` but builds 100,000 blocks: the size check
    stops the build once it registers about twice the default's tensors."""
    path = zoo.save(zoo.create(VIT, num_classes=2), tmp_path / "vit.safetensors")
    pretrained_delta(path, VIT, {"depth": 100_000})
    with pytest.raises(CorruptFileError, match="more than twice its default size") as info:
        zoo.load(path)
    assert "registered more than" in str(info.value) and no_io == []


def test_a_delta_with_plain_arguments_still_reaches_its_pretrained_base(tmp_path):
    path = zoo.save(zoo.create(VIT, num_classes=2), tmp_path / "vit.safetensors")
    pretrained_delta(path, VIT, {"drop_path_rate": 0.1, "img_size": 256})
    # offline (HF_HUB_OFFLINE=1): the weights are unavailable, or, if cached, not this base
    with pytest.raises((zoo.WeightsUnavailableError, zoo.BaseMismatchError)):
        zoo.load(path)


def test_an_inflated_architecture_is_refused_without_building_it(tmp_path):
    path = zoo.save(zoo.create(VIT, num_classes=2), tmp_path / "vit.safetensors")
    # 12 blocks of width 4096: about 2.4 billion parameters (10 GB) if it were ever built
    rewrite(path, set_kwargs({"embed_dim": 4096, "num_heads": 16}))
    before = peak_rss_mb()
    for how, loader in loaders().items():
        with pytest.raises(zoo.WeightsMismatchError, match="does not fit") as info:
            loader(path)
        assert str(path) in str(info.value), how
    assert peak_rss_mb() - before < 100


def test_a_deepened_architecture_is_stopped_while_it_is_built(tmp_path):
    """``depth=100000`` costs no tensor memory on meta, but 100,000 blocks of modules would
    take minutes and gigabytes: the build stops once it registers more tensors than the file
    holds implies."""
    path = zoo.save(zoo.create(VIT, num_classes=2), tmp_path / "vit.safetensors")
    rewrite(path, set_kwargs({"depth": 100_000}))
    before = peak_rss_mb()
    for how, loader in loaders().items():
        with pytest.raises(zoo.ZooError, match="registered more than") as info:
            result = loader(path)
            if how.startswith("inspect"):  # inspect describes the file, notes the refusal
                raise zoo.ZooError(" ".join(result.notes))
        assert how.startswith("inspect") or str(path) in str(info.value)
    assert peak_rss_mb() - before < 100


# ---------------------------------------------------------------- plugins under test


def build_valued(
    num_classes: int | None = None, pretrained: bool | str = False, width: int = 4
) -> nn.Module:
    """A constructor that reads a tensor value, so it cannot run on the meta device."""
    scale = int(torch.ones(1).item())
    return nn.Sequential(nn.Linear(8, width * scale), nn.Linear(width * scale, num_classes or 3))


def build_sourced(
    num_classes: int | None = None, pretrained: bool | str = False, source_file: str | None = None
) -> nn.Module:
    return nn.Sequential(nn.Linear(4, 4), nn.Linear(4, num_classes or 3))


def build_none(num_classes: int | None = None, pretrained: bool | str = False) -> Any:
    return None


def build_broken(num_classes: int | None = None, pretrained: bool | str = False) -> nn.Module:
    raise ValueError("the plugin's own bug")


def build_offline(num_classes: int | None = None, pretrained: bool | str = False) -> nn.Module:
    raise zoo.WeightsUnavailableError("no weights here")


class TrustPlugin:
    """Backbones whose ``create`` misbehaves, and one declaring an unsafe argument."""

    @staticmethod
    @zoo.hookimpl
    def zoo_register_backbones(register: Callable[[Any], None]) -> None:
        register(zoo.BackboneSpec(name="valued", create=build_valued, head="1"))
        register(
            zoo.BackboneSpec(
                name="sourced", create=build_sourced, head="1", unsafe_kwargs=("source_*",)
            )
        )
        register(zoo.BackboneSpec(name="none", create=build_none))
        register(zoo.BackboneSpec(name="broken", create=build_broken))
        register(zoo.BackboneSpec(name="offline", create=build_offline))


@pytest.fixture
def trust() -> Iterator[Catalog]:
    host = make_plugin_host(
        builtins=False,
        autoload=False,
        extra={PLUGIN_NAME: TinyPlugin, "trust": TrustPlugin, "zoo": standard_policies},
    )
    with installed_catalog(Catalog(host)) as catalog:
        yield catalog


def test_a_constructor_off_meta_cannot_be_steered_into_a_huge_allocation(trust, tmp_path):
    path = zoo.save(zoo.create("trust:valued", num_classes=2), tmp_path / "v.safetensors")
    assert zoo.load(path).state_dict().keys() == read_file(path).tensors.keys()
    # width 10**7: a 320 MB weight the 8x4 one in the file cannot justify
    rewrite(path, set_kwargs({"width": 10**7}))
    before = peak_rss_mb()
    for how, loader in loaders().items():
        if how == "load":
            with pytest.raises(ModelBuildError, match="allocated a tensor of") as info:
                loader(path)
            assert str(path) in str(info.value)
        else:  # inspect describes the file; the refused build becomes a note
            assert "allocated a tensor of" in " ".join(loader(path).notes)
    assert peak_rss_mb() - before < 100


def test_plugins_declare_unsafe_arguments_that_files_may_not_pass(trust, tmp_path):
    model = zoo.create("trust:sourced", num_classes=2, source_file="mine.bin")  # a user may
    with pytest.raises(zoo.ZooError, match=r"'source_file'.*plugin 'trust'"):
        zoo.save(model, tmp_path / "refused.safetensors")  # ...but it would not load back
    path = zoo.save(zoo.create("trust:sourced", num_classes=2), tmp_path / "s.safetensors")
    rewrite(path, set_kwargs({"SOURCE_FILE": "/etc/passwd"}))
    for loader in loaders().values():
        with pytest.raises(CorruptFileError, match=r"'SOURCE_FILE'.*pattern 'source_\*'"):
            loader(path)


@pytest.mark.parametrize(
    ("kwargs", "problem"),
    [
        ({"x-y": 1}, "not a Python identifier"),
        ({"width": json.loads("[" * 12 + "1" + "]" * 12)}, "nests deeper than 8"),
        ({"width": list(range(20_000))}, "more than 10000 values"),
        ({"width": "w" * 20_000}, "string over 10000"),
    ],
)
def test_odd_argument_names_and_values_are_refused(kwargs, problem, trust, tmp_path):
    path = zoo.save(zoo.create("rel:tiny", num_classes=2), tmp_path / "odd.safetensors")
    rewrite(path, set_kwargs(kwargs))
    for loader in loaders().values():
        with pytest.raises(CorruptFileError, match=problem) as info:
            loader(path)
        assert str(path) in str(info.value) and next(iter(kwargs)) in str(info.value)


@pytest.mark.parametrize("bad", ["source_file", ("",), (1,)])
def test_unsafe_kwargs_must_be_a_tuple_of_names(bad):
    with pytest.raises(zoo.SpecError, match="unsafe_kwargs"):
        zoo.BackboneSpec(name="x", create=build_sourced, unsafe_kwargs=bad)


# ---------------------------------------------------------------- item 12: create's result


def test_a_create_returning_no_module_is_named(trust):
    for build in (lambda: zoo.create("trust:none"), lambda: zoo.params("trust:none")):
        with pytest.raises(ModelBuildError, match=r"plugin 'trust'.*trust:none.*NoneType"):
            build()


def test_an_exception_inside_create_is_named_and_chained(trust):
    with pytest.raises(ModelBuildError, match=r"plugin 'trust'.*trust:broken") as info:
        zoo.create("trust:broken")
    assert isinstance(info.value.__cause__, ValueError)
    with pytest.raises(zoo.WeightsUnavailableError, match=r"^no weights here$"):
        zoo.create("trust:offline")  # a ZooError of the plugin passes unchanged


# ---------------------------------------------------------------- item 3: contradictions


@pytest.fixture
def tiny_file(trust, tmp_path) -> Path:
    model = zoo.create("rel:tiny", num_classes=2)
    zoo.freeze(model, "linear-probe")
    return zoo.save(model, tmp_path / "tiny.safetensors", classes=["cat", "dog"])


def _rename_in_plan(metadata: dict[str, str]) -> None:
    plan = json.loads(metadata["zoo.plan"])
    plan["trainable"] = [*plan["trainable"], "ghost.weight"]
    metadata["zoo.plan"] = json.dumps(plan)


CONTRADICTIONS = {
    "zoo.classes": set_json("zoo.classes", ["cat", "dog", "cow"]),
    "zoo.num_classes": set_json("zoo.num_classes", 7),
    "zoo.trained": set_json("zoo.trained", ["5.weight", "ghost.weight"]),
    "zoo.plan": _rename_in_plan,
}


@pytest.mark.parametrize("key", sorted(CONTRADICTIONS))
def test_metadata_contradicting_the_tensors_is_refused(key, tiny_file, tmp_path):
    if key in V1_KEYS:  # a key only format 1 wrote: in a format-1 file (tests/data/v1)
        tiny_file = v1_copy(tmp_path)  # its timm backbone is not in this test's catalog
        assert zoo.inspect(tiny_file).metadata.classes == ["cat", "dog", "bird"]
    else:
        assert zoo.load(tiny_file).zoo.classes == ["cat", "dog"]
    rewrite(tiny_file, CONTRADICTIONS[key])
    for how, loader in {
        **loaders(),
        "load(trainable)": lambda p: zoo.load(p, trainable=True),
    }.items():
        with pytest.raises(CorruptFileError) as info:
            loader(tiny_file)
        message = str(info.value)
        assert repr(key) in message and str(tiny_file) in message, (how, message)


def test_a_backbone_from_a_missing_plugin_names_file_plugin_and_version(tiny_file):
    def foreign(metadata: dict[str, str]) -> None:
        metadata["zoo.backbone"] = "foo:bar"
        set_json("zoo.plugins", {"foo": "1.2.3"})(metadata)
        build = json.loads(metadata["zoo.build"])
        build["backbone"] = "foo:bar"
        metadata["zoo.build"] = json.dumps(build)

    rewrite(tiny_file, foreign)
    with pytest.raises(UnknownNameError) as info:
        zoo.load(tiny_file)
    message = str(info.value)
    for part in (
        str(tiny_file),
        "'foo:bar'",
        "plugin 'foo' 1.2.3",
        "not installed",
        "rel, trust, zoo",
        "install the plugin",
    ):
        assert part in message, message
    assert "did you mean" not in message
    notes = " ".join(zoo.inspect(tiny_file).notes)  # inspect still describes the metadata
    assert "plugin 'foo' 1.2.3, which is not installed" in notes

"""Every metadata value is untrusted, sealed or not: checked to its documented type and range.

The seal is two public sha256 hashes, so anyone can edit a saved file's metadata and re-seal
it. Each hostile value below is written into a real saved model, resealed, and must be refused
with a :class:`zoo.CorruptFileError` naming the file and the key by ``zoo.load`` and
``zoo.inspect``; the store must list it as broken while listing, removing and saving the other
entries keeps working; the CLI's ``--json`` output must stay valid JSON. Saving refuses, before
any write, what loading would refuse (text that is not valid Unicode, non-finite numbers).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from fileformat_helpers import V1_CORPUS, write_file
from hypothesis import given, settings
from hypothesis import strategies as st
from reliability_helpers import make_version
from test_store_names import zoo_command

import zoo
from zoo.core.specs import InputConfig
from zoo.io import store
from zoo.io.fileformat import read_file, read_header
from zoo.io.metadata import KEYS, V1_KEYS, ZooMetadata
from zoo.plans.plan import Plan

HUGE = "1" + "0" * 400  # a JSON integer that overflows float (and int64)
PLAN_OK = {"trainable": ["5.weight"], "frozen": ["5.bias"]}

#: (key, hostile value, a fragment the error must contain). A key of :data:`V1_KEYS` is tested in
#: a format-1 file (format 2 no longer writes it).
HOSTILE = [
    ("zoo.input_config", '{"mean": [1e999, 0, 0]}', "out of range"),
    ("zoo.input_config", '{"mean": [-1e999, 0, 0]}', "out of range"),
    ("zoo.input_config", '{"mean": [NaN, 0, 0]}', "NaN"),
    ("zoo.input_config", '{"std": [Infinity, 1, 1]}', "Infinity"),
    ("zoo.input_config", '{"mean": ["nan", 0, 0]}', "mean must be a number"),
    ("zoo.input_config", '{"std": ["inf", 1, 1]}', "std must be a number"),
    ("zoo.input_config", '{"std": [' + HUGE + ", 1, 1]}", "401 digits"),
    ("zoo.input_config", '{"std": [0, 1, 1]}', "std values must be in"),
    ("zoo.input_config", '{"std": [1e-300, 1, 1]}', "std values must be in"),
    ("zoo.input_config", '{"mean": [0.5, 0.5]}', "one number per channel"),
    ("zoo.input_config", '{"interpolation": "no-such-mode"}', "interpolation must be one of"),
    ("zoo.input_config", '{"interpolation": "random"}', "interpolation must be one of"),
    ("zoo.input_config", '{"crop_mode": "diagonal"}', "crop_mode must be one of"),
    ("zoo.input_config", '{"input_size": [3, -8, -8]}', "height and width"),
    ("zoo.input_config", '{"input_size": [32]}', "3 integers"),
    ("zoo.input_config", '{"input_size": [3, 100000, 100000]}', "height and width"),
    ("zoo.input_config", '{"input_size": [3, 32.5, 32]}', "3 integers"),
    ("zoo.input_config", '{"input_size": [true, 32, 32]}', "3 integers"),
    ("zoo.input_config", '{"input_size": [100000, 32, 32]}', "channels"),
    ("zoo.input_config", '{"crop_pct": 0}', "crop_pct"),
    ("zoo.input_config", '{"crop_pct": 1e-300}', "crop_pct"),
    ("zoo.input_config", '{"crop_pct": "0.9"}', "crop_pct must be a number"),
    ("zoo.classes", '["\\ud800", "other"]', "lone surrogate"),
    ("zoo.classes", '["ok", "a\\udfff"]', "[1] holds a lone surrogate"),
    ("zoo.classes", '["\\u001b[2J", "other"]', "control character"),
    ("zoo.policy_args", '{"lr": 1e999}', "out of range"),
    ("zoo.policy_args", '{"n": ' + HUGE + "}", "401 digits"),
    ("zoo.policy_args", '{"\\ud800": 1}', "lone surrogate"),
    ("zoo.policy_args", '{"a": ' + "[" * 100_000 + "]" * 100_000 + "}", "not valid JSON"),
    ("zoo.plan", json.dumps({**PLAN_OK, "lr_scale": {"5.weight": -1}}), "lr scale"),
    ("zoo.plan", json.dumps({**PLAN_OK, "lr_scale": {"x": 2}}), "does not list"),
    ("zoo.plan", json.dumps({**PLAN_OK, "epoch": "3"}), "epoch"),
    ("zoo.plan", json.dumps({**PLAN_OK, "format": True}), "format"),
    ("zoo.plan", json.dumps({"trainable": "5.weight"}), "list of strings"),
    ("zoo.plan", '{"trainable": ["5.weight"], "lr_scale": {"5.weight": 1e999}}', "out of range"),
    ("zoo.build", '{"backbone": "rel:tiny", "num_classes": 1e999, "kwargs": {}}', "out of range"),
    (
        "zoo.build",
        '{"backbone": "rel:tiny", "num_classes": 2, "kwargs": {"w": -1e999}}',
        "out of range",
    ),
    (
        "zoo.build",
        '{"backbone": "rel:tiny", "num_classes": 10000000000, "kwargs": {}}',
        "num_classes",
    ),
    ("zoo.num_classes", HUGE, "401 digits"),
    ("zoo.num_classes", "1e999", "out of range"),
    ("zoo.num_classes", "2.5", "non-negative integer"),
    ("zoo.timm_config", '{"pretrained_cfg": {"crop_pct": Infinity}}', "Infinity"),
    ("zoo.timm_config", '{"label_names": ["\\udc80"]}', "lone surrogate"),
    ("zoo.base", '{"kind": "file", "ref": "\\ud800"}', "lone surrogate"),
    ("zoo.base", '{"kind": "file", "ref": "a\\u0007"}', "control characters"),
    ("zoo.plugins", '{"rel": 5}', "plugin name -> version"),
    ("zoo.plugins", '{"rel": "1.0\\u001b[31m"}', "plugin name -> version"),
    ("zoo.created", "yesterday", "ISO 8601"),
    ("zoo.version", "1.0\x1b[2J", "control characters"),
    ("zoo.policy", "zoo:x\nfake line", "control characters"),
    ("zoo.backbone", "tiny", '"plugin:name"'),
    ("zoo.num_trained_params", "999999", "more than zoo.num_params"),
]


def hostile_id(case: tuple[str, str, str]) -> str:
    key, value, _ = case
    return f"{key}={value[:30]}"


def reseal(path: Path, **changes: str) -> None:
    """Rewrite a saved file with changed metadata and a valid seal (what anyone can do)."""
    saved = read_file(path)
    write_file(path, dict(saved.tensors), {**saved.metadata, **changes})


@pytest.fixture
def store_with_bad(tiny) -> dict[str, Path]:
    """Two good entries and one, ``bad``, to be made hostile."""
    return {
        name: zoo.save(make_version(value), name)
        for name, value in (("good", 1), ("bad", 2), ("other", 3))
    }


def make_hostile(path: Path, key: str, value: str) -> None:
    """``key`` set to ``value`` in the entry ``path`` and resealed; a key only format 1 wrote
    is set in a format-1 file put there (the file of ``tests/data/v1/full.safetensors``)."""
    if key in V1_KEYS:
        shutil.copy(V1_CORPUS / "full.safetensors", path)
    reseal(path, **{key: value})


@pytest.mark.parametrize(("key", "value", "fragment"), HOSTILE, ids=map(hostile_id, HOSTILE))
def test_a_hostile_value_is_refused_naming_file_and_key(store_with_bad, key, value, fragment):
    path = store_with_bad["bad"]
    make_hostile(path, key, value)
    for loader in (zoo.load, zoo.inspect):
        with pytest.raises(zoo.CorruptFileError) as info:
            loader("bad")
        message = str(info.value)
        assert str(path) in message and repr(key) in message and fragment in message
        message.encode("utf-8")  # printable as it is: no lone surrogate copied into it


@pytest.mark.parametrize(
    ("key", "value", "fragment"), HOSTILE[::4], ids=map(hostile_id, HOSTILE[::4])
)
def test_one_bad_entry_never_stops_the_store(store_with_bad, key, value, fragment):
    make_hostile(store_with_bad["bad"], key, value)
    listed = {e.name: e for e in store.list_saved()}
    assert not listed["bad"].ok and key in listed["bad"].reason
    assert listed["good"].ok and listed["other"].ok
    json.dumps([e.to_dict() for e in listed.values()], allow_nan=False)
    zoo.save(make_version(4), "good", overwrite=True)  # lists dependents of "good"
    store.remove("other")  # lists dependents of "other"
    assert [e.name for e in store.list_saved()] == ["bad", "good"]
    assert zoo.load("good").zoo.classes == ["v4", "other"]
    store.remove("bad")  # a broken entry can be removed too
    assert [e.name for e in store.list_saved()] == ["good"]


@pytest.mark.slow
def test_cli_json_stays_valid_with_a_non_finite_entry(store_with_bad):
    reseal(store_with_bad["bad"], **{"zoo.input_config": '{"mean": [1e999, 0, 0]}'})
    models = subprocess.run(
        [*zoo_command(), "models", "--json"], capture_output=True, text=True, timeout=120
    )
    assert models.returncode == 0, models.stderr
    entries = {e["name"]: e for e in json.loads(models.stdout)["models"]}
    assert not entries["bad"]["ok"] and "zoo.input_config" in entries["bad"]["reason"]
    assert entries["good"]["ok"]
    bad = subprocess.run(
        [*zoo_command(), "inspect", "bad", "--json"], capture_output=True, text=True, timeout=120
    )
    assert bad.returncode == 1 and bad.stdout == ""
    assert "error:" in bad.stderr and "zoo.input_config" in bad.stderr
    good = subprocess.run(
        [*zoo_command(), "inspect", "good", "--json"], capture_output=True, text=True, timeout=120
    )
    assert good.returncode == 0, good.stderr
    assert json.loads(good.stdout)["classes"] == ["v1", "other"]


def test_cli_json_output_refuses_non_finite_numbers():
    from io import StringIO

    from zoo.cli.output import Output

    out = Output(json_mode=True, stdout=StringIO())
    with pytest.raises(zoo.ZooError, match=r"\$\.models\[1\]\.mean \(inf\)"):
        out.json({"models": [{"mean": 1.0}, {"mean": float("inf")}]})
    assert out.console.file.getvalue() == ""
    out.json({"text": "\ud800"})  # ASCII-escaped: printable, and still valid JSON
    assert json.loads(out.console.file.getvalue()) == {"text": "\ud800"}


# ---------------------------------------------------------------- the parse itself


def saved_metadata(tiny) -> dict[str, str]:
    return dict(read_file(zoo.save(make_version(1), "m")).metadata)


@pytest.mark.parametrize("key", ["zoo.backbone", "zoo.version", "rel.note"])
def test_a_raw_lone_surrogate_in_any_value_is_refused(tiny, key):
    """Defense in depth: the header parser refuses these too (read_file never returns one)."""
    metadata = {**saved_metadata(tiny), key: "x\ud800"}
    with pytest.raises(zoo.CorruptFileError, match=f"{key!r}.*lone surrogate"):
        ZooMetadata.parse(metadata, source="f.safetensors")


def test_parse_raises_only_corrupt_file_errors_for_non_string_metadata(tiny):
    metadata: dict = {**saved_metadata(tiny), "zoo.num_params": 5}
    with pytest.raises(zoo.CorruptFileError, match="must be strings"):
        ZooMetadata.parse(metadata, source="f.safetensors")


def test_the_input_configs_of_every_installed_backbone_pass_the_check():
    """The bounds refuse nothing timm, torchvision or the example plugin ship (sizes,
    interpolations, crop modes, crop_pct of every pretrained tag)."""
    from zoo.api import get_catalog

    configs = [
        config
        for spec in get_catalog().backbones
        for config in (spec.input_config, *spec.tag_input_configs.values())
    ]
    assert len(configs) > 1000
    for config in configs:
        assert config.checked() == config


def test_plan_from_dict_refuses_non_finite_and_mistyped_fields():
    assert Plan.from_dict(Plan.from_dict(PLAN_OK).to_dict()) == Plan.from_dict(PLAN_OK)
    for data in (
        {**PLAN_OK, "lr_scale": {"5.weight": float("inf")}},
        {**PLAN_OK, "lr_scale": {"5.weight": float("nan")}},
        {**PLAN_OK, "epoch": float("inf")},
        {**PLAN_OK, "format": float("inf")},
        {"trainable": ["a", "a"]},
        {"norms": {"frozen": ["bn"], "train": ["bn"]}},
        {**PLAN_OK, "notes": [1]},
        [1],
    ):
        with pytest.raises(zoo.PlanError):
            Plan.from_dict(data)  # type: ignore[arg-type]


# ---------------------------------------------------------------- saving


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"classes": ["\ud800", "b"]}, "'zoo.classes' is invalid: [0] holds a lone surrogate"),
        ({"classes": ["a", "tab\there"]}, "class name 1 'tab\\there' holds a control"),
        ({"policy_args": {"lr": float("inf")}}, "'zoo.plan' cannot be written as JSON"),
        ({"policy_args": {"name": "\udc80"}}, "'zoo.plan' is invalid"),
        ({"input_config": InputConfig(mean=(float("nan"), 0, 0))}, "'zoo.input_config'"),
        ({"input_config": InputConfig(interpolation="random")}, "interpolation must be one of"),
    ],
)
def test_save_refuses_what_load_would_refuse_before_any_write(tiny, change, fragment):
    model = make_version(1)
    if "classes" in change:
        model.zoo.classes = change["classes"]
    if "input_config" in change:
        model.zoo.input_config = change["input_config"]
    if "policy_args" in change:
        model.zoo.plan = Plan.from_dict({**PLAN_OK, "args": change["policy_args"]})
    before = sorted(p.relative_to(store.zoo_home()) for p in store.zoo_home().rglob("*"))
    with pytest.raises(zoo.ZooError) as info:
        zoo.save(model, "m")
    message = str(info.value)
    assert message.startswith("cannot save the model: metadata") and fragment in message
    assert "; " in message  # followed by what to do
    message.encode("utf-8")
    after = sorted(p.relative_to(store.zoo_home()) for p in store.zoo_home().rglob("*"))
    assert [p for p in after if p.parts[0] == "models"] == [
        p for p in before if p.parts[0] == "models"
    ]


# ---------------------------------------------------------------- prediction


def test_predict_refuses_a_bad_input_config_and_non_finite_outputs(tiny):
    model = make_version(1)
    model.zoo.input_config = InputConfig(std=(0.0, 1.0, 1.0))  # set directly: not checked
    image = torch.zeros(3, 32, 32)
    from PIL import Image

    picture = Image.new("RGB", (40, 40))
    with pytest.raises(zoo.ZooError, match=r"cannot prepare images for this model: .*std"):
        zoo.predict(model, picture)
    model.zoo.input_config = InputConfig(input_size=(3, 32, 32))
    assert len(zoo.predict(model, picture)) == 1
    with torch.no_grad():
        model[5].weight.fill_(float("nan"))
    with pytest.raises(zoo.ZooError, match="non-finite outputs"):
        zoo.predict(model, image)


# ---------------------------------------------------------------- property: parse is total


#: Text that may hold lone surrogates and control characters (hypothesis' default has neither).
any_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=6)
wild_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(10**30), 10**30)
    | st.floats()
    | any_text
    | st.sampled_from([0, 1, 3, 224, 0.5, 1.0, "bicubic", "center", "5.weight"])
)
wild_values = st.recursive(
    wild_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(any_text, inner, max_size=3),
    max_leaves=10,
)
#: Keys inside zoo's JSON values: garbage under a known key reaches the deeper checks.
inner_keys = st.sampled_from(
    [
        "input_size",
        "mean",
        "std",
        "interpolation",
        "crop_pct",
        "crop_mode",
        "backbone",
        "tag",
        "num_classes",
        "kwargs",
        "kind",
        "ref",
        "sha256",
        "trainable",
        "frozen",
        "lr_scale",
        "no_weight_decay",
        "norms",
        "policy",
        "args",
        "epoch",
        "notes",
        "format",
    ]
)
#: JSON text as anyone can write it: numbers out of float range, huge integers, escapes.
wild_json = (
    (wild_values | st.dictionaries(inner_keys, wild_values, max_size=3))
    .map(json.dumps)
    .map(lambda text: text.replace("Infinity", "1e999"))
    | st.sampled_from(
        ["1e999", "-1e999", HUGE, "NaN", '"nan"', '["\\ud800"]', '{"mean": [1e400, 0, 0]}']
    )
    | any_text
)


def base_metadata() -> dict[str, str]:
    build = {"backbone": "rel:tiny", "tag": None, "num_classes": 2, "kwargs": {}}
    meta = ZooMetadata(
        kind="full",
        build=build,
        plan=Plan.from_dict({**PLAN_OK, "policy": "zoo:x", "args": {"depth": 2}}).to_dict(),
        classes=["a", "b"],
        input_config=InputConfig().to_dict(),
        plugins={"rel": "1.0"},
        created="2026-01-02T03:04:05+00:00",
    )
    return {**meta.to_metadata(), "zoo.tensors_sha256": "0" * 64, "zoo.content_sha256": "0" * 64}


BASE = base_metadata()
#: A format-1 file's metadata (tests/data/v1), where format 1's own keys are read too.
BASE_V1 = read_header(V1_CORPUS / "full.safetensors").metadata


@pytest.mark.parametrize(
    ("base", "keys"), [(BASE, sorted(KEYS)), (BASE_V1, sorted((*KEYS, *V1_KEYS)))]
)
@settings(max_examples=300, deadline=None, derandomize=True)
@given(data=st.data())
def test_parse_refuses_or_returns_only_checked_values(base, keys, data):
    """Whatever the values: a CorruptFileError naming the file, or values that are all within
    range — finite numbers, valid Unicode, a usable input config and plan."""
    changes = data.draw(st.dictionaries(st.sampled_from(keys), wild_json, max_size=3))
    try:
        meta = ZooMetadata.parse({**base, **changes}, source="f.safetensors")
    except (zoo.CorruptFileError, zoo.UnsupportedFormatError) as exc:
        assert str(exc).startswith("f.safetensors: ")
        str(exc).encode("utf-8")
        return
    everything = {**meta.summary(), "plan": meta.plan, "timm_config": meta.timm_config}
    json.dumps(everything, allow_nan=False, ensure_ascii=False).encode("utf-8")
    InputConfig.from_dict(meta.input_config)
    if meta.plan is not None:
        Plan.from_dict(meta.plan)

"""Sharing models: a Hub-ready folder (``zoo.export``) and loading one back by hub id.

:func:`export` writes a folder that can be uploaded to the Hugging Face Hub as it is:

- a model without adapters (or whose adapters merge into its weights: SSF) is a timm folder:
  ``model.safetensors`` (the state dict under timm's names, with zoo's sealed metadata, which
  timm ignores), ``config.json`` (timm's layout: ``architecture``, ``num_classes``,
  ``label_names``, ``model_args``, ``pretrained_cfg``), so ``timm.create_model("local-dir:DIR",
  pretrained=True)`` -- and ``hf-hub:ORG/NAME`` once uploaded -- computes what zoo computes;
- a LoRA model is a PEFT folder (:mod:`zoo.io.peft_format`); its ``base_model_name_or_path``
  names a timm name or a hub id only when the base is exactly those weights, otherwise the base
  is written beside the adapter as a timm folder (``base/``), or, with ``without_base``, not at
  all (the card and the weights' metadata then name its sha256);
- both carry ``README.md``, a model card whose YAML front matter is the Hub's
  (``library_name``, ``base_model``, ``base_model_relation``, ``tags``, ``pipeline_tag``,
  ``metrics``), then the classes, the input config, the policy, what trained per depth, the
  training record, the leaderboard of ``zoo compare`` and the base.

Every file is written into a hidden staging folder inside the target and renamed into place
(:func:`write_staged`), all or none. :func:`load` is ``zoo.load``: a ``hf-hub:ORG/NAME`` id is
resolved through the Hub cache (:mod:`zoo.io.hub`) to a zoo file, a timm folder or a PEFT folder
(with its base), every file read by the trust rule (:mod:`zoo.io.trust`); anything else is
:func:`zoo.io.persistence.load`.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zoo.core.record import record_of, unwrap
from zoo.errors import ModelExistsError, ZooError
from zoo.io import hub, persistence, store
from zoo.io.create import timm_folder_model
from zoo.io.fileformat import (
    TEMP_PREFIX,
    TEMP_SUFFIX,
    atomic_write_bytes,
    fsync_dir,
    hash_tensors,
    read_header,
    write_error,
    write_tensors,
    written_size,
)
from zoo.io.metadata import ZooMetadata, config_json, is_zoo_metadata
from zoo.io.peft_format import (
    BASE_FOLDER,
    CONFIG_FILE,
    LORA_KIND,
    WEIGHTS_FILE,
    describe_base,
    import_peft,
    lora_additions,
    peft_contents,
)
from zoo.io.trust import check_folder, file_in, read_header_in, remove_written
from zoo.plans.adapters import adapters, merge_adapters
from zoo.tables.build import describe

if TYPE_CHECKING:
    import torch
    from torch import nn

    from zoo.core.catalog import Catalog

README = "README.md"
FORMATS = ("hub", "peft")
#: The files of a timm folder (and of the base written beside an adapter).
TIMM_FILES = (store.MODEL_FILE, store.CONFIG_FILE)
#: The most class names a card lists (the rest are counted).
CARD_CLASSES = 100


# ---------------------------------------------------------------- staged writes


@dataclass(frozen=True)
class Piece:
    """One name an export writes into its folder: a file, or a folder of ``files``."""

    name: str
    write: Callable[[Path], None]  # writes stage/name
    size: int
    files: tuple[str, ...] = ()  # a folder's files; empty: a file


def tensor_file(
    name: str, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]
) -> Piece:
    return Piece(
        name, lambda at: write_tensors(at, tensors, metadata), written_size(tensors, metadata)
    )


def bytes_file(name: str, data: bytes) -> Piece:
    return Piece(name, lambda at: atomic_write_bytes(at, [data]), len(data))


def timm_folder(
    name: str, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]
) -> Piece:
    """A folder ``name`` holding a timm folder of a zoo full file (``model.safetensors`` +
    its ``config.json``)."""
    config = config_json(metadata).encode("utf-8")

    def write(at: Path) -> None:
        at.mkdir()
        write_tensors(at / store.MODEL_FILE, tensors, metadata)
        atomic_write_bytes(at / store.CONFIG_FILE, [config])

    return Piece(name, write, written_size(tensors, metadata) + len(config), TIMM_FILES)


def write_staged(folder: Path, pieces: Sequence[Piece], *, overwrite: bool, what: str) -> None:
    """Write ``pieces`` into ``folder``, all or none.

    Each is written completely into a hidden staging folder inside ``folder`` (a zoo temporary
    name) and only then renamed into place (:func:`_move_in`); any failure -- a full disk above
    all -- removes what was staged and leaves ``folder`` as it was (a folder this call created
    is removed again), and is a :class:`~zoo.ZooError` saying how many bytes ``what`` needed. A
    name that exists is replaced only with ``overwrite`` (:class:`~zoo.ModelExistsError`);
    other files in ``folder`` are left alone.
    """
    for piece in pieces:
        path = folder / piece.name
        if not piece.files and path.is_dir() and not path.is_symlink():
            raise ZooError(f"{path} is a folder; export to another folder")
        if os.path.lexists(path) and not overwrite:
            raise ModelExistsError(
                f"{path} exists; pass overwrite=True (CLI: --overwrite) to replace it, "
                "or export to another folder"
            )
    created = not os.path.lexists(folder)
    stage: Path | None = None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        stage = Path(
            tempfile.mkdtemp(dir=folder, prefix=f"{TEMP_PREFIX}export.", suffix=TEMP_SUFFIX)
        )
        for piece in pieces:
            piece.write(stage / piece.name)
        _move_in(stage, folder, [p.name for p in pieces])
    except OSError as exc:
        needed = sum(p.size for p in pieces)
        kept = "nothing was written there" if created else f"{folder} is as it was"
        raise write_error(exc, folder, what=what, needed=needed, kept=kept) from None
    finally:
        if stage is not None:
            _clean(stage, pieces)
        if created:
            with contextlib.suppress(OSError):
                folder.rmdir()  # succeeds only when the export failed and left it empty
    fsync_dir(folder)


#: The name, in the staging folder, of what an export replaces, until the export is done.
_PREVIOUS = "previous-"


def _clean(stage: Path, pieces: Sequence[Piece]) -> None:
    """Delete what zoo staged (and what it moved aside), by name, then the staging folder."""
    names: list[str] = []
    for piece in pieces:
        for name in (piece.name, f"{_PREVIOUS}{piece.name}"):
            if piece.files:
                remove_written(stage / name, piece.files)
            else:
                names.append(name)
    remove_written(stage, names)


def _move_in(stage: Path, folder: Path, names: list[str]) -> None:
    """Rename ``stage/name`` to ``folder/name`` for each name, all or none: what is being
    replaced is first moved aside into ``stage``, and when a later rename fails everything
    moved in is taken out again and everything moved aside put back."""
    done: list[tuple[str, bool]] = []
    try:
        for name in names:
            aside = os.path.lexists(folder / name)
            if aside:
                os.replace(folder / name, stage / f"{_PREVIOUS}{name}")
            try:
                os.replace(stage / name, folder / name)
            except OSError:
                if aside:
                    os.replace(stage / f"{_PREVIOUS}{name}", folder / name)
                raise
            done.append((name, aside))
    except OSError:
        for name, aside in reversed(done):
            with contextlib.suppress(OSError):
                os.replace(folder / name, stage / name)
                if aside:
                    os.replace(stage / f"{_PREVIOUS}{name}", folder / name)
        raise


# ---------------------------------------------------------------- export


def export(
    model: nn.Module | str | os.PathLike[str],
    folder: str | os.PathLike[str],
    *,
    format: str = "hub",
    overwrite: bool = False,
    without_base: bool = False,
    catalog: Catalog,
) -> Path:
    """Write ``model`` as a folder to share; returns the folder.

    ``model`` is a model, or a saved model's store name, path or ``hf-hub:`` id (loaded first).
    ``format="hub"``: a Hub-ready folder with a model card (``README.md``) -- a timm folder
    (``model.safetensors`` + ``config.json``) for a model without adapters or whose adapters
    merge into its weights, a PEFT folder for a LoRA model. ``format="peft"``: the PEFT folder
    of a LoRA model (and its card); other models are refused.

    A LoRA adapter's ``base_model_name_or_path`` names a timm name or a hub id only when its base
    is exactly those weights; otherwise the base is written beside it (``base/``, a timm
    folder), or not at all with ``without_base=True`` (the card and the adapter's metadata name
    the base's sha256 and where it was). Files that exist are replaced only with
    ``overwrite=True`` (:class:`~zoo.ModelExistsError`); the folder's other files stay.
    """
    from torch import nn

    if format not in FORMATS:
        raise ZooError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
    name = None
    if isinstance(model, (str, os.PathLike)):
        name = Path(str(model)).name if not hub.is_hub_id(model) else hub.parse(str(model)).repo
        model = load(model, catalog=catalog)
    if not isinstance(model, nn.Module):
        raise ZooError(
            f"export expects a model or a saved model's name, path or hf-hub: id, got "
            f"{type(model).__name__}"
        )
    model = unwrap(model)
    folder = Path(folder)
    title = name or folder.name
    added = adapters(model)
    if format == "peft" or any(a.kind == LORA_KIND for a in added):
        pieces = _adapter_pieces(model, title, without_base=without_base, catalog=catalog)
        write_staged(folder, pieces, overwrite=overwrite, what="the PEFT adapter")
        return folder
    reference = _base_of(model)
    relation = "finetune"
    if added:  # SSF and other mergeable kinds fold into the weights (VPT is refused, named)
        model = merge_adapters(copy.deepcopy(model))
        relation = "merge"
    tensors, metadata = persistence.file_contents(model, catalog=catalog)
    card = model_card(
        model,
        metadata,
        title=title,
        library="timm",
        relation=relation if reference else None,
        base_model=_named(reference, catalog) if reference else None,
        base=reference,
        catalog=catalog,
    )
    pieces = [
        tensor_file(store.MODEL_FILE, tensors, metadata),
        bytes_file(store.CONFIG_FILE, config_json(metadata).encode("utf-8")),
        bytes_file(README, card.encode("utf-8")),
    ]
    write_staged(folder, pieces, overwrite=overwrite, what="the exported model")
    return folder


def _adapter_pieces(
    model: nn.Module, title: str, *, without_base: bool, catalog: Catalog
) -> list[Piece]:
    """The PEFT files of a LoRA model, its base beside it unless named or left out, the card."""
    lora_additions(model)  # refused before the base is looked for
    reference = _base_of(model)
    if reference is None:
        raise ZooError(
            "this LoRA model has no base recorded (its backbone had random weights), so no one "
            "could rebuild it from the adapter; export it in full instead (zoo.merge_adapters, "
            "then zoo.export)"
        )
    state = None
    if reference.get("sha256") is None:  # a pretrained base: hashed once, here
        state = _base_state(reference, model, catalog)
        reference = persistence.base_reference(reference, state.sha256)
    named = _named(reference, catalog)
    tensors, metadata, config = peft_contents(model, base_name=named, base=reference)
    pieces = [tensor_file(WEIGHTS_FILE, tensors, metadata), bytes_file(CONFIG_FILE, config)]
    if named is None and not without_base:
        state = state or _base_state(reference, model, catalog)  # found by hash, or refused
        base_model = persistence.load(_base_path(reference, state), catalog=catalog)
        if adapters(base_model):
            raise ZooError(
                f"the adapter's base ({describe_base(reference)}) has adapters of its own, which "
                "a timm folder cannot hold; merge them first, or export with without_base=True "
                "(--without-base)"
            )
        base_tensors, base_metadata = persistence.file_contents(base_model, catalog=catalog)
        pieces.append(timm_folder(BASE_FOLDER, base_tensors, base_metadata))
    _, model_metadata = persistence.file_contents(model, catalog=catalog)
    card = model_card(
        model,
        model_metadata,
        title=title,
        library="peft",
        relation="adapter",
        base_model=named,
        base=reference,
        catalog=catalog,
        base_beside=named is None and not without_base,
    )
    pieces.append(bytes_file(README, card.encode("utf-8")))
    return pieces


def _base_of(model: nn.Module) -> dict[str, Any] | None:
    """The base the model's training started from: for a model that is a loaded file as it was
    (its weights hash to its record's base), the file's ``zoo.base``; otherwise the model's
    record (what it was built or loaded from)."""
    record = record_of(model)
    if record is None:
        return None
    base = dict(record.base) if record.base else None
    if base and base.get("sha256") and is_zoo_metadata(record.metadata or {}):
        state = {k: v.detach() for k, v in model.state_dict().items()}
        if hash_tensors(state) == base["sha256"]:  # the loaded file itself: what it came from
            try:
                loaded = ZooMetadata.parse(record.metadata, source="the model").base
            except ZooError:
                return None
            return dict(loaded) if loaded else None
    return base


def _base_state(
    reference: Mapping[str, Any], model: nn.Module, catalog: Catalog
) -> persistence.ResolvedState:
    record = record_of(model)
    assert record is not None and record.build is not None
    return persistence.resolve_base(reference, record.build.to_dict(), catalog=catalog)


def _base_path(reference: Mapping[str, Any], state: persistence.ResolvedState) -> Path:
    """The file that holds the base (found by its hash when its own place is gone)."""
    if state.saved is None or state.meta is None:
        raise ZooError(
            f"the adapter's base ({describe_base(reference)}) is not a saved zoo model; export "
            "with without_base=True (--without-base) and give the base to whoever loads it"
        )
    kind, ref = reference.get("kind"), str(reference.get("ref"))
    candidates = (
        [store.model_file(ref)] if kind == "store" else [Path(ref)] if kind == "file" else []
    )
    candidates += [store.model_file(name) for name in store.entry_names()]
    candidates += [f / store.MODEL_FILE for _, f in hub.cached_files()]
    for path in candidates:  # the file that holds it (found by its hash when its place is gone)
        with contextlib.suppress(ZooError, OSError):
            real = file_in(path.parent, path.name, what="a model")
            if read_header(real).metadata.get("zoo.content_sha256") == state.meta.content_sha256:
                return real
    raise ZooError(f"the adapter's base ({describe_base(reference)}) cannot be read as a file")


def _named(reference: Mapping[str, Any], catalog: Catalog) -> str | None:
    """A hub id or timm name that is exactly the base's weights: a timm backbone's pretrained
    tag (``timm/ARCH.TAG``) or the Hub repository the base was loaded from; else None."""
    kind, ref = reference.get("kind"), str(reference.get("ref"))
    plugin, _, arch = ref.partition(":")
    if kind == "pretrained" and plugin == "timm" and "." in arch:
        return f"timm/{arch}"
    for location in reference.get("locations") or []:
        if location.get("kind") == "hub":
            with contextlib.suppress(ZooError):
                return hub.repo_id(str(location.get("ref")))
    return None


# ---------------------------------------------------------------- the model card


def model_card(
    model: nn.Module,
    metadata: Mapping[str, str],
    *,
    title: str,
    library: str,
    relation: str | None,
    base_model: str | None,
    base: Mapping[str, Any] | None,
    catalog: Catalog,
    base_beside: bool = False,
) -> str:
    """``README.md`` of an exported folder: the Hub's YAML front matter, then what the model is
    and how it was made, from its metadata (``metadata``: a full save's)."""
    import yaml

    shapes = {n: tuple(t.shape) for n, t in unwrap(model).state_dict().items()}
    meta = ZooMetadata.parse(metadata, source="the exported model", shapes=shapes)
    plan = meta.plan
    policy = plan.get("policy") or ""
    tags = ["image-classification", "timm", "zoo"]
    if library == "peft":
        tags += ["peft", "lora"]
    if policy:
        tags.append(policy.rpartition(":")[2])
    front: dict[str, Any] = {"library_name": library, "pipeline_tag": "image-classification"}
    if base_model:
        front["base_model"] = base_model
    if relation and base_model:
        front["base_model_relation"] = relation
    front["tags"] = list(dict.fromkeys(tags))
    if meta.compare:
        front["metrics"] = ["accuracy"]
    lines = ["---", yaml.safe_dump(front, sort_keys=False, allow_unicode=True).strip(), "---", ""]
    lines += [f"# {_md(title)}", ""]
    lines += [
        f"An image classifier adapted with zoo from `{meta.backbone}`"
        + (f" ({_md(relation)} of {_md(base_model)})." if base_model and relation else "."),
        "",
    ]
    lines += _classes_section(meta.classes)
    lines += _input_section(meta.input_config)
    lines += _training_section(model, meta, policy, catalog)
    lines += _leaderboard_section(meta.compare)
    lines += _base_section(base, base_model, base_beside)
    lines += _usage_section(library, base_model, base_beside)
    return "\n".join(lines).rstrip() + "\n"


def _md(text: object) -> str:
    """``text`` for a Markdown line or table cell: the characters Markdown acts on escaped."""
    out = str(text)
    for char in "\\`*_{}[]<>|#":
        out = out.replace(char, f"\\{char}")
    return out


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_md(cell) for cell in row) + " |" for row in rows]
    return [*lines, ""]


def _classes_section(classes: list[str] | None) -> list[str]:
    if not classes:
        return []
    shown = ", ".join(_md(c) for c in classes[:CARD_CLASSES])
    more = f" and {len(classes) - CARD_CLASSES} more" if len(classes) > CARD_CLASSES else ""
    return ["## Classes", "", f"{len(classes)} classes, in output order: {shown}{more}.", ""]


def _input_section(config: Mapping[str, Any]) -> list[str]:
    if not config:
        return []
    keys = [
        k
        for k in ("input_size", "mean", "std", "interpolation", "crop_pct", "crop_mode")
        if k in config
    ]
    return ["## Input", "", *_table(keys, [[json.dumps(config[k]) for k in keys]])]


def _training_section(
    model: nn.Module, meta: ZooMetadata, policy: str, catalog: Catalog
) -> list[str]:
    """The policy, the share trained, the per-depth table (the rows of
    :meth:`~zoo.ParamTable.depth_summary`, as ``zoo inspect`` prints them) and the record."""
    lines = ["## Training", ""]
    args = meta.policy_args
    shown = f"`{policy}`" + (f" with {_md(json.dumps(args))}" if args else "") if policy else "none"
    lines.append(f"- policy: {shown}")
    lines.append(
        f"- trained: {meta.num_trained_params:,} of {meta.num_params:,} parameters "
        f"({100 * meta.trained_fraction:.2f} %)"
    )
    for key, value in (meta.training or {}).items():
        lines.append(f"- {_md(key)}: {_md(json.dumps(value))}")
    lines.append("")
    table = describe(model, catalog=catalog).with_trainable(set(meta.trained))
    rows = [
        [
            d.depth,
            d.group,
            d.tensors,
            f"{d.numel:,}",
            "all"
            if d.trainable_numel == d.numel and d.numel
            else (
                "frozen" if not d.trainable_numel else f"{100 * d.trainable_numel / d.numel:.1f} %"
            ),
        ]
        for d in table.depth_summary()
    ]
    lines += ["### What trained, per depth", ""]
    return [*lines, *_table(["depth", "group", "tensors", "params", "trained"], rows)]


def _leaderboard_section(compare: Mapping[str, Any] | None) -> list[str]:
    if not compare:
        return []
    rows = [
        [
            c.get("policy"),
            f"{100 * c['val_acc']:.1f} %" if c.get("val_acc") is not None else "",
            f"{c['val_loss']:.4f}" if c.get("val_loss") is not None else "",
            f"{c.get('trainable_percent', 0):.2f} %",
            c.get("epochs"),
        ]
        for c in compare.get("candidates", [])
    ]
    intro = f"`zoo compare` chose `{_md(compare.get('winner'))}` among {len(rows)} policies:"
    return [
        "## Leaderboard",
        "",
        intro,
        "",
        *_table(["policy", "val accuracy", "val loss", "trainable", "epochs"], rows),
    ]


def _base_section(
    base: Mapping[str, Any] | None, base_model: str | None, beside: bool
) -> list[str]:
    if not base:
        return ["## Base", "", "Trained from random weights (no base).", ""]
    lines = ["## Base", ""]
    if base_model:
        lines.append(f"The base is `{_md(base_model)}`, exactly those weights.")
    elif beside:
        lines.append(f"The base is in `{BASE_FOLDER}/`, a timm folder beside the adapter.")
    else:
        lines.append("The base is not in this folder: load the adapter on exactly these weights.")
    if base.get("sha256"):
        lines.append(f"Its sha256 (zoo's hash of the complete state dict) is `{base['sha256']}`;")
    lines.append(f"where the model was made, it was: {_md(describe_base(base))}.")
    return [*lines, ""]


def _usage_section(library: str, base_model: str | None, beside: bool) -> list[str]:
    lines = ["## Usage", "", "```python"]
    if library == "timm":
        lines += [
            "import timm",
            "",
            'model = timm.create_model("hf-hub:ORG/NAME", pretrained=True).eval()',
            "# or with zoo (classes and input config come with it)",
            "import zoo",
            "",
            'model = zoo.load("hf-hub:ORG/NAME")',
        ]
    else:
        base = (
            f'"hf-hub:{base_model}"'
            if base_model and not base_model.startswith("timm/")
            else f'"{base_model.removeprefix("timm/")}"'
            if base_model
            else '"local-dir:base"'
            if beside
            else "BASE"
        )
        lines += [
            "import timm",
            "from peft import PeftModel",
            "",
            f"base = timm.create_model({base}, pretrained=True, num_classes=NUM_CLASSES)",
            'model = PeftModel.from_pretrained(base, "ORG/NAME").eval()',
            "# or with zoo, which checks the base's hash",
            "import zoo",
            "",
            'model = zoo.load("hf-hub:ORG/NAME")',
        ]
    return [*lines, "```", ""]


# ---------------------------------------------------------------- loading by hub id


def load(
    name_or_path: str | os.PathLike[str],
    *,
    device: str | torch.device = "cpu",
    trainable: bool = False,
    merge: bool = False,
    catalog: Catalog,
) -> nn.Module:
    """``zoo.load``: a ``hf-hub:ORG/NAME[@REVISION]`` id through the Hub cache
    (:func:`load_shared`), anything else :func:`zoo.io.persistence.load`."""
    options = {"device": device, "trainable": trainable, "merge": merge, "catalog": catalog}
    if not hub.is_hub_id(name_or_path):
        return persistence.load(name_or_path, **options)
    ident = hub.parse(str(name_or_path))
    return load_shared(hub.snapshot(ident), ident.repo, **options)


def load_shared(
    folder: Path,
    repo: str | None,
    *,
    device: str | torch.device = "cpu",
    trainable: bool = False,
    merge: bool = False,
    catalog: Catalog,
) -> nn.Module:
    """A model from a shared folder (a Hub snapshot: untrusted), as ``zoo.load`` returns it: a
    zoo file, a timm folder, or a PEFT folder with its base (``base/`` beside it, or its
    ``base_model_name_or_path``; checked by hash when zoo exported it). ``repo`` (``org/name``)
    is recorded among the locations of the model's base reference, so a delta saved from it
    finds it again by hub id."""
    folder = check_folder(folder, what="the shared folder")
    options = {"device": device, "trainable": trainable, "merge": merge, "catalog": catalog}
    if os.path.lexists(folder / CONFIG_FILE):
        model = import_peft(folder, catalog=catalog)
        if merge:
            merge_adapters(model)
        return _ready(model, device, trainable)
    if not os.path.lexists(folder / store.MODEL_FILE):
        raise ZooError(
            f"{folder}: holds neither a model (model.safetensors) nor a PEFT adapter "
            f"({CONFIG_FILE}); zoo loads a zoo file, a timm folder or a PEFT folder"
        )
    if is_zoo_metadata(read_header_in(folder, store.MODEL_FILE, what="a model").metadata):
        model = persistence.load(file_in(folder, store.MODEL_FILE, what="a model"), **options)
    else:
        model = _ready(timm_folder_model(folder, catalog=catalog), device, trainable)
    record = record_of(model)
    if repo is not None and record is not None and record.base:
        record.base = {**record.base, "locations": [{"kind": "hub", "ref": repo}]}
    return model


def _ready(model: nn.Module, device: str | torch.device, trainable: bool) -> nn.Module:
    """On ``device``, in eval mode; nothing trainable unless ``trainable``."""
    model.to(device)
    model.eval()
    if not trainable:
        for param in model.parameters():
            param.requires_grad_(False)
    return model

"""Building a :class:`~zoo.ParamTable` from a model or a backbone name.

``table_for(name)`` resolves the name in the catalog and builds the model on the ``meta``
device: parameters get shapes and dtypes but no storage, so a billion-parameter model is
described in a fraction of a second and nothing is downloaded. ``table_for(model)`` describes a
model that already exists (any ``nn.Module``).

Grouping asks the plugins first (hook ``zoo_param_groups``, first valid answer wins; the
built-in timm plugin answers last from timm's ``group_matcher``) and falls back to a generic
split of the module tree, so every model gets a table. Whatever the grouping, the head is
exactly the parameters of ``model.get_classifier()`` when the model has one, at the highest
depth.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from zoo.core.build import build
from zoo.core.record import BuildArgs, backbone_of, record_of, unwrap
from zoo.core.specs import ParamGroup
from zoo.errors import GroupingError, ZooError
from zoo.tables.table import NormInfo, ParamInfo, ParamTable

if TYPE_CHECKING:
    import torch
    from torch import nn

    from zoo.core.catalog import Catalog
    from zoo.core.specs import BackboneSpec

GENERIC = "generic"
HEAD = "head"
STEM = "stem"

#: Leaf names of positional / token parameters (role "embedding"): class, distillation and
#: register tokens, absolute and relative position tables, LeViT's attention biases.
_EMBEDDING_RE = re.compile(
    r"(^|_)(cls|dist|reg|mask|register|prompt|query|memory)_?tokens?(_?\d+)?$"
    r"|pos_embed|pos_embedding|position_embedding|(^|_)(patch|pixel)_pos$"
    r"|^rel_pos|_rel$|^relative_position_bias_table$|^attention_biases$"
    r"|(^|_)embed(ding)?s?(_?\d+)?$"
)


# ---------------------------------------------------------------- entry point


def table_for(
    model_or_name: nn.Module | str, *, catalog: Catalog, **create_kwargs: Any
) -> ParamTable:
    """The :class:`~zoo.ParamTable` of a model, or of a backbone name built on ``meta``.

    Names resolve in ``catalog``, whose plugins also answer ``zoo_param_groups``.
    ``create_kwargs`` (``num_classes=`` and architecture keyword arguments) only apply to a name.
    """
    from torch import nn

    if isinstance(model_or_name, str):
        model = build_meta(model_or_name, catalog=catalog, **create_kwargs)
    elif isinstance(model_or_name, nn.Module):
        if create_kwargs:
            raise TypeError(
                f"params() got keyword arguments {sorted(create_kwargs)} with a model; "
                "they only apply when building from a backbone name"
            )
        model = unwrap(model_or_name)
    else:
        raise TypeError(
            f"params() expects an nn.Module or a backbone name, got {type(model_or_name).__name__}"
        )
    return describe(model, spec=spec_of(model, catalog), catalog=catalog)


def spec_of(model: nn.Module, catalog: Catalog) -> BackboneSpec | None:
    """The spec a model was built from, read from ``model.zoo.build`` (None if unknown)."""
    name = backbone_of(model)
    if name is None:
        return None
    try:
        return catalog.backbones.lookup(name)
    except ZooError:
        return None


# ---------------------------------------------------------------- building on meta


def build_meta(name: str, *, catalog: Catalog, **create_kwargs: Any) -> nn.Module:
    """Backbone ``name`` (resolved in ``catalog``) built on the ``meta`` device by
    :func:`zoo.core.build.build`: no weights allocated, nothing downloaded. The model carries
    its record like one from ``zoo.create``; ``model.zoo.notes`` says what was unusual."""
    spec, tag = catalog.backbone(name)
    num_classes = create_kwargs.pop("num_classes", None)
    args = BuildArgs(spec.qualified_name, num_classes, create_kwargs, tag)
    return build(spec, args, device="meta")


# ---------------------------------------------------------------- describing a model


def describe(
    model: nn.Module,
    *,
    spec: BackboneSpec | None = None,
    catalog: Catalog | None = None,
) -> ParamTable:
    """The table of ``model``: plugin grouping (validated) or the generic one, roles, norms;
    its notes are its build's (``model.zoo.notes``) and the grouping's.

    Parameters of injected adapters (modules marked ``zoo_adapter``, see ``zoo.Adapter``) are
    left out of the grouping; their rows have the role ``adapter`` and their target's depth.
    """
    record = record_of(model)
    notes = list(record.notes) if record is not None else []
    named = list(model.named_parameters())
    adapter_paths = _adapter_paths(model)
    adapter_names = {n for n, _ in named if any(n.startswith(f"{path}.") for path in adapter_paths)}
    names = [n for n, _ in named if n not in adapter_names]
    groups, grouped_by = _grouping(model, spec, catalog, names, notes, drop=adapter_names)
    groups = _place_head(model, _without(groups, adapter_names), names)
    depth_of: dict[str, tuple[int, str]] = {}
    for depth, group in enumerate(groups):
        for name in group.params:
            depth_of[name] = (depth, group.name)
    for name in adapter_names:
        depth_of[name] = _target_depth(name, adapter_paths, depth_of)

    owners = _owners(model)
    norm_modules = {
        path
        for path, module in model.named_modules()
        if is_norm(module) and not any(path == a or path.startswith(f"{a}.") for a in adapter_paths)
    }
    head_names = {n for g in groups if g.name == HEAD for n in g.params}
    rows = []
    for name, param in named:
        module_path, _, leaf = name.rpartition(".")
        module = owners.get(module_path, model)
        depth, group = depth_of[name]
        rows.append(
            ParamInfo(
                name=name,
                module=module_path,
                module_type=type(module).__name__,
                role=ADAPTER
                if name in adapter_names
                else _role(leaf, module, module_path in norm_modules, name in head_names),
                shape=tuple(int(s) for s in param.shape),
                numel=int(param.numel()),
                dtype=str(param.dtype).removeprefix("torch."),
                group=group,
                depth=depth,
                trainable=bool(param.requires_grad),
            )
        )
    norms = _norms(model, norm_modules, depth_of)
    backbone = spec.qualified_name if spec is not None else backbone_of(model)
    return ParamTable(
        rows=tuple(rows),
        norms=norms,
        backbone=backbone,
        model_type=f"{type(model).__module__}.{type(model).__qualname__}",
        grouped_by=grouped_by,
        notes=tuple(notes),
    )


# ---------------------------------------------------------------- adapters

ADAPTER = "adapter"


def _adapter_paths(model: nn.Module) -> list[str]:
    """Module paths of injected adapters (``zoo.Adapter`` instances carrying their addition)."""
    return [
        path
        for path, module in model.named_modules()
        if path
        and getattr(module, "zoo_adapter", False) is True
        and getattr(module, "zoo_addition", None) is not None
    ]


def _without(groups: list[ParamGroup], drop: set[str]) -> list[ParamGroup]:
    if not drop:
        return groups
    kept = [ParamGroup(g.name, [n for n in g.params if n not in drop]) for g in groups]
    return [g for g in kept if g.params]


def _target_depth(
    name: str, adapter_paths: list[str], depth_of: dict[str, tuple[int, str]]
) -> tuple[int, str]:
    """The depth and group of the module an adapter parameter was added to."""
    owner = max((p for p in adapter_paths if name.startswith(f"{p}.")), key=len)
    target = owner.rpartition(".")[0]
    while True:
        prefix = f"{target}." if target else ""
        for other, where in depth_of.items():
            if other.startswith(prefix) and not any(
                other.startswith(f"{p}.") for p in adapter_paths
            ):
                return where
        if not target:
            return 0, STEM
        target = target.rpartition(".")[0]


# ---------------------------------------------------------------- grouping


def _grouping(
    model: nn.Module,
    spec: BackboneSpec | None,
    catalog: Catalog | None,
    names: list[str],
    notes: list[str],
    drop: set[str] | None = None,
) -> tuple[list[ParamGroup], str]:
    """The first valid plugin answer to ``zoo_param_groups``, else the generic grouping.

    A plugin that raises or answers invalid groups is recorded on its plugin record (as every
    hook failure is) and named in ``notes``; the next plugin is asked.
    """
    if catalog is None:
        return generic_groups(model), GENERIC
    host = catalog.host
    called: list[str] = []

    def kwargs_for(plugin: str) -> dict[str, Any]:
        called.append(plugin)
        return {"model": model, "backbone": spec}

    def note_raised(answered: str | None) -> None:
        for plugin in called:
            if plugin != answered:
                errors = [e for e in host.records[plugin].errors if "zoo_param_groups" in e]
                notes.append(f"plugin {plugin!r}: {errors[-1] if errors else 'raised'}; ignored")
        called.clear()

    for plugin, answer in host.call_each("zoo_param_groups", kwargs_for, accept=_read_answer):
        note_raised(plugin)
        if answer is None:
            continue
        if drop and isinstance(answer, list):  # adapters: not the plugin's to group
            answer = [
                ParamGroup(g.name, [n for n in g.params if n not in drop])
                if isinstance(g, ParamGroup)
                else g
                for g in answer
            ]
        try:
            groups = validate_groups(answer, names)
        except GroupingError as exc:
            message = f"zoo_param_groups returned invalid groups: {exc}"
            host.record_error(plugin, message)
            notes.append(f"plugin {plugin!r}: {message}; ignored")
            continue
        return groups, plugin
    note_raised(None)
    return generic_groups(model), GENERIC


def _read_answer(_plugin: str, answer: Any) -> Any:
    """A plugin's answer, read inside its isolation: a lazy sequence that raises while it is
    iterated (even ``SystemExit``) is that plugin's error, not the caller's."""
    if answer is None or isinstance(answer, (str, bytes)) or not isinstance(answer, Iterable):
        return answer
    return list(answer)


def validate_groups(answer: Any, names: Sequence[str]) -> list[ParamGroup]:
    """Check a plugin's groups: ParamGroups that hold every parameter exactly once.

    Empty groups are dropped. Raises :class:`GroupingError` naming what is wrong.
    """
    if isinstance(answer, (str, bytes)) or not isinstance(answer, Iterable):
        raise GroupingError(f"expected a sequence of zoo.ParamGroup, got {type(answer).__name__}")
    groups = list(answer)
    known = set(names)
    seen: dict[str, str] = {}
    problems: list[str] = []
    for group in groups:
        if not isinstance(group, ParamGroup):
            raise GroupingError(f"expected zoo.ParamGroup items, got {type(group).__name__}")
        for name in group.params:
            if name not in known:
                problems.append(f"unknown parameter {name!r} in group {group.name!r}")
            elif name in seen:
                problems.append(f"parameter {name!r} is in both {seen[name]!r} and {group.name!r}")
            else:
                seen[name] = group.name
    missing = [n for n in names if n not in seen]
    if missing:
        shown = ", ".join(repr(n) for n in missing[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        noun = "parameter" if len(missing) == 1 else "parameters"
        problems.append(f"{len(missing)} {noun} in no group: {shown}{more}")
    if problems:
        extra = f" (+{len(problems) - 3} more problems)" if len(problems) > 3 else ""
        raise GroupingError("; ".join(problems[:3]) + extra)
    return [g for g in groups if g.params]


def generic_groups(model: nn.Module) -> list[ParamGroup]:
    """Any model's groups: its parts in module order, stem first, head last.

    The parts are the model's top-level children (the model's own parameters, such as a class
    token, join the first); a child that is a ``ModuleList`` / ``Sequential`` of several blocks
    is split into its blocks; a model whose parameters all sit in one child (a wrapper) is split
    one level down; a part made only of normalization layers joins the part before it. The head
    is the classifier (``get_classifier()``) or else the last ``nn.Linear``, and what shares a
    part with it is the ``neck``. The first part is the ``stem``, the others ``stage.1`` ….
    """
    from torch import nn

    head = set(classifier_param_names(model)) or set(_last_linear_params(model))
    prefix, module = "", model
    direct, parts = _parts(module, prefix)
    while not direct and len(parts) == 1:  # a wrapper: all parameters in one child
        child = parts[0][0]
        module, prefix = getattr(module, child), f"{prefix}{child}."
        direct, parts = _parts(module, prefix)
    bodies: list[list[str]] = []
    for child, members in parts:
        sub = getattr(module, child)
        inner_direct, inner = (
            _parts(sub, f"{prefix}{child}.")
            if isinstance(sub, (nn.ModuleList, nn.Sequential))
            else ([], [])
        )
        whole = inner_direct or len(inner) < 2 or any(n in head for n in members)
        if whole:  # keep the head's part whole: what it holds besides the classifier is the neck
            bodies.append(members)
        else:
            bodies.extend(m for _, m in inner)
    if direct:
        bodies = [[*direct, *bodies[0]], *bodies[1:]] if bodies else [direct]
    canonical = [n for n, _ in model.named_parameters()]
    known = set(canonical)
    norm_params = {
        f"{path}.{n}" if path else n
        for path, m in model.named_modules()
        if is_norm(m)
        for n, _ in m.named_parameters(recurse=False)
    }
    placed: set[str] = set()
    groups: list[ParamGroup] = []
    neck: list[str] = []
    for members in bodies:
        body = [n for n in members if n in known and n not in head and n not in placed]
        placed.update(body)
        if not body:
            continue
        if any(n in head for n in members):  # what shares a part with the classifier
            neck.extend(body)
        elif groups and all(n in norm_params for n in body):  # a norm joins the layer before
            groups[-1] = ParamGroup(groups[-1].name, [*groups[-1].params, *body])
        else:
            name = STEM if not groups else f"stage.{len(groups)}"
            groups.append(ParamGroup(name, body))
    if neck:
        groups.append(ParamGroup("neck", neck))
    if groups:  # parameters only reachable under another name (shared): with the first group
        stray = [n for n in canonical if n not in placed and n not in head]
        if stray:
            groups[0] = ParamGroup(groups[0].name, [*groups[0].params, *stray])
    ordered_head = [n for n in canonical if n in head]
    if ordered_head:
        groups.append(ParamGroup(HEAD, ordered_head))
    return groups


def _parts(module: nn.Module, prefix: str) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """``(own parameter names, [(child name, parameter names), ...])`` of ``module``.

    Only children with parameters are listed; a parameter shared by two children counts in the
    first.
    """
    direct = [prefix + n for n, _ in module.named_parameters(recurse=False)]
    seen: set[int] = {id(p) for p in module.parameters(recurse=False)}
    parts: list[tuple[str, list[str]]] = []
    for child_name, child in module.named_children():
        members = []
        for n, p in child.named_parameters():
            if id(p) not in seen:
                seen.add(id(p))
                members.append(f"{prefix}{child_name}.{n}")
        if members:
            parts.append((child_name, members))
    return direct, parts


def _place_head(model: nn.Module, groups: list[ParamGroup], names: list[str]) -> list[ParamGroup]:
    """Move the classifier's parameters into a final ``head`` group, whatever the grouping."""
    head = set(classifier_param_names(model))
    if not head:
        # the grouping's own head (a plugin's or the generic one) stays, moved to the end
        heads = [g for g in groups if g.name == HEAD]
        others = [g for g in groups if g.name != HEAD]
        return others + heads
    body = [ParamGroup(g.name, [n for n in g.params if n not in head]) for g in groups]
    body = [g for g in body if g.params]
    demoted = [ParamGroup("neck" if g.name == HEAD else g.name, g.params) for g in body]
    return [*demoted, ParamGroup(HEAD, [n for n in names if n in head])]


def classifier_param_names(model: nn.Module) -> list[str]:
    """Names of the parameters of ``model.get_classifier()`` (a module or several), in order;
    of the model inside its wrappers (:func:`~zoo.unwrap`)."""
    model = unwrap(model)
    get = getattr(model, "get_classifier", None)
    if not callable(get):
        return []
    try:
        found = get()
    except Exception:
        return []
    modules = found if isinstance(found, (tuple, list)) else [found]
    from torch import nn

    wanted = {id(m) for m in modules if isinstance(m, nn.Module)}
    if not wanted:
        return []
    names: list[str] = []
    for path, module in model.named_modules():
        if id(module) in wanted:
            wanted.discard(id(module))
            prefix = f"{path}." if path else ""
            names.extend(prefix + n for n, _ in module.named_parameters())
    by_tensor = {id(p): n for n, p in model.named_parameters()}  # canonical (deduplicated) names
    params = dict(model.named_parameters(remove_duplicate=False))
    return list(dict.fromkeys(by_tensor[id(params[n])] for n in names if n in params))


def _last_linear_params(model: nn.Module) -> list[str]:
    from torch import nn

    last: tuple[str, nn.Module] | None = None
    for path, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last = (path, module)
    if last is None:
        return []
    path, module = last
    prefix = f"{path}." if path else ""
    return [prefix + n for n, _ in module.named_parameters()]


# ---------------------------------------------------------------- roles and norms


def _owners(model: nn.Module) -> dict[str, nn.Module]:
    return dict(model.named_modules(remove_duplicate=False))


def is_norm(module: nn.Module) -> bool:
    """A normalization layer: BatchNorm*, SyncBatchNorm, GroupNorm, LayerNorm, RMSNorm and
    subclasses (timm's BatchNormAct2d, LayerNorm2d, …), or any module whose class name says
    ``Norm`` and whose parameters are all its own (timm's RmsNorm, EvoNorm, FrozenBatchNorm2d)."""
    from torch import nn

    if isinstance(module, _torch_norm_types()):
        return True
    name = type(module).__name__
    if "norm" not in name.lower() or isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)):
        return False
    own = sum(1 for _ in module.parameters(recurse=False))
    return own == sum(1 for _ in module.parameters()) and not name.lower().startswith("normal")


def _torch_norm_types() -> tuple[type, ...]:
    from torch import nn

    types: list[type] = [
        nn.modules.batchnorm._NormBase,  # BatchNorm1d/2d/3d, SyncBatchNorm, InstanceNorm
        nn.GroupNorm,
        nn.LayerNorm,
        nn.LocalResponseNorm,
    ]
    if hasattr(nn, "RMSNorm"):
        types.append(nn.RMSNorm)
    return tuple(types)


def _role(leaf: str, module: nn.Module, in_norm: bool, in_head: bool) -> str:
    """``head`` > ``norm`` > ``embedding`` > ``bias`` > ``weight``."""
    from torch import nn

    if in_head:
        return "head"
    if in_norm:
        return "norm"
    if isinstance(module, nn.Embedding) or _EMBEDDING_RE.search(leaf):
        return "embedding"
    if leaf == "bias" or leaf.endswith("_bias") or leaf.startswith("bias_"):
        return "bias"
    return "weight"


def _norms(
    model: nn.Module, norm_paths: set[str], depth_of: dict[str, tuple[int, str]]
) -> tuple[NormInfo, ...]:
    """Every normalization layer, in module order, with the depth of its parameters.

    A norm without parameters (``affine=False``) takes the depth of its enclosing block when
    that block sits at one depth, else that of the layer just before it (the one it normalizes).
    """
    canonical = {id(p): n for n, p in model.named_parameters()}
    modules = list(model.named_modules())
    position = {path: i for i, (path, _) in enumerate(modules)}
    infos = []
    for path, module in modules:
        if path not in norm_paths:
            continue
        params = tuple(
            canonical[id(p)]
            for _, p in module.named_parameters(recurse=False)
            if id(p) in canonical
        )
        if params:
            depth, group = depth_of[params[0]]
        else:
            depth, group = _depth_without_params(path, position, depth_of)
        infos.append(
            NormInfo(
                path=path,
                type=type(module).__name__,
                depth=depth,
                group=group,
                tracks_running_stats=_tracks_running_stats(module),
                params=params,
            )
        )
    return tuple(infos)


def _tracks_running_stats(module: nn.Module) -> bool:
    """Whether the layer keeps running statistics it updates in training mode (BatchNorm-like);
    a frozen BatchNorm holds statistics as constants and does not."""
    running = any(getattr(module, b, None) is not None for b in ("running_mean", "running_var"))
    default = "frozen" not in type(module).__name__.lower()
    return bool(running and getattr(module, "track_running_stats", default))


def _depth_without_params(
    path: str, position: dict[str, int], depth_of: dict[str, tuple[int, str]]
) -> tuple[int, str]:
    if not depth_of:
        return 0, STEM
    prefix = path
    while prefix:
        prefix = prefix.rpartition(".")[0]
        if not prefix:
            break
        inside = {found for name, found in depth_of.items() if name.startswith(prefix + ".")}
        if len(inside) == 1:
            return inside.pop()
        if inside:
            break
    # the parameter owned by the closest module before this one (else the first after it)
    here = position.get(path, 0)
    before = [(position.get(n.rpartition(".")[0], -1), found) for n, found in depth_of.items()]
    earlier = [item for item in before if item[0] < here]
    if earlier:
        return max(earlier, key=lambda item: item[0])[1]
    return min(before, key=lambda item: item[0])[1]


def storage_bytes(model: nn.Module) -> int:
    """Bytes of real (non-meta) storage held by ``model``'s parameters and buffers."""
    total = 0
    seen: set[int] = set()
    tensors: list[torch.Tensor] = [*model.parameters(), *model.buffers()]
    for tensor in tensors:
        if tensor.is_meta:
            continue
        storage = tensor.untyped_storage()
        if storage.data_ptr() in seen:
            continue
        seen.add(storage.data_ptr())
        total += storage.nbytes()
    return total

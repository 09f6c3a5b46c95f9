"""Built-in adapter policies: ``lora``, ``ssf`` and ``vpt`` (part of the built-in plugin ``zoo``).

Each is a pure function of the :class:`~zoo.ParamTable` that returns a :class:`~zoo.Plan` whose
``additions`` say which modules get which adapter (:class:`~zoo.Addition`: target, kind,
parameter shapes); the head always trains, everything else is frozen (or, with ``norms=``, the
norm layers train too). The adapter modules themselves live in :mod:`zoo.builtin.adapter_kinds`,
imported only when a plan is applied, so planning runs on the ``meta`` device without torch
work. See ``docs/policies.md`` and ``docs/adapters.md``.
"""

from __future__ import annotations

import fnmatch
import re
from typing import Any, Literal

from zoo import AdapterSpec, Addition, ParamTable, Plan, PolicySpec
from zoo.builtin.standard_policies import HEAD_RATE
from zoo.errors import PlanError, PolicyArgumentError, suggest

PLUGIN_NAME = "zoo"
HEAD_GROUPS = frozenset({"head", "neck"})
NormChoice = Literal["frozen", "train", "frozen-stats"]
#: SSF targets among the norm layers: those whose output a per-channel scale and shift can
#: follow and fold into (weight and bias, channel axis known). timm's norm-act layers included.
SSF_NORM_TYPES = re.compile(
    r"^(Sync)?BatchNorm(Act)?([123]d)?$|^GroupNorm(1|Act)?$|^LayerNorm(2d|Act|Act2d)?$"
)
#: SSF targets among the operations (with a bias): their per-channel scale folds into the
#: weight, or into the ``gain`` of timm's scaled weight-standardized convs (NFNet)
SSF_OPERATIONS = frozenset({"Linear", "Conv2d", "ScaledStdConv2d", "ScaledStdConv2dSame"})
_BLOCK_RE = re.compile(r"^(blocks\.\d+)\.")
_REL_POS_RE = re.compile(r"relative_position|(^|\.)rel_pos")
#: module types lora adapts (see zoo.builtin.adapter_kinds.LORA_CONVS)
LORA_TYPES = frozenset(
    {
        "Linear",
        "Conv2d",
        "Conv2dSame",
        "StdConv2d",
        "StdConv2dSame",
        "ScaledStdConv2d",
        "ScaledStdConv2dSame",
    }
)


# ---------------------------------------------------------------- shared helpers


def _check(name: str, ok: bool, rule: str, value: Any) -> None:
    if not ok:
        raise PolicyArgumentError(f"argument {name!r} must be {rule}, got {value!r}")


def _check_min_depth(table: ParamTable, min_depth: int) -> None:
    _check(
        "min_depth",
        0 <= min_depth <= table.max_depth,
        f"between 0 and {table.max_depth} for this model",
        min_depth,
    )


def _head(table: ParamTable) -> list[str]:
    return [row.name for row in table.rows if row.role == "head"]


def _norm_choice(table: ParamTable, norms: str) -> tuple[list[str], dict[str, str]]:
    """Extra trained names and norm modes for the ``norms`` argument."""
    if norms == "frozen":
        return [], {}
    names = [row.name for row in table.rows if row.role == "norm"]
    return names, {norm.path: norms for norm in table.norms}


def _plan(
    table: ParamTable,
    additions: list[Addition],
    norms: str,
    notes: list[str],
    what: str,
    weight_decay: dict[str, bool] | None = None,
) -> Plan:
    if not additions:
        raise PlanError(
            f"{what} found no module to adapt in {table.backbone or 'this model'} "
            "(zoo show NAME lists its modules)"
        )
    extra, modes = _norm_choice(table, norms)
    return Plan.from_table(
        table,
        [*_head(table), *extra],
        norm_modes=modes,
        notes=notes,
        additions=additions,
        weight_decay=weight_decay,
    )


def _weight_rows(table: ParamTable) -> dict[str, Any]:
    """``module path -> its weight row`` for every module with a ``weight``."""
    return {
        row.module: row
        for row in table.rows
        if row.name.rpartition(".")[2] == "weight" and row.role != "adapter"
    }


# ---------------------------------------------------------------- lora


def lora(
    table: ParamTable,
    rank: int = 8,
    alpha: float = 16.0,
    dropout: float = 0.0,
    targets: list[str] | None = None,
    min_depth: int = 0,
    norms: NormChoice = "frozen",
) -> Plan:
    """LoRA: a trained low-rank update ``(alpha / rank) * B @ A`` beside each target's weight.

    Default targets (``targets`` unset or ``auto``), from ``min_depth`` up, never the stem
    (depth 0), the neck or the head: every ``nn.Linear`` of the body -- in transformer blocks
    the attention (fused ``qkv`` included) and MLP linears -- and every ``nn.Conv2d`` with a
    spatial kernel (k x k > 1, grouped and depthwise included). 1x1 convolutions are left out on
    purpose: in a ResNet-50 they hold 60 % of the conv weights, and LoRA on every conv of its
    stages at rank 8 adds 2.3 % of the model, while the k x k convs alone add 1.2 %; the adapted
    model then saves (adapters + head) in under 2 % of the full file, as a ViT-B/16 does
    (1.4 %). A body with neither (LeViT's conv form builds attention and MLPs from 1x1 convs)
    gets its 1x1 convs instead. ``targets=*.qkv,*.fc2`` (fnmatch on module paths) chooses
    modules by name,
    any kernel size. ``B`` starts at zero, so the model is unchanged until it trains.

    timm's weight-standardized convs (``StdConv2d``, ``ScaledStdConv2d`` and ``*Same``: NFNet,
    BiT) count as ``Conv2d``: their update is added to the weight *before* standardization, so
    ``zoo.merge_adapters`` (``weight += delta``) is exact; the price is a second run of those
    convs while adapted (the adapter recomputes the conv with the updated weight).
    """
    _check("rank", 1 <= rank <= 4096, "an integer from 1 to 4096", rank)
    _check("alpha", alpha > 0, "a number > 0", alpha)
    _check("dropout", 0 <= dropout < 1, "in [0, 1)", dropout)
    _check_min_depth(table, min_depth)
    weights = _weight_rows(table)
    names = set(table.names)
    # BEiT/EVA attention calls F.linear(x, self.qkv.weight, q/v bias): a hook on qkv never runs
    bypassed = {
        path
        for path in weights
        if path.endswith(".qkv") and f"{path.rpartition('.')[0]}.q_bias" in names
    }
    supported = {
        path: row
        for path, row in weights.items()
        if row.module_type in LORA_TYPES and row.role != "head" and path not in bypassed
    }
    patterns = [t for t in (targets or []) if t != "auto"]
    pointwise = False
    if patterns:
        chosen = []
        for pattern in patterns:
            hits = [p for p in weights if fnmatch.fnmatchcase(p, pattern)]
            if not hits:
                close = suggest(pattern, list(weights), n=3)
                hint = f" (did you mean {', '.join(map(repr, close))}?)" if close else ""
                raise PolicyArgumentError(
                    f"targets pattern {pattern!r} matches no module with a weight{hint}; "
                    "patterns are fnmatch globs over module paths, such as '*.qkv'"
                )
            usable = [p for p in hits if p in supported]
            if not usable and set(hits) & bypassed:
                raise PolicyArgumentError(
                    f"targets pattern {pattern!r} matches only fused qkv linears that their "
                    "attention bypasses (F.linear on the weight, with q/v biases): a LoRA there "
                    "would never run; adapt proj, fc1, fc2 instead"
                )
            if not usable:
                kinds = sorted({weights[p].module_type for p in hits})
                raise PolicyArgumentError(
                    f"targets pattern {pattern!r} matches only {', '.join(kinds)} modules; "
                    "lora adapts nn.Linear and nn.Conv2d (the head always trains anyway)"
                )
            chosen.extend(p for p in usable if weights[p].depth >= min_depth)
        picked = set(chosen)
        rows = [row for path, row in supported.items() if path in picked]  # model order
    else:
        body = [
            row
            for row in supported.values()
            if row.depth >= max(min_depth, 1) and row.group not in HEAD_GROUPS
        ]
        rows = [r for r in body if r.module_type == "Linear" or r.shape[2] * r.shape[3] > 1]
        pointwise = not rows and bool(body)
        if pointwise:  # LeViT's conv form: attention and MLPs are 1x1 convs
            rows = body
    notes = []
    additions = []
    for row in rows:
        if row.module_type == "Linear":
            a_shape, b_shape = (rank, row.shape[1]), (row.shape[0], rank)
        else:
            a_shape, b_shape = (rank, *row.shape[1:]), (row.shape[0], rank, 1, 1)
        additions.append(
            Addition(
                target=row.module,
                kind="zoo:lora",
                params={"lora.A": a_shape, "lora.B": b_shape},
                args={"rank": rank, "alpha": float(alpha), "dropout": float(dropout)},
                depth=row.depth,
                group=row.group,
            )
        )
    linears = sum(1 for r in rows if r.module_type == "Linear")
    notes.insert(
        0,
        f"lora: rank {rank}, scale alpha/rank = {alpha / rank:.3g}, on {len(rows)} modules "
        f"({linears} Linear, {len(rows) - linears} Conv2d)",
    )
    if pointwise:
        notes.append(
            "lora: the body has no Linear and no k x k conv, so its 1x1 convs (linears over "
            "channels) are adapted"
        )
    if bypassed and not patterns:
        notes.append(
            f"lora: {len(bypassed)} fused qkv linears left out: their attention uses the weight "
            "directly (F.linear with q/v biases), so an adapter there would never run"
        )
    standardized = [r for r in rows if "Std" in r.module_type]
    if standardized:
        notes.append(
            f"lora: {len(standardized)} weight-standardized convs: the update joins the weight "
            "before standardization (exact merge; the conv runs twice while adapted)"
        )
    return _plan(table, additions, norms, notes, "lora")


# ---------------------------------------------------------------- ssf


def ssf(table: ParamTable, min_depth: int = 0, norms: NormChoice = "frozen") -> Plan:
    """SSF: a trained per-channel scale (from 1) and shift (from 0) after operations.

    Targets, from ``min_depth`` up and outside the head: every normalization layer with a weight
    and a bias (BatchNorm, GroupNorm, LayerNorm and timm's norm-act forms, where the scale and
    shift apply before the activation), and every ``nn.Linear`` and ``nn.Conv2d`` with a bias.
    A convolution without a bias (a ResNet's, followed by a BatchNorm) is covered by the norm
    after it. timm's ``ScaledStdConv2d`` with a bias (NFNets have no norm layers) is a target too:
    it standardizes its weight and then multiplies it by a per-channel ``gain``, so the scale
    folds into the gain and the bias. Every target can fold the scale and shift into its weight
    and bias, so an SSF model merges into a plain one (``zoo.merge_adapters``).
    """
    _check_min_depth(table, min_depth)
    biased = {row.module for row in table.rows if row.name.rpartition(".")[2] == "bias"}
    weights = _weight_rows(table)
    norm_types = {norm.path: norm.type for norm in table.norms}
    additions = []
    for path, row in weights.items():
        if row.role == "head" or row.group == "head" or row.depth < min_depth:
            continue
        if path not in biased or len(row.shape) < 1:
            continue
        if path in norm_types:
            if not SSF_NORM_TYPES.match(norm_types[path]) or len(row.shape) != 1:
                continue
        elif row.module_type not in SSF_OPERATIONS:
            continue
        channels = row.shape[0]
        additions.append(
            Addition(
                target=path,
                kind="zoo:ssf",
                params={"ssf.scale": (channels,), "ssf.shift": (channels,)},
                depth=row.depth,
                group=row.group,
            )
        )
    note = f"ssf: scale and shift after {len(additions)} operations"
    return _plan(table, additions, norms, [note], "ssf")


# ---------------------------------------------------------------- vpt


#: prefix-token parameters (leaf or nested, e.g. naflexvit's ``embeds.reg_token``)
_PREFIX_TOKENS = ("cls_token", "dist_token", "reg_token")
#: ConViT's gated positional self-attention: built for the square grid of patch tokens only
_GPSA_RE = re.compile(r"^blocks\.\d+\.attn\.(gating_param|pos_proj\.)")
#: XCiT's local patch interaction (LPI): a residual branch that reshapes the tokens into the
#: patch grid for its depthwise convolutions; prompts skip it (stripped before, zeros after)
_GRID_BRANCH = "local_mp"
#: blocks after ``blocks`` that the class token joins (XCiT, CaiT): ``blocks`` see patch tokens only
_CLASS_JOINS_LATER = ("cls_attn_blocks.", "blocks_token_only.")


class TokenLayout(tuple):
    """``(block paths, width, prefix tokens)`` plus ``skipped`` blocks (with the reason) and the
    ``grid_branch`` child of every block that the prompts skip ("" when none)."""

    skipped: tuple[str, ...] = ()
    reason: str = ""
    grid_branch: str = ""


def _prefix_tokens(table: ParamTable) -> int:
    if any(row.name.startswith(_CLASS_JOINS_LATER) for row in table.rows):
        return 0  # the class token joins after `blocks`: they see patch tokens only
    prefix = 0
    for row in table.rows:
        if row.name.startswith("blocks.") or row.name.rpartition(".")[2] not in _PREFIX_TOKENS:
            continue
        prefix += row.shape[1] if len(row.shape) == 3 else 1
    return prefix


def token_layout(table: ParamTable) -> tuple[list[str], int, int] | None:
    """``(block paths, width, prefix tokens)`` of a token-based backbone, else None.

    A token-based backbone (timm's ViT family) has transformer blocks ``blocks.N`` over
    ``[batch, tokens, width]`` of one width -- taken from the first block's ``norm1`` (else a
    ``[1, N, C]`` class token or position embedding) -- and its prefix tokens are the class,
    distillation and register tokens, leaf or nested (``embeds.reg_token``). Not token-based
    (None, see :func:`vpt_refusal`): no such blocks; blocks of changing widths or an embedding
    over a channel-first grid (Hiera: NHWC maps); attention with a per-block relative position
    bias (BEiT, ``vit_relpos``: a bias for a fixed token count); blocks that reshape their tokens
    into the patch grid for their attention or MLP (a convolution inside a block outside a
    ``local_mp`` child). Allowed: convolutions only in a block's ``local_mp`` child (XCiT's local
    patch interaction, a residual branch of its own): the prompts skip that branch (stripped
    before it, zeros after it; ``grid_branch``). ConViT's GPSA blocks (gated positional attention
    over the square patch grid, before the class token joins) are left out; its later, plain
    blocks take prompts. Where the class token joins after ``blocks`` (XCiT's
    ``cls_attn_blocks``, CaiT's ``blocks_token_only``) the prefix is 0.
    """
    layout = _layout(table)
    return None if isinstance(layout, str) else layout


def vpt_refusal(table: ParamTable) -> str:
    """Why :func:`token_layout` refuses this table ("" when it does not)."""
    layout = _layout(table)
    return layout if isinstance(layout, str) else ""


def _layout(table: ParamTable) -> TokenLayout | str:
    blocks = list(
        dict.fromkeys(m.group(1) for row in table.rows if (m := _BLOCK_RE.match(row.name)))
    )
    if not blocks:
        return "it has no transformer blocks 'blocks.N'"
    widths = {
        row.name.split(".")[1]: row.shape[0]
        for row in table.rows
        if re.fullmatch(r"blocks\.\d+\.norm1\.weight", row.name) and len(row.shape) == 1
    }
    embeds = [
        row
        for row in table.rows
        if not row.name.startswith("blocks.")
        and row.name.rpartition(".")[2] in ("cls_token", "pos_embed")
    ]
    if widths:
        if len(set(widths.values())) > 1:
            return "its blocks change width (a hierarchical model, not a ViT)"
        width = next(iter(widths.values()))
        if any(row.shape[-1] != width for row in embeds if row.shape):
            return "its position embedding is not [.., tokens, channels] (a spatial map)"
    else:
        flat = [row for row in embeds if len(row.shape) == 3]
        if not flat:
            return "it has neither a norm1 in its blocks nor a [1, N, C] class token or embedding"
        width = flat[0].shape[-1]
    in_blocks = [row for row in table.rows if row.name.startswith("blocks.")]
    if any(_REL_POS_RE.search(row.name) for row in table.rows if not _shared(row.name)):
        return "its attention adds a relative position bias made for a fixed number of tokens"
    convs = [row for row in in_blocks if row.module_type == "Conv2d"]
    grid_branch = _GRID_BRANCH if convs else ""
    if any(row.name.split(".")[2] != _GRID_BRANCH for row in convs):
        return "its blocks reshape the tokens into the patch grid (a convolution inside a block)"
    gpsa = {m.group(0).split(".attn")[0] for row in in_blocks if (m := _GPSA_RE.match(row.name))}
    kept = [b for b in blocks if b not in gpsa]
    if not kept:
        return "every block uses positional attention over the square patch grid (GPSA)"
    layout = TokenLayout((kept, width, _prefix_tokens(table)))
    layout.skipped = tuple(b for b in blocks if b in gpsa)
    layout.grid_branch = grid_branch
    return layout


def _shared(name: str) -> bool:
    """A relative position bias computed once and passed to every block (``shared_rel_pos``):
    VPT pads it with zeros for the prompts."""
    return name.startswith("shared_rel_pos.")


def vpt(
    table: ParamTable, tokens: int = 10, min_depth: int = 0, norms: NormChoice = "frozen"
) -> Plan:
    """VPT-deep: ``tokens`` learned prompt tokens at the input of each transformer block from
    ``min_depth`` up (inserted after the class/register tokens, dropped from the block's
    output). Token-based backbones only (timm's ViT family, as :func:`token_layout` defines it);
    cannot merge into the weights.

    Refused at plan time, with the reason, where blocks cannot take extra tokens: a per-block
    relative position bias (BEiT), a convolution inside the blocks outside XCiT's ``local_mp``
    branch (a reshape of the tokens to the patch grid), changing widths or a channel-first
    embedding (Hiera). XCiT: the prompts skip each block's local patch interaction (its grid
    convolutions) and the class token joins later (prefix 0). ConViT: prompts only in the
    blocks after its GPSA blocks. Rotary embeddings (EVA-02, RoPE ViTs, DINOv3) and
    a shared relative position bias (``vit_srelpos``) work: the prompts count as prefix tokens
    (no rotation) and get a zero bias.
    """
    _check("tokens", 1 <= tokens <= 1000, "an integer from 1 to 1000", tokens)
    _check_min_depth(table, min_depth)
    layout = _layout(table)
    if isinstance(layout, str):
        raise PlanError(
            f"vpt needs a token-based backbone (a ViT: transformer blocks 'blocks.N' over "
            f"[batch, tokens, channels]); "
            f"{table.backbone or table.model_type or 'this model'} is not one: {layout} -- "
            "use lora or ssf instead"
        )
    blocks, dim, prefix = layout
    additions = []
    for block in blocks:
        rows = [row for row in table.rows if row.name.startswith(f"{block}.")]
        depth, group = rows[0].depth, rows[0].group
        if depth < min_depth:
            continue
        additions.append(
            Addition(
                target=block,
                kind="zoo:vpt",
                params={"vpt.prompts": (tokens, dim)},
                args={
                    "tokens": tokens,
                    "prefix_tokens": prefix,
                    **({"skip": layout.grid_branch} if layout.grid_branch else {}),
                },
                depth=depth,
                group=group,
            )
        )
    notes = [f"vpt: {tokens} prompt tokens at the input of {len(additions)} blocks"]
    if layout.grid_branch:
        notes.append(
            f"vpt: the prompts skip each block's {layout.grid_branch!r} (convolutions over the "
            "patch grid): removed before it, zeros added after it"
        )
    if layout.skipped:
        notes.append(
            f"vpt: {len(layout.skipped)} blocks with gated positional attention over the patch "
            f"grid (GPSA: {layout.skipped[0]}..{layout.skipped[-1]}) left out: they cannot "
            "take extra tokens"
        )
    no_decay = {name: False for a in additions for name in a.names}  # tokens, like cls_token
    return _plan(table, additions, norms, notes, "vpt", no_decay)


# ---------------------------------------------------------------- kinds (built lazily)


def build_lora(target: Any, addition: Addition) -> Any:
    from zoo.builtin.adapter_kinds import build_lora as build

    return build(target, addition)


def build_ssf(target: Any, addition: Addition) -> Any:
    from zoo.builtin.adapter_kinds import build_ssf as build

    return build(target, addition)


def build_vpt(target: Any, addition: Addition) -> Any:
    from zoo.builtin.adapter_kinds import build_vpt as build

    return build(target, addition)


SPECS = (
    AdapterSpec("lora", build_lora, "low-rank update of a Linear or Conv2d weight (mergeable)"),
    AdapterSpec("ssf", build_ssf, "per-channel scale and shift of an output (mergeable)"),
    AdapterSpec("vpt", build_vpt, "prompt tokens at a transformer block's input"),
    PolicySpec(
        "lora",
        lora,
        "Add LoRA (low-rank updates) to the body's linears and k x k convs; train them and "
        "the head.",
        lr_scale=HEAD_RATE,
    ),
    PolicySpec(
        "ssf",
        ssf,
        "Add a per-channel scale and shift after the body's norms, linears and convs; train "
        "them and the head.",
        lr_scale=HEAD_RATE,
    ),
    PolicySpec(
        "vpt",
        vpt,
        "Add learned prompt tokens to every transformer block (ViTs); train them and the head.",
        lr_scale=HEAD_RATE,
    ),
)

"""The built-in adapter modules: LoRA, SSF and VPT (``zoo.Adapter`` subclasses; imports torch).

:mod:`zoo.builtin.adapter_policies` registers the kinds and imports this module only when a plan
is applied, so listing and planning never load torch.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import zoo
from zoo.errors import AdapterError

# ---------------------------------------------------------------- LoRA


class LoRA(zoo.Adapter):
    """A low-rank update ``scale * B @ A`` of an ``nn.Linear`` or ``nn.Conv2d`` weight.

    Linear: ``A`` is ``(rank, in)``, ``B`` ``(out, rank)``. Conv2d (any ``groups``): ``A`` is
    ``(rank, in/groups, kh, kw)`` and ``B`` ``(out, rank, 1, 1)``; the update of the weight is
    ``(B.view(out, rank) @ A.view(rank, -1)).view(weight.shape)``. With ``groups=1`` and zero
    padding it runs as two convolutions (``A`` with the target's stride, padding and dilation,
    then ``B`` as a 1x1), exactly PEFT's ``lora_A``/``lora_B`` layout. ``B`` starts at zero (the
    output is unchanged at first), ``A`` Kaiming-uniform as in the LoRA paper and PEFT.
    """

    mergeable = True

    def __init__(
        self,
        a_shape: tuple[int, ...],
        b_shape: tuple[int, ...],
        scale: float,
        dropout: float,
        *,
        same_pad: bool = False,
        standardized: bool = False,
    ) -> None:
        super().__init__()
        self.A = nn.Parameter(torch.empty(a_shape))
        self.B = nn.Parameter(torch.zeros(b_shape))
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))
        self.scale = float(scale)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.same_pad = same_pad  # timm's *Same convs pad their input in forward
        #: a weight-standardized conv (timm's StdConv2d, ScaledStdConv2d: NFNet, BiT): the update
        #: is added to the weight *before* standardization, so merging (``weight += delta``) is
        #: exact. The adapted conv runs again with the updated weight (the target's own output is
        #: discarded: twice the conv's compute); dropout does not apply there.
        self.standardized = standardized

    def delta_weight(self, target: nn.Module) -> torch.Tensor:
        """The update of ``target.weight``: ``scale * B @ A`` in the weight's shape."""
        delta = self.B.reshape(self.B.shape[0], -1) @ self.A.reshape(self.A.shape[0], -1)
        return (delta * self.scale).reshape(target.weight.shape)

    def post_forward(self, target: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
        if self.standardized:
            return self.standardized_forward(target, args[0])
        x = self.dropout(args[0])
        if isinstance(target, nn.Linear):
            # one fused add: no full-size temporary for the scaled update
            return torch.add(output, F.linear(F.linear(x, self.A), self.B), alpha=self.scale)
        if self.same_pad:
            x = pad_same(x, target.kernel_size, target.stride, target.dilation)
        if target.groups == 1 and target.padding_mode == "zeros":
            hidden = F.conv2d(x, self.A, None, target.stride, target.padding, target.dilation)
            return torch.add(output, F.conv2d(hidden, self.B), alpha=self.scale)
        return output + target._conv_forward(x, self.delta_weight(target), None)

    def standardized_forward(self, target: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """timm's StdConv2d / ScaledStdConv2d (and ``*Same``) forward with ``weight + delta``."""
        if self.same_pad:
            x = pad_same(x, target.kernel_size, target.stride, target.dilation)
        weight = target.weight + self.delta_weight(target).to(target.weight.dtype)
        gain = getattr(target, "gain", None)
        affine = (gain * target.scale).view(-1) if isinstance(gain, torch.Tensor) else None
        weight = F.batch_norm(
            weight.reshape(1, target.out_channels, -1),
            None,
            None,
            weight=affine,
            training=True,
            momentum=0.0,
            eps=target.eps,
        ).reshape_as(target.weight)
        return F.conv2d(
            x, weight, target.bias, target.stride, target.padding, target.dilation, target.groups
        )

    def merge_into(self, target: nn.Module) -> None:
        target.weight.add_(self.delta_weight(target).to(target.weight.dtype))


#: Conv2d classes LoRA adapts -> whether they standardize their weight: plain, timm's
#: dynamically padded ``*Same`` ones, and the weight-standardized ones (NFNet, BiT), where the
#: update joins the weight before standardization (all merge exactly).
LORA_CONVS = {
    "Conv2d": False,
    "Conv2dSame": False,
    "StdConv2d": True,
    "StdConv2dSame": True,
    "ScaledStdConv2d": True,
    "ScaledStdConv2dSame": True,
}


def pad_same(x: torch.Tensor, kernel: Any, stride: Any, dilation: Any) -> torch.Tensor:
    """Pad ``x`` as timm's ``*Same`` convolutions do (TensorFlow's "SAME")."""
    pads = []
    for size, k, s, d in zip(x.shape[-2:], kernel, stride, dilation, strict=True):
        pads.append(max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0))
    pad_h, pad_w = pads
    return F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])


def build_lora(target: nn.Module, addition: zoo.Addition) -> LoRA:
    conv = type(target).__name__ in LORA_CONVS and isinstance(target, nn.Conv2d)
    if not (isinstance(target, nn.Linear) or conv):
        raise AdapterError(
            f"zoo:lora adapts nn.Linear and nn.Conv2d modules (and timm's Conv2dSame and "
            f"standardized convs); {addition.target!r} is a {type(target).__name__}: leave it "
            "out of lora:targets"
        )
    rank = int(addition.args.get("rank", 8))
    alpha = float(addition.args.get("alpha", 2 * rank))
    weight = tuple(target.weight.shape)
    if isinstance(target, nn.Linear):
        a_shape, b_shape = (rank, weight[1]), (weight[0], rank)
    else:
        a_shape, b_shape = (rank, *weight[1:]), (weight[0], rank, 1, 1)
    expected = {"lora.A": a_shape, "lora.B": b_shape}
    if dict(addition.params) != expected:  # checked before allocating anything
        raise AdapterError(
            f"zoo:lora for {addition.target!r} ({type(target).__name__} {weight}) at rank "
            f"{rank} has parameters {expected}, but the plan lists {dict(addition.params)}"
        )
    name = type(target).__name__
    return LoRA(
        a_shape,
        b_shape,
        alpha / rank,
        float(addition.args.get("dropout", 0.0)),
        same_pad=conv and name.endswith("Same") and bool(getattr(target, "same_pad", True)),
        standardized=conv and LORA_CONVS[name],
    )


# ---------------------------------------------------------------- SSF


class SSF(zoo.Adapter):
    """A learned per-channel scale (starts at 1) and shift (starts at 0) of a module's output.

    The channel axis is 1 for convolutions, batch and group norms and ``*2d`` norms (NCHW), the
    last axis for linears and layer norms. Merging multiplies the target's weight and bias by
    the scale and adds the shift to the bias, so targets need a bias (the policy chooses so).
    """

    mergeable = True

    def __init__(self, channels: int, channel_dim: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(channels))
        self.shift = nn.Parameter(torch.zeros(channels))
        self.channel_dim = channel_dim

    def apply_to(self, y: torch.Tensor) -> torch.Tensor:
        dim = self.channel_dim if y.ndim > 2 else -1
        if y.shape[dim] != self.scale.shape[0]:
            target = getattr(getattr(self, "zoo_addition", None), "target", "?")
            raise AdapterError(
                f"zoo:ssf on {target!r}: expected {self.scale.shape[0]} channels on axis {dim} "
                f"of its output, got shape {tuple(y.shape)}"
            )
        shape = [1] * y.ndim
        shape[dim] = -1
        return y * self.scale.view(shape) + self.shift.view(shape)

    def post_forward(self, target: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
        return self.apply_to(output)

    def merge_into(self, target: nn.Module) -> None:
        # timm's ScaledStdConv2d standardizes its weight, then scales it by ``gain`` (out, 1, 1, 1)
        gain = getattr(target, "gain", None)
        weight = gain if isinstance(gain, nn.Parameter) else target.weight
        bias = target.bias
        scale = self.scale.to(weight.dtype)
        weight.mul_(scale.view(-1, *([1] * (weight.ndim - 1))))
        bias.mul_(scale).add_(self.shift.to(bias.dtype))


class SSFBeforeAct(SSF):
    """SSF on a norm layer with a built-in activation (timm's ``BatchNormAct2d``…): the scale and
    shift apply to the normalized output, before the activation, so they merge into the norm."""

    def hook_module(self, target: nn.Module) -> nn.Module:
        return target.act

    def pre_forward(
        self, target: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
        return (self.apply_to(args[0]), *args[1:]), kwargs

    def post_forward(self, target: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
        return output


def _channel_dim(target: nn.Module) -> int:
    channel_first = (
        nn.modules.conv._ConvNd,
        nn.modules.batchnorm._NormBase,
        nn.GroupNorm,
    )
    if isinstance(target, channel_first):
        return 1
    if type(target).__name__.lower().endswith("2d"):
        return 1
    return -1


def build_ssf(target: nn.Module, addition: zoo.Addition) -> SSF:
    weight, bias = getattr(target, "weight", None), getattr(target, "bias", None)
    if not isinstance(weight, nn.Parameter) or not isinstance(bias, nn.Parameter):
        raise AdapterError(
            f"zoo:ssf needs a target with a weight and a bias (so it can merge); "
            f"{addition.target!r} ({type(target).__name__}) has none"
        )
    channels = int(weight.shape[0])
    act = getattr(target, "act", None)
    if isinstance(act, nn.Module) and not isinstance(act, nn.Identity):
        return SSFBeforeAct(channels, _channel_dim(target))
    return SSF(channels, _channel_dim(target))


# ---------------------------------------------------------------- VPT


class VPT(zoo.Adapter):
    """Deep visual prompts: ``tokens`` learned tokens inserted after the prefix (class, register)
    tokens at a transformer block's input and dropped from its output (VPT-deep).

    Prompts start uniform in ``±sqrt(6 / (3 * 16 * 16 + dim))`` (Xavier for 16x16 patches, as in
    the VPT paper). Cannot merge: prompts add inputs, not a change of weights.

    ``skip`` names a child of the block that works on the patch grid (XCiT's ``local_mp``, a
    residual branch): hooks on it, installed once at the first forward, drop the prompts from
    its input and put zeros at their places in its output (the branch adds nothing to them).
    They act only during this adapter's block call and remove themselves once the adapter has
    left its block (``zoo.remove_adapters``) -- at the branch's next call, or at once through
    :meth:`remove_skip_hooks`.
    """

    def __init__(self, tokens: int, dim: int, prefix_tokens: int) -> None:
        super().__init__()
        self.prompts = nn.Parameter(torch.empty(tokens, dim))
        bound = math.sqrt(6.0 / (3 * 16 * 16 + dim))
        nn.init.uniform_(self.prompts, -bound, bound)
        self.prefix_tokens = prefix_tokens
        self.probed = False
        #: the block attention's own ``num_prefix_tokens`` (timm's rotary attention rotates only
        #: the tokens after it): raised by ``tokens`` during the block's call, so the prompts,
        #: placed right after the prefix, are not rotated -- as class and register tokens
        self.attn_prefix: int | None = None
        #: the block's child that the prompts skip ("" for none)
        self.skip = ""
        self.inside = False

    # -------------------------------------------------------- a branch the prompts skip

    def _skip_module(self, target: nn.Module) -> nn.Module | None:
        return getattr(target, self.skip, None) if self.skip else None

    def _install_skip_hooks(self, target: nn.Module) -> None:
        branch = self._skip_module(target)
        if not isinstance(branch, nn.Module):
            where = getattr(getattr(self, "zoo_addition", None), "target", "?")
            raise AdapterError(
                f"zoo:vpt on {where!r}: the block has no {self.skip!r} for the prompts to skip; "
                "plan vpt again for this model"
            )
        if any(getattr(h, "__self__", None) is self for h in branch._forward_pre_hooks.values()):
            return
        self.__dict__["skip_block"] = target  # not a child: no cycle in the module tree
        branch.register_forward_pre_hook(self._skip_in, with_kwargs=True)
        branch.register_forward_hook(self._skip_out)

    def remove_skip_hooks(self) -> None:
        """Remove the hooks on the skipped branch (no-op when none are installed)."""
        block = self.__dict__.get("skip_block")
        branch = self._skip_module(block) if block is not None else None
        if branch is None:
            return
        for hooks in (branch._forward_pre_hooks, branch._forward_hooks):
            for key in [k for k, h in hooks.items() if getattr(h, "__self__", None) is self]:
                del hooks[key]
                branch._forward_pre_hooks_with_kwargs.pop(key, None)
                branch._forward_hooks_with_kwargs.pop(key, None)
        self.__dict__.pop("skip_block", None)

    def _skip_in(
        self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
        block = self.__dict__.get("skip_block")
        if block is None or not any(m is self for m in block._modules.values()):
            self.inside = False
            self.remove_skip_hooks()  # the adapter has been removed from its block
        if not self.inside:
            return None
        in_kwargs = len(args) == 0
        x = kwargs["x"] if in_kwargs else args[0]
        p, tokens = self.prefix_tokens, self.prompts.shape[0]
        x = torch.cat([x[:, :p], x[:, p + tokens :]], dim=1)
        return (args, {**kwargs, "x": x}) if in_kwargs else ((x, *args[1:]), kwargs)

    def _skip_out(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
        if not self.inside:
            return None
        p, tokens = self.prefix_tokens, self.prompts.shape[0]
        zeros = output.new_zeros((output.shape[0], tokens, *output.shape[2:]))
        return torch.cat([output[:, :p], zeros, output[:, p:]], dim=1)

    # -------------------------------------------------------- the block's hooks

    def _count_prompts_as_prefix(self, target: nn.Module, on: bool) -> None:
        if self.attn_prefix is not None:
            target.attn.num_prefix_tokens = self.attn_prefix + (self.prompts.shape[0] if on else 0)

    def pre_forward(
        self, target: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
        in_kwargs = len(args) == 0
        x = kwargs["x"] if in_kwargs else args[0]
        dim = self.prompts.shape[1]
        if not isinstance(x, torch.Tensor) or x.ndim != 3 or x.shape[-1] != dim:
            where = getattr(getattr(self, "zoo_addition", None), "target", "?")
            raise AdapterError(
                f"zoo:vpt on {where!r}: the block's input must be [batch, tokens, {dim}], got "
                f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}; "
                "use lora or ssf for this backbone"
            )
        prompts = self.prompts.to(x.dtype).unsqueeze(0).expand(x.shape[0], -1, -1)
        p = self.prefix_tokens
        x = torch.cat([x[:, :p], prompts, x[:, p:]], dim=1)
        new = (args, {**kwargs, "x": x}) if in_kwargs else ((x, *args[1:]), kwargs)
        bias = kwargs.get("shared_rel_pos")
        if isinstance(bias, torch.Tensor) and bias.ndim >= 2:
            new = (new[0], {**new[1], "shared_rel_pos": self.pad_bias(bias)})
        if self.skip:
            self._install_skip_hooks(target)
        self._count_prompts_as_prefix(target, True)
        self.inside = True
        if not self.probed:
            self.probe(target, *new)
        return new

    def pad_bias(self, bias: torch.Tensor) -> torch.Tensor:
        """A relative position bias shared by all blocks (timm's ``vit_srelpos``), ``[.., N, N]``:
        zero bias to and from the prompts (inserted after the prefix tokens)."""
        p, tokens = self.prefix_tokens, self.prompts.shape[0]
        n = bias.shape[-1]
        out = bias.new_zeros((*bias.shape[:-2], n + tokens, n + tokens))
        keep = [*range(p), *range(p + tokens, n + tokens)]
        index = torch.tensor(keep, device=bias.device)
        return out.index_copy(-2, index, out.index_select(-2, index).index_copy(-1, index, bias))

    def probe(self, target: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Once: run the block (hooks bypassed, one sample, no grad, RNG untouched) on the
        prompted input, so a block that cannot take extra tokens fails with a clear error."""
        x = kwargs["x"] if len(args) == 0 else args[0]
        args = (x[:1], *args[1:]) if args else args
        kwargs = {**kwargs, "x": x[:1]} if "x" in kwargs else kwargs
        devices = [x.device.index or 0] if x.is_cuda else []
        try:
            with torch.no_grad(), torch.random.fork_rng(devices=devices):
                out = target.forward(*args, **kwargs)
            if not isinstance(out, torch.Tensor) or tuple(out.shape) != tuple(x[:1].shape):
                raise ValueError(
                    f"the block returned {getattr(out, 'shape', type(out).__name__)}, not the "
                    f"prompted shape {tuple(x[:1].shape)}"
                )
        except AdapterError:
            self._count_prompts_as_prefix(target, False)
            self.inside = False
            raise
        except Exception as exc:
            self._count_prompts_as_prefix(target, False)
            self.inside = False
            where = getattr(getattr(self, "zoo_addition", None), "target", "?")
            raise AdapterError(
                f"zoo:vpt on {where!r}: the block cannot take {self.prompts.shape[0]} extra "
                f"tokens ({type(exc).__name__}: {exc}); its attention expects a fixed token "
                "layout (a position bias per token pair, a spatial reshape): use "
                "lora or ssf for this backbone"
            ) from exc
        self.probed = True

    def post_forward(self, target: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
        self._count_prompts_as_prefix(target, False)
        self.inside = False
        p, tokens = self.prefix_tokens, self.prompts.shape[0]
        return torch.cat([output[:, :p], output[:, p + tokens :]], dim=1)


def build_vpt(target: nn.Module, addition: zoo.Addition) -> VPT:
    tokens, dim = addition.params["vpt.prompts"]
    vpt = VPT(tokens, dim, int(addition.args.get("prefix_tokens", 1)))
    vpt.skip = str(addition.args.get("skip", ""))
    attn_prefix = getattr(getattr(target, "attn", None), "num_prefix_tokens", None)
    if isinstance(attn_prefix, int) and not isinstance(attn_prefix, bool):
        vpt.attn_prefix = attn_prefix
    return vpt

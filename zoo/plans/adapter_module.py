"""``zoo.Adapter``: the base class of every adapter module (LoRA, SSF, VPT, a plugin's kind).

An adapter is a small ``nn.Module`` that zoo registers as a child of its target module (so its
parameters are named ``<target>.<child>.<name>`` and the target's own names never change) and
runs through forward hooks on the target: :meth:`Adapter.pre_forward` may change the target's
inputs, :meth:`Adapter.post_forward` its output. A mergeable adapter folds itself into the
target's weights (:meth:`Adapter.merge_into`). This module imports torch; ``zoo.Adapter`` loads
it lazily.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from zoo.errors import AdapterMergeError
from zoo.plans.adapters import check_adapters_run


class Adapter(nn.Module):
    """Base class of adapters: override :meth:`pre_forward` and/or :meth:`post_forward`.

    zoo injects an adapter (see :func:`zoo.plans.adapters.inject`) by adding it to the target
    module under the child name of its :class:`~zoo.Addition` and registering forward hooks on
    :meth:`hook_module` (the target, unless overridden) that call the two methods. Set
    ``mergeable = True`` and implement :meth:`merge_into` for an adapter that can be folded into
    the target's weights (``zoo.merge_adapters``). ``zoo_addition`` is the addition it was built
    for (set by zoo when injecting).
    """

    #: whether :meth:`merge_into` can fold this adapter into its target's weights
    mergeable: bool = False
    #: marks adapter modules for code that cannot import this class (the parameter table)
    zoo_adapter: bool = True

    def pre_forward(
        self, target: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
        """Called before ``target.forward``; return new ``(args, kwargs)`` or ``None``."""
        return None

    def post_forward(self, target: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
        """Called after ``target.forward`` with its inputs; return the (new) output."""
        return output

    def merge_into(self, target: nn.Module) -> None:
        """Fold this adapter into ``target``'s weights (under ``torch.no_grad``)."""
        kind = getattr(getattr(self, "zoo_addition", None), "kind", type(self).__name__)
        raise AdapterMergeError(
            f"adapter {kind!r} cannot be merged into its target's weights; keep the adapted "
            "model as it is (zoo.save stores the adapter with its base)"
        )

    def hook_module(self, target: nn.Module) -> nn.Module:
        """The module whose forward hooks run this adapter (default: the target itself)."""
        return target

    # ------------------------------------------------------------ the hooks zoo installs

    # They keep no state of their own (a compiled model traces them as pure functions); that
    # each adapter runs is checked once, outside the forward (zoo.plans.adapters).

    def zoo_pre_hook(
        self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
        return self.pre_forward(self.zoo_target(module), args, kwargs)

    def zoo_post_hook(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
        return self.post_forward(self.zoo_target(module), args, output)

    def zoo_target(self, module: nn.Module) -> nn.Module:
        target = self.__dict__.get("zoo_target_ref")
        return target if target is not None else module

    @property
    def has_pre_forward(self) -> bool:
        return type(self).pre_forward is not Adapter.pre_forward

    @property
    def has_post_forward(self) -> bool:
        return type(self).post_forward is not Adapter.post_forward

    @staticmethod
    def check_hook() -> AdapterCheck:
        """A new dead-adapter check hook (see :func:`zoo.plans.adapters.verify_adapters`)."""
        return AdapterCheck()


@torch.compiler.disable
class AdapterCheck:
    """The forward pre-hook :func:`zoo.plans.adapters.verify_adapters` installs on a model's
    root: :func:`~zoo.plans.adapters.check_adapters_run` at its next forward pass. Dynamo
    never traces it (it runs eagerly, outside any compiled graph); an object, so that a model
    holding it pickles."""

    #: marks the hook for code that cannot import this class
    zoo_adapter_check: bool = True

    def __call__(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        check_adapters_run(module, args, kwargs)

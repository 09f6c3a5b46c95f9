"""The plugin contract: the hooks a zoo plugin may implement.

A plugin is any module or object with functions marked ``@zoo.hookimpl`` whose names are the
hooks below. Installed packages expose one through an entry point in the group ``zoo.plugins``::

    [project.entry-points."zoo.plugins"]
    myplugin = "my_package.zoo_plugin"

The entry point's name is the plugin's name: it prefixes everything the plugin registers
(``myplugin:my-backbone``). Each plugin's implementations are called through pluggy on their
own, so a ``wrapper=True`` implementation wraps its own plugin's implementation. These
docstrings are the reference; ``docs/plugin-hooks.md`` is checked against them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from torch import nn

    from zoo.core.specs import AdapterSpec, BackboneSpec, ParamGroup, PolicySpec

PROJECT_NAME = "zoo"
ENTRY_POINT_GROUP = "zoo.plugins"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)

RegisterBackbone = Callable[["BackboneSpec"], None]
RegisterPolicy = Callable[["PolicySpec | AdapterSpec"], None]


@hookspec
def zoo_register_backbones(register: RegisterBackbone) -> None:
    """Register the backbones this plugin offers.

    Call ``register(zoo.BackboneSpec(name=..., create=..., summary=...))`` once per backbone.
    ``create(num_classes: int | None, pretrained: bool | str, **kwargs) -> nn.Module`` builds it;
    it is only called when a user builds that backbone, never while listing. Every plugin is
    called; the plugin's name is filled in by zoo, so names are bare (``"resnet18"``).

    Registering the same name twice, or an invalid spec, is reported as an error of this plugin.
    """


@hookspec
def zoo_register_policies(register: RegisterPolicy) -> None:
    """Register the freeze policies this plugin offers.

    Call ``register(zoo.PolicySpec(name=..., plan=..., summary=...))`` once per policy.
    ``plan(table: zoo.ParamTable, **args)`` returns a ``zoo.Plan`` or an iterable of the names
    of the parameters that train (everything else is frozen). Its keyword parameters, with
    defaults and annotations, are the policy's arguments. Every plugin is called.

    ``register`` also accepts a ``zoo.AdapterSpec(name=..., build=...)``: a kind of adapter
    (small modules a policy adds, like LoRA). A policy that adds parameters returns a plan with
    ``additions`` (``zoo.Addition(target=..., kind="myplugin:name", ...)``); applying it calls
    ``build(target_module, addition)``, which returns a ``zoo.Adapter``.
    """


@hookspec(firstresult=True)
def zoo_param_groups(
    model: nn.Module, backbone: BackboneSpec | None
) -> Sequence[ParamGroup] | None:
    """Split ``model``'s parameters into ordered groups: stem first, body stages, head last.

    Return a sequence of ``zoo.ParamGroup(name, params)`` (``params``: parameter names as in
    ``model.named_parameters()``), or ``None`` to let the next plugin answer. The first non-None
    result wins (``firstresult``). ``backbone`` is the spec the model was built from, or ``None``
    for a model zoo did not build. The built-in timm plugin answers last (``trylast=True``) from
    timm's ``group_matcher``; if no plugin answers, zoo falls back to the model's top-level
    children, so every ``nn.Module`` gets a table. The model may live on the ``meta`` device:
    look at names and modules, never at values.
    """


@hookspec
def zoo_extra_metadata(model: nn.Module, backbone: BackboneSpec | None) -> Mapping[str, str] | None:
    """Extra ``str -> str`` entries to store in a saved file's metadata.

    Keys must be namespaced ``"<plugin>.<key>"`` (the plugin's own name); values are strings,
    both valid Unicode. Every plugin is called; return ``None`` to add nothing. A bad entry, a
    mapping that raises while it is read, or more than 64 KiB or 1,024 entries from one plugin
    is recorded as that plugin's error and not saved; the save goes on.
    """


@hookspec(firstresult=True)
def zoo_identify_model(model: nn.Module) -> str | None:
    """The ``"plugin:name"`` of the backbone ``model`` is, for a model zoo did not build.

    zoo asks when it adopts a module built elsewhere (``zoo.adapt(timm.create_model(...))``), so
    that the result can be saved and rebuilt. Return the qualified name of one of your own
    backbones, or ``None`` when the model is not one of them. The first non-None answer that
    names a backbone of the catalog is used (``firstresult``). Look at the model, never change it.
    """


HOOK_NAMES: tuple[str, ...] = (
    "zoo_register_backbones",
    "zoo_register_policies",
    "zoo_param_groups",
    "zoo_extra_metadata",
    "zoo_identify_model",
)

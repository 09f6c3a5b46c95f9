"""Every error zoo raises, in one hierarchy.

All derive from :class:`ZooError`, so ``except zoo.ZooError`` catches anything zoo reports on
purpose. The CLI prints a ``ZooError`` as one clear message and exits non-zero; anything else is
a bug. Errors that are also a classic Python category (a missing key, a bad value) inherit from
that builtin too, so existing ``except KeyError`` code keeps working.

The tree (a second base in brackets)::

    ZooError
    ├── UnknownNameError            [KeyError]      a name no catalog entry has (did-you-mean)
    ├── AmbiguousNameError          [KeyError]      a bare name more than one plugin offers
    ├── SpecError                   [ValueError]    an invalid BackboneSpec / PolicySpec
    ├── PluginError                                 a plugin failed to load or in a hook
    │   └── PluginCheckError        [AssertionError]  zoo.testing.check_plugin found a problem
    ├── WeightsUnavailableError     [RuntimeError]  pretrained weights not reachable
    ├── WeightsMismatchError        [ValueError]    tensors that do not fit the model
    ├── ModelBuildError             [RuntimeError]  a plugin's create() failed
    ├── GroupingError               [ValueError]    a plugin's parameter groups are unusable
    ├── PolicyArgumentError         [ValueError]    a bad policy argument
    ├── PlanError                   [ValueError]    a policy returned something unusable
    ├── FreezeViolationError        [AssertionError]  a frozen parameter changed
    ├── AdapterError                [ValueError]    an adapter that cannot be injected or runs dead
    │   └── AdapterMergeError                       an adapter that cannot fold into its target
    ├── StoreError                                  the model store
    │   ├── InvalidNameError        [ValueError]
    │   ├── ModelExistsError        [FileExistsError]
    │   ├── ModelNotFoundError      [UnknownNameError]
    │   └── LockTimeoutError        [TimeoutError]
    ├── CorruptFileError            [ValueError]    a file that is not a valid zoo file
    │   └── TamperedFileError                       its content hash does not match
    ├── BaseMismatchError           [ValueError]    a delta's base is not the one it was saved on
    ├── MissingBaseError            [ValueError]    a delta's base cannot be found
    ├── UnsupportedFormatError      [ValueError]    a newer file format
    ├── DataError                   [ValueError]    an image folder or image that cannot be used
    ├── CheckpointError                             a run's checkpoint cannot be kept or resumed
    └── AdaptArgumentError          [ValueError]    an adapt argument out of range
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class ZooError(Exception):
    """Base class of every error zoo raises on purpose."""


# ---------------------------------------------------------------- names and the catalog


class UnknownNameError(ZooError, KeyError):
    """A backbone, policy, plugin or stored model name that does not resolve."""

    def __init__(self, kind: str, name: str, candidates: Iterable[str] = ()) -> None:
        self.kind = kind
        self.name = name
        self.suggestions = suggest(name, candidates)
        message = f"unknown {kind} {name!r}"
        if self.suggestions:
            message += "; did you mean " + ", ".join(repr(s) for s in self.suggestions) + "?"
        super().__init__(message)

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class AmbiguousNameError(ZooError, KeyError):
    """A bare name that more than one plugin registers; qualify it as ``plugin:name``."""

    def __init__(self, kind: str, name: str, candidates: Iterable[str]) -> None:
        self.kind = kind
        self.name = name
        self.candidates = sorted(candidates)
        super().__init__(
            f"{kind} name {name!r} is ambiguous: it is registered by several plugins; "
            f"use one of {', '.join(self.candidates)}"
        )

    def __str__(self) -> str:
        return str(self.args[0])


class SpecError(ZooError, ValueError):
    """A plugin registered something invalid (bad spec, duplicate name)."""


class PluginError(ZooError):
    """A plugin failed to import or raised inside a hook (raised only in strict mode)."""


class PluginCheckError(PluginError, AssertionError):
    """``zoo.testing.check_plugin`` found a problem; the message is the full report."""


# ---------------------------------------------------------------- models and weights


class WeightsUnavailableError(ZooError, RuntimeError):
    """Pretrained weights are not in any local cache and cannot be downloaded."""


class WeightsMismatchError(ZooError, ValueError):
    """A state dict does not fit a model: missing, unexpected or wrongly shaped tensors."""


class ModelBuildError(ZooError, RuntimeError):
    """A backbone could not be built (for instance on the meta device, to describe it)."""


class GroupingError(ZooError, ValueError):
    """A plugin's ``zoo_param_groups`` answer does not hold every parameter exactly once."""


# ---------------------------------------------------------------- policies and plans


class PolicyArgumentError(ZooError, ValueError):
    """A policy got an unknown argument, a value of the wrong type or one out of range."""


class PlanError(ZooError, ValueError):
    """A plan does not fit the model (unknown parameter names, a bad value)."""


class FreezeViolationError(ZooError, AssertionError):
    """A frozen parameter or a fixed norm statistic changed (see ``zoo.check_frozen``)."""


class AdapterError(ZooError, ValueError):
    """An adapter (LoRA, SSF, VPT, a plugin's kind) that does not fit its target module, that
    conflicts with one already injected, or whose hooks did not run in a forward pass."""


class AdapterMergeError(AdapterError):
    """An adapter that cannot be folded into its target's weights (VPT prompts, for one)."""


# ---------------------------------------------------------------- files and the store


class StoreError(ZooError):
    """A problem with the model store."""


class InvalidNameError(StoreError, ValueError):
    """A store name that breaks a naming rule; the message names the rule."""


class ModelExistsError(StoreError, FileExistsError):
    """Saving would replace an existing model and ``overwrite=True`` was not given."""


class ModelNotFoundError(StoreError, UnknownNameError):
    """No model is stored under that name."""


class LockTimeoutError(StoreError, TimeoutError):
    """Another process holds the lock of a store entry for too long."""


class CorruptFileError(ZooError, ValueError):
    """A saved file that cannot be read: truncated, malformed header, wrong types."""


class TamperedFileError(CorruptFileError):
    """A saved file whose content no longer matches the hash recorded when it was written."""


class BaseMismatchError(ZooError, ValueError):
    """A delta whose base weights differ from the ones it was trained from."""


class MissingBaseError(ZooError, ValueError):
    """A delta without a base: none was recorded (random init), or it can no longer be found."""


class UnsupportedFormatError(ZooError, ValueError):
    """A saved file written in a newer zoo file format than this zoo reads."""


# ---------------------------------------------------------------- data and training


class DataError(ZooError, ValueError):
    """Training data that cannot be used: an empty folder, a class without images."""


class CheckpointError(ZooError):
    """An adapt run's checkpoint that cannot be used or kept: none to resume, another run's,
    a malformed or hostile ``state.json`` or tensor file (the message names the field), a
    folder that is a link or a file, a full disk. The message says how to start over."""


class AdaptArgumentError(ZooError, ValueError):
    """An argument of :func:`zoo.adapt` or :func:`zoo.compare` (an option of ``zoo adapt`` or
    ``zoo compare``) of the wrong type or out of range; ``argument`` names it, ``rule`` says
    what it must be."""

    def __init__(self, argument: str, value: object, rule: str) -> None:
        self.argument = argument
        self.value = value
        self.rule = rule
        super().__init__(f"{argument} must be {rule}, not {short_repr(value, 80)}")


def short_repr(value: object, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters, for messages about untrusted values (which
    can be huge, or an integer too long to print)."""
    try:
        text = repr(value)
    except ValueError:  # an integer too long to print
        text = f"a {type(value).__name__} too long to show"
    return text if len(text) <= limit else text[: limit - 1] + "…"


def suggest(name: str, candidates: Iterable[str], n: int = 5) -> list[str]:
    """Close matches for ``name`` among ``candidates`` (qualified or bare), best first."""
    pool = sorted(set(candidates))
    if not pool:
        return []
    bare_to_full: dict[str, list[str]] = {}
    for candidate in pool:
        bare_to_full.setdefault(candidate.split(":", 1)[-1], []).append(candidate)
    target = name.split(":", 1)[-1]
    close = difflib.get_close_matches(target, list(bare_to_full), n=n, cutoff=0.6)
    found: list[str] = []
    for bare in close:
        found.extend(bare_to_full[bare])
    if not found:
        found = [c for c in pool if target and target.lower() in c.lower()]
    return found[:n]

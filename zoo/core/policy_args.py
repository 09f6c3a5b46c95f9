"""Policy arguments: the ``NAME:key=value,key=value`` form, and typed validation of values.

A policy's arguments are the keyword parameters of its ``plan`` function; :class:`PolicyArg`
is the one model of such an argument (``PolicySpec.args``). This module reads
their types (``int``, ``float``, ``bool``, ``str``, ``list[str]``, ``Literal[...]``, and any of
those ``| None``), parses the command-line form, coerces strings, checks Python values, fills
defaults and reports every mistake as a :class:`~zoo.PolicyArgumentError` that lists what is
valid::

    >>> parse_policy_spec("freeze-to:depth=3")
    ('freeze-to', {'depth': ['3']})
    >>> parse_policy_spec("zoo:pattern:include=head.*,layer4.*,exclude=*.bias")
    ('zoo:pattern', {'include': ['head.*', 'layer4.*'], 'exclude': ['*.bias']})

A token without ``=`` continues the list of the argument before it, so list arguments take
several comma-separated values.
"""

from __future__ import annotations

import ast
import functools
import inspect
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from zoo.core import checks
from zoo.errors import PolicyArgumentError, suggest

if TYPE_CHECKING:
    from zoo.core.specs import PolicySpec

_TRUE = {"1", "true", "yes", "on", "y", "t"}
_FALSE = {"0", "false", "no", "off", "n", "f"}


@dataclass(frozen=True)
class ArgType:
    """The accepted type of one policy argument.

    ``kind`` is ``int``, ``float``, ``bool``, ``str``, ``list`` (of str), ``literal`` (one of
    ``choices``) or ``any`` (an annotation zoo does not know: passed through unchecked).
    """

    kind: str
    choices: tuple[Any, ...] = ()
    optional: bool = False

    def describe(self) -> str:
        if self.kind == "literal":
            text = "one of " + ", ".join(repr(c) for c in self.choices)
        elif self.kind == "list":
            text = "list of str"
        else:
            text = self.kind
        return f"{text} or None" if self.optional else text


@dataclass(frozen=True)
class PolicyArg:
    """One keyword argument of a policy, read from its ``plan`` function's signature.

    ``annotation`` is the annotation as written (text), ``type`` what zoo accepts for it.
    """

    name: str
    annotation: str
    type: ArgType
    default: Any
    required: bool

    def describe(self) -> str:
        if self.required:
            return f"{self.name}: {self.type.describe()} (required)"
        return f"{self.name}: {self.type.describe()} = {_show(self.default)}"

    def to_dict(self) -> dict[str, Any]:
        default = None if self.required else self.default
        try:
            checks.json_value(default, "the default")
        except checks.Invalid:
            default = repr(default)
        return {
            "name": self.name,
            "type": self.type.describe(),
            "default": default,
            "required": self.required,
        }


def _show(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value) or "[]"
    return repr(value) if isinstance(value, str) else str(value)


# ---------------------------------------------------------------- reading types


def _type_from_hint(hint: Any) -> ArgType:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is type(None):
        return ArgType("any", optional=True)
    if origin is typing.Union or type(hint).__name__ == "UnionType":
        members = [a for a in args if a is not type(None)]
        optional = len(members) < len(args)
        if len(members) == 1:
            inner = _type_from_hint(members[0])
            return ArgType(inner.kind, inner.choices, optional or inner.optional)
        return ArgType("any", optional=optional)
    if origin is typing.Literal:
        return ArgType("literal", tuple(args))
    if hint in (int, float, bool, str):
        return ArgType(hint.__name__)
    if (
        hint in (list, tuple)
        or origin in (list, tuple, Sequence)
        or (origin is not None and getattr(origin, "__name__", "") in {"Sequence", "Iterable"})
    ):
        members = [a for a in args if a is not Ellipsis]
        if all(a is str for a in members):
            return ArgType("list")
    return ArgType("any")


def _type_from_text(text: str) -> ArgType:
    """Fallback when annotations cannot be evaluated: read the annotation's text."""
    text = text.strip()
    optional = False
    parts = [p.strip() for p in _split_top(text, "|")]
    if "None" in parts and len(parts) > 1:
        optional = True
        parts = [p for p in parts if p != "None"]
    if len(parts) == 1:
        text = parts[0]
    for prefix in ("Optional[", "typing.Optional["):
        if text.startswith(prefix) and text.endswith("]"):
            text, optional = text[len(prefix) : -1].strip(), True
    if text in {"int", "float", "bool", "str"}:
        return ArgType(text, optional=optional)
    for prefix in ("Literal[", "typing.Literal["):
        if text.startswith(prefix) and text.endswith("]"):
            try:
                choices = ast.literal_eval(f"({text[len(prefix) : -1]},)")
            except (ValueError, SyntaxError):
                return ArgType("any", optional=optional)
            return ArgType("literal", tuple(choices), optional)
    compact = text.replace(" ", "").replace("typing.", "")
    if compact in {
        "list[str]",
        "List[str]",
        "tuple[str,...]",
        "Tuple[str,...]",
        "Sequence[str]",
        "collections.abc.Sequence[str]",
        "Iterable[str]",
    }:
        return ArgType("list", optional=optional)
    return ArgType("any", optional=optional)


def _split_top(text: str, sep: str) -> list[str]:
    depth, start, out = 0, 0, []
    for i, ch in enumerate(text):
        if ch in "[(":
            depth += 1
        elif ch in "])":
            depth -= 1
        elif ch == sep and depth == 0:
            out.append(text[start:i])
            start = i + 1
    out.append(text[start:])
    return out


@functools.lru_cache(maxsize=256)
def _hints_of(fn: Any) -> dict[str, Any]:
    target = fn.func if isinstance(fn, functools.partial) else fn
    try:
        return typing.get_type_hints(target)
    except Exception:
        return {}


def signature_args(plan: Callable[..., Any], *, schedule: bool) -> tuple[PolicyArg, ...]:
    """The keyword arguments of a policy's ``plan`` function (after the table), with types.

    ``epoch`` of a schedule is not one (zoo passes it); ``*args``/``**kwargs`` are skipped.
    """
    try:
        hints = _hints_of(plan)
    except TypeError:  # an unhashable callable
        hints = {}
    found = []
    for p in list(inspect.signature(plan).parameters.values())[1:]:
        if p.kind in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL):
            continue
        if schedule and p.name == "epoch":
            continue
        annotation = p.annotation
        if annotation is inspect.Parameter.empty:
            text = "" if p.default is inspect.Parameter.empty else type(p.default).__name__
        elif isinstance(annotation, str):
            text = annotation
        else:
            text = getattr(annotation, "__name__", str(annotation))
        required = p.default is inspect.Parameter.empty
        default = None if required else p.default
        if p.name in hints:
            kind = _type_from_hint(hints[p.name])
        elif text:
            kind = _type_from_text(text)
        else:
            kind = ArgType("any")
        if kind.kind == "any" and not required and default is not None:
            guessed = _type_from_hint(type(default))
            kind = ArgType(guessed.kind, guessed.choices, kind.optional)
        if not required and default is None:
            kind = ArgType(kind.kind, kind.choices, True)
        found.append(PolicyArg(p.name, text, kind, default, required))
    return tuple(found)


def describe_args(spec: PolicySpec) -> str:
    """``"depth: int (required)"``, ``"every: int = 1"``…, or ``"none"``."""
    infos = spec.args
    return "; ".join(info.describe() for info in infos) if infos else "none"


# ---------------------------------------------------------------- the NAME:k=v,... form


def split_policy_spec(text: str) -> tuple[str, str]:
    """Split ``"[plugin:]name[:k=v,...]"`` into the name and the raw argument text."""
    if not isinstance(text, str):
        raise PolicyArgumentError(f"a policy is a name like 'freeze-to:depth=3', got {text!r}")
    text = text.strip()
    eq = text.find("=")
    if eq < 0:
        return text.rstrip(":"), ""
    colon = text.rfind(":", 0, eq)
    if colon < 0:
        raise PolicyArgumentError(
            f"cannot read policy {text!r}: write NAME:key=value,key=value (e.g. freeze-to:depth=3)"
        )
    return text[:colon], text[colon + 1 :]


def parse_arg_text(text: str, *, policy: str = "") -> dict[str, list[str]]:
    """``"a=1,b=x,y"`` -> ``{"a": ["1"], "b": ["x", "y"]}`` (raw strings, not yet typed)."""
    out: dict[str, list[str]] = {}
    last: str | None = None
    where = f" of policy {policy!r}" if policy else ""
    for token in text.split(","):
        token = token.strip()
        if "=" in token:
            key, _, value = token.partition("=")
            key = key.strip()
            if not key:
                raise PolicyArgumentError(f"argument {token!r}{where} has no name (key=value)")
            if key in out:
                raise PolicyArgumentError(f"argument {key!r}{where} is given twice")
            out[key] = [value.strip()] if value.strip() else []
            last = key
        elif token:
            if last is None:
                raise PolicyArgumentError(
                    f"argument {token!r}{where} is not key=value (e.g. freeze-to:depth=3)"
                )
            out[last].append(token)
    return out


def parse_policy_spec(text: str) -> tuple[str, dict[str, list[str]]]:
    """Parse the CLI form into ``(name, raw arguments)``; see the module docstring."""
    name, arg_text = split_policy_spec(text)
    return name, parse_arg_text(arg_text, policy=name) if arg_text else {}


def format_policy_spec(name: str, args: Mapping[str, Any]) -> str:
    """The CLI form of a policy and its arguments: ``"zoo:freeze-to:depth=3"``."""
    parts = []
    for key, value in args.items():
        if value is None:
            continue
        if isinstance(value, (list, tuple)):
            if not value:
                continue
            parts.append(f"{key}=" + ",".join(str(v) for v in value))
        elif isinstance(value, bool):
            parts.append(f"{key}={'true' if value else 'false'}")
        else:
            parts.append(f"{key}={value}")
    return name + (":" + ",".join(parts) if parts else "")


# ---------------------------------------------------------------- binding values


def bind_policy_args(
    spec: PolicySpec,
    raw: Mapping[str, Sequence[str]] | None = None,
    values: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Validate and coerce arguments for ``spec``; returns every argument (defaults filled).

    ``raw`` holds strings from the CLI form (lists of tokens per key); ``values`` holds Python
    keyword arguments. Raises :class:`~zoo.PolicyArgumentError` for an unknown argument, one
    given twice, a value of the wrong type, or a missing required argument.
    """
    raw = dict(raw or {})
    values = dict(values or {})
    infos = {info.name: info for info in spec.args}
    name = spec.qualified_name if spec.plugin else spec.name
    valid = describe_args(spec)
    for key in [*raw, *values]:
        if key not in infos:
            close = suggest(key, infos)
            hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
            if key == "epoch":
                hint = (
                    " (give the epoch on its own: epoch=N in Python, --epoch N on the command line)"
                    if spec.schedule
                    else " (only schedule policies take an epoch)"
                )
            raise PolicyArgumentError(
                f"policy {name!r} has no argument {key!r}{hint}; valid arguments: {valid}"
            )
    both = sorted(set(raw) & set(values))
    if both:
        raise PolicyArgumentError(
            f"policy {name!r}: argument {both[0]!r} is given both in the policy text and as "
            "a keyword argument"
        )
    bound: dict[str, Any] = {}
    for key, info in infos.items():
        if key in raw:
            bound[key] = _coerce_raw(name, info, list(raw[key]), valid)
        elif key in values:
            bound[key] = _check_value(name, info, values[key], valid)
        elif info.required:
            example = f"{spec.name}:{key}=..."
            raise PolicyArgumentError(
                f"policy {name!r} needs argument {key!r} ({info.type.describe()}), "
                f"e.g. {example!r}; valid arguments: {valid}"
            )
        else:
            default = info.default
            bound[key] = list(default) if isinstance(default, tuple) else default
    return bound


def _bad(policy: str, info: PolicyArg, value: Any, valid: str) -> PolicyArgumentError:
    return PolicyArgumentError(
        f"policy {policy!r}: argument {info.name!r} expects {info.type.describe()}, "
        f"got {value!r}; valid arguments: {valid}"
    )


def _coerce_raw(policy: str, info: PolicyArg, tokens: list[str], valid: str) -> Any:
    kind = info.type
    if kind.kind == "list":
        return tokens
    if len(tokens) != 1:
        shown = ",".join(tokens) if tokens else ""
        if not tokens and kind.optional:
            return None
        raise PolicyArgumentError(
            f"policy {policy!r}: argument {info.name!r} takes one value "
            f"({kind.describe()}), got {shown!r}; valid arguments: {valid}"
        )
    return _from_string(policy, info, tokens[0], valid)


def _from_string(policy: str, info: PolicyArg, text: str, valid: str) -> Any:
    kind = info.type
    if kind.optional and text.lower() in {"none", "null"}:
        return None
    try:
        if kind.kind == "int":
            return int(text)
        if kind.kind == "float":
            value = float(text)
            if not checks.is_real(value):
                raise ValueError(text)
            return value
    except ValueError:
        raise _bad(policy, info, text, valid) from None
    if kind.kind == "bool":
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise _bad(policy, info, text, valid)
    if kind.kind == "literal":
        for choice in kind.choices:
            if str(choice) == text or (isinstance(choice, str) and choice.lower() == text.lower()):
                return choice
        raise _bad(policy, info, text, valid)
    if kind.kind == "list":
        return [t.strip() for t in text.split(",") if t.strip()]
    return text


def _check_value(policy: str, info: PolicyArg, value: Any, valid: str) -> Any:
    kind = info.type
    if value is None:
        if kind.optional or kind.kind == "any":
            return None
        raise _bad(policy, info, value, valid)
    if isinstance(value, str) and kind.kind not in {"str", "any"}:
        return _from_string(policy, info, value, valid)
    if kind.kind == "int":
        if not checks.is_int(value):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise _bad(policy, info, value, valid)
        return int(value)
    if kind.kind == "float":
        if not checks.is_real(value):
            raise _bad(policy, info, value, valid)
        return float(value)
    if kind.kind == "bool":
        if not isinstance(value, bool):
            raise _bad(policy, info, value, valid)
        return value
    if kind.kind == "str":
        if not isinstance(value, str):
            raise _bad(policy, info, value, valid)
        return value
    if kind.kind == "literal":
        if value not in kind.choices:
            raise _bad(policy, info, value, valid)
        return value
    if kind.kind == "list":
        if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            return list(value)
        raise _bad(policy, info, value, valid)
    return value

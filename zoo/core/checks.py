"""The one implementation of each check of an untrusted value.

A value zoo did not make in this process (a saved file's metadata, a checkpoint's state, a PEFT
config, an argument of ``zoo.adapt``, a plugin's data) is checked here, by type *and* range:
integers are never bools, numbers are finite however they are spelled (``1e999``, a 400-digit
integer, ``NaN``), text is valid Unicode (no lone surrogate) without control characters, sizes
and nesting are bounded. Each check returns the value (converted where it says so) or raises
:class:`Invalid` naming the value and the rule; each caller turns that, once, into its own
error (:class:`~zoo.CorruptFileError` naming the file and key, :class:`~zoo.PlanError`,
:class:`~zoo.AdaptArgumentError`...). :func:`loads` is the one reader of untrusted JSON text.

Domain rules (what a plan, a checkpoint or an input config must hold) stay with their data;
only the generic checks live here.
"""

from __future__ import annotations

import json
import math
import numbers
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from zoo.errors import short_repr

#: Integers in untrusted JSON must fit a signed 64-bit integer.
MAX_INT = 2**63 - 1
#: Longest text :func:`text` accepts unless told (a note, a policy spec), and longest name.
MAX_TEXT = 1000
MAX_NAME = 200
#: A JSON escape that decodes to a UTF-16 surrogate: how a lone surrogate enters JSON text
#: (UTF-8 decoding refuses an encoded one), so text without it needs no walk.
SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_MODULE_PATH = re.compile(r"[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*")
_SHA256 = re.compile(r"[0-9a-f]{64}")


class Invalid(ValueError):
    """An untrusted value that breaks a rule: ``what`` names the value, ``rule`` says what it
    must be (the words after "must be"), ``value`` is the value refused and ``problem`` the
    message without ``what``. A domain rule may raise it too (a plan's addition, a
    checkpoint's field), so that its caller turns every refusal into its own error in one
    place."""

    def __init__(self, what: str, rule: str, value: Any, problem: str | None = None) -> None:
        self.what = what
        self.rule = rule
        self.value = value
        self.problem = problem or f"must be {rule}, got {short_repr(value)}"
        super().__init__(f"{what} {self.problem}" if what else self.problem)


# ---------------------------------------------------------------- numbers


def is_int(value: Any) -> bool:
    """An integer (a numpy one too), never a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_real(value: Any) -> bool:
    """A finite real number: never a bool, NaN, an infinity or an integer too big for a float."""
    if type(value) is float:  # the common case, without the numbers.Real lookup
        return math.isfinite(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


def integer(value: Any, what: str, low: int | None = 0, high: int | None = None) -> int:
    """``value`` as an ``int`` if it is an integer (not a bool) from ``low`` to ``high``
    (None: no bound)."""
    if is_int(value) and (low is None or value >= low) and (high is None or value <= high):
        return int(value)
    if low is not None and high is not None:
        rule = f"an int from {low} to {high}"
    else:
        bound = f" >= {low}" if low is not None else f" <= {high}" if high is not None else ""
        rule = f"an int{bound}"
    raise Invalid(what, rule, value)


def real(
    value: Any,
    what: str,
    low: float = -math.inf,
    high: float = math.inf,
    *,
    open_low: bool = False,
    open_high: bool = False,
) -> float:
    """``value`` as a ``float`` if it is a finite real number (not a bool; a 400-digit integer is
    out of range, not an ``OverflowError``) from ``low`` to ``high``, each end included unless
    ``open_low``/``open_high``."""
    number = float(value) if is_real(value) else math.nan
    above = number > low if open_low else number >= low
    below = number < high if open_high else number <= high
    if above and below:  # NaN fails both
        return number
    rule = "a finite number" + _bounds(low, high, open_low, open_high)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise Invalid(what, rule, value, f"must be a number, got {short_repr(value)}")
    raise Invalid(what, rule, value)


def _bounds(low: float, high: float, open_low: bool, open_high: bool) -> str:
    if low > -math.inf and high < math.inf:
        return f" in {'(' if open_low else '['}{low:g}, {high:g}{')' if open_high else ']'}"
    if low > -math.inf:
        return f" {'>' if open_low else '>='} {low:g}"
    if high < math.inf:
        return f" {'<' if open_high else '<='} {high:g}"
    return ""


# ---------------------------------------------------------------- choices


def choice(value: Any, what: str, options: Sequence[Any]) -> Any:
    """``value`` if it is one of ``options``, of the same type (``1`` is not ``True``)."""
    if any(type(value) is type(option) and value == option for option in options):
        return value
    raise Invalid(what, "one of " + ", ".join(map(repr, options)), value)


def flag(value: Any, what: str) -> bool:
    """``value`` if it is ``True`` or ``False``."""
    if isinstance(value, bool):
        return value
    raise Invalid(what, "True or False", value)


# ---------------------------------------------------------------- text


def lone_surrogate(text: str) -> str | None:
    """The first lone UTF-16 surrogate in ``text`` (legal in JSON and in a Python string, but
    not Unicode: it cannot be encoded), or None."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return text[exc.start]
    return None


def unicode(value: str, what: str) -> str:
    """``value`` if it holds no lone surrogate (:func:`lone_surrogate`)."""
    bad = lone_surrogate(value)
    if bad is not None:
        problem = f"holds a lone surrogate {bad!r} (not valid Unicode, cannot be encoded)"
        raise Invalid(what, "valid Unicode text", value, problem)
    return value


def text(value: Any, what: str, *, max_len: int | None = MAX_TEXT, empty: bool = False) -> str:
    """``value`` if it is a string of valid Unicode without control characters (it is shown on
    one line), of at most ``max_len`` characters (None: any) and not empty unless ``empty``."""
    least = 0 if empty else 1
    if max_len is not None:
        rule = f"a text of {least} to {max_len} characters without control characters"
    else:
        rule = f"a{'' if empty else ' non-empty'} text without control characters"
    if (
        not isinstance(value, str)
        or len(value) < least
        or (max_len is not None and len(value) > max_len)
    ):
        raise Invalid(what, rule, value)
    if _CONTROL.search(value):
        raise Invalid(what, rule, value, f"holds a control character (it must be {rule})")
    return unicode(value, what)


def name(value: Any, what: str, *, qualified: bool = False) -> str:
    """A short name (:func:`text` of at most :data:`MAX_NAME` characters); ``qualified``: of
    the form ``"plugin:name"``."""
    text(value, what, max_len=MAX_NAME)
    plugin, colon, bare = value.partition(":")
    if qualified and not (plugin and colon and bare):
        raise Invalid(what, '"plugin:name"', value)
    return value


def module_path(value: Any, what: str, max_len: int = 1000) -> str:
    """A module path: names of letters, digits and ``_`` joined by ``.`` (``blocks.0.attn``)."""
    if not (isinstance(value, str) and len(value) <= max_len and _MODULE_PATH.fullmatch(value)):
        rule = f"a module path (names joined by '.', at most {max_len} characters)"
        raise Invalid(what, rule, value)
    return value


def sha256_hex(value: Any, what: str) -> str:
    """A sha256 digest as 64 lowercase hex digits."""
    if isinstance(value, str) and _SHA256.fullmatch(value):
        return value
    raise Invalid(what, "64 lowercase hex digits", value)


# ---------------------------------------------------------------- containers


def _size_rule(size: int | tuple[int, int | None]) -> str:
    low, high = (size, size) if isinstance(size, int) else size
    if low == high:
        return f"{low}"
    if high is None:
        return f"{low} or more" if low else ""
    return f"{low} to {high}" if low else f"at most {high}"


def _sized(value: Any, size: int | tuple[int, int | None]) -> bool:
    low, high = (size, size) if isinstance(size, int) else size
    return (
        isinstance(value, Sequence)
        and not isinstance(value, (str, bytes))
        and low <= len(value)
        and (high is None or len(value) <= high)
    )


def sequence(value: Any, what: str, size: int | tuple[int, int | None] = (0, None)) -> list[Any]:
    """``value`` as a list if it is a list or tuple (not a string) of ``size`` items (a count, or
    ``(least, most)`` with None for no bound)."""
    if _sized(value, size):
        return list(value)
    count = _size_rule(size)
    raise Invalid(what, f"a list of {count} items" if count else "a list", value)


def int_list(
    value: Any,
    what: str,
    *,
    size: int | tuple[int, int | None] = (0, None),
    low: int | None = 0,
    high: int | None = None,
) -> list[int]:
    """``value`` as a list of ints if it is a list (:func:`sequence`) of ``size`` integers from
    ``low`` to ``high`` (None: no bound): a shape, a state of words."""
    if _sized(value, size) and all(
        is_int(v) and (low is None or v >= low) and (high is None or v <= high) for v in value
    ):
        return [int(v) for v in value]
    if low == 1:
        values = "positive integers" + (f" up to {high}" if high is not None else "")
    elif low is not None and high is not None:
        values = f"integers from {low} to {high}"
    else:
        values = "integers" + (f" >= {low}" if low is not None else "")
        values += f" <= {high}" if high is not None else ""
    count = _size_rule(size)
    raise Invalid(what, f"a list of {count + ' ' if count else ''}{values}", value)


def str_list(value: Any, what: str, *, max_items: int | None = None) -> list[str]:
    """``value`` as a list if it is a list of strings (of at most ``max_items``)."""
    if _sized(value, (0, max_items)) and all(isinstance(v, str) for v in value):
        return list(value)
    most = f" (at most {max_items})" if max_items is not None else ""
    raise Invalid(what, f"a list of strings{most}", value)


def json_object(value: Any, what: str, keys: Sequence[str] | None = None) -> dict[str, Any]:
    """``value`` if it is a dict (a JSON object) with string keys; with ``keys``, exactly those."""
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise Invalid(what, "a JSON object", value)
    if keys is not None and set(value) != set(keys):
        odd = sorted(set(value) ^ set(keys))[0]
        raise Invalid(
            what,
            f"a JSON object with the keys {', '.join(keys)}",
            value,
            f"has the keys {short_repr(sorted(value))}, not {', '.join(keys)} "
            f"({short_repr(odd, 40)})",
        )
    return value


def json_value(
    value: Any,
    what: str,
    *,
    max_depth: int = 8,
    max_items: int = 10_000,
    max_text: int = 10_000,
) -> Any:
    """``value`` if it is plain JSON data of bounded size: None, a bool, an int, a finite float,
    a string of at most ``max_text`` characters, or lists (tuples) and string-keyed mappings
    of them nested at most ``max_depth`` levels, at most ``max_items`` values in all."""
    count = 1
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if item is None or isinstance(item, (bool, int)):
            continue
        if isinstance(item, float) and math.isfinite(item):
            continue
        if isinstance(item, str):
            if len(item) > max_text:
                problem = f"holds a string over {max_text} characters"
                raise Invalid(what, "JSON data", value, problem)
            continue
        if not isinstance(item, (list, tuple, Mapping)):
            raise Invalid(what, "JSON data", value, f"holds {short_repr(item)}, not a JSON value")
        if depth >= max_depth:
            problem = (
                f"nests deeper than {max_depth} levels (lists and objects may not nest deeper)"
            )
            raise Invalid(what, "JSON data", value, problem)
        count += len(item)  # before a child is looked at: a huge list costs nothing
        if count > max_items:
            raise Invalid(what, "JSON data", value, f"holds more than {max_items} values")
        if isinstance(item, Mapping) and not all(isinstance(k, str) for k in item):
            problem = f"holds {short_repr(item)}, not a JSON value (its keys are not all text)"
            raise Invalid(what, "JSON data", value, problem)
        stack.extend((v, depth + 1) for v in (item.values() if isinstance(item, Mapping) else item))
    return value


# ---------------------------------------------------------------- JSON text


def _number_error(problem: str) -> Invalid:
    return Invalid("", "a JSON number that fits 64 bits", None, problem)


def _parse_int(digits: str) -> int:
    count = len(digits.lstrip("-"))
    if count > 19:
        raise _number_error(
            f"holds the integer {digits[:20]}… of {count} digits (integers must fit 64 bits)"
        )
    value = int(digits)
    if abs(value) > MAX_INT:
        raise _number_error(f"holds the integer {digits}, which does not fit 64 bits")
    return value


def _parse_float(digits: str) -> float:
    value = float(digits)
    if not math.isfinite(value):
        raise _number_error(f"holds the number {digits[:40]}, out of range (not a finite float)")
    return value


def _no_constant(constant: str) -> Any:
    raise _number_error(f"is not valid JSON (the constant {constant}: numbers must be finite)")


def loads(data: str, what: str = "the value") -> Any:
    """``json.loads`` for untrusted text: every number finite, integers within 64 bits, every
    string (value or key) valid Unicode; ``NaN``, ``Infinity``, ``1e999``, a 400-digit integer,
    ``"\\ud800"`` and JSON nested too deeply raise :class:`Invalid` (its ``what`` is the path
    of a string that is not text, such as ``[1]``)."""
    try:
        value = json.loads(
            data, parse_constant=_no_constant, parse_float=_parse_float, parse_int=_parse_int
        )
    except Invalid as exc:
        raise Invalid(what, exc.rule, None, exc.problem) from None
    except RecursionError:
        raise Invalid(what, "JSON", None, "is not valid JSON (nested too deeply)") from None
    except ValueError as exc:
        raise Invalid(what, "JSON", None, f"is not valid JSON ({exc})") from None
    if SURROGATE_ESCAPE.search(data) or lone_surrogate(data) is not None:
        _refuse_surrogates(value, what)
    return value


def _refuse_surrogates(value: Any, what: str) -> None:
    """Raise :class:`Invalid` for the first string (value or key) of a JSON value that holds a
    lone surrogate, its ``what`` the string's path (``[0]``, ``auto.note``, ``a key 'b'``).
    The walk keeps one iterator per level: no copy of a large list."""
    stack = [iter([("", value)])]
    while stack:
        step = next(stack[-1], None)
        if step is None:  # this level is done
            stack.pop()
            continue
        where, item = step
        if isinstance(item, str):
            unicode(item, where or what)
        elif isinstance(item, (dict, list)):
            if isinstance(item, dict):
                for key in item:
                    unicode(key, f"{where or 'the object'} key {key!r}")
            stack.append(_children(where, item))


def _children(where: str, item: dict[str, Any] | list[Any]) -> Iterator[tuple[str, Any]]:
    pairs = item.items() if isinstance(item, dict) else enumerate(item)
    for key, child in pairs:
        yield _child(where, key), child


def _child(where: str, key: str | int) -> str:
    """The path of ``key`` in the value at ``where``: ``a.b``, ``a[0]``, ``a['odd key']``."""
    if isinstance(key, str) and key.isidentifier():
        return f"{where}.{key}" if where else key
    return f"{where}[{key!r}]"

"""zoo.core.checks: the one check of each untrusted value, at its edge values.

Every caller (metadata, plans, adapt arguments, input configs, PEFT configs, checkpoints) uses
these, so each rule here is the rule of all of them: bool is not an int, numbers are finite
however they are spelled, text is Unicode without control characters, JSON is bounded.
"""

from __future__ import annotations

import json
import math
from fractions import Fraction

import numpy as np
import pytest

from zoo.core import checks
from zoo.core.checks import Invalid


def refused(call, *fragments: str) -> Invalid:
    """``call()`` raises :class:`Invalid` whose message holds every fragment."""
    with pytest.raises(Invalid) as info:
        call()
    for fragment in fragments:
        assert fragment in str(info.value), str(info.value)
    return info.value


def test_invalid_names_the_value_the_rule_and_is_a_value_error():
    error = refused(lambda: checks.integer(True, "epochs", 1), "epochs must be an int >= 1")
    assert (error.what, error.rule, error.value) == ("epochs", "an int >= 1", True)
    assert str(error) == "epochs must be an int >= 1, got True"
    assert isinstance(error, ValueError)


# ---------------------------------------------------------------- numbers


def test_integers_are_never_bools_or_floats_and_numpy_ints_become_ints():
    assert checks.integer(5, "n") == 5
    converted = checks.integer(np.int64(7), "n", 0, 10)
    assert converted == 7 and type(converted) is int
    for value in (True, False, 2.0, "3", None, Fraction(3, 1)):
        refused(lambda v=value: checks.integer(v, "n"), "n must be an int >= 0")
    assert checks.is_int(np.uint8(3)) and not checks.is_int(True)


def test_integer_bounds_and_their_words():
    assert checks.integer(checks.MAX_INT, "n", 0, checks.MAX_INT) == 2**63 - 1
    refused(lambda: checks.integer(2**63, "n", 0, checks.MAX_INT), f"from 0 to {2**63 - 1}")
    refused(lambda: checks.integer(-1, "workers", 0, 256), "workers must be an int from 0 to 256")
    refused(lambda: checks.integer(-1, "n", None, -2), "n must be an int <= -2, got -1")
    assert checks.integer(-(10**30), "n", None) == -(10**30)


@pytest.mark.parametrize(
    "value", [True, "0.5", None, math.nan, math.inf, -math.inf, 10**400, -(10**400), 1e308 * 10]
)
def test_reals_are_finite_numbers_however_they_are_spelled(value):
    error = refused(lambda: checks.real(value, "lr", 0, open_low=True), "lr must be a")
    assert error.rule == "a finite number > 0"  # never an OverflowError, never a TypeError
    assert not checks.is_real(value)


def test_real_accepts_any_finite_real_as_a_float():
    for value, expected in ((1, 1.0), (np.float32(0.5), 0.5), (Fraction(1, 4), 0.25)):
        number = checks.real(value, "x")
        assert number == expected and type(number) is float
    assert checks.is_real(2**1000) and checks.real(2**1000, "x") == float(2**1000)


def test_real_ends_open_or_closed_and_their_words():
    assert checks.real(0, "m", 0, 1, open_high=True) == 0.0
    refused(
        lambda: checks.real(1, "m", 0, 1, open_high=True), "m must be a finite number in [0, 1)"
    )
    refused(lambda: checks.real(0, "c", 0, 2, open_low=True), "in (0, 2], got 0")
    refused(lambda: checks.real(-0.1, "d", 0), "d must be a finite number >= 0")
    refused(lambda: checks.real(5, "s", high=1, open_high=True), "s must be a finite number < 1")
    refused(lambda: checks.real("0.9", "crop_pct"), "crop_pct must be a number, got '0.9'")


def test_choices_are_type_exact_and_flags_are_bools():
    assert checks.choice(True, "cache", (True, False, "auto")) is True
    refused(lambda: checks.choice(1, "cache", (True, False, "auto")), "one of True, False, 'auto'")
    refused(lambda: checks.choice(1.0, "n", (1, 2)), "n must be one of 1, 2, got 1.0")
    refused(lambda: checks.choice("adam", "optimizer", ("adamw", "sgd")), "'adamw', 'sgd'")
    assert checks.flag(False, "resume") is False
    for value in (0, 1, "true", None):
        refused(lambda v=value: checks.flag(v, "resume"), "resume must be True or False")


# ---------------------------------------------------------------- text


@pytest.mark.parametrize("value", ["a\nb", "tab\there", "\x1b[2J", "del\x7f", "csi\x9b", "\x00"])
def test_text_refuses_control_characters(value):
    refused(lambda: checks.text(value, "note"), "note holds a control character", "characters")


def test_text_refuses_lone_surrogates_and_keeps_paired_ones():
    for value in ("\ud800", "a\udfff", "\udc00\ud800"):
        refused(lambda v=value: checks.text(v, "note"), "note holds a lone surrogate")
        assert checks.lone_surrogate(value) == value.lstrip("a")[0]
    assert checks.text("smile \U0001f600", "note") == "smile \U0001f600"
    assert checks.lone_surrogate("plain") is None


def test_text_length_emptiness_and_type():
    refused(lambda: checks.text("", "name"), "a text of 1 to 1000 characters")
    assert checks.text("", "name", empty=True) == ""
    refused(lambda: checks.text("x" * 1001, "note"), "got 'xxx")
    assert len(checks.text("x" * 5000, "ref", max_len=None)) == 5000
    for value in (b"bytes", 3, None, ["a"]):
        refused(lambda v=value: checks.text(v, "note"), "note must be a text")


def test_names_module_paths_and_hashes():
    assert checks.name("timm:resnet18", "backbone", qualified=True) == "timm:resnet18"
    for value in ("resnet18", ":x", "x:"):
        refused(lambda v=value: checks.name(v, "backbone", qualified=True), '"plugin:name"')
    refused(lambda: checks.name("n" * 201, "tag"), "1 to 200 characters")
    assert checks.module_path("blocks.0.attn.qkv", "target") == "blocks.0.attn.qkv"
    for value in ("", "a..b", ".a", "a.", "a b", "a;rm", "a\n", "a" * 1001, None):
        refused(lambda v=value: checks.module_path(v, "target"), "target must be a module path")
    assert checks.sha256_hex("0f" * 32, "seal") == "0f" * 32
    for value in ("0F" * 32, "0f" * 32 + "\n", "0f" * 31, 64):
        refused(lambda v=value: checks.sha256_hex(v, "seal"), "64 lowercase hex digits")


# ---------------------------------------------------------------- containers


def test_sequences_shapes_and_string_lists():
    assert checks.sequence((1, 2), "pair", 2) == [1, 2]
    refused(lambda: checks.sequence("ab", "pair", 2), "pair must be a list of 2 items")
    refused(lambda: checks.sequence([], "rows", (1, 5)), "a list of 1 to 5 items")
    assert checks.int_list([8, 192], "shape", size=(0, 8), high=2**31 - 1) == [8, 192]
    for shape in ([8, True], [8, -1], [2**40], [1.0], "8x4"):
        refused(
            lambda s=shape: checks.int_list(s, "shape", size=(0, 8), high=2**31 - 1),
            "shape must be a list of at most 8 integers from 0 to 2147483647",
        )
    refused(lambda: checks.int_list([1] * 9, "shape", size=(0, 8), low=1), "at most 8 positive")
    assert checks.int_list([3, -8, -8], "size", size=3, low=None) == [3, -8, -8]
    assert checks.str_list(["a", "b"], "names") == ["a", "b"]
    refused(lambda: checks.str_list(["a", 1], "names"), "names must be a list of strings")
    refused(lambda: checks.str_list(["a"] * 3, "names", max_items=2), "(at most 2)")


def test_json_objects_with_exact_keys():
    assert checks.json_object({"a": 1}, "state", ("a",)) == {"a": 1}
    refused(lambda: checks.json_object([1], "state"), "state must be a JSON object")
    refused(lambda: checks.json_object({1: "a"}, "state"), "state must be a JSON object")
    error = refused(lambda: checks.json_object({"a": 1, "z": 2}, "rec", ("a", "b")), "has the keys")
    assert "'b'" in error.problem or "'z'" in error.problem


def test_json_value_accepts_plain_bounded_data():
    data = {"a": [1, 2.5, None, True, "s", (3, 4)], "b": {"c": "d"}}
    assert checks.json_value(data, "args") is data
    eight = json.loads("[" * 8 + "1" + "]" * 8)
    assert checks.json_value(eight, "args") == eight


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        (json.loads("[" * 9 + "1" + "]" * 9), "nests deeper than 8 levels"),
        (list(range(10_000)), "holds more than 10000 values"),
        ("w" * 10_001, "holds a string over 10000 characters"),
        ([1.0, math.nan], "holds nan, not a JSON value"),
        ({"x": math.inf}, "holds inf, not a JSON value"),
        ({1: "a"}, "not a JSON value"),
        ([object()], "not a JSON value"),
        ({b"k"}, "not a JSON value"),
    ],
    ids=["deep", "many", "long", "nan", "inf", "int-key", "object", "set"],
)
def test_json_value_refuses_deep_large_and_non_json_data(value, fragment):
    error = refused(lambda: checks.json_value(value, "width"), fragment)
    assert str(error).startswith("width ")


def test_json_value_walks_without_recursion():
    deep: list = []
    for _ in range(100_000):
        deep = [deep]
    refused(lambda: checks.json_value(deep, "x", max_depth=100_001), "more than 10000 values")
    refused(lambda: checks.json_value(deep, "x", max_items=10**6), "nests deeper than 8")


# ---------------------------------------------------------------- JSON text


def test_loads_reads_plain_json():
    assert checks.loads('{"a": [1, 2.5, null, true, "s"]}') == {"a": [1, 2.5, None, True, "s"]}
    assert checks.loads(str(2**63 - 1)) == 2**63 - 1 and checks.loads("-1e308") == -1e308
    assert checks.loads('"\\ud83d\\ude00 \\\\ud800"') == "\U0001f600 \\ud800"  # pair, escaped \


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("NaN", "not valid JSON (the constant NaN"),
        ("[Infinity]", "the constant Infinity"),
        ("-Infinity", "the constant -Infinity"),
        ("1e999", "holds the number 1e999, out of range"),
        ("[-1e999]", "out of range"),
        (str(2**63), "does not fit 64 bits"),
        ("1" + "0" * 400, "of 401 digits"),
        ("[" * 100_000 + "]" * 100_000, "not valid JSON (nested too deeply)"),
        ("{", "not valid JSON"),
        ("", "not valid JSON"),
    ],
    ids=["nan", "inf", "-inf", "1e999", "-1e999", "2**63", "401-digits", "deep", "cut", "empty"],
)
def test_loads_refuses_numbers_zoo_cannot_hold(text, fragment):
    error = refused(lambda: checks.loads(text, "config"), fragment)
    assert error.what == "config" and str(error).startswith("config ")


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ('"\\ud800"', "config"),
        ('["ok", "a\\udfff"]', "[1]"),
        ('{"auto": {"note": "\\uDC00"}}', "auto.note"),
        ('{"odd key": ["\\ud834"]}', "['odd key'][0]"),
        ('{"\\ud800": 1}', "the object key '\\ud800'"),
        ('["x\ud800"]', "[0]"),  # a raw one, in a Python string that was never UTF-8
    ],
)
def test_loads_refuses_lone_surrogates_naming_where(text, where):
    error = refused(lambda: checks.loads(text, "config"), "holds a lone surrogate")
    assert error.what == where

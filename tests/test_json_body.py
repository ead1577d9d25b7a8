"""Request bodies parsed by pydantic-core with the ``json`` module's language
(:mod:`serving.json_body`): the same value, bit for bit, or the same error."""

from __future__ import annotations

import json
import math
import re
import struct
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bandit_core import make_policy
from serving.budget import body_lengths, check_budget, work_units
from serving.inputs import InputError
from serving.json_body import MAX_DEPTH, BodyError, DuplicateKeyError, parse_json


def _same(a: Any, b: Any) -> bool:
    """Equal values of equal types; floats compared by their bits (so -0.0 ≠ 0.0, and
    NaN equals NaN)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return struct.pack("<d", a) == struct.pack("<d", b)
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    return bool(a == b)


def test_numbers_parse_to_the_same_bits_as_json() -> None:
    rng = np.random.default_rng(0)
    bits = rng.integers(0, 2**63, 50_000, dtype=np.int64).view(np.float64)
    texts = [repr(float(v)) for v in bits if math.isfinite(v)]
    texts += [f"{v:.25e}" for v in rng.standard_normal(20_000) * 10.0 ** rng.integers(-300, 300)]
    digits = rng.integers(0, 10, (20_000, 40))
    exponents = rng.integers(-340, 330, 20_000)
    texts += [
        "0." + "".join(map(str, d[: 1 + i % 40])) + f"e{e}"
        for i, (d, e) in enumerate(zip(digits, exponents, strict=True))
    ]
    texts += [
        "2.2250738585072011e-308",  # around the smallest normal
        "4.9406564584124654e-324",  # the smallest subnormal
        "2.4703282292062328e-324",  # rounds up to it
        "1.7976931348623158e308",  # the largest double
        "1e400",  # overflows to inf, in both
        "-0.0",
        "-0",
        "9007199254740993",  # 2^53 + 1: an int, not a float
        "123456789012345678901234567890",
        "NaN",
        "-Infinity",
    ]
    document = ("[" + ",".join(texts) + "]").encode()
    assert _same(parse_json(document), json.loads(document))


@pytest.mark.parametrize(
    "document",
    [
        b'{"id": "caf\\u00e9", "x": [1, 2.5, {"a": null, "b": true}], "a": 1, "b": 2}',
        b'{"urn": "a:b:c", "\\u003a": "\\u003a:", "t": "2024-01-01T00:00:00Z"}',
        '{"id": "café 🙂"}'.encode(),
        b'"\\ud83d\\ude42"',  # a surrogate pair
        b'"\\ud800"',  # a lone surrogate: pydantic-core refuses it, json keeps it
        b'"a\\u0000b"',
        b"  [ ]  ",
        '\ufeff{"a": 1}'.encode(),  # a byte-order mark
        '{"a": "b"}'.encode("utf-16"),
    ],
)
def test_accepted_documents_give_json_s_value(document: bytes) -> None:
    assert _same(parse_json(document), json.loads(document))


@pytest.mark.parametrize(
    "document",
    [
        b'{"a": 1',
        b"[1, 2,]",
        b'"a\x00b"',  # a raw control character
        b"[] x",
        b"",
    ],
)
def test_refused_documents_raise_json_s_error(document: bytes) -> None:
    with pytest.raises(Exception) as expected:
        json.loads(document)
    with pytest.raises(type(expected.value)) as got:
        parse_json(document)
    assert str(got.value) == str(expected.value)


@pytest.mark.parametrize(
    ("document", "reason"),
    [
        (b"[" * 202 + b"]" * 202, "deeper than 200 levels"),  # pydantic-core reads 201
        (b'{"a":' * 201 + b"1" + b"}" * 201, "deeper than 200 levels"),
        # json alone takes these (pydantic-core refuses the lone surrogate first)
        (b'["\\ud800", ' + b"[" * 300 + b"]" * 300 + b"]", "deeper than 200 levels"),
        (b'["\\ud800", ' + b"[" * 5000 + b"]" * 5000 + b"]", "deeper than 200 levels"),
        (b"[" * 100_000 + b"]" * 100_000, "deeper than 200 levels"),
        (b"1" * 5000, "an integer of more than 4300 digits"),
        (b"\xff\xfe\xfd", "not UTF-16-LE: byte 0xfd at offset 2"),
        (b'{"a": "\xff"}', "not UTF-8: byte 0xff at offset 7"),
    ],
)
def test_documents_past_a_limit_are_refused_naming_it(document: bytes, reason: str) -> None:
    """Outside JSON's syntax, a refusal names the limit (FastAPI answered "There was an
    error parsing the body"); a body nested deeper than MAX_DEPTH is refused even where
    ``json`` alone reads it (its echo in a 422 recursed past Python's limit: a 500)."""
    with pytest.raises(BodyError, match=re.escape(reason)):
        parse_json(document)


def test_a_body_at_the_depth_limit_is_read() -> None:
    document = b'["\\ud800", ' + b"[" * (MAX_DEPTH - 1) + b"]" * (MAX_DEPTH - 1) + b"]"
    assert _same(parse_json(document), json.loads(document))


def test_body_lengths_are_the_validated_request_s() -> None:
    """The early budget check counts the candidates and ``k`` the full check will."""
    rng = np.random.default_rng(1)
    for _ in range(200):
        n, du, da = (int(v) for v in rng.integers(1, 30, 3))
        k = None if rng.random() < 0.3 else int(rng.integers(1, n + 1))
        named = rng.random() < 0.3
        context: Any = {f"f{i}": 0.0 for i in range(du)} if named else [0.0] * du
        body = {
            "context": context,
            "candidates": [{"id": str(i), "features": [0.0] * da} for i in range(n)],
            "k": k,
        }
        assert body_lengths(json.loads(json.dumps(body))) == (n, k)
    assert body_lengths([1, 2]) is None
    assert body_lengths({"context": [1.0], "retrieve": {"k": 5}}) is None
    assert body_lengths({"context": [1.0], "candidates": [{"id": "a"}], "k": "3"}) is None


def test_a_budget_too_large_to_print_is_refused_with_its_size() -> None:
    """``k`` of 4,299 digits (json parses it) makes units past Python's 4,300-digit
    printing limit: still a 422 naming the limit, with the size instead of the digits."""
    units = work_units(make_policy("uniform"), 2, int("9" * 4299), 200)
    with pytest.raises(InputError, match=r"about 10\^430\d work units.*max_work_units"):
        check_budget(units, 50_000_000)


@pytest.mark.parametrize(
    ("document", "path"),
    [
        (b'{"event_id": "e", "reward": 1, "reward": 0}', ("reward",)),
        (b'{"candidates": [{"id": "a"}, {"id": "b", "id": "c"}]}', ("candidates", 1, "id")),
        (b'{"a": {"b": {"k": "x:y", "k": 1}}, "z": 1}', ("a", "b", "k")),
        (b'{"k": 1, "s": "\\u003a", "k": 2}', ("k",)),  # the escape evens the count
        (b'{"\\u0061": 1, "a": 2}', ("a",)),  # the same key, written two ways
        (b'{"a": "\\ud800", "a": 1}', ("a",)),  # pydantic-core refuses: json's path
        ('\ufeff{"x": [1, {"a": 1, "b": 2, "a": 3}]}'.encode(), ("x", 1, "a")),
        (b'[{"a": 1}, {"b": {"c": 1, "c": 1}}, {"d": 1, "d": 2}]', (1, "b", "c")),
    ],
)
def test_a_key_named_twice_in_an_object_is_refused_naming_its_path(
    document: bytes, path: tuple[str | int, ...]
) -> None:
    """Both parsers kept the last value: ``{"reward": 1, "reward": 0}`` logged 0. The
    path is the first duplicate's in the body's order, whichever parser refused it."""
    with pytest.raises(DuplicateKeyError) as refused:
        parse_json(document)
    assert refused.value.path == path


_KEYS = st.sampled_from(["a", "b", "c", "a:b", "\\u0061", "\\u003a"])
_SCALARS = st.sampled_from(["1", "2.5", "null", '"x"', '"x:y"', '"\\u003a"', "true"])


def _text(keys_values: list[tuple[str, str]]) -> str:
    return "{" + ", ".join(f'"{k}": {v}' for k, v in keys_values) + "}"


_BODIES = st.recursive(
    _SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4).map(lambda items: "[" + ", ".join(items) + "]"),
        st.lists(st.tuples(_KEYS, inner), max_size=4).map(_text),
    ),
    max_leaves=20,
)


@given(_BODIES)
def test_a_body_is_refused_exactly_when_json_sees_a_key_twice(body: str) -> None:
    """Against ``json``'s own object pairs: refused when some object names a key twice
    (after unescaping), else read as ``json`` reads it."""
    twice = []

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        twice.append(len({k for k, _ in items}) != len(items))
        return dict(items)

    expected = json.loads(body, object_pairs_hook=pairs)
    if any(twice):
        with pytest.raises(DuplicateKeyError):
            parse_json(body.encode())
    else:
        assert _same(parse_json(body.encode()), expected)

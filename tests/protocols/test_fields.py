"""Dotted paths into parsed JSON."""

from __future__ import annotations

from typing import Any

import pytest

from shadowproxy.protocols.fields import get_path, set_path


def test_get_path_walks_objects() -> None:
    value = {"a": {"b": {"c": 3}}, "x": 1}
    assert get_path(value, "a.b.c") == 3
    assert get_path(value, "a.b") == {"c": 3}
    assert get_path(value, "") is value


def test_get_path_finds_keys_that_contain_dots() -> None:
    assert get_path({"a.b": 1}, "a.b") == 1
    assert get_path({"a": {"b.c": 2}}, "a.b.c") == 2
    assert get_path({"a.b": {"c": 5}, "a": {"x": 0}}, "a.b.c") == 5


@pytest.mark.parametrize(
    ("value", "path"),
    [({"a": 1}, "b"), ({"a": 1}, "a.b"), ([1], "0"), ({"a": [{"b": 1}]}, "a.b"), ({}, "a.")],
)
def test_get_path_missing_is_key_error(value: Any, path: str) -> None:
    with pytest.raises(KeyError):
        get_path(value, path)


def test_set_path_creates_objects_and_refuses_non_objects() -> None:
    target: dict[str, Any] = {}
    set_path(target, "a.b", 1)
    set_path(target, "a.c", 2)
    set_path(target, "d", 3)
    assert target == {"a": {"b": 1, "c": 2}, "d": 3}
    with pytest.raises(KeyError):
        set_path(target, "d.e", 4)

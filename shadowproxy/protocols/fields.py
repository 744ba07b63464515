"""Dotted paths into parsed JSON objects (``"result.scores"``), for the configured selectors.

A key that itself contains dots is found too: at each level the longest run of segments that
names an existing key wins, so ``{"a.b": 1}`` answers ``"a.b"`` as well as ``{"a": {"b": 1}}``.
"""

from __future__ import annotations

from typing import Any

_MISSING = object()


def get_path(value: Any, path: str) -> Any:
    """The value at a dotted ``path`` inside nested objects.

    Parameters
    ----------
    value : Any
        A parsed JSON value.
    path : str
        Dot-separated keys; empty means ``value`` itself.

    Returns
    -------
    Any
        The value found.

    Raises
    ------
    KeyError
        No such path (a key is missing, or a non-object is in the way).
    """
    if not path:
        return value
    if isinstance(value, dict):
        # Exact key first: the common case, and keys may contain dots.
        found = value.get(path, _MISSING)
        if found is not _MISSING:
            return found
    parts = path.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        if not isinstance(value, dict):
            break
        head = ".".join(parts[:cut])
        if head in value:
            try:
                return get_path(value[head], ".".join(parts[cut:]))
            except KeyError:
                continue
    raise KeyError(path)


def set_path(target: dict[str, Any], path: str, value: Any) -> None:
    """Write ``value`` at a dotted ``path``, creating the objects on the way.

    Parameters
    ----------
    target : dict
        The object written into.
    path : str
        Dot-separated keys, not empty.
    value : Any
        The value stored.

    Raises
    ------
    KeyError
        A non-object already sits on the path.
    """
    *parents, last = path.split(".")
    node = target
    for key in parents:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise KeyError(path)
        node = child
    node[last] = value

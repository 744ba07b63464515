"""Strict JSON reading and writing for the payload protocols.

Bodies are parsed with orjson. Two things orjson does not decide the way the protocols need:

* **Nesting depth.** orjson stops at its own fixed limit (1024). The configured
  ``payload.max_depth`` is checked on the raw bytes first, without recursion, so a deep body is
  refused as ``too_deep`` before any parser walks it.
* **Non-finite numbers.** orjson refuses ``NaN``/``Infinity`` literals and numbers beyond the
  float64 range (``1e400``). Those bodies are read again with the standard library, which
  turns them into non-finite floats; they are refused as ``nonfinite`` unless
  ``payload.nonfinite`` is ``allow``.

orjson reads integers up to 64 bits exactly and turns longer ones into floats, and refuses
those beyond the float64 range; such a body is read again with the standard library, which
keeps them as exact integers. The array conversion (:mod:`shadowproxy.protocols.arrays`)
reports an integer that does not fit its input as ``int_overflow``; one beyond Python's
digit limit (4,300 by default) is ``int_overflow`` here.
"""

from __future__ import annotations

import json
import math
import sys
from typing import Any, Literal

import numpy as np
import orjson

from shadowproxy.errors import PayloadError

_DUMPS_OPTIONS = orjson.OPT_SERIALIZE_NUMPY

# Every byte except quotes and brackets, for bytes.translate(delete=...).
_NOT_STRUCTURE = bytes(b for b in range(256) if b not in b'"[]{}')
# +1 for an opening bracket, -1 for a closing one.
_BRACKET_STEP = np.zeros(256, dtype=np.int8)
_BRACKET_STEP[list(b"[{")] = 1
_BRACKET_STEP[list(b"]}")] = -1


def nesting_depth(body: bytes) -> int:
    """The deepest container nesting of a JSON text: ``1`` for ``[]``, ``0`` for a scalar.

    Brackets inside strings are not counted. Runs in C-speed passes over the bytes, with no
    recursion, so any depth is safe to measure. On text that is not valid JSON the result is
    an estimate (still never a crash).

    Parameters
    ----------
    body : bytes
        The raw body.

    Returns
    -------
    int
        The nesting depth.
    """
    # Drop escaped backslashes, then escaped quotes (pairs from the left, as JSON reads
    # them); the quotes left delimit strings, so every other piece between them is outside.
    unescaped = body.replace(b"\\\\", b"").replace(b'\\"', b"")
    pieces = unescaped.translate(None, _NOT_STRUCTURE).split(b'"')
    brackets = b"".join(pieces[::2])
    if not brackets:
        return 0
    steps = _BRACKET_STEP[np.frombuffer(brackets, dtype=np.uint8)]
    return max(0, int(np.cumsum(steps, dtype=np.int64).max()))


def check_depth(body: bytes, max_depth: int) -> None:
    """Raise ``too_deep`` when ``body`` nests deeper than ``max_depth`` containers."""
    # Fast path: the bracket count bounds the depth, and small bodies have few brackets.
    if body.count(b"[") + body.count(b"{") <= max_depth:
        return
    depth = nesting_depth(body)
    if depth > max_depth:
        raise PayloadError(
            f"body nests {depth} levels deep, more than max_depth {max_depth}", "too_deep"
        )


def parse(body: bytes, *, max_depth: int, allow_nonfinite: bool) -> Any:
    """Parse a JSON body strictly.

    Parameters
    ----------
    body : bytes
        The raw body, UTF-8.
    max_depth : int
        Deepest container nesting accepted.
    allow_nonfinite : bool
        Accept ``NaN``, ``Infinity``, ``-Infinity`` and out-of-range numbers (read as
        non-finite floats).

    Returns
    -------
    Any
        The parsed value (dicts, lists, str, int, float, bool, None).

    Raises
    ------
    PayloadError
        ``too_deep``, ``nonfinite``, ``int_overflow`` (an integer beyond Python's digit
        limit) or ``bad_json``.
    """
    check_depth(body, max_depth)
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        error = exc
    if "depth limit" in str(error):
        raise PayloadError(f"body nests too deeply: {error}", "too_deep") from error
    # Only on the error path: tell valid JSON orjson cannot hold (non-finite numbers,
    # integers beyond float64) apart from malformed JSON.
    outcome, value = _parse_slowly(body)
    if outcome == "nonfinite":
        if allow_nonfinite:
            return value
        where, bad = first_nonfinite(value)
        raise PayloadError(
            f"{where} is {bad!r}, a non-finite number "
            "(NaN, Infinity or a float beyond float64 range)",
            "nonfinite",
        ) from error
    if outcome == "parsed":
        # Valid JSON: an integer orjson cannot read as a double. The decoders check every
        # integer against its input's datatype and name it (int_overflow).
        return value
    if outcome == "long_integer":
        raise PayloadError(
            f"body holds an integer of more than {sys.get_int_max_str_digits()} digits",
            "int_overflow",
        ) from error
    raise PayloadError(f"body is not valid JSON: {error}", "bad_json") from error


def first_nonfinite(value: Any) -> tuple[str, float]:
    """The JSON path (``$.inputs[0].data[3]``) and value of the first non-finite float.

    Only called on the error path, on a value known to hold one; iterative, so a body as
    deep as ``max_depth`` allows cannot exhaust the stack.
    """
    stack: list[tuple[str, Any]] = [("$", value)]
    while stack:
        path, item = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            return path, item
        if isinstance(item, dict):
            children = [(path + _member(key), child) for key, child in item.items()]
        elif isinstance(item, list):
            children = [(f"{path}[{i}]", child) for i, child in enumerate(item)]
        else:
            continue
        stack.extend(reversed(children))  # depth first, in document order
    raise ValueError("no non-finite number in the value")


def _member(key: str) -> str:
    # Keys are client text: quoted unless a plain name, and cut short in a message.
    if key.isidentifier() and len(key) <= 64:
        return f".{key}"
    return f"[{json.dumps(key[:64])}{'…' if len(key) > 64 else ''}]"


_Slow = Literal["parsed", "nonfinite", "long_integer", "invalid"]


def _parse_slowly(body: bytes) -> tuple[_Slow, Any]:
    """Parse with the standard library, and say what it found.

    ``nonfinite`` when a NaN, an infinity or a float beyond float64 was read;
    ``long_integer`` for an integer literal beyond Python's digit limit; ``invalid`` when
    the body is not JSON even to the standard library, or holds a lone surrogate escape
    (``"\\ud800"``): orjson refuses those, and a string holding one cannot be written as
    UTF-8 again (a label in /metrics, a snapshot).
    """
    seen = False

    def constant(text: str) -> float:
        nonlocal seen
        seen = True
        return float(text)

    def real(text: str) -> float:
        nonlocal seen
        value = float(text)
        if value in (float("inf"), float("-inf")):
            seen = True
        return value

    try:
        value = json.loads(body.decode("utf-8"), parse_constant=constant, parse_float=real)
        json.dumps(value, ensure_ascii=False).encode("utf-8")  # no lone surrogates
    except (ValueError, RecursionError) as exc:
        # ValueError covers invalid JSON, invalid UTF-8, over-long integer literals and
        # (UnicodeEncodeError) lone surrogates.
        if "integer string conversion" in str(exc):
            return "long_integer", None
        return "invalid", None
    return ("nonfinite" if seen else "parsed"), value


def dumps(value: Any) -> bytes:
    """Serialize to JSON; numpy arrays and scalars are written natively.

    Float32 values are written as their shortest round-tripping form; NaN and infinities as
    ``null``. Arrays must be C-contiguous and native-endian (see
    :func:`shadowproxy.protocols.arrays.jsonable`).
    """
    return orjson.dumps(value, option=_DUMPS_OPTIONS)

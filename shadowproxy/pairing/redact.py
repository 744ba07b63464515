"""Redaction of JSON bodies before they are written to the pair log (pure, no I/O).

A redact rule is a dotted field path such as ``customer.email`` or ``inputs.*.data``. Each
segment selects, from a JSON object, the member with exactly that name, and from a JSON
array, the element at that index (a canonical decimal such as ``0`` or ``12``). The segment
``*`` selects every member of an object or every element of an array. The value a rule
reaches is replaced, whole, by the string ``"[redacted]"``.

Segments are split on ``.`` with no escaping, so a member whose name contains a dot cannot
be addressed. Empty segments are allowed and address the member named ``""``. Names are
compared exactly (case-sensitive), on the parsed document, so escapes in the raw text
(``"em\\u0061il"``) do not hide a field.

Bodies are bytes. A body that parses as JSON and contains no matched field is returned
byte-for-byte unchanged; one that does is re-serialised (compact, members in their original
order; a member repeated in the raw text keeps only its last value, as when parsed). A body
whose raw text repeats a member name is never kept as it is: the rules only see the last
value, and a model server that keeps the first would read one they never looked at.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import orjson

REDACTED = "[redacted]"
"""What a matched field's value becomes."""

REDACTED_NON_JSON = b"[redacted: non-JSON body]"
"""What a whole body becomes when rules are configured but the body is not JSON."""

REDACTED_UNENCODABLE = b"[redacted: JSON body could not be re-encoded]"
"""What a whole JSON body becomes when its redacted form cannot be serialised again."""

REDACTED_REPEATED = b"[redacted: JSON body repeats a member name]"
"""What a whole JSON body with no matched field becomes when it repeats a member name."""

WILDCARD = "*"

_INDEX = re.compile(r"0|[1-9][0-9]*")

RulePath = tuple[str, ...]


@dataclass(frozen=True, slots=True)
class RedactRules:
    """Compiled redact rules: each rule split into its path segments.

    Build with :func:`compile_rules`. An empty rule set redacts nothing and leaves every
    body untouched, JSON or not.
    """

    paths: tuple[RulePath, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.paths)


def compile_rules(rules: Iterable[str] | RedactRules) -> RedactRules:
    """Split dotted rules into segments; duplicates are dropped, order kept.

    Parameters
    ----------
    rules : iterable of str or RedactRules
        Dotted field paths such as ``customer.email`` or ``inputs.*.data``. Already
        compiled rules are returned as they are.
    """
    if isinstance(rules, RedactRules):
        return rules
    return _compile(tuple(rules))


@lru_cache(maxsize=64)
def _compile(rules: tuple[str, ...]) -> RedactRules:
    # Cached because the pair log compiles the same configured tuple for every record.
    return RedactRules(tuple(dict.fromkeys(tuple(rule.split(".")) for rule in rules)))


def _list_index(segment: str, length: int) -> int | None:
    if _INDEX.fullmatch(segment) is None:
        return None
    index = int(segment)
    return index if index < length else None


def _apply(node: Any, path: RulePath, depth: int) -> tuple[Any, bool]:
    """Apply one rule below ``node``; copy only the containers on a changed branch.

    Returns the (possibly new) node and whether anything was replaced. The input is never
    mutated, so callers may share it.
    """
    if depth == len(path):
        return REDACTED, True
    segment = path[depth]
    if isinstance(node, dict):
        if segment == WILDCARD:
            keys: Sequence[Any] = list(node)
        elif segment in node:
            keys = (segment,)
        else:
            return node, False
        new_dict: dict[str, Any] | None = None
        for key in keys:
            value, changed = _apply(node[key], path, depth + 1)
            if changed:
                if new_dict is None:
                    new_dict = dict(node)
                new_dict[key] = value
        return (node, False) if new_dict is None else (new_dict, True)
    if isinstance(node, list):
        if segment == WILDCARD:
            indices: Sequence[int] = range(len(node))
        else:
            index = _list_index(segment, len(node))
            if index is None:
                return node, False
            indices = (index,)
        new_list: list[Any] | None = None
        for index in indices:
            value, changed = _apply(node[index], path, depth + 1)
            if changed:
                if new_list is None:
                    new_list = list(node)
                new_list[index] = value
        return (node, False) if new_list is None else (new_list, True)
    # A scalar cannot hold the rest of the path: the rule does not match here.
    return node, False


def redact_value(value: Any, rules: Iterable[str] | RedactRules) -> tuple[Any, bool]:
    """Redact a parsed JSON value.

    Parameters
    ----------
    value : Any
        A JSON-compatible value (dicts, lists, str, int, float, bool, None). Not mutated.
    rules : iterable of str or RedactRules
        The redact rules.

    Returns
    -------
    tuple of (Any, bool)
        The redacted value (``value`` itself when nothing matched) and whether any field
        was replaced.
    """
    compiled = compile_rules(rules)
    changed_any = False
    for path in compiled.paths:
        value, changed = _apply(value, path, 0)
        changed_any = changed_any or changed
    return value, changed_any


class _Repeated(Exception):
    pass


def _no_repeats(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    names = [name for name, _ in pairs]
    if len(set(names)) != len(names):
        raise _Repeated
    return dict(pairs)


def _repeats_a_name(body: bytes) -> bool:
    """Whether any object of a JSON body repeats a member name (or cannot be checked)."""
    try:
        json.loads(body, object_pairs_hook=_no_repeats)
    except _Repeated:
        return True
    except (ValueError, RecursionError):
        return True  # parsed by orjson but not checkable here: assume the worst
    return False


def redact_body(body: bytes, rules: Iterable[str] | RedactRules) -> tuple[bytes, bool]:
    """Redact the configured fields of a body.

    With no rules the body is returned untouched. With rules, a JSON body has its matched
    fields replaced (see the module docstring) and an empty body stays empty.

    A non-empty body that does not parse as JSON (plain text, form data, binary, or JSON
    cut short by a size limit) cannot be searched for the configured fields, yet may well
    contain them. For safety it is replaced whole by :data:`REDACTED_NON_JSON` whenever any
    rule is configured: the log loses that body rather than risk writing a secret. For the
    same reason a matched JSON body too deeply nested to re-encode becomes
    :data:`REDACTED_UNENCODABLE`.

    Parameters
    ----------
    body : bytes
        The raw body.
    rules : iterable of str or RedactRules
        The redact rules.

    Returns
    -------
    tuple of (bytes, bool)
        The body to log and whether it differs from ``body``.
    """
    compiled = compile_rules(rules)
    if not compiled or not body:
        return body, False
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return REDACTED_NON_JSON, True
    redacted, changed = redact_value(document, compiled)
    if not changed:
        if _repeats_a_name(body):
            # The parsed document holds the last of two equal names only: the first, which
            # many parsers keep, may be a field the rules name. The raw bytes cannot go out.
            return REDACTED_REPEATED, True
        # Keep the exact bytes: re-serialising would reformat an untouched body.
        return body, False
    try:
        return orjson.dumps(redacted), True
    except orjson.JSONEncodeError:
        # orjson parses 1024 levels of nesting but encodes only 254; past that the
        # redacted document cannot be written, and the original must not be.
        return REDACTED_UNENCODABLE, True

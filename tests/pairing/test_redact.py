"""Redaction of JSON bodies: dotted paths, wildcards, non-JSON bodies."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import orjson
from hypothesis import given
from hypothesis import strategies as st

from shadowproxy.pairing.redact import (
    REDACTED,
    REDACTED_NON_JSON,
    REDACTED_REPEATED,
    REDACTED_UNENCODABLE,
    compile_rules,
    redact_body,
    redact_value,
)

SECRET = "s3cr3t-T0KEN"


def redact_json(document: Any, rules: list[str]) -> Any:
    body, _ = redact_body(orjson.dumps(document), rules)
    return orjson.loads(body)


def test_nested_field_is_redacted_and_siblings_kept() -> None:
    document = {"customer": {"email": SECRET, "id": 7}, "email": "kept"}
    assert redact_json(document, ["customer.email"]) == {
        "customer": {"email": REDACTED, "id": 7},
        "email": "kept",
    }


def test_wildcard_over_list_elements() -> None:
    document = {"inputs": [{"name": "a", "data": [1, 2]}, {"name": "b", "data": SECRET}, 3]}
    assert redact_json(document, ["inputs.*.data"]) == {
        "inputs": [{"name": "a", "data": REDACTED}, {"name": "b", "data": REDACTED}, 3]
    }


def test_wildcard_over_mapping_values() -> None:
    document = {"features": {"age": 41, "zip": "12345"}, "other": 1}
    assert redact_json(document, ["features.*"]) == {
        "features": {"age": REDACTED, "zip": REDACTED},
        "other": 1,
    }


def test_numeric_segment_indexes_lists_and_names_members() -> None:
    document = {"rows": [SECRET, "b"], "map": {"0": SECRET, "1": "kept"}}
    assert redact_json(document, ["rows.0", "map.0"]) == {
        "rows": [REDACTED, "b"],
        "map": {"0": REDACTED, "1": "kept"},
    }


def test_non_canonical_index_does_not_match() -> None:
    document = {"rows": ["a", "b"]}
    assert redact_json(document, ["rows.01", "rows.-1", "rows.5"]) == document


def test_whole_subtree_is_replaced() -> None:
    assert redact_json({"customer": {"email": SECRET}}, ["customer"]) == {"customer": REDACTED}


def test_path_through_a_scalar_does_not_match() -> None:
    body = b'{"customer": "plain string", "n": 1}'
    assert redact_body(body, ["customer.email", "n.x"]) == (body, False)


def test_untouched_json_body_keeps_its_exact_bytes() -> None:
    body = b'{ "a" : 1,\n  "b": [1, 2] }'
    out, changed = redact_body(body, ["customer.email"])
    assert out is body
    assert not changed


def test_no_rules_leaves_every_body_untouched() -> None:
    for body in (b"not json", b"\xff\x00", b'{"customer": {"email": "x"}}', b""):
        assert redact_body(body, []) == (body, False)


def test_non_json_body_is_replaced_whole_when_rules_are_configured() -> None:
    for body in (f"email={SECRET}".encode(), b"\xff\xfe\x00binary", b'{"customer": {"emai'):
        assert redact_body(body, ["customer.email"]) == (REDACTED_NON_JSON, True)


def test_empty_body_stays_empty() -> None:
    assert redact_body(b"", ["customer.email"]) == (b"", False)


def test_escaped_member_name_is_still_matched() -> None:
    body = b'{"customer": {"em\\u0061il": "' + SECRET.encode() + b'"}}'
    out, changed = redact_body(body, ["customer.email"])
    assert changed
    assert SECRET.encode() not in out
    assert orjson.loads(out) == {"customer": {"email": REDACTED}}


def test_repeated_member_does_not_leak_its_first_value() -> None:
    body = b'{"token": "' + SECRET.encode() + b'", "token": "other"}'
    out, changed = redact_body(body, ["token"])
    assert changed
    assert SECRET.encode() not in out


def test_scalar_json_document_is_left_alone() -> None:
    body = b'"just a string"'
    assert redact_body(body, ["a.b"]) == (body, False)


def test_input_value_is_not_mutated() -> None:
    document = {"a": {"b": [1, {"c": 2}]}, "d": [{"c": 3}]}
    before = copy.deepcopy(document)
    out, changed = redact_value(document, ["a.b.*.c", "d.*.c"])
    assert changed
    assert document == before
    assert out == {"a": {"b": [1, {"c": REDACTED}]}, "d": [{"c": REDACTED}]}


def test_overlapping_rules_agree_in_any_order() -> None:
    document = {"a": {"b": 1, "c": 2}}
    assert redact_value(document, ["a.b", "a"])[0] == {"a": REDACTED}
    assert redact_value(document, ["a", "a.b"])[0] == {"a": REDACTED}


def test_deep_document_that_cannot_be_re_encoded_is_withheld() -> None:
    depth = 300  # orjson reads 1024 levels but writes only 254
    body = b'{"secret": "' + SECRET.encode() + b'", "deep": ' + b"[" * depth + b"]" * depth + b"}"
    out, changed = redact_body(body, ["secret"])
    assert changed
    assert out == REDACTED_UNENCODABLE


def test_compile_rules_splits_and_deduplicates() -> None:
    rules = compile_rules(["a.b", "a.*", "a.b", ""])
    assert rules.paths == (("a", "b"), ("a", "*"), ("",))
    assert compile_rules(rules) is rules
    assert not compile_rules([])


# -- properties ------------------------------------------------------------------------

SEGMENTS = ["a", "b", "ab", "*", "0", "1", "00", "", "x.y"]

keys = st.sampled_from(SEGMENTS) | st.text(max_size=3)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=5)
)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=4),
    max_leaves=30,
)
rule_lists = st.lists(
    st.lists(st.sampled_from(SEGMENTS), min_size=1, max_size=4).map(".".join), max_size=4
)

Step = tuple[str, str]  # (container kind, member name or index as a string)


def walk(node: Any, path: tuple[Step, ...] = ()) -> Iterator[tuple[tuple[Step, ...], Any]]:
    """Every node of a document with its concrete path."""
    yield path, node
    if isinstance(node, dict):
        for key, value in node.items():
            yield from walk(value, (*path, ("dict", key)))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from walk(value, (*path, ("list", str(index))))


def at(node: Any, path: tuple[Step, ...]) -> Any:
    for kind, key in path:
        node = node[key] if kind == "dict" else node[int(key)]
    return node


def rule_matches(rule: str, path: tuple[Step, ...]) -> bool:
    # Independent statement of the semantics: a segment matches a step when it is the
    # wildcard or equals the member name / the index written in decimal.
    segments = rule.split(".")
    return len(segments) == len(path) and all(
        seg == "*" or seg == key for seg, (_, key) in zip(segments, path, strict=True)
    )


def covered(rules: list[str], path: tuple[Step, ...]) -> bool:
    """Whether a rule matches the node at ``path`` or one of its ancestors."""
    return any(rule_matches(rule, path[:n]) for rule in rules for n in range(len(path) + 1))


@given(document=json_values, rules=rule_lists)
def test_redaction_changes_exactly_the_matched_fields(document: Any, rules: list[str]) -> None:
    body = orjson.dumps(document)
    out, changed = redact_body(body, rules)
    result = orjson.loads(out)  # valid JSON, always
    any_match = False
    for path, node in walk(document):
        parent_covered = covered(rules, path[:-1]) if path else False
        if covered(rules, path):
            if not parent_covered:
                any_match = True
                assert at(result, path) == REDACTED
        elif isinstance(node, dict):
            assert isinstance(at(result, path), dict)
            assert list(at(result, path)) == list(node)
        elif isinstance(node, list):
            assert len(at(result, path)) == len(node)
        else:
            assert at(result, path) == node
    assert changed == any_match
    if not changed:
        assert out is body


@given(body=st.binary(max_size=64), rules=st.lists(st.text(max_size=8), max_size=3))
def test_redaction_never_raises_on_any_bytes(body: bytes, rules: list[str]) -> None:
    out, changed = redact_body(body, rules)
    if not changed:
        assert out == body
    elif out != REDACTED_NON_JSON:
        orjson.loads(out)


@given(document=json_values, rules=st.lists(st.text(max_size=8), max_size=3))
def test_redaction_never_raises_on_any_rule(document: Any, rules: list[str]) -> None:
    out, _ = redact_body(orjson.dumps(document), rules)
    orjson.loads(out)


def test_a_repeated_name_cannot_hide_a_field_from_the_rules() -> None:
    # Parsed, the second "customer" wins and holds no email; a server that keeps the first
    # reads the email. The raw bytes must not be logged.
    for body in (
        b'{"customer": {"email": "%s"}, "customer": {"x": 1}}' % SECRET.encode(),
        b'{"customer": {"email": "%s"}, "customer": null}' % SECRET.encode(),
        b'[{"a": 1, "a": {"email": "%s"}}]' % SECRET.encode(),
    ):
        logged, changed = redact_body(body, ["customer.email"])
        assert changed and SECRET.encode() not in logged, body
    # A body whose match is re-serialised keeps only the values the rules saw.
    body = b'{"customer": {"email": "%s"}, "customer": {"email": "b"}}' % SECRET.encode()
    logged, changed = redact_body(body, ["customer.email"])
    assert changed and SECRET.encode() not in logged
    # Repeats in a body that needs no redaction and has no rule to hide from: untouched.
    assert redact_body(b'{"a": 1, "a": 2}', []) == (b'{"a": 1, "a": 2}', False)
    assert redact_body(b'{"a": 1, "a": 2}', ["b"]) == (REDACTED_REPEATED, True)

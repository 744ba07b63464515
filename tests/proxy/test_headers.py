"""Header sanitising rules: examples and Hypothesis properties over arbitrary header lists."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shadowproxy.proxy.headers import (
    client_response_headers,
    pick_request_id,
    upstream_request_headers,
    valid_request_id,
)

Headers = list[tuple[bytes, bytes]]

HOP_BY_HOP = {
    "connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding",
    "upgrade", "proxy-authenticate", "proxy-authorization",
}  # fmt: skip
FORWARDED = {"x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "forwarded"}
PROXY_SET = {"x-request-id", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"}
# Framing and Expect are re-derived or answered by the proxy; Host is sent on its own.
PROXY_OWNED = {"content-length", "expect", "host"}
ID_CHARS = "A-Za-z0-9._:@/+=-"
ID_RE = re.compile(f"[{ID_CHARS}]{{1,128}}")

PEER = "10.1.2.3"


def up(headers: Headers, rid: str = "rid-1", host: bytes | None = b"client.test") -> Headers:
    return upstream_request_headers(headers, request_id=rid, peer_ip=PEER, host=host)


def names(headers: Headers) -> list[str]:
    return [n.decode("latin-1").lower() for n, _ in headers]


def values(headers: Headers, name: str) -> list[bytes]:
    return [v for n, v in headers if n.decode("latin-1").lower() == name]


def connection_named(headers: Headers) -> set[str]:
    tokens: set[str] = set()
    for n, v in headers:
        if n.lower() == b"connection":
            tokens |= {t.strip().lower() for t in v.decode("latin-1").split(",")}
    return tokens - {"", "keep-alive", "close"}


# -- examples ---------------------------------------------------------------------------------


def test_upstream_headers_example() -> None:
    client = [
        (b"Host", b"client.test"),
        (b"Accept", b"application/json"),
        (b"Connection", b"keep-alive, X-Foo"),
        (b"X-Foo", b"drop"),
        (b"X-Forwarded-For", b"6.6.6.6"),
        (b"X-Shadow-Request", b"1"),
        (b"Content-Length", b"2"),
        (b"TE", b"trailers"),
        (b"X-Request-Id", b"client-id"),
        (b"Authorization", b"Bearer Token-CASE"),
    ]
    out = up(client, rid="client-id")
    kept = [(n, v) for n, v in out if n.lower() not in {b"host"}]
    assert kept == [
        (b"Accept", b"application/json"),
        (b"Authorization", b"Bearer Token-CASE"),
        (b"X-Request-Id", b"client-id"),
        (b"X-Forwarded-For", PEER.encode()),
        (b"X-Forwarded-Proto", b"http"),
        (b"X-Forwarded-Host", b"client.test"),
    ]


def test_upstream_headers_without_host_have_no_forwarded_host() -> None:
    out = up([(b"Accept", b"*/*")], host=None)
    assert "x-forwarded-host" not in names(out)
    assert values(out, "x-forwarded-for") == [PEER.encode()]


def test_connection_named_headers_are_dropped_whatever_their_position_and_case() -> None:
    out = up([(b"x-late", b"1"), (b"X-Keep", b"2"), (b"Connection", b" X-LATE ,close")])
    assert "x-late" not in names(out)
    assert values(out, "x-keep") == [b"2"]


def test_other_client_forwarding_headers_are_not_trusted() -> None:
    """Every X-Forwarded-* header is the proxy's to set, not only For/Proto/Host."""
    client = [
        (b"X-Forwarded-Port", b"443"),
        (b"X-Forwarded-Prefix", b"/admin"),
        (b"X-Forwarded-Server", b"evil"),
        (b"X-Forwarded-Ssl", b"on"),
    ]
    out = up(client)
    leaked = [n for n in names(out) if n.startswith("x-forwarded-") and n not in PROXY_SET]
    assert leaked == []


def test_client_response_headers_example() -> None:
    upstream = [
        (b"Content-Type", b"text/plain"),
        (b"Set-Cookie", b"a=1"),
        (b"Connection", b"X-Secret"),
        (b"X-Secret", b"1"),
        (b"Keep-Alive", b"timeout=5"),
        (b"Transfer-Encoding", b"chunked"),
        (b"Set-Cookie", b"b=2"),
        (b"X-Request-Id", b"from-upstream"),
        (b"Content-Length", b"12"),
    ]
    assert client_response_headers(upstream) == [
        (b"Content-Type", b"text/plain"),
        (b"Set-Cookie", b"a=1"),
        (b"Set-Cookie", b"b=2"),
        (b"Content-Length", b"12"),
    ]


@pytest.mark.parametrize(
    "value", [b"a", b"0", b"req-1", b"A.b_c:d@e/f+g=h-i", b"x" * 128, b"123e4567-e89b-12d3"]
)
def test_valid_request_ids(value: bytes) -> None:
    assert valid_request_id(value)
    assert pick_request_id([(b"X-Request-Id", value)]) == value.decode()


@pytest.mark.parametrize(
    "value",
    [b"", b"x" * 129, b"a b", b"a\tb", b"<script>", b"a;b", b'a"b', b"a,b", b"\xc3\xbc", b"a\x00"],
)
def test_invalid_request_ids(value: bytes) -> None:
    assert not valid_request_id(value)
    picked = pick_request_id([(b"x-request-id", value)])
    assert picked != value.decode("latin-1")
    assert valid_request_id(picked.encode())


def test_request_id_header_name_is_case_insensitive() -> None:
    assert pick_request_id([(b"Accept", b"*/*"), (b"x-REQUEST-id", b"mine")]) == "mine"


# -- properties -------------------------------------------------------------------------------


def random_case(name: str) -> st.SearchStrategy[str]:
    return st.lists(st.booleans(), min_size=len(name), max_size=len(name)).map(
        lambda flips: "".join(c.upper() if f else c for c, f in zip(name, flips, strict=True))
    )


token_names = st.from_regex(r"[A-Za-z][A-Za-z0-9!#$%&'*+.^_`|~-]{0,11}", fullmatch=True).filter(
    lambda n: (
        n.lower() not in HOP_BY_HOP | FORWARDED | PROXY_OWNED | {"x-request-id", "close"}
        and not n.lower().startswith(("x-shadow-", "x-forwarded-"))
    )
)
special_names = st.sampled_from(
    sorted(HOP_BY_HOP | FORWARDED | PROXY_OWNED | {"x-request-id"})
    + ["x-shadow-request", "x-shadow-anything", "X-Shadow-"]
).flatmap(random_case)
header_names = st.one_of(special_names, token_names, st.sampled_from(["x-foo", "x-bar", "X-Foo"]))
visible = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=0, max_size=20
)
header_values = st.one_of(
    visible,
    st.tuples(visible, visible).map(lambda t: f"{t[0]} {t[1]}" if t[0] and t[1] else t[0]),
)


@st.composite
def header_lists(draw: st.DrawFn) -> Headers:
    pool = draw(st.lists(header_names, min_size=1, max_size=6))
    headers = []
    for _ in range(draw(st.integers(0, 14))):
        if draw(st.integers(0, 5)) == 0:
            tokens = draw(st.lists(st.sampled_from([*pool, "keep-alive", "close"]), max_size=3))
            sep = draw(st.sampled_from([",", ", ", " , "]))
            headers.append(("Connection", sep.join(tokens)))
        else:
            name = draw(st.one_of(st.sampled_from(pool), header_names))
            headers.append((name, draw(header_values)))
    return [(n.encode(), v.encode()) for n, v in headers]


def is_end_to_end_request_header(name: str, tokens: set[str]) -> bool:
    return not (
        name in HOP_BY_HOP
        or name in tokens
        or name in FORWARDED
        or name in PROXY_OWNED
        or name == "x-request-id"
        or name.startswith("x-shadow-")
    )


@settings(max_examples=250, deadline=None)
@given(
    headers=header_lists(),
    rid=st.from_regex(ID_RE, fullmatch=True),
    host=st.one_of(st.none(), visible.filter(bool).map(str.encode)),
)
def test_upstream_request_headers_properties(
    headers: Headers, rid: str, host: bytes | None
) -> None:
    out = up(headers, rid=rid, host=host)
    out_names = names(out)
    tokens = connection_named(headers)
    assert not set(out_names) & HOP_BY_HOP
    assert not set(out_names) & (tokens - PROXY_SET - {"host"})
    assert not [n for n in out_names if n.startswith("x-shadow-")]
    assert "forwarded" not in out_names
    assert not {"content-length", "expect"} & set(out_names)
    # The proxy's own values, exactly once each; nothing the client sent for them.
    assert values(out, "x-request-id") == [rid.encode()]
    assert values(out, "x-forwarded-for") == [PEER.encode()]
    assert values(out, "x-forwarded-proto") == [b"http"]
    assert values(out, "x-forwarded-host") == ([] if host is None else [host])
    for value in values(out, "host"):
        assert value == host

    # Everything else is kept, in order, byte for byte.
    def end_to_end(hs: Headers) -> Headers:
        return [(n, v) for n, v in hs if is_end_to_end_request_header(n.decode().lower(), tokens)]

    assert end_to_end(out) == end_to_end(headers)
    assert set(out_names) <= {n.decode().lower() for n, _ in end_to_end(headers)} | PROXY_SET | {
        "host"
    }


@settings(max_examples=250, deadline=None)
@given(headers=header_lists())
def test_client_response_headers_properties(headers: Headers) -> None:
    out = client_response_headers(headers)
    out_names = names(out)
    tokens = connection_named(headers)
    assert not set(out_names) & HOP_BY_HOP
    assert not set(out_names) & tokens
    assert "x-request-id" not in out_names  # the proxy sets its own
    expected = [
        (n, v)
        for n, v in headers
        if (low := n.decode().lower()) not in HOP_BY_HOP
        and low not in tokens
        and low != "x-request-id"
    ]
    assert out == expected


@settings(max_examples=300, deadline=None)
@given(st.from_regex(ID_RE, fullmatch=True))
def test_well_formed_ids_are_kept(rid: str) -> None:
    assert valid_request_id(rid.encode())
    headers = [(b"Accept", b"*/*"), (b"X-Request-Id", rid.encode())]
    assert pick_request_id(headers) == rid


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_valid_request_id_matches_its_definition(value: bytes) -> None:
    try:
        text = value.decode("ascii")
    except UnicodeDecodeError:
        expected = False
    else:
        expected = ID_RE.fullmatch(text) is not None
    assert valid_request_id(value) is expected


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=200).filter(lambda v: not valid_request_id(v)),
        st.from_regex(ID_RE, fullmatch=True).map(lambda s: (s * 200)[:129].encode()),
    )
)
def test_malformed_ids_are_replaced_by_a_fresh_valid_one(value: bytes) -> None:
    first = pick_request_id([(b"X-Request-Id", value)])
    second = pick_request_id([(b"X-Request-Id", value)])
    assert valid_request_id(first.encode()) and valid_request_id(second.encode())
    assert first != second
    assert first.encode() != value


def test_absent_ids_are_generated_unique_and_valid() -> None:
    ids = {pick_request_id([(b"Accept", b"*/*")]) for _ in range(1000)}
    assert len(ids) == 1000
    assert all(valid_request_id(i.encode()) for i in ids)


_SEGMENT = st.sampled_from(
    [".", "..", "%2e", "%2E%2e", ".%2e", "a", "a.b", "...", ".x", "x.", "%2e%2e.json", ""]
)


@given(segments=st.lists(_SEGMENT, min_size=1, max_size=6), query=st.sampled_from(["", "?a=/../b"]))
def test_dot_segments_are_found_exactly_in_the_path(segments: list[str], query: str) -> None:
    from urllib.parse import unquote

    from shadowproxy.proxy.headers import has_dot_segment

    target = ("/" + "/".join(segments) + query).encode()
    expected = any(unquote(s) in (".", "..") for s in segments)
    assert has_dot_segment(target) is expected

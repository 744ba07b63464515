"""The pure header decisions the attacks above run into: Host, transfer codings, upgrades."""

from __future__ import annotations

import pytest

from shadowproxy.proxy.headers import list_tokens, offers_only_h2c, valid_host


@pytest.mark.parametrize(
    "value",
    [b"", b"a", b"model.ml.svc:8080", b"127.0.0.1", b"[::1]:80", b"[2001:db8::1]", b"a:",
     b"xn--bcher-kva.example", b"under_score.example", b"%41.example"],
)  # fmt: skip
def test_authorities_are_valid_hosts(value: bytes) -> None:
    assert valid_host(value)


@pytest.mark.parametrize(
    "value",
    [b"a, b", b"a b", b"a/b", b"user@a", b"a:80:80", b"a:b", b"[::1", b"::1", b"a\tb",
     b"a?b", b"a#b", b'"a"'],
)  # fmt: skip
def test_lists_paths_and_credentials_are_not_hosts(value: bytes) -> None:
    assert not valid_host(value)


@pytest.mark.parametrize(
    ("value", "tokens"),
    [
        (b"chunked", [b"chunked"]),
        (b" Chunked ", [b"chunked"]),
        (b",chunked,,", [b"chunked"]),
        (b"gzip,\tCHUNKED", [b"gzip", b"chunked"]),
        (b"", []),
    ],
)
def test_list_tokens(value: bytes, tokens: list[bytes]) -> None:
    assert list_tokens(value) == tokens


@pytest.mark.parametrize(
    ("upgrade", "declined"),
    [
        (b"h2c", True),
        (b"H2C, h2c", True),
        (b"websocket", False),
        (b"h2c, websocket", False),
        (b"h2c,TLS/1.2", False),
        (b"", False),
        (b" , ", False),
    ],
)
def test_only_an_offer_of_h2c_alone_is_declined_and_served(upgrade: bytes, declined: bool) -> None:
    assert offers_only_h2c(upgrade) is declined

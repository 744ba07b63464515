"""Oversized heads and broken chunked bodies, against a real ``shadowproxy serve`` process.

Heads beyond ``limits.max_header_bytes`` or ``limits.max_headers`` (the defaults: 32 KiB,
100 fields), chunk sizes that overflow or carry junk, and malformed trailers, each
followed by a smuggled request. What must hold for every attack is listed in
:func:`~tests.hardening.harness.assert_refused_and_contained`; an endless head must be
cut at the limit, not buffered.
"""

from __future__ import annotations

from tests.hardening.backend import CountingBackend
from tests.hardening.harness import assert_refused_and_contained, every_attack
from tests.hardening.test_smuggling import SMUGGLED
from tests.support.served import Served

HEAD = b"POST /attack HTTP/1.1\r\nHost: a\r\n"


def chunked(body: bytes) -> bytes:
    """A chunked ``POST /attack`` with ``body``, then a smuggled request."""
    return HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + body + SMUGGLED


OVERSIZED_HEADS = {
    "one_64k_header": HEAD + b"X-Big: " + b"v" * 65536 + b"\r\n\r\n" + SMUGGLED,
    # 4 MiB of header lines: refused once 32 KiB are in, never read to the end.
    "endless_head": HEAD + b"X-Many: vvvvvvvvvvvvvvvv\r\n" * 160_000 + b"\r\n" + SMUGGLED,
    "101_headers": HEAD + b"".join(b"X-H%d: 1\r\n" % i for i in range(101)) + b"\r\n" + SMUGGLED,
    "5000_empty_headers": HEAD + b"X-E:\r\n" * 5000 + b"\r\n" + SMUGGLED,
    "64k_request_line": b"GET /attack" + b"a" * 65536 + b" HTTP/1.1\r\nHost: a\r\n\r\n",
    "64k_header_name": HEAD + b"X-" + b"n" * 65536 + b": v\r\n\r\n" + SMUGGLED,
}

BROKEN_CHUNKS = {
    "overflowing_size": chunked(b"ffffffffffffffffffff\r\nab\r\n0\r\n\r\n"),
    "size_with_junk": chunked(b"2xyz\r\nab\r\n0\r\n\r\n"),
    "size_0x_prefix": chunked(b"0x2\r\nab\r\n0\r\n\r\n"),
    "negative_size": chunked(b"-2\r\nab\r\n0\r\n\r\n"),
    "space_before_size": chunked(b" 2\r\nab\r\n0\r\n\r\n"),
    "space_after_size": chunked(b"2 \r\nab\r\n0\r\n\r\n"),
    "nul_in_extension": chunked(b"2;e\x00\r\nab\r\n0\r\n\r\n"),
    "bare_lf_after_size": chunked(b"2\nab\r\n0\r\n\r\n"),
    "bare_lf_in_extension": chunked(b"2;e\nab\r\n0\r\n\r\n"),
    "data_longer_than_size": chunked(b"2\r\nabc\r\n0\r\n\r\n"),
    "data_without_crlf": chunked(b"2\r\nab0\r\n\r\n"),
    "empty_size_line": chunked(b"\r\nab\r\n0\r\n\r\n"),
}

MALFORMED_TRAILERS = {
    "no_colon": chunked(b"2\r\nab\r\n0\r\nnot a trailer\r\n\r\n"),
    "nul_in_value": chunked(b"2\r\nab\r\n0\r\nX-T: a\x00b\r\n\r\n"),
    "bare_lf": chunked(b"2\r\nab\r\n0\r\nX-T: a\n\r\n"),
    "obs_fold": chunked(b"2\r\nab\r\n0\r\nX-T: a\r\n b\r\n\r\n"),
    "content_length": chunked(b"2\r\nab\r\n0\r\nContent-Length: 40\r\n\r\n"),
    "space_before_colon": chunked(b"2\r\nab\r\n0\r\nX-T : a\r\n\r\n"),
    "endless_trailers": chunked(b"2\r\nab\r\n0\r\n" + b"X-T: vvvvvvvvvvvvvv\r\n" * 100_000),
}


async def test_oversized_heads_and_broken_chunks_are_refused_and_contained(
    proxy: Served, production: CountingBackend, candidate: CountingBackend
) -> None:
    attacks = every_attack(
        {"head": OVERSIZED_HEADS, "chunk": BROKEN_CHUNKS, "trailer": MALFORMED_TRAILERS}
    )
    # Ten rounds, a few at a time: each endless head is 4 MiB to write.
    await assert_refused_and_contained(
        proxy, (production, candidate), attacks, rounds=10, concurrency=8
    )

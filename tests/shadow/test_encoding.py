"""Compressed candidate answers: decoded for the comparator, never past the size cap."""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Callable

import aiohttp
import pytest
from aiohttp import web

from shadowproxy.errors import UpstreamError
from shadowproxy.pairing.record import PairRecord
from shadowproxy.shadow.encoding import CappedDecoder, content_coding, decoder_for
from tests.support.proxy import make_config, metric_value, running_proxy
from tests.support.servers import Backend
from tests.support.waiting import wait_for

CAP = 64 * 1024
ANSWER = b'{"outputs": [{"name": "probabilities", "shape": [1, 2], "data": [0.5, 0.5]}]}'


def _decode(coding: bytes, body: bytes, piece: int = 7, cap: int = CAP) -> bytes:
    """Feed ``body`` in ``piece``-byte pieces, as a socket would deliver it."""
    decoder = CappedDecoder(coding, cap)
    out = b"".join(decoder.feed(body[i : i + piece]) for i in range(0, len(body), piece))
    decoder.end()
    return out


def _refusal(coding: bytes, body: bytes, cap: int = CAP) -> tuple[str, int]:
    """The message a body is refused with, and how many bytes were decoded before."""
    decoder = CappedDecoder(coding, cap)
    with pytest.raises(UpstreamError) as caught:
        decoder.feed(body)
        decoder.end()
    assert caught.value.outcome == "invalid"
    return str(caught.value), decoder.size


@pytest.mark.parametrize(
    ("coding", "encode"),
    [(b"gzip", gzip.compress), (b"x-gzip", gzip.compress), (b"deflate", zlib.compress)],
)
def test_coded_bodies_decode_to_their_bytes_in_any_pieces(
    coding: bytes, encode: Callable[[bytes], bytes]
) -> None:
    body = encode(ANSWER * 50)
    assert _decode(coding, body, piece=1) == ANSWER * 50
    assert _decode(coding, body, piece=len(body)) == ANSWER * 50


def test_gzip_members_back_to_back_are_one_body() -> None:
    assert _decode(b"gzip", gzip.compress(b"abc") + gzip.compress(b"def")) == b"abcdef"


def test_a_body_of_exactly_the_cap_passes_and_one_byte_more_does_not() -> None:
    assert len(_decode(b"gzip", gzip.compress(bytes(CAP)))) == CAP
    message, produced = _refusal(b"gzip", gzip.compress(bytes(CAP + 1)))
    assert (
        message == f"gzip body decodes to more than limits.shadow_max_response_bytes ({CAP} bytes)"
    )
    assert produced == CAP + 1


def test_a_bomb_is_refused_having_produced_no_more_than_the_cap() -> None:
    bomb = gzip.compress(bytes(256 * 1024 * 1024), compresslevel=9)  # 256 MiB in ~250 KB
    assert len(bomb) < 300 * 1024
    _, produced = _refusal(b"gzip", bomb)
    assert produced == CAP + 1


@pytest.mark.parametrize(
    ("coding", "body", "message"),
    [
        (b"gzip", gzip.compress(ANSWER)[:-5], "gzip body ends inside its compressed stream"),
        (b"gzip", b"\x1f\x8b\x08\x00 not deflate at all", "gzip body is corrupt"),
        (b"deflate", zlib.compress(ANSWER) + b"tail", "deflate body has data after its end"),
    ],
    ids=["truncated", "corrupt", "trailing data"],
)
def test_broken_streams_are_refused(coding: bytes, body: bytes, message: str) -> None:
    assert _refusal(coding, body)[0].startswith(message)


@pytest.mark.parametrize("coding", [b"br", b"zstd", b"gzip, gzip"])
def test_codings_that_cannot_be_decoded_are_refused_by_name(coding: bytes) -> None:
    with pytest.raises(UpstreamError, match=f"content-encoding '{coding.decode()}' cannot be"):
        decoder_for(coding, CAP)


def test_identity_and_no_coding_need_no_decoder() -> None:
    assert decoder_for(b"", CAP) is None and decoder_for(b"identity", CAP) is None


def test_the_coding_is_read_from_every_content_encoding_field() -> None:
    lows = [b"content-type", b"content-encoding", b"content-encoding"]
    lines = [b"Content-Type: a/b\r\n", b"Content-Encoding: GZIP \r\n", b"content-encoding: br\r\n"]
    assert content_coding(lows, lines) == b"gzip, br"
    assert content_coding(lows[:1], lines[:1]) == b""


# -- behind the real proxy ---------------------------------------------------------------


def _answering(coding: str, body: bytes) -> web.Response:
    return web.Response(
        body=body, headers={"Content-Type": "application/json", "Content-Encoding": coding}
    )


@pytest.mark.parametrize(
    ("coding", "body", "outcome", "detail"),
    [
        ("gzip", gzip.compress(ANSWER), "ok", ""),
        ("br", b"\x0b\x02\x80opaque", "invalid", "content-encoding 'br' cannot be decoded"),
        ("gzip", gzip.compress(bytes(2 * 1024 * 1024)), "invalid", "gzip body decodes to more"),
    ],
    ids=["gzip", "unknown coding", "bomb"],
)
async def test_a_coded_candidate_answer_is_paired_decoded_or_counted_invalid(
    coding: str,
    body: bytes,
    outcome: str,
    detail: str,
    backend: Backend,
    candidate_backend: Backend,
) -> None:
    async def answer(request: web.Request) -> web.Response:
        return _answering(coding, body)

    candidate_backend.handler = answer
    config = make_config(
        backend.url,
        candidates=[{"name": "coded", "version": "1", "url": candidate_backend.url,
                     "timeout_ms": 2000}],
    )  # fmt: skip
    records: list[PairRecord] = []
    async with running_proxy(config) as rt, aiohttp.ClientSession() as session:
        rt.stream.subscribe(records.append)
        url = f"http://127.0.0.1:{rt.traffic_port}/v2/models/m/infer"
        async with session.post(url, data=b'{"x": 1}') as resp:
            assert resp.status == 200
        await wait_for(lambda: len(records) == 1, what="the pair record")
        counted = metric_value(
            rt, "shadowproxy_requests_total",
            role="candidate", model="coded", version="1", outcome=outcome,
        )  # fmt: skip
    shadow = records[0].shadows["coded"]
    assert (shadow.outcome, counted) == (outcome, 1), shadow.detail
    assert shadow.detail.startswith(detail)
    assert shadow.body == (ANSWER if outcome == "ok" else b"")

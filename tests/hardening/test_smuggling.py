"""Request smuggling over raw sockets, against a real ``shadowproxy serve`` process.

Each attack is a request whose framing a front proxy and a backend could read differently,
carrying a second request (``GET /smuggled``) where one of them would see a body. Every
attack is sent 30 times over fresh connections while a well-behaved client keeps
predicting: see :func:`~tests.hardening.harness.assert_refused_and_contained` for what
must hold. (``tests/proxy/test_malformed.py`` checks single shapes in process; this is
the same class of input at the system level, in volume, with a mirror behind the proxy.)
"""

from __future__ import annotations

from tests.hardening.backend import CountingBackend
from tests.hardening.harness import assert_refused_and_contained, every_attack
from tests.support.served import Served

SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n"
# A chunked body that ends at once, then the smuggled request: what a parser that trusts
# Transfer-Encoding sees. One that trusts Content-Length sees it all as the body.
CHUNKED_THEN_SMUGGLED = b"0\r\n\r\n" + SMUGGLED


def attack(*lines: bytes, body: bytes = CHUNKED_THEN_SMUGGLED, version: bytes = b"1.1") -> bytes:
    """``POST /attack`` with a Host and the given header lines, then ``body``."""
    head = b"POST /attack HTTP/%s\r\nHost: a\r\n" % version
    return head + b"".join(line + b"\r\n" for line in lines) + b"\r\n" + body


CL = b"Content-Length: %d" % len(CHUNKED_THEN_SMUGGLED)

CONTENT_LENGTH_AND_TRANSFER_ENCODING = {
    "cl_then_te": attack(CL, b"Transfer-Encoding: chunked"),
    "te_then_cl": attack(b"Transfer-Encoding: chunked", CL),
    "double_cl_equal": attack(CL, CL),
    "double_cl_different": attack(b"Content-Length: 0", CL),
    "cl_list": attack(CL + b", " + CL[16:]),
    "cl_and_te_on_http_1_0": attack(CL, b"Transfer-Encoding: chunked", version=b"1.0"),
}

OBFUSCATED_TRANSFER_ENCODING = {
    "xchunked": attack(CL, b"Transfer-Encoding: xchunked"),
    "xchunked_alone": attack(b"Transfer-Encoding: xchunked"),
    "leading_space_in_value": attack(CL, b"Transfer-Encoding:  chunked"),
    "space_before_name": attack(CL, b" Transfer-Encoding: chunked"),
    "space_before_colon": attack(CL, b"Transfer-Encoding : chunked"),
    "chunked_then_identity": attack(b"Transfer-Encoding: chunked, identity"),
    "chunked_twice": attack(b"Transfer-Encoding: chunked, chunked"),
    "two_fields": attack(b"Transfer-Encoding: chunked", b"Transfer-Encoding: identity"),
    # gzip is never decoded by the proxy: forwarded, it would reach production still
    # compressed with no header saying so (501, RFC 9112 §6.1).
    "gzip_then_chunked": attack(b"Transfer-Encoding: gzip, chunked"),
    "tab_before_value": attack(CL, b"Transfer-Encoding:\tchunked"),
    "vertical_tab_before_value": attack(CL, b"Transfer-Encoding:\x0bchunked"),
    "vertical_tab_alone": attack(b"Transfer-Encoding:\x0bchunked"),
    "tab_after_name": attack(CL, b"Transfer-Encoding\t: chunked"),
    "obs_fold_value": attack(CL, b"Transfer-Encoding:", b" chunked"),
    "obs_fold_field": attack(CL, b"X-Folded: a", b" Transfer-Encoding: chunked"),
    "te_on_http_1_0": attack(b"Transfer-Encoding: chunked", version=b"1.0"),
}

LINE_ENDINGS_AND_CONTROL_BYTES = {
    "bare_lf_everywhere": (
        b"POST /attack HTTP/1.1\nHost: a\n%s\nTransfer-Encoding: chunked\n\n" % CL
        + CHUNKED_THEN_SMUGGLED
    ),
    "bare_lf_after_te": attack(CL, b"Transfer-Encoding: chunked\nX-A: b"),
    "bare_lf_ends_head": b"POST /attack HTTP/1.1\r\nHost: a\r\n%s\r\n\n" % CL
    + CHUNKED_THEN_SMUGGLED,
    "bare_cr_line_ending": attack(CL, b"Transfer-Encoding: chunked\rX-A: b"),
    "nul_in_value": attack(CL, b"X-A: b\x00c"),
    "nul_in_te_value": attack(b"Transfer-Encoding: chunked\x00"),
    "cr_in_value": attack(CL, b"X-A: b\rc"),
    "cr_in_name": attack(CL, b"X-\rA: b"),
    "nul_in_cl": attack(b"Content-Length: 4\x00"),
    "lf_in_request_line": b"POST /attack\nHTTP/1.1\r\nHost: a\r\n%s\r\n\r\n" % CL
    + CHUNKED_THEN_SMUGGLED,
}

DUPLICATE_OR_INVALID_HOST = {
    "two_hosts": b"GET /attack HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n" + SMUGGLED,
    "two_hosts_other_case": b"GET /attack HTTP/1.1\r\nHost: a\r\nhOsT: b\r\n\r\n" + SMUGGLED,
    "empty_and_set": b"GET /attack HTTP/1.1\r\nHost:\r\nHost: b\r\n\r\n" + SMUGGLED,
    "host_list": b"GET /attack HTTP/1.1\r\nHost: a, b\r\n\r\n" + SMUGGLED,
    "no_host": b"GET /attack HTTP/1.1\r\nX-A: b\r\n\r\n" + SMUGGLED,
}


FAMILIES = {
    "cl_te": CONTENT_LENGTH_AND_TRANSFER_ENCODING,
    "te": OBFUSCATED_TRANSFER_ENCODING,
    "bytes": LINE_ENDINGS_AND_CONTROL_BYTES,
    "host": DUPLICATE_OR_INVALID_HOST,
}


async def test_smuggling_attempts_are_refused_and_contained(
    proxy: Served, production: CountingBackend, candidate: CountingBackend
) -> None:
    await assert_refused_and_contained(proxy, (production, candidate), every_attack(FAMILIES))

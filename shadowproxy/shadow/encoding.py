"""Content codings of candidate answers, decoded under a size cap (pure: bytes in, bytes out).

A shadow copy carries the client's ``Accept-Encoding``, so a candidate may well answer
``Content-Encoding: gzip``; the comparator needs the decoded answer. A compressed body is
also the cheapest way to make a reader allocate: a kilobyte of gzip inflates to a
megabyte, a megabyte to a gigabyte. The decoder here therefore never produces more than
``cap + 1`` bytes, whatever it is fed: it asks zlib for at most what is left under the cap,
and the first byte beyond it refuses the answer. A bomb costs what one answer of ``cap``
bytes costs, and the raw bytes read are capped separately by the caller.

``gzip`` (and its alias ``x-gzip``) and ``deflate`` (the zlib format, RFC 9110 §8.4.1.2)
are decoded; ``identity`` is nothing to decode. Any other coding, or several codings
stacked, cannot be compared and is refused rather than passed on as opaque bytes.
Refusals are :class:`~shadowproxy.errors.UpstreamError` with the ``invalid`` outcome: the
candidate answered something that cannot be used.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable

from shadowproxy.errors import UpstreamError

CONTENT_ENCODING = b"content-encoding"
# zlib window bits: 16 + 15 reads exactly one gzip member, 15 one zlib stream.
_WBITS = {b"gzip": 16 + zlib.MAX_WBITS, b"x-gzip": 16 + zlib.MAX_WBITS, b"deflate": zlib.MAX_WBITS}


def content_coding(lows: Iterable[bytes], lines: Iterable[bytes]) -> bytes:
    """The ``Content-Encoding`` of a response head, lower-case; empty when there is none.

    ``lows`` and ``lines`` are a head's lower-case header names and their serialized
    ``Name: value\\r\\n`` lines, in order; repeated fields are joined with commas, as the
    field's list syntax says they mean the same.
    """
    values = [
        line.split(b":", 1)[1].strip().lower()
        for low, line in zip(lows, lines, strict=True)
        if low == CONTENT_ENCODING
    ]
    return b", ".join(v for v in values if v)


class CappedDecoder:
    """Decodes one coded body fed in pieces, refusing it once its output passes ``cap``."""

    __slots__ = ("coding", "cap", "size", "_wbits", "_zlib", "_open")

    def __init__(self, coding: bytes, cap: int) -> None:
        wbits = _WBITS.get(coding)
        if wbits is None:
            raise UpstreamError(
                f"content-encoding {coding.decode('latin-1')!r} cannot be decoded "
                "(gzip, deflate and identity can)",
                "invalid",
            )
        self.coding = coding.decode("latin-1")
        self.cap = cap
        self.size = 0  # bytes produced so far
        self._wbits = wbits
        self._zlib = zlib.decompressobj(wbits)
        self._open = False  # the current stream has begun and not yet ended

    def feed(self, data: bytes) -> bytes:
        """The decoded bytes of the next piece of the body."""
        out: list[bytes] = []
        while data:
            self._open = True
            try:
                chunk = self._zlib.decompress(data, self.cap - self.size + 1)
            except zlib.error as exc:
                raise UpstreamError(f"{self.coding} body is corrupt: {exc}", "invalid") from exc
            self.size += len(chunk)
            if self.size > self.cap:
                raise UpstreamError(
                    f"{self.coding} body decodes to more than "
                    f"limits.shadow_max_response_bytes ({self.cap} bytes)",
                    "invalid",
                )
            out.append(chunk)
            # Input zlib left for lack of room under the cap; there is room again now.
            data = self._zlib.unconsumed_tail
            if self._zlib.eof:
                data = self._zlib.unused_data
                if data and self._wbits == zlib.MAX_WBITS:
                    raise UpstreamError(f"{self.coding} body has data after its end", "invalid")
                # A gzip body may be several members back to back (RFC 1952 §2.2).
                self._zlib = zlib.decompressobj(self._wbits)
                self._open = False
        return b"".join(out)

    def end(self) -> None:
        """The body is complete: refuse it if its compressed stream was cut short."""
        if self._open:
            raise UpstreamError(f"{self.coding} body ends inside its compressed stream", "invalid")


def decoder_for(coding: bytes, cap: int) -> CappedDecoder | None:
    """The decoder of a body coded with ``coding``; None when it is not coded at all."""
    if coding in (b"", b"identity"):
        return None
    return CappedDecoder(coding, cap)

"""A fast model server on loopback that records everything the proxy sends it.

The hardening suite puts one in front of production and one behind the mirrored candidate:
whatever an attack gets past the proxy, smuggled inside a body or forwarded when it should
have been refused, lands in ``requests``; bytes that do not parse as HTTP (a desynchronised
stream) land in ``anomalies``. It parses with llhttp (httptools) on raw asyncio protocols,
fast enough to take a flood of pipelined requests without becoming the bottleneck.
"""

from __future__ import annotations

import asyncio
import zlib
from dataclasses import dataclass, field
from typing import cast

import httptools
import orjson

REQUEST_ID = b"x-request-id"


@dataclass(frozen=True, slots=True)
class Received:
    """One request as the backend parsed it."""

    method: bytes
    path: bytes
    request_id: str | None
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes

    def header(self, name: bytes) -> bytes | None:
        low = name.lower()
        return next((v for n, v in self.headers if n.lower() == low), None)


@dataclass
class CountingBackend:
    """A model server answering every request with a small JSON echo.

    The answer names the backend and echoes the request id, path, body size and CRC-32,
    so a client can tell its answer is the one for its request. ``response_bytes`` pads every
    answer to at least that size (for clients that never read). With ``record=False``
    requests are only counted (floods of 100k requests).
    """

    name: str
    response_bytes: int = 0
    record: bool = True
    requests: list[Received] = field(default_factory=list)
    count: int = 0
    connections: int = 0
    anomalies: list[str] = field(default_factory=list)
    port: int = 0
    _server: asyncio.Server | None = None
    _open: set[asyncio.Transport] = field(default_factory=set)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> CountingBackend:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Connection(self), "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for transport in list(self._open):
                transport.abort()
            await self._server.wait_closed()

    def from_clients(self) -> list[Received]:
        """Requests the proxy forwarded for clients: the readiness probe has no request id."""
        return [r for r in self.requests if r.request_id is not None]

    def attacks(self) -> list[Received]:
        """Forwarded requests that came from an attacker (their paths say so)."""
        return [r for r in self.from_clients() if b"attack" in r.path or b"smuggled" in r.path]

    def answer(self, received: Received) -> bytes:
        body = orjson.dumps(
            {
                "who": self.name,
                "rid": received.request_id,
                "path": received.path.decode("latin-1"),
                "bytes": len(received.body),
                "crc32": zlib.crc32(received.body),
            }
        )
        if len(body) < self.response_bytes:
            # JSON followed by whitespace is still the same JSON document.
            body += b" " * (self.response_bytes - len(body))
        head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
        return head % len(body) + (b"" if received.method == b"HEAD" else body)


class _Connection(asyncio.Protocol):
    def __init__(self, server: CountingBackend) -> None:
        self.server = server
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self._reset()

    def _reset(self) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement the interface without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        self.server.connections += 1
        self.server._open.add(self.transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None:
            self.server._open.discard(self.transport)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._anomaly(f"a protocol upgrade reached the backend: {data[:120]!r}")
        except httptools.HttpParserError as exc:
            self._anomaly(f"unparsable bytes ({exc}): {data[:120]!r}")

    def _anomaly(self, what: str) -> None:
        self.server.anomalies.append(what)
        if self.transport is not None:
            self.transport.close()

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        server = self.server
        server.count += 1
        rid = next((v for n, v in self.headers if n.lower() == REQUEST_ID), None)
        received = Received(
            self.parser.get_method(),
            self.url,
            None if rid is None else rid.decode("latin-1"),
            tuple(self.headers),
            b"".join(self.body),
        )
        if server.record:
            server.requests.append(received)
        self._reset()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(server.answer(received))
            if not self.parser.should_keep_alive():
                self.transport.close()

"""Raw-socket helpers for the proxy tests: send exact bytes, parse exact responses."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from tests.support.servers import RawServer, Seen, read_request


@dataclass
class RawResponse:
    """One response as read off the wire, with the header case and order kept."""

    status: int
    reason: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    chunked: bool = False
    close_delimited: bool = False
    raw: bytes = b""
    version: bytes = b"HTTP/1.1"
    interim: list[int] = field(default_factory=list)

    def get(self, name: str) -> str | None:
        values = self.get_all(name)
        return values[0] if values else None

    def get_all(self, name: str) -> list[str]:
        low = name.lower().encode()
        return [v.decode("latin-1") for n, v in self.headers if n.lower() == low]

    def names(self) -> set[str]:
        return {n.decode("latin-1").lower() for n, _ in self.headers}

    def json(self) -> object:
        import json

        return json.loads(self.body)


def parse_head(head: bytes) -> tuple[bytes, int, bytes, list[tuple[bytes, bytes]]]:
    lines = head.split(b"\r\n")
    version, _, rest = lines[0].partition(b" ")
    code, _, reason = rest.partition(b" ")
    headers = []
    for line in lines[1:]:
        if not line:
            continue
        name, _, value = line.partition(b":")
        headers.append((name, value.strip(b" \t")))
    return version, int(code), reason, headers


async def read_response(reader: asyncio.StreamReader, *, head_request: bool = False) -> RawResponse:
    """Read one response; 1xx interim responses are skipped and listed in ``interim``."""
    interim: list[int] = []
    while True:
        head = await reader.readuntil(b"\r\n\r\n")
        version, status, reason, headers = parse_head(head)
        if 100 <= status < 200:
            interim.append(status)
            continue
        break
    resp = RawResponse(status, reason, headers, b"", version=version, interim=interim)
    raw = [head]
    te = (resp.get("transfer-encoding") or "").lower()
    length = resp.get("content-length")
    if head_request or status in (204, 304):
        pass
    elif "chunked" in te:
        resp.chunked = True
        parts = []
        while True:
            size_line = await reader.readuntil(b"\r\n")
            raw.append(size_line)
            size = int(size_line.split(b";")[0].strip(), 16)
            if size == 0:
                trailer = await reader.readuntil(b"\r\n")
                raw.append(trailer)
                while trailer != b"\r\n":
                    trailer = await reader.readuntil(b"\r\n")
                    raw.append(trailer)
                break
            chunk = await reader.readexactly(size + 2)
            raw.append(chunk)
            assert chunk.endswith(b"\r\n"), "chunk not terminated by CRLF"
            parts.append(chunk[:-2])
        resp.body = b"".join(parts)
    elif length is not None:
        resp.body = await reader.readexactly(int(length))
        raw.append(resp.body)
    else:
        resp.close_delimited = True
        resp.body = await reader.read(-1)
        raw.append(resp.body)
    resp.raw = b"".join(raw)
    return resp


@contextlib.asynccontextmanager
async def connect(
    port: int, rcvbuf: int | None = None
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """A raw client connection to the traffic listener."""
    if rcvbuf is None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    else:
        import socket

        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        reader, writer = await asyncio.open_connection(sock=sock, limit=2**16)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def exchange(
    port: int, data: bytes, *, head_request: bool = False, timeout: float = 5.0
) -> RawResponse:
    """Send exact bytes on a new connection and read one response."""
    async with connect(port) as (reader, writer):
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(read_response(reader, head_request=head_request), timeout)


async def read_all_until_close(reader: asyncio.StreamReader, timeout: float = 5.0) -> bytes:
    """Everything the peer sends until it closes (a reset ends the read too)."""
    out = bytearray()
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"peer did not close within {timeout}s; got {bytes(out)[:200]!r}")
        try:
            chunk = await asyncio.wait_for(reader.read(65536), left)
        except (ConnectionResetError, BrokenPipeError):
            return bytes(out)
        except TimeoutError:
            continue
        if not chunk:
            return bytes(out)
        out += chunk


def forwarded(seen: list[Seen]) -> list[Seen]:
    """Requests the proxy forwarded for clients (the readiness probe has no X-Request-Id)."""
    return [s for s in seen if seen_header(s, "x-request-id")]


def seen_headers(seen: Seen, name: str) -> list[str]:
    """Every value of ``name`` (any case) a backend received, in order."""
    low = name.lower().encode()
    return [v.decode("latin-1") for n, v in seen.raw_headers if n.lower() == low]


def seen_header(seen: Seen, name: str) -> str | None:
    values = seen_headers(seen, name)
    return values[0] if values else None


def seen_names(seen: Seen) -> set[str]:
    return {n.decode("latin-1").lower() for n, _ in seen.raw_headers}


def request_bytes(
    method: str = "GET",
    target: str = "/",
    headers: list[tuple[str, str]] | None = None,
    body: bytes = b"",
    *,
    host: str | None = "proxy.test",
    version: str = "HTTP/1.1",
    content_length: bool = True,
) -> bytes:
    lines = [f"{method} {target} {version}"]
    if host is not None:
        lines.append(f"Host: {host}")
    for name, value in headers or []:
        lines.append(f"{name}: {value}")
    if content_length and (body or method in ("POST", "PUT", "PATCH")):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


# -- raw upstreams ---------------------------------------------------------------------

Respond = Callable[[bytes, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[bool]]

PROBE_ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def is_probe(request: bytes) -> bool:
    return b"\r\nx-request-id:" not in request.lower()


class RawUpstream(RawServer):
    """A RawServer that answers the readiness probe and hands proxied requests to ``respond``.

    ``respond`` returns True to keep reading requests on the connection, False to close it.
    Every proxied request is recorded in ``requests``.
    """

    def __init__(self, respond: Respond) -> None:
        self.respond = respond
        self.requests: list[bytes] = []
        super().__init__(self._loop)

    async def _loop(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                request = await read_request(reader)
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            if is_probe(request):
                writer.write(PROBE_ANSWER)
                await writer.drain()
                continue
            self.requests.append(request)
            if not await self.respond(request, reader, writer):
                return


def fixed(response: bytes, *, close: bool = False) -> Respond:
    """An upstream that answers every proxied request with the same bytes."""

    async def respond(_req: bytes, _r: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
        w.write(response)
        await w.drain()
        return not close

    return respond


@contextlib.asynccontextmanager
async def raw_upstream(respond: Respond) -> AsyncIterator[RawUpstream]:
    server = RawUpstream(respond)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()

"""Misbehaving candidate servers, run in their own process.

``python -m tests.shadow.faulty_servers SLOW_DELAY_S`` starts one socket-level server per
fault on 127.0.0.1, prints ``{"kind": port, ...}`` as one JSON line, and serves until its
standard input closes (so it ends with the test process that started it).

A separate process keeps the faults' own work (streaming 50 MB, say) off the event loop
that measures production latency: what the test then sees is the proxy's cost alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
import sys
from collections.abc import Awaitable, Callable

SLOW_DELAY_S = 0.1
OK_BODY = b'{"outputs": [{"name": "probabilities", "data": [0.5, 0.5]}]}'
GARBAGE = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 this is not HTTP \x00\xff\xfe\r\n\r\n"
HUGE = 50 * 1024 * 1024
CHUNK = b"x" * (256 * 1024)
METADATA_URL = b"http://169.254.169.254/latest/meta-data/iam/security-credentials/"


async def read_request(reader: asyncio.StreamReader) -> bool:
    """Read one request (head and Content-Length body); False at end of stream."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return False
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    if length:
        await reader.readexactly(length)
    return True


async def wait_closed(reader: asyncio.StreamReader) -> None:
    with contextlib.suppress(ConnectionError):
        while await reader.read(65536):
            pass


def response(status: bytes, body: bytes, *extra: bytes) -> bytes:
    head = [b"HTTP/1.1 " + status, b"Content-Type: application/json",
            b"Content-Length: %d" % len(body), *extra]  # fmt: skip
    return b"\r\n".join(head) + b"\r\n\r\n" + body


async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while await read_request(reader):
        await asyncio.sleep(SLOW_DELAY_S)
        writer.write(response(b"200 OK", OK_BODY))
        await writer.drain()


async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    if await read_request(reader):
        await wait_closed(reader)  # never answers


async def reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    if await read_request(reader):
        sock = writer.get_extra_info("socket")
        # SO_LINGER with a zero timeout: close() sends RST instead of FIN.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()


async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    if await read_request(reader):
        writer.write(GARBAGE)
        await writer.drain()
        await wait_closed(reader)


async def huge(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A declared 50 MB body, sent as fast as the proxy reads it."""
    if await read_request(reader):
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % HUGE
        )
        sent = 0
        while sent < HUGE:
            writer.write(CHUNK)
            sent += len(CHUNK)
            await writer.drain()


async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A chunked body that never ends."""
    if await read_request(reader):
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        frame = b"%x\r\n%s\r\n" % (len(CHUNK), CHUNK)
        while True:
            writer.write(frame)
            await writer.drain()


async def redirect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while await read_request(reader):
        writer.write(
            response(b"302 Found", b"", b"Location: " + METADATA_URL, b"Connection: keep-alive")
        )
        await writer.drain()


async def status500(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while await read_request(reader):
        writer.write(response(b"500 Internal Server Error", b'{"error": "internal"}'))
        await writer.drain()


KINDS = {
    "slow": slow,
    "hang": hang,
    "reset": reset,
    "garbage": garbage,
    "huge": huge,
    "endless": endless,
    "redirect": redirect,
    "status500": status500,
}


def _guard(
    handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, OSError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    return serve


async def main() -> None:
    global SLOW_DELAY_S
    if len(sys.argv) > 1:
        SLOW_DELAY_S = float(sys.argv[1])
    servers = {}
    for kind, handler in KINDS.items():
        servers[kind] = await asyncio.start_server(_guard(handler), "127.0.0.1", 0)
    ports = {kind: s.sockets[0].getsockname()[1] for kind, s in servers.items()}
    print(json.dumps(ports), flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)  # until the parent goes away


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())

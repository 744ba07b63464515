"""Misbehaving candidate servers, run in their own process.

``python -m tests.support.faulty_servers SLOW_DELAY_S`` starts one socket-level server per
fault on 127.0.0.1, prints ``{"kind": port, ...}`` as one JSON line, and serves until its
standard input closes (so it ends with the test process that started it); tests start it
with :func:`faulty_servers`.

A separate process keeps the faults' own work (streaming 50 MB, say) off the event loop
that measures production latency: what the test then sees is the proxy's cost alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
import subprocess
import sys
import zlib
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

SLOW_DELAY_S = 0.1
OK_BODY = b'{"outputs": [{"name": "probabilities", "data": [0.5, 0.5]}]}'
GARBAGE = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 this is not HTTP \x00\xff\xfe\r\n\r\n"
HUGE = 50 * 1024 * 1024
GIGABYTE = 1024 * 1024 * 1024
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


def send_reset(writer: asyncio.StreamWriter) -> None:
    """Close ``writer``'s connection with a TCP reset, not an orderly FIN."""
    sock = writer.get_extra_info("socket")
    # SO_LINGER with a zero timeout: close() sends RST instead of FIN.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    if await read_request(reader):
        send_reset(writer)


async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    if await read_request(reader):
        writer.write(GARBAGE)
        await writer.drain()
        await wait_closed(reader)


async def pour(writer: asyncio.StreamWriter, head: bytes, piece: bytes, times: int = 0) -> None:
    """Write ``head``, then ``piece`` ``times`` times (0: forever), as fast as it is read."""
    writer.write(head)
    sent = 0
    while not times or sent < times:
        writer.write(piece)
        sent += 1
        await writer.drain()


async def huge(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A declared 50 MB body, sent as fast as the proxy reads it."""
    if await read_request(reader):
        head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
        await pour(writer, head % HUGE, CHUNK, HUGE // len(CHUNK))


def chunk_frame(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A chunked body that never ends."""
    if await read_request(reader):
        head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        await pour(writer, head + b"Transfer-Encoding: chunked\r\n\r\n", chunk_frame(CHUNK))


async def gigabyte(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """1 GiB with neither a length nor chunks: the body ends only when the connection does."""
    if await read_request(reader):
        head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n"
        await pour(writer, head, CHUNK, GIGABYTE // len(CHUNK))


def _zeros_gzip() -> tuple[bytes, bytes]:
    """A gzip header and a deflate block of 1 MiB of zeros that can be repeated at will.

    A full flush ends each block on a byte boundary with an empty dictionary, so the same
    1 KB block can follow itself any number of times in one valid gzip stream.
    """
    zeros = bytes(1024 * 1024)
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    first = packer.compress(zeros) + packer.flush(zlib.Z_FULL_FLUSH)
    block = packer.compress(zeros) + packer.flush(zlib.Z_FULL_FLUSH)
    return first, block


GZIP_FIRST, GZIP_BLOCK = _zeros_gzip()


async def gzip_bomb(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """``Content-Encoding: gzip``: each KB sent inflates to 1 MiB, for as long as it is read."""
    if await read_request(reader):
        head = (
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b"Content-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        # 16 MiB inflated per frame, a gigabyte every 64 frames, without end
        await pour(writer, head + chunk_frame(GZIP_FIRST), chunk_frame(GZIP_BLOCK * 16))


async def bad_chunked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A chunked body whose chunk size is not hexadecimal."""
    while await read_request(reader):
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
            b'5\r\n{"a":\r\nzz\r\n1}\r\n0\r\n\r\n'
        )
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
    "gigabyte": gigabyte,
    "gzip_bomb": gzip_bomb,
    "bad_chunked": bad_chunked,
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


@contextlib.contextmanager
def faulty_servers(slow_delay_s: float = SLOW_DELAY_S) -> Iterator[dict[str, int]]:
    """This module's servers in a process of their own: ``{kind: port}`` while it runs."""
    proc = subprocess.Popen(
        [sys.executable, "-m", __name__, str(slow_delay_s)],
        cwd=Path(__file__).resolve().parents[2],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stdin is not None
    try:
        yield json.loads(proc.stdout.readline())
    finally:
        proc.stdin.close()  # the servers stop when their standard input closes
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())

"""The upstream pool on its own: a caller that gave up before its connection opened."""

from __future__ import annotations

import asyncio

from shadowproxy.errors import UpstreamError
from shadowproxy.proxy.upstream import (
    ResponseHead,
    UpstreamConnection,
    UpstreamPool,
    UpstreamTarget,
    build_request,
)


class Sink:
    """A caller of the pool that can give up, as a deadline makes it."""

    def __init__(self) -> None:
        self.abandoned = False
        self.status: int | None = None
        self.body = b""
        self.finished = asyncio.get_running_loop().create_future()

    def attach(self, conn: UpstreamConnection) -> None:
        pass

    def on_head(self, status: int, reason: bytes, head: ResponseHead, framed: bool) -> None:
        self.status = status

    def on_body(self, data: bytes) -> None:
        self.body += data

    def on_complete(self) -> None:
        self.finished.set_result(None)

    def on_error(self, exc: UpstreamError) -> None:
        self.finished.set_exception(exc)


async def test_a_request_given_up_on_before_its_connection_opened_is_never_sent() -> None:
    received: list[bytes] = []
    accepted = asyncio.Event()

    async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.set()
        while line := await reader.readline():
            received.append(line)
            if line == b"\r\n":
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(upstream, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    pool = UpstreamPool(
        "candidate", UpstreamTarget(f"http://127.0.0.1:{port}"), connect_timeout_s=5, max_idle=4
    )
    request = build_request(b"POST", b"/infer", b"up", b"", b"{}")
    try:
        late = Sink()
        pool.request(request, late)
        late.abandoned = True  # its deadline passes while the connection is being opened
        await asyncio.wait_for(accepted.wait(), 5)
        for _ in range(50):
            if pool.idle_count:
                break
            await asyncio.sleep(0.01)
        # The connection opened, and was kept for the next caller; nothing was sent on it.
        assert pool.idle_count == 1 and received == []
        assert not late.finished.done()
        on_time = Sink()
        pool.request(request, on_time)
        await asyncio.wait_for(on_time.finished, 5)
        assert on_time.status == 200 and on_time.body == b"ok"
        assert received[0] == b"POST /infer HTTP/1.1\r\n"
        assert sum(line.startswith(b"POST") for line in received) == 1
    finally:
        await pool.close()
        server.close()
        await server.wait_closed()

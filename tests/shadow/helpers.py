"""Helpers shared by the shadowing, admin and lifecycle tests.

Everything here talks to real servers on loopback: backends on a chosen port, echo
handlers that return what they received, and polling helpers that wait for background
shadow work to settle.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Awaitable, Callable, Iterable

import aiohttp
import orjson
from aiohttp import web

from tests.support.servers import Backend, Seen


class PortBackend(Backend):
    """A :class:`Backend` bound to a port chosen by the test (for servers that come late)."""

    async def start_on(self, port: int) -> PortBackend:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port, reuse_address=True)
        await site.start()
        self.port = port
        return self


def client_requests(backend: Backend) -> list[Seen]:
    """What a backend got from clients through the proxy, without readiness probes.

    Every proxied request carries an ``X-Request-Id``; the proxy's readiness probe does not.
    """
    return [s for s in backend.seen if any(n.lower() == b"x-request-id" for n, _ in s.raw_headers)]


def header(seen: Seen, name: str) -> str | None:
    """The first value of header ``name`` (any case) as received, or None."""
    wanted = name.lower().encode()
    for n, v in seen.raw_headers:
        if n.lower() == wanted:
            return v.decode("latin-1")
    return None


def header_values(seen: Seen, name: str) -> list[str]:
    wanted = name.lower().encode()
    return [v.decode("latin-1") for n, v in seen.raw_headers if n.lower() == wanted]


def seen_ids(backend: Backend) -> list[str]:
    return [header(s, "X-Request-Id") or "" for s in client_requests(backend)]


def echo_handler(
    tag: str, *, extra: dict[str, object] | None = None, with_body: bool = True
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """A handler answering with who it is, the request id it got and the body it got."""

    async def handle(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        payload: dict[str, object] = {
            "who": tag,
            "rid": request.headers.get("X-Request-Id"),
            **({"body": body.decode("utf-8", "replace")} if with_body else {}),
            **(extra or {}),
        }
        return web.Response(body=orjson.dumps(payload), content_type="application/json")

    return handle


async def timed_post(
    session: aiohttp.ClientSession, url: str, body: bytes, headers: dict[str, str] | None = None
) -> tuple[float, int, bytes, aiohttp.typedefs.LooseHeaders]:
    """One POST: (seconds, status, body, headers)."""
    start = time.perf_counter()
    async with session.post(url, data=body, headers=headers) as resp:
        data = await resp.read()
        elapsed = time.perf_counter() - start
        return elapsed, resp.status, data, resp.headers


def median_ms(samples: Iterable[float]) -> float:
    return statistics.median(samples) * 1000

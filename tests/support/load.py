"""Steady client traffic for system tests: keep-alive clients, every answer kept.

Each client loops until told to stop, sending one POST to every target in turn on a
keep-alive connection of its own per target. With two targets (a proxy with faulty
candidates and one without, say) the order alternates every round, so both see the same
machine at the same moments and their latencies can be compared.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import aiohttp
import orjson
from aiohttp import web

PATH = "/v2/models/churn/infer"

# (client, round) -> request body; (request body, response body) -> as production answers
BodyFor = Callable[[int, int], bytes]
Check = Callable[[bytes, bytes], bool]


def numbered_body(client: int, i: int) -> bytes:
    return orjson.dumps({"client": client, "i": i})


def production_answer(request_body: bytes) -> bytes:
    """Production's answer to a request: V2 probabilities plus the request it answers."""
    return (
        b'{"model_name": "prod", "outputs": [{"name": "probabilities", "shape": [1, 2], '
        b'"datatype": "FP32", "data": [0.25, 0.75]}], "request": ' + request_body + b"}"
    )


async def production(request: web.Request) -> web.Response:
    return web.Response(
        body=production_answer(await request.read()), content_type="application/json"
    )


def answered_by_production(sent: bytes, got: bytes) -> bool:
    return got == production_answer(sent)


@dataclass(frozen=True)
class Answer:
    target: str
    status: int
    latency_s: float
    request_id: str
    as_expected: bool  # the body is what production answers to this request


class SteadyLoad:
    """``clients`` looping clients over ``targets`` (name -> base URL) until ``stop``."""

    def __init__(
        self,
        targets: Mapping[str, str],
        clients: int,
        check: Check,
        *,
        body_for: BodyFor = numbered_body,
        pause_s: float = 0.0,
    ) -> None:
        self.urls = {name: url + PATH for name, url in targets.items()}
        self.clients = clients
        self.check = check
        self.body_for = body_for
        self.pause_s = pause_s
        self.stop = asyncio.Event()
        self.answers: list[Answer] = []
        self.errors: list[tuple[str, BaseException]] = []

    async def run(self) -> None:
        await asyncio.gather(*(self._client(n) for n in range(self.clients)))

    async def run_for(self, seconds: float) -> None:
        running = asyncio.ensure_future(self.run())
        await asyncio.sleep(seconds)
        self.stop.set()
        await running

    async def _client(self, n: int) -> None:
        # One keep-alive connection per client and target, as a pooled client would hold.
        sessions = {
            name: aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1))
            for name in self.urls
        }
        order = list(self.urls)
        try:
            i = 0
            while not self.stop.is_set():
                i += 1
                body = self.body_for(n, i)
                for name in order if i % 2 else reversed(order):
                    await self._send(sessions[name], name, body)
                if self.pause_s:
                    await asyncio.sleep(self.pause_s)
        finally:
            for session in sessions.values():
                await session.close()

    async def _send(self, session: aiohttp.ClientSession, name: str, body: bytes) -> None:
        started = time.perf_counter()
        try:
            async with session.post(self.urls[name], data=body) as resp:
                data = await resp.read()
                self.answers.append(
                    Answer(
                        name,
                        resp.status,
                        time.perf_counter() - started,
                        resp.headers.get("X-Request-Id", ""),
                        self.check(body, data),
                    )
                )
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            self.errors.append((name, exc))

    # -- what was seen -------------------------------------------------------------------
    def of(self, target: str) -> list[Answer]:
        return [a for a in self.answers if a.target == target]

    def failures(self, target: str) -> list[object]:
        """Requests to ``target`` not answered 2xx with production's body, and errors."""
        bad: list[object] = [
            a for a in self.of(target) if not (200 <= a.status < 300 and a.as_expected)
        ]
        return bad + [exc for name, exc in self.errors if name == target]

    def latency_ms(self, target: str, quantile: float) -> float:
        """A quantile of ``target``'s latencies, in milliseconds."""
        latencies = sorted(a.latency_s for a in self.of(target))
        if quantile == 0.5:
            return statistics.median(latencies) * 1000
        return latencies[min(len(latencies) - 1, int(quantile * len(latencies)))] * 1000

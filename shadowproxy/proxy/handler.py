"""Routing one client request: production first, then the sampled shadows.

Routing decisions (who is sampled, whether the body may be mirrored) are pure functions of
the request and config. The production request is written before any shadow is touched,
and nothing here waits for a shadow.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping

from shadowproxy.config.model import Config
from shadowproxy.executor import LocalExecutor
from shadowproxy.observability.metrics import Metrics
from shadowproxy.pairing.join import PairJoin, PairStream
from shadowproxy.pairing.record import Cost, PairRecord, Role, no_cost
from shadowproxy.protocols import protocol_for
from shadowproxy.proxy.connection import Answering, ClientConnection, Request
from shadowproxy.proxy.deadlines import DeadlineQueue
from shadowproxy.proxy.headers import proxy_headers_block
from shadowproxy.proxy.local import LocalAnswer, LocalProduction
from shadowproxy.proxy.relay import ProductionRelay
from shadowproxy.proxy.upstream import UpstreamPool, UpstreamTarget, build_request
from shadowproxy.shadow.dispatch import ShadowTarget
from shadowproxy.shadow.local import LocalShadowTarget
from shadowproxy.shadow.sampling import MIRROR_PURPOSE, keyed_salt


class Proxy:
    """Shared state of the traffic listener: pools, shadow targets, the pair stream.

    ``local`` maps (role, name) of every model configured with ``model:`` (production or
    candidate) to its started executor; the others are reached over HTTP.
    """

    def __init__(
        self,
        config: Config,
        metrics: Metrics,
        pair_stream: PairStream,
        loop: asyncio.AbstractEventLoop,
        local: Mapping[tuple[Role, str], LocalExecutor] | None = None,
        sampling_key: bytes | None = None,
    ) -> None:
        production = config.production
        local = local or {}
        self.config = config
        self.limits = config.limits
        self.metrics = metrics
        self.loop = loop
        self.stream = pair_stream
        self.protocol = protocol_for(config)
        self.production_name = production.name
        self.production_version = production.version
        self.production_timeout_s = production.timeout_ms / 1000
        self.local_production: LocalProduction | None = None
        # A remote production's footprint for pair records, set when it is scraped.
        self.production_cost: Callable[[], Cost | None] = no_cost
        if production.url is not None:
            self.production_target = UpstreamTarget(production.url, production.headers)
            self.production_pool = UpstreamPool(
                production.name,
                self.production_target,
                connect_timeout_s=production.connect_timeout_ms / 1000,
                max_idle=production.pool_size,
                loop=loop,
            )
        else:
            self.local_production = LocalProduction(
                self, local[("production", production.name)], self.protocol, config.protocol
            )
            self.handle = self._handle_local  # type: ignore[method-assign]
        # One salt for every target (and the comparator), so the sampled sets nest.
        salt = keyed_salt(sampling_key, MIRROR_PURPOSE)
        self.targets: list[ShadowTarget | LocalShadowTarget] = []
        for c in config.candidates:
            if c.url is not None:
                self.targets.append(
                    ShadowTarget(
                        c, "candidate", limits=self.limits, metrics=metrics, loop=loop, salt=salt
                    )
                )
            else:
                self.targets.append(
                    LocalShadowTarget(
                        c,
                        "candidate",
                        local[("candidate", c.name)],
                        self.protocol,
                        metrics=metrics,
                        loop=loop,
                        salt=salt,
                    )
                )
        if config.baseline is not None:
            self.targets.append(
                ShadowTarget(
                    config.baseline,
                    "baseline",
                    limits=self.limits,
                    metrics=metrics,
                    loop=loop,
                    salt=salt,
                )
            )
        self.connections: set[ClientConnection] = set()
        self.has_answered = False
        # Why this replica should get no traffic (the runtime's readiness reasons): the
        # protocol's own readiness routes of a local production model answer from it.
        self.not_ready: Callable[[], list[str]] = list
        self.draining = False
        self.closing = False  # the grace period is over: remaining clients are being cut
        self.in_flight = 0
        self.production_deadlines = DeadlineQueue(loop, self.production_timeout_s)
        # Production bodies are kept for pairing under the same cap as shadow bodies.
        self.pair_capture_bytes = self.limits.shadow_max_response_bytes
        role, name, ver = "production", production.name, production.version
        self.stats = metrics.hot.add(role, name, ver)
        metrics.in_flight.labels(role, name).set_function(lambda: self.in_flight)
        metrics.connections.set_function(lambda: len(self.connections))

    # -- connections ----------------------------------------------------------------------
    def connection_opened(self, conn: ClientConnection) -> None:
        self.connections.add(conn)

    def connection_closed(self, conn: ClientConnection) -> None:
        self.connections.discard(conn)

    def sweep_deadlines(self) -> None:
        """Expire client connections whose head, body, idle or send deadline passed."""
        now = self.loop.time()
        for conn in list(self.connections):
            conn.check_deadline(now)

    # -- requests -------------------------------------------------------------------------
    def handle(self, request: Request, client: ClientConnection) -> Answering:
        # Only what the production request needs comes before it is written; the rest of
        # the bookkeeping runs while production works on it, off the latency path. Nothing
        # here yields to the loop, so the answer cannot arrive before the join is set.
        head = request.head
        request_id = head.resolve_request_id()
        added = proxy_headers_block(request_id, client.peer_ip, head.host, b"http")
        target = self.production_target
        relay = ProductionRelay(self, client, request, request_id)
        self.production_pool.request(
            build_request(
                request.method,
                target.target_path(request.target),
                head.host or target.host_header,
                head.forward_block(target.header_names) + added + target.headers,
                request.body,
            ),
            relay,
            head_request=request.method == b"HEAD",
        )
        self.in_flight += 1
        self.production_deadlines.add(relay)
        shadows = [t for t in self.targets if t.wants(request.method, request_id)]
        if shadows and not relay.done:  # done already only if the pool refused at once
            join = relay.join = self._join(request, request_id, len(shadows) + 1)
            relay.capture_limit = self.pair_capture_bytes
            self._mirror(request, added, shadows, join)
        return relay

    def _handle_local(self, request: Request, client: ClientConnection) -> LocalAnswer:
        """``handle`` when production is a local model."""
        assert self.local_production is not None
        request_id = request.head.resolve_request_id()
        answer = self.local_production.answer(request, client, request_id)
        if not answer.inference or answer.done:
            return answer
        shadows = [t for t in self.targets if t.wants(request.method, request_id)]
        if shadows:
            answer.join = self._join(request, request_id, len(shadows) + 1)
            added = proxy_headers_block(request_id, client.peer_ip, request.head.host, b"http")
            self._mirror(request, added, shadows, answer.join)
        return answer

    def _join(self, request: Request, request_id: str, pending: int) -> PairJoin:
        # Positional and with every field given: this runs for every mirrored request.
        record = PairRecord(
            request_id,
            time.time(),
            request.method.decode("ascii", "replace"),
            request.target.decode("latin-1"),
            request.body,
            request.head.content_type.decode("latin-1"),
            None,
            {},
        )
        return PairJoin(record, pending, self.stream)

    def _mirror(
        self,
        request: Request,
        added: bytes,
        shadows: list[ShadowTarget | LocalShadowTarget],
        join: PairJoin,
    ) -> None:
        too_large = len(request.body) > self.limits.mirror_max_body_bytes
        for target in shadows:
            target.mirror(request, added, join, too_large)

    # -- production bookkeeping -----------------------------------------------------------
    def production_answered(self, status: int) -> None:
        if not self.has_answered and status < 500:
            self.has_answered = True

    def production_finished(self, outcome: str, latency: float) -> None:
        self.in_flight -= 1
        self.stats.record(outcome, latency)

    # -- lifecycle ------------------------------------------------------------------------
    def start_draining(self) -> None:
        """From now on every response says ``Connection: close``.

        Keep-alive clients then move to another replica after their next response while
        this one is still serving, instead of racing a close at the end of the drain.
        """
        self.draining = True
        for conn in self.connections:
            conn.closing = True

    def stop_keepalive(self) -> None:
        """Close idle client connections; busy ones close after their response."""
        for conn in list(self.connections):
            conn.close_when_idle()

    async def close(self) -> None:
        self.closing = True  # what cuts the clients still waiting: see ProductionRelay
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.abort()
        for target in self.targets:
            await target.close()
        self.production_deadlines.close()
        if self.local_production is None:
            await self.production_pool.close()
        else:
            await self.local_production.executor.close()

"""What every mirrored target shares, remote or local: sampling, breaker, counters, drops."""

from __future__ import annotations

import asyncio

from shadowproxy.config.model import Baseline, Candidate
from shadowproxy.observability.metrics import Metrics
from shadowproxy.pairing.join import PairJoin
from shadowproxy.pairing.record import Exchange, Role
from shadowproxy.shadow.breaker import BreakerState, CircuitBreaker
from shadowproxy.shadow.sampling import is_sampled


class MirroredTarget:
    """A candidate or the baseline: who is sampled, the breaker, and the counted drops.

    Subclasses send the copy (``mirror``) and report how many calls are outstanding
    (``outstanding``), which the in-flight gauge reads at scrape time.
    """

    def __init__(
        self,
        config: Candidate | Baseline,
        role: Role,
        *,
        metrics: Metrics,
        loop: asyncio.AbstractEventLoop,
        salt: bytes = b"",
    ) -> None:
        self.config = config
        self.salt = salt  # of the sampling decision: see shadowproxy.shadow.sampling
        self.name = config.name
        self.version = config.version
        self.role = role
        self.loop = loop
        self.methods = frozenset(m.encode() for m in config.methods)
        self.sample_rate = config.sample_rate
        self.timeout_s = config.timeout_ms / 1000
        self.breaker = CircuitBreaker(config.breaker.failures, config.breaker.reset_s)
        # Bound children: label look-ups stay off the per-request path.
        self.stats = metrics.hot.add(role, self.name, self.version)
        # Gauges are read at scrape time instead of being updated per request.
        metrics.in_flight.labels(role, self.name).set_function(self.outstanding)
        metrics.breaker_open.labels(self.name, self.version).set_function(
            lambda: 0 if self.breaker.state is BreakerState.CLOSED else 1
        )

    def outstanding(self) -> int:
        raise NotImplementedError

    def wants(self, method: bytes, request_id: str) -> bool:
        """Whether this request is mirrored to this target."""
        return method in self.methods and is_sampled(request_id, self.sample_rate, self.salt)

    def drop(self, join: PairJoin, reason: str) -> None:
        """Record a copy that was never sent, and why."""
        self.stats.dropped(reason)
        join.shadow_done(
            self.name,
            Exchange(
                role=self.role, name=self.name, version=self.version,
                outcome="dropped", detail=reason,
            ),
        )  # fmt: skip

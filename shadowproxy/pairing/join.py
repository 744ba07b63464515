"""Joining production and shadow answers into pair records, and the pair stream.

The join is event-driven: whichever answer arrives last completes the record, which is
then published to every consumer. Consumers must return at once (queue and move on);
they run on the event loop, off the production response path.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from shadowproxy.pairing.record import Exchange, PairRecord

log = logging.getLogger(__name__)

Consumer = Callable[[PairRecord], None]


class PairStream:
    """Fan-out of completed pair records to registered consumers."""

    def __init__(self) -> None:
        self._consumers: list[Consumer] = []
        self.published = 0

    def subscribe(self, consumer: Consumer) -> None:
        self._consumers.append(consumer)

    def publish(self, record: PairRecord) -> None:
        self.published += 1
        for consumer in self._consumers:
            try:
                consumer(record)
            except Exception:  # a consumer bug must never reach the proxy
                log.exception("pair consumer %r failed", consumer)


class PairJoin:
    """Collects the answers for one mirrored request; publishes when all are in."""

    __slots__ = ("record", "_pending", "_stream")

    def __init__(self, record: PairRecord, pending: int, stream: PairStream) -> None:
        self.record = record
        self._pending = pending
        self._stream = stream

    def production_done(self, exchange: Exchange) -> None:
        self.record.production = exchange
        self._arrived()

    def shadow_done(self, name: str, exchange: Exchange) -> None:
        self.record.shadows[name] = exchange
        self._arrived()

    def _arrived(self) -> None:
        self._pending -= 1
        if self._pending == 0:
            self._stream.publish(self.record)

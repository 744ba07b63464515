"""Resource figures of remote models, scraped from their own Prometheus endpoint.

A remote model service (production or candidate) that exposes the standard process metrics
(``process_cpu_seconds_total``, ``process_resident_memory_bytes``, as every official
Prometheus client library does, or under shadowproxy's own prefix when the model service is
another shadowproxy) can be given a ``metrics_url``. Its CPU per request is the
growth of its CPU counter divided by the requests shadowproxy sent it in the same window, so
it is only meaningful when shadowproxy is its only client; the report says so.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from shadowproxy.errors import UpstreamError

log = logging.getLogger(__name__)

CPU_SAMPLE = "process_cpu_seconds_total"
RSS_SAMPLE = "process_resident_memory_bytes"
THREADS_SAMPLE = "process_threads"  # exported by some clients (Go, Java), not Python's
_WANTED = (CPU_SAMPLE, RSS_SAMPLE, THREADS_SAMPLE)
# A shadowproxy serving a local model exports them under its own prefix; read when the
# standard names are absent, so one process is never counted twice.
_PREFIX = "shadowproxy_"


@dataclass(frozen=True, slots=True)
class ProcessSample:
    """Process metrics read from one scrape; ``None`` for a metric the target lacks."""

    cpu_seconds: float | None
    rss_bytes: float | None
    threads: float | None


def parse_process_metrics(text: str) -> ProcessSample:
    """Pick the standard process metrics out of Prometheus text exposition.

    Several series of one metric (several processes behind one endpoint, told apart by
    labels) are summed. Raises :class:`UpstreamError` (outcome ``invalid``) when the text
    is not Prometheus exposition format.
    """
    totals: dict[str, float] = {}
    prefixed: dict[str, float] = {}
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                name = sample.name
                into = totals
                if name.startswith(_PREFIX):
                    name, into = name[len(_PREFIX) :], prefixed
                if name in _WANTED and math.isfinite(sample.value):
                    into[name] = into.get(name, 0.0) + sample.value
    except (ValueError, TypeError, IndexError) as exc:
        raise UpstreamError(f"not Prometheus text exposition: {exc}", "invalid") from exc
    if not totals:
        totals = prefixed
    return ProcessSample(totals.get(CPU_SAMPLE), totals.get(RSS_SAMPLE), totals.get(THREADS_SAMPLE))


@dataclass(frozen=True, slots=True)
class RemoteFigures:
    """The latest view of a remote model's resources."""

    cpu_seconds: float | None = None
    cpu_seconds_per_request: float | None = None
    rss_bytes: float | None = None
    threads: float | None = None
    scrapes: int = 0
    scrape_errors: int = 0
    last_error: str = ""

    def as_dict(self) -> dict[str, object]:
        return {
            "cpu_seconds": self.cpu_seconds,
            "cpu_seconds_per_request": self.cpu_seconds_per_request,
            "rss_bytes": self.rss_bytes,
            "threads": self.threads,
            "scrapes": self.scrapes,
            "scrape_errors": self.scrape_errors,
            "last_error": self.last_error,
        }


def cpu_per_request(first: tuple[float, int], last: tuple[float, int]) -> float | None:
    """CPU seconds per request between two (cpu_seconds, requests) readings.

    ``None`` when no request was sent in between or the counter went backwards (the
    target restarted and its counter began again).
    """
    cpu = last[0] - first[0]
    requests = last[1] - first[1]
    if requests <= 0 or cpu < 0:
        return None
    return cpu / requests


class RemoteResources:
    """Polls one ``metrics_url`` on a timer; the figures are read without I/O."""

    def __init__(
        self,
        url: str,
        requests_sent: Callable[[], int],
        *,
        interval_s: float,
        timeout_s: float = 2.0,
    ) -> None:
        self.url = url
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self._requests_sent = requests_sent
        self._window: tuple[float, int] | None = None
        self.figures = RemoteFigures()

    def observe(self, sample: ProcessSample) -> None:
        """Fold one scrape into the figures (pure bookkeeping, no I/O)."""
        sent = self._requests_sent()
        per_request = self.figures.cpu_seconds_per_request
        if sample.cpu_seconds is not None:
            reading = (sample.cpu_seconds, sent)
            if self._window is None or reading[0] < self._window[0]:
                self._window = reading  # first scrape, or the target restarted
            else:
                measured = cpu_per_request(self._window, reading)
                if measured is not None:
                    per_request = measured
        self.figures = RemoteFigures(
            cpu_seconds=sample.cpu_seconds,
            cpu_seconds_per_request=per_request,
            rss_bytes=sample.rss_bytes,
            threads=sample.threads,
            scrapes=self.figures.scrapes + 1,
            scrape_errors=self.figures.scrape_errors,
        )

    def failed(self, error: str) -> None:
        f = self.figures
        self.figures = RemoteFigures(
            f.cpu_seconds, f.cpu_seconds_per_request, f.rss_bytes, f.threads,
            f.scrapes, f.scrape_errors + 1, error,
        )  # fmt: skip

    async def scrape_once(self, session: aiohttp.ClientSession) -> None:
        try:
            async with session.get(
                self.url, timeout=aiohttp.ClientTimeout(total=self.timeout_s), allow_redirects=False
            ) as response:
                if response.status != 200:
                    raise UpstreamError(f"{self.url} answered {response.status}")
                text = await response.text(errors="replace")
            self.observe(parse_process_metrics(text))
        except (aiohttp.ClientError, TimeoutError, UpstreamError) as exc:
            self.failed(str(exc) or type(exc).__name__)
            log.debug("scraping %s failed: %s", self.url, exc)

    async def run(self) -> None:
        """Scrape every ``interval_s`` until cancelled."""
        async with aiohttp.ClientSession() as session:
            while True:
                started = time.monotonic()
                await self.scrape_once(session)
                await asyncio.sleep(max(0.0, self.interval_s - (time.monotonic() - started)))

"""Scraping a remote model's process metrics from a real Prometheus endpoint."""

from __future__ import annotations

import os

import aiohttp
import psutil
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest

from shadowproxy.errors import UpstreamError
from shadowproxy.observability.scrape import (
    ProcessSample,
    RemoteResources,
    cpu_per_request,
    parse_process_metrics,
)
from tests.support.proxy import free_port


def test_parses_what_the_official_client_exports_for_a_real_process() -> None:
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    sample = parse_process_metrics(generate_latest(registry).decode())
    times = psutil.Process(os.getpid()).cpu_times()
    assert sample.cpu_seconds is not None and sample.rss_bytes is not None
    assert sample.cpu_seconds == pytest.approx(times.user + times.system, abs=0.2)
    assert sample.rss_bytes == pytest.approx(psutil.Process().memory_info().rss, rel=0.2)


def test_series_of_several_processes_are_summed_and_missing_metrics_are_none() -> None:
    text = (
        'process_cpu_seconds_total{worker="1"} 2.5\n'
        'process_cpu_seconds_total{worker="2"} 1.5\n'
        "other_metric 7\n"
    )
    assert parse_process_metrics(text) == ProcessSample(4.0, None, None)


def test_another_shadowproxys_prefixed_process_metrics_are_read_when_the_standard_are_absent() -> (
    None
):
    from shadowproxy.observability.metrics import Metrics

    served = generate_latest(Metrics().registry).decode()
    assert "\nprocess_cpu_seconds_total" not in served
    sample = parse_process_metrics(served)
    assert sample.cpu_seconds is not None and sample.cpu_seconds > 0
    assert sample.rss_bytes == pytest.approx(psutil.Process().memory_info().rss, rel=0.2)
    # Both present: the standard names win, so one process is not counted twice.
    both = "process_cpu_seconds_total 2.0\nshadowproxy_process_cpu_seconds_total 3.0\n"
    assert parse_process_metrics(both) == ProcessSample(2.0, None, None)


def test_text_that_is_not_exposition_format_is_an_invalid_outcome() -> None:
    with pytest.raises(UpstreamError) as caught:
        parse_process_metrics("process_cpu_seconds_total twelve\n")
    assert caught.value.outcome == "invalid"


@pytest.mark.parametrize(
    ("first", "last", "expected"),
    [
        ((10.0, 100), (12.0, 300), 0.01),
        ((10.0, 100), (12.0, 100), None),
        ((10.0, 1), (9.0, 5), None),
    ],
)
def test_cpu_per_request(
    first: tuple[float, int], last: tuple[float, int], expected: float | None
) -> None:
    assert cpu_per_request(first, last) == (
        pytest.approx(expected) if expected is not None else None
    )


def test_a_restarted_target_starts_a_new_window() -> None:
    sent = iter([0, 100, 150, 250])
    remote = RemoteResources("http://unused", lambda: next(sent), interval_s=1)
    remote.observe(ProcessSample(10.0, 1e6, None))
    remote.observe(ProcessSample(11.0, 1e6, None))  # 1 s over 100 requests
    assert remote.figures.cpu_seconds_per_request == pytest.approx(0.01)
    remote.observe(ProcessSample(0.5, 1e6, None))  # counter went back: restarted
    assert remote.figures.cpu_seconds_per_request == pytest.approx(0.01)  # kept, not negative
    remote.observe(ProcessSample(1.5, 2e6, None))  # 1 s over 100 requests since the restart
    assert remote.figures.cpu_seconds_per_request == pytest.approx(0.01)
    assert remote.figures.rss_bytes == 2e6 and remote.figures.scrapes == 4


async def test_scrapes_a_live_endpoint_and_counts_failures() -> None:
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    healthy = True

    async def metrics(_: web.Request) -> web.Response:
        if not healthy:
            return web.Response(status=500)
        return web.Response(body=generate_latest(registry), content_type="text/plain")

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    remote = RemoteResources(f"http://127.0.0.1:{port}/metrics", lambda: 0, interval_s=1)
    try:
        async with aiohttp.ClientSession() as session:
            await remote.scrape_once(session)
            assert remote.figures.scrapes == 1 and remote.figures.rss_bytes
            healthy = False
            await remote.scrape_once(session)
            assert remote.figures.scrape_errors == 1 and "500" in remote.figures.last_error
            assert remote.figures.rss_bytes  # the last good figures are kept
    finally:
        await runner.cleanup()
    closed = RemoteResources(f"http://127.0.0.1:{free_port()}/metrics", lambda: 0, interval_s=1)
    async with aiohttp.ClientSession() as session:
        await closed.scrape_once(session)
    assert closed.figures.scrape_errors == 1 and closed.figures.scrapes == 0

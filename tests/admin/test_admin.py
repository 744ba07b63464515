"""The admin listener: liveness, readiness, metrics and the redacted config."""

from __future__ import annotations

import asyncio
import random
import re
import string

import aiohttp
import orjson
from prometheus_client.parser import text_string_to_metric_families

from shadowproxy.runtime import Runtime
from tests.shadow.helpers import PortBackend
from tests.support.proxy import free_port, make_config, metric_value, running_proxy
from tests.support.servers import Backend
from tests.support.waiting import wait_for


def _admin(rt: Runtime) -> str:
    return f"http://127.0.0.1:{rt.admin_port}"


async def _get(session: aiohttp.ClientSession, url: str) -> tuple[int, bytes, str]:
    async with session.get(url) as resp:
        return resp.status, await resp.read(), resp.headers.get("Content-Type", "")


# -- health -------------------------------------------------------------------------------


async def test_liveness_and_readiness_follow_production_and_shutdown() -> None:
    port = free_port()  # production is not there yet
    config = make_config(f"http://127.0.0.1:{port}")
    production = PortBackend()
    async with (
        running_proxy(config, wait_ready=False) as rt,
        aiohttp.ClientSession() as session,
    ):
        admin = _admin(rt)
        status, body, content_type = await _get(session, admin + "/healthz/live")
        assert status == 200
        status, body, content_type = await _get(session, admin + "/healthz/ready")
        assert status == 503
        assert content_type.startswith("application/json")
        answer = orjson.loads(body)
        assert answer["ready"] is False
        assert answer["reasons"], answer
        assert any("production" in reason for reason in answer["reasons"]), answer
        # Still not ready a moment later: nothing answers.
        await asyncio.sleep(0.3)
        assert (await _get(session, admin + "/healthz/ready"))[0] == 503
        assert (await _get(session, admin + "/healthz/live"))[0] == 200

        await production.start_on(port)
        try:
            ready_status: list[int] = []

            async def poll() -> bool:
                ready_status.append((await _get(session, admin + "/healthz/ready"))[0])
                return ready_status[-1] == 200

            for _ in range(60):
                if await poll():
                    break
                await asyncio.sleep(0.1)
            assert ready_status[-1] == 200, "never became ready once production answered"
            status, body, _ = await _get(session, admin + "/healthz/ready")
            assert status == 200
            assert orjson.loads(body)["ready"] is True
            assert metric_value(rt, "shadowproxy_ready") == 1

            rt.request_stop()
            status, body, _ = await _get(session, admin + "/healthz/ready")
            assert status == 503
            assert orjson.loads(body)["ready"] is False
            assert orjson.loads(body)["reasons"]
            assert metric_value(rt, "shadowproxy_ready") == 0
            assert (await _get(session, admin + "/healthz/live"))[0] == 200
        finally:
            await production.stop()


# -- metrics ------------------------------------------------------------------------------

CONTRACT_LABELS = {
    "shadowproxy_requests_total": {"role", "model", "version", "outcome"},
    "shadowproxy_request_duration_seconds_bucket": {"role", "model", "version", "le"},
    "shadowproxy_shadow_dropped_total": {"model", "version", "reason"},
    "shadowproxy_pairs_total": {"model", "version"},
}


def _samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    return [
        (sample.name, sample.labels, sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    ]


async def test_metrics_have_the_contract_names_and_labels(
    backend: Backend, candidate_backend: Backend
) -> None:
    config = make_config(
        backend.url, candidates=[{"name": "cand", "version": "2", "url": candidate_backend.url}]
    )
    async with running_proxy(config) as rt, aiohttp.ClientSession() as session:
        async with session.post(f"http://127.0.0.1:{rt.traffic_port}/infer", data=b"{}") as r:
            assert r.status == 200
        await wait_for(
            lambda: metric_value(rt, "shadowproxy_pairs_total", model="cand", version="2") == 1,
            what="the pair to be counted",
        )
        await asyncio.sleep(0.6)  # let the loop-lag watcher take a few readings
        status, body, content_type = await _get(session, _admin(rt) + "/metrics")
    assert status == 200
    assert content_type.startswith("text/plain")
    text = body.decode()
    assert "# TYPE shadowproxy_request_duration_seconds histogram" in text
    assert "# TYPE shadowproxy_event_loop_lag_seconds histogram" in text
    assert "# TYPE shadowproxy_gc_pause_seconds histogram" in text
    samples = _samples(text)
    names = {name for name, _, _ in samples}
    # Every series carries the contract's prefix, the process figures included.
    assert {name for name in names if not name.startswith("shadowproxy_")} == set()
    assert "shadowproxy_process_cpu_seconds_total" in names
    for name, labels in CONTRACT_LABELS.items():
        assert name in names, name
        for sample_name, sample_labels, _ in samples:
            if sample_name == name:
                assert set(sample_labels) == labels, (name, sample_labels)
    values = {(n, tuple(sorted(lab.items()))): v for n, lab, v in samples}

    def value(name: str, **labels: str) -> float | None:
        return values.get((name, tuple(sorted(labels.items()))))

    assert (
        value(
            "shadowproxy_requests_total",
            role="production",
            model="prod",
            version="1.0",
            outcome="ok",
        )
        == 1
    )
    assert (
        value(
            "shadowproxy_requests_total", role="candidate", model="cand", version="2", outcome="ok"
        )
        == 1
    )
    assert (
        value(
            "shadowproxy_request_duration_seconds_count",
            role="candidate",
            model="cand",
            version="2",
        )
        == 1
    )
    assert value("shadowproxy_pairs_total", model="cand", version="2") == 1
    for reason in ("budget", "breaker_open", "body_too_large"):
        assert value("shadowproxy_shadow_dropped_total", model="cand", version="2",
                     reason=reason) == 0  # fmt: skip
    lag_count = value("shadowproxy_event_loop_lag_seconds_count")
    assert lag_count is not None and lag_count >= 1


def _series(text: str) -> set[str]:
    return {line.split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}


def _token(rng: random.Random, n: int = 12) -> str:
    return "".join(rng.choices(string.ascii_lowercase + string.digits, k=n))


async def test_series_count_is_constant_under_random_requests(
    backend: Backend, candidate_backend: Backend
) -> None:
    config = make_config(
        backend.url,
        candidates=[{"name": "cand", "version": "2", "url": candidate_backend.url,
                     "methods": ["POST", "PUT"]}],
    )  # fmt: skip
    rng = random.Random(1234)
    markers: list[str] = []
    async with running_proxy(config) as rt, aiohttp.ClientSession() as session:
        base = f"http://127.0.0.1:{rt.traffic_port}"
        for method in ("GET", "POST", "PUT"):  # every kind of series exists from here on
            async with session.request(method, base + "/warm", data=b"{}") as resp:
                assert resp.status == 200
        await asyncio.sleep(0.6)
        before = _series((await _get(session, _admin(rt) + "/metrics"))[1].decode())

        queue = list(range(2000))

        async def client() -> None:
            while queue:
                queue.pop()
                marker = _token(rng)
                markers.append(marker)
                method = rng.choice(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
                path = "/" + "/".join(_token(rng, rng.randint(1, 10)) for _ in range(3))
                headers = {
                    f"X-{_token(rng, 6)}": marker,
                    "User-Agent": f"agent-{marker}",
                    "X-Request-Id": rng.choice([marker, f"id-{marker}", "bad id with spaces"]),
                }
                data = b'{"m": "%s"}' % marker.encode() if method != "GET" else None
                async with session.request(
                    method, f"{base}{path}?q={marker}", data=data, headers=headers
                ) as resp:
                    assert resp.status == 200
                    await resp.read()

        await asyncio.gather(*(client() for _ in range(20)))
        await asyncio.sleep(0.3)
        text = (await _get(session, _admin(rt) + "/metrics"))[1].decode()
        after = _series(text)
        assert metric_value(
            rt, "shadowproxy_requests_total",
            role="production", model="prod", version="1.0", outcome="ok",
        ) == 2003  # fmt: skip
    assert after == before, sorted(after ^ before)[:20]
    leaked = [m for m in markers if m in text]
    assert not leaked, f"client values became metric text: {leaked[:5]}"
    assert not re.search(r"agent-|/warm", text)


# -- config -------------------------------------------------------------------------------


async def test_admin_config_redacts_secrets(backend: Backend, candidate_backend: Backend) -> None:
    secrets = [
        "prod-header-secret-1",
        "cand-header-secret-2",
        "cand-url-password-3",
        "base-url-password-4",
        "metrics-token-5",
        "cand-api-key-6",
    ]
    candidate_url = candidate_backend.url.replace("http://", "http://shadow:cand-url-password-3@")
    config = make_config(
        backend.url,
        production={"headers": {"Authorization": "Bearer prod-header-secret-1"}},
        candidates=[{
            "name": "cand", "version": "2", "url": candidate_url, "timeout_ms": 123,
            "headers": {"Authorization": "Bearer cand-header-secret-2",
                        "X-Api-Key": "cand-api-key-6"},
            "metrics_url": "http://metrics-token-5@127.0.0.1:9999/metrics",
        }],
        baseline={"url": "http://ops:base-url-password-4@127.0.0.1:9/", "sample_rate": 0.0},
    )  # fmt: skip
    async with running_proxy(config) as rt, aiohttp.ClientSession() as session:
        status, body, content_type = await _get(session, _admin(rt) + "/admin/config")
        metrics_text = (await _get(session, _admin(rt) + "/metrics"))[1]
    assert status == 200
    assert content_type.startswith("application/json")
    for secret in secrets:
        assert secret.encode() not in body, secret
        assert secret.encode() not in metrics_text, secret
    shown = orjson.loads(body)
    candidate = shown["candidates"][0]
    assert candidate["headers"] == {"Authorization": "[redacted]", "X-Api-Key": "[redacted]"}
    assert candidate["url"] == candidate_url.replace("cand-url-password-3", "[redacted]")
    assert "metrics-token-5" not in candidate["metrics_url"]
    assert candidate["metrics_url"].endswith("@127.0.0.1:9999/metrics")
    assert shown["production"]["headers"] == {"Authorization": "[redacted]"}
    assert shown["baseline"]["url"] == "http://ops:[redacted]@127.0.0.1:9/"
    # Everything that is not a secret is shown as configured.
    assert candidate["name"] == "cand"
    assert candidate["timeout_ms"] == 123
    assert shown["production"]["url"] == backend.url

"""What is mirrored, and how: budgets, the mirror cap, methods, the request a candidate
gets, and the fact that only config decides where shadows go."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest

from shadowproxy.config import config_from_dict
from shadowproxy.errors import ConfigError
from shadowproxy.pairing.record import PairRecord
from shadowproxy.runtime import Runtime
from tests.shadow.helpers import client_requests, header, header_values
from tests.support.proxy import make_config, metric_value, running_proxy
from tests.support.servers import Backend, RawServer, read_request
from tests.support.waiting import settle, wait_for

PATH = "/v2/models/churn/infer"


async def _hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_request(reader)
    await asyncio.Event().wait()  # never answers; cancelled when the server stops


@pytest.fixture
async def hanging() -> AsyncIterator[RawServer]:
    server = await RawServer(_hang).start()
    yield server
    await server.stop()


@pytest.fixture
async def trap() -> AsyncIterator[RawServer]:
    """A server nobody should ever connect to."""
    server = await RawServer(_hang).start()
    yield server
    await server.stop()


def _dropped(rt: Runtime, model: str, reason: str, version: str = "1") -> float:
    return metric_value(
        rt, "shadowproxy_shadow_dropped_total", model=model, version=version, reason=reason
    )


def _outcome(rt: Runtime, model: str, outcome: str, role: str = "candidate") -> float:
    return metric_value(
        rt, "shadowproxy_requests_total", role=role, model=model, version="1", outcome=outcome
    )


# -- in-flight budget -------------------------------------------------------------------


async def test_budget_drops_shadows_beyond_max_in_flight(
    backend: Backend, hanging: RawServer
) -> None:
    config = make_config(
        backend.url,
        candidates=[{
            "name": "cand", "version": "1", "url": hanging.url,
            "max_in_flight": 2, "timeout_ms": 1500,
            "breaker": {"failures": 1000, "reset_s": 60},
        }],
    )  # fmt: skip
    records: list[PairRecord] = []
    async with running_proxy(config) as rt, aiohttp.ClientSession() as session:
        rt.stream.subscribe(records.append)
        url = f"http://127.0.0.1:{rt.traffic_port}{PATH}"

        async def post(i: int) -> tuple[int, float]:
            start = time.perf_counter()
            async with session.post(url, data=b'{"i": %d}' % i) as resp:
                await resp.read()
                return resp.status, time.perf_counter() - start

        # Two shadows take the whole budget and hang...
        for i in range(2):
            assert (await post(i))[0] == 200
        await wait_for(lambda: hanging.connections == 2, what="two shadow connections")
        # ... so a concurrent burst is answered by production and mirrored nowhere.
        results = await asyncio.gather(*(post(i) for i in range(2, 10)))
        assert [status for status, _ in results] == [200] * 8
        # Well under the shadow timeout: production never waited for the hanging candidate.
        assert max(elapsed for _, elapsed in results) < 0.75, results
        assert _dropped(rt, "cand", "budget") == 8
        assert _outcome(rt, "cand", "dropped") == 8
        assert metric_value(rt, "shadowproxy_in_flight", role="candidate", model="cand") == 2
        assert hanging.connections == 2
        assert len(records) == 8
        assert all(r.shadows["cand"].outcome == "dropped" for r in records)
        assert all(r.shadows["cand"].detail == "budget" for r in records)

        # Once the hung shadows time out, the budget is free again.
        await wait_for(lambda: _outcome(rt, "cand", "timeout") == 2, what="the two timeouts")
        assert metric_value(rt, "shadowproxy_in_flight", role="candidate", model="cand") == 0
        assert (await post(10))[0] == 200
        await wait_for(lambda: hanging.connections == 3, what="mirroring to resume")
        assert _dropped(rt, "cand", "budget") == 8
        assert len(client_requests(backend)) == 11


async def test_one_candidates_budget_does_not_limit_another(
    backend: Backend, hanging: RawServer, candidate_backend: Backend
) -> None:
    config = make_config(
        backend.url,
        candidates=[
            {"name": "stuck", "version": "1", "url": hanging.url, "max_in_flight": 1,
             "timeout_ms": 5000},
            {"name": "fine", "version": "1", "url": candidate_backend.url, "max_in_flight": 1},
        ],
    )  # fmt: skip
    async with running_proxy(config) as rt, aiohttp.ClientSession() as session:
        url = f"http://127.0.0.1:{rt.traffic_port}{PATH}"
        for i in range(5):
            async with session.post(url, data=b"{}") as resp:
                assert resp.status == 200
            want = i + 1
            await wait_for(lambda: len(candidate_backend.seen) == want, what="the mirror")  # noqa: B023
        assert _dropped(rt, "stuck", "budget") == 4
        assert _dropped(rt, "fine", "budget") == 0
        await wait_for(lambda: _outcome(rt, "fine", "ok") == 5, what="ok outcomes")


# -- mirror cap ---------------------------------------------------------------------------


async def test_bodies_over_the_mirror_cap_are_not_mirrored_but_counted(
    backend: Backend, candidate_backend: Backend
) -> None:
    config = make_config(
        backend.url,
        limits={"mirror_max_body_bytes": 1000},
        candidates=[{"name": "cand", "version": "1", "url": candidate_backend.url}],
    )
    records: list[PairRecord] = []
    at_cap, over_cap = b"a" * 1000, b"b" * 1001
    async with running_proxy(config) as rt, aiohttp.ClientSession() as session:
        rt.stream.subscribe(records.append)
        url = f"http://127.0.0.1:{rt.traffic_port}{PATH}"
        for body, rid in ((at_cap, "at-cap"), (over_cap, "over-cap")):
            async with session.post(url, data=body, headers={"X-Request-Id": rid}) as resp:
                assert resp.status == 200
        await wait_for(lambda: len(records) == 2, what="two pair records")
        await settle(lambda: len(candidate_backend.seen))
        assert [s.body for s in client_requests(candidate_backend)] == [at_cap]
        assert [s.body for s in client_requests(backend)] == [at_cap, over_cap]
        assert _dropped(rt, "cand", "body_too_large") == 1
        assert _outcome(rt, "cand", "dropped") == 1
        assert _outcome(rt, "cand", "ok") == 1
        by_id = {r.request_id: r for r in records}
        skipped = by_id["over-cap"]
        assert skipped.shadows["cand"].outcome == "dropped"
        assert skipped.shadows["cand"].detail == "body_too_large"
        assert skipped.request_body == over_cap
        assert skipped.production is not None and skipped.production.status == 200
        assert by_id["at-cap"].shadows["cand"].outcome == "ok"


# -- method allowlist ---------------------------------------------------------------------

METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]


async def _one_of_each(port: int) -> None:
    async with aiohttp.ClientSession() as session:
        for method in METHODS:
            data = b'{"m": "%s"}' % method.encode() if method != "GET" else None
            async with session.request(method, f"http://127.0.0.1:{port}{PATH}", data=data) as resp:
                assert resp.status == 200


@pytest.mark.parametrize(
    ("methods", "mirrored"),
    [(None, ["POST"]), (["POST", "PUT"], ["POST", "PUT"]), (["put"], ["PUT"])],
    ids=["default", "post-put", "lowercase-put"],
)
async def test_only_allowed_methods_are_mirrored(
    backend: Backend, candidate_backend: Backend, methods: list[str] | None, mirrored: list[str]
) -> None:
    candidate: dict[str, object] = {"name": "cand", "version": "1", "url": candidate_backend.url}
    if methods is not None:
        candidate["methods"] = methods
    config = make_config(backend.url, candidates=[candidate])
    async with running_proxy(config) as rt:
        await _one_of_each(rt.traffic_port)
        await wait_for(lambda: len(candidate_backend.seen) >= len(mirrored), what="mirrors")
        await settle(lambda: len(candidate_backend.seen))
        assert [s.method for s in client_requests(backend)] == METHODS
        assert [s.method for s in client_requests(candidate_backend)] == mirrored
        assert metric_value(rt, "shadowproxy_pairs_total", model="cand", version="1") == len(
            mirrored
        )


async def test_mirrored_head_requests_complete_without_a_body(
    backend: Backend, candidate_backend: Backend
) -> None:
    """A HEAD answer declares a Content-Length but carries no body; it is complete at once."""
    config = make_config(
        backend.url,
        candidates=[{"name": "cand", "version": "1", "url": candidate_backend.url,
                     "methods": ["HEAD"], "timeout_ms": 3000}],
    )  # fmt: skip
    records: list[PairRecord] = []
    async with running_proxy(config) as rt, aiohttp.ClientSession() as session:
        rt.stream.subscribe(records.append)
        start = time.perf_counter()
        async with session.head(f"http://127.0.0.1:{rt.traffic_port}{PATH}") as resp:
            assert resp.status == 200
        await wait_for(lambda: len(records) == 1, what="the pair record")
        elapsed = time.perf_counter() - start
        assert [s.method for s in client_requests(candidate_backend)] == ["HEAD"]
        shadow = records[0].shadows["cand"]
        assert shadow.outcome == "ok", shadow.detail
        assert shadow.status == 200
        # Far under the 3 s timeout: the empty HEAD body did not leave the shadow waiting.
        assert shadow.latency_s < 1.5
        assert elapsed < 1.5
        assert _outcome(rt, "cand", "ok") == 1


# -- the request a candidate gets --------------------------------------------------------


async def test_candidate_gets_the_same_request_with_its_own_host_headers_and_prefix(
    backend: Backend, candidate_backend: Backend
) -> None:
    config = make_config(
        backend.url,
        production={"headers": {"Authorization": "Bearer prod-secret"}},
        candidates=[{
            "name": "cand", "version": "1", "url": candidate_backend.url + "/shadow/base/",
            "headers": {"X-Api-Key": "cand-secret", "X-Tenant": "shadow-test"},
        }],
    )  # fmt: skip
    body = b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1.5]}]}'
    async with running_proxy(config) as rt, aiohttp.ClientSession() as session:
        url = f"http://127.0.0.1:{rt.traffic_port}{PATH}?explain=1"
        sent_ids = []
        for client_id in ("client-id-1", None):
            headers = {"Content-Type": "application/json", "X-Custom": "kept",
                       "X-Shadow-Request": "0"}  # fmt: skip
            if client_id is not None:
                headers["X-Request-Id"] = client_id
            async with session.post(url, data=body, headers=headers) as resp:
                assert resp.status == 200
                sent_ids.append(resp.headers["X-Request-Id"])
        assert sent_ids[0] == "client-id-1"
        await wait_for(lambda: len(candidate_backend.seen) == 2, what="two mirrors")

    production = client_requests(backend)
    shadows = client_requests(candidate_backend)
    assert [header(s, "X-Request-Id") for s in production] == sent_ids
    assert [header(s, "X-Request-Id") for s in shadows] == sent_ids
    for prod, shadow in zip(production, shadows, strict=True):
        assert shadow.body == prod.body == body
        assert shadow.method == "POST"
        assert shadow.path == "/shadow/base" + PATH + "?explain=1"
        assert prod.path == PATH + "?explain=1"
        assert header_values(shadow, "Host") == [f"127.0.0.1:{candidate_backend.port}"]
        assert header_values(shadow, "X-Shadow-Request") == ["1"]
        assert header_values(shadow, "X-Api-Key") == ["cand-secret"]
        assert header_values(shadow, "X-Tenant") == ["shadow-test"]
        assert header(shadow, "Content-Type") == "application/json"
        assert header(shadow, "X-Custom") == "kept"
        assert header(shadow, "Content-Length") == str(len(body))
        # Each upstream's secrets go to that upstream only.
        assert header(shadow, "Authorization") is None
        assert header_values(prod, "Authorization") == ["Bearer prod-secret"]
        assert header(prod, "X-Api-Key") is None
        assert header(prod, "X-Shadow-Request") is None


async def test_configured_candidate_header_replaces_the_clients(
    backend: Backend, candidate_backend: Backend
) -> None:
    """A candidate's configured header is the one it gets, never doubled by the client's.

    Two ``Authorization`` headers are not a valid request; which one a server honours is up
    to the server, so the client's production credential could be used against the candidate.
    """
    config = make_config(
        backend.url,
        candidates=[{
            "name": "cand", "version": "1", "url": candidate_backend.url,
            "headers": {"Authorization": "Bearer cand-secret"},
        }],
    )  # fmt: skip
    async with running_proxy(config) as rt, aiohttp.ClientSession() as session:
        async with session.post(
            f"http://127.0.0.1:{rt.traffic_port}{PATH}",
            data=b"{}",
            headers={"Authorization": "Bearer client-token"},
        ) as resp:
            assert resp.status == 200
        await wait_for(lambda: len(candidate_backend.seen) == 1, what="the mirror")
    assert header_values(client_requests(backend)[0], "Authorization") == ["Bearer client-token"]
    assert header_values(candidate_backend.seen[0], "Authorization") == ["Bearer cand-secret"]


async def test_dropped_client_headers_never_reach_the_candidate(
    backend: Backend, candidate_backend: Backend
) -> None:
    config = make_config(
        backend.url,
        candidates=[{
            "name": "cand", "version": "1", "url": candidate_backend.url,
            "drop_headers": ["Authorization", "COOKIE"],
        }],
    )  # fmt: skip
    sent = {"Authorization": "Bearer client-token", "Cookie": "session=abc", "X-Tenant": "t1"}
    async with running_proxy(config) as rt, aiohttp.ClientSession() as session:
        async with session.post(
            f"http://127.0.0.1:{rt.traffic_port}{PATH}", data=b"{}", headers=sent
        ) as resp:
            assert resp.status == 200
        await wait_for(lambda: len(candidate_backend.seen) == 1, what="the mirror")
    prod, shadow = client_requests(backend)[0], candidate_backend.seen[0]
    for name, value in sent.items():
        assert header_values(prod, name) == [value]  # production gets the request as sent
    assert header(shadow, "Authorization") is None
    assert header(shadow, "Cookie") is None
    assert header_values(shadow, "X-Tenant") == ["t1"]  # only the listed ones are left out
    assert header_values(shadow, "X-Shadow-Request") == ["1"]


def test_drop_headers_must_be_header_names() -> None:
    raw = make_config(
        "http://127.0.0.1:9",
        candidates=[{"name": "c", "url": "http://127.0.0.1:10", "drop_headers": ["ok", "b@d"]}],
    )
    with pytest.raises(ConfigError, match=r"candidates\[0\]\.drop_headers\[1\]: 'b@d' is not"):
        config_from_dict(raw)
    raw["candidates"][0]["drop_headers"] = ["Cookie"]
    assert config_from_dict(raw).candidates[0].drop_headers == ("cookie",)


async def test_client_cannot_choose_where_the_shadow_goes(
    backend: Backend, candidate_backend: Backend, trap: RawServer
) -> None:
    config = make_config(
        backend.url, candidates=[{"name": "cand", "version": "1", "url": candidate_backend.url}]
    )
    trap_host = f"127.0.0.1:{trap.port}"
    attempts = [
        {"X-Shadow-Target": trap.url},
        {"X-Shadow-Target": "http://169.254.169.254/latest/meta-data/"},
        {"X-Shadow-Url": trap.url, "X-Shadow-Host": trap_host},
        {"Host": trap_host},
        {"X-Forwarded-Host": trap_host, "Forwarded": f"host={trap_host}"},
    ]
    async with running_proxy(config) as rt:
        async with aiohttp.ClientSession() as session:
            for headers in attempts:
                async with session.post(
                    f"http://127.0.0.1:{rt.traffic_port}{PATH}", data=b"{}", headers=headers
                ) as resp:
                    assert resp.status == 200
        # An absolute-form request target names the trap too.
        reader, writer = await asyncio.open_connection("127.0.0.1", rt.traffic_port)
        writer.write(
            b"POST http://%s/evil HTTP/1.1\r\nHost: %s\r\nContent-Length: 2\r\n"
            b"Connection: close\r\n\r\n{}" % (trap_host.encode(), trap_host.encode())
        )
        await writer.drain()
        answer = await reader.read()
        writer.close()
        assert answer.startswith(b"HTTP/1.1 200 ")
        total = len(attempts) + 1
        await wait_for(lambda: len(candidate_backend.seen) == total, what="every mirror")
        await settle(lambda: len(candidate_backend.seen))
    assert trap.connections == 0
    for shadow in candidate_backend.seen:
        assert header_values(shadow, "Host") == [f"127.0.0.1:{candidate_backend.port}"]
        assert header(shadow, "X-Shadow-Target") is None
        assert header(shadow, "X-Shadow-Url") is None
        assert header_values(shadow, "X-Shadow-Request") == ["1"]
    assert len(client_requests(backend)) == total


# -- baseline -----------------------------------------------------------------------------


async def test_baseline_is_mirrored_like_a_candidate_with_its_own_role(
    backend: Backend, candidate_backend: Backend
) -> None:
    baseline = await Backend().start()
    try:
        config = make_config(
            backend.url,
            candidates=[{"name": "cand", "version": "1", "url": candidate_backend.url}],
            baseline={"url": baseline.url, "name": "prod-b", "version": "1", "sample_rate": 1.0},
        )
        records: list[PairRecord] = []
        async with running_proxy(config) as rt, aiohttp.ClientSession() as session:
            rt.stream.subscribe(records.append)
            for i in range(5):
                async with session.post(
                    f"http://127.0.0.1:{rt.traffic_port}{PATH}", data=b'{"i": %d}' % i
                ) as resp:
                    assert resp.status == 200
            await wait_for(lambda: len(records) == 5, what="five pair records")
            await settle(lambda: len(baseline.seen))
            assert [s.body for s in client_requests(baseline)] == [
                b'{"i": %d}' % i for i in range(5)
            ]
            assert all(header(s, "X-Shadow-Request") == "1" for s in baseline.seen)
            assert _outcome(rt, "prod-b", "ok", role="baseline") == 5
            assert _outcome(rt, "prod-b", "ok", role="candidate") == 0
            assert _outcome(rt, "cand", "ok", role="candidate") == 5
            assert metric_value(
                rt, "shadowproxy_request_duration_seconds_count",
                role="baseline", model="prod-b", version="1",
            ) == 5  # fmt: skip
            assert metric_value(rt, "shadowproxy_pairs_total", model="prod-b", version="1") == 5
            for record in records:
                assert set(record.shadows) == {"cand", "prod-b"}
                assert record.shadows["prod-b"].role == "baseline"
                assert record.shadows["cand"].role == "candidate"
                assert record.shadows["prod-b"].outcome == "ok"
    finally:
        await baseline.stop()

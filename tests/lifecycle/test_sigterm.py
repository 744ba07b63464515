"""Stopping a real ``shadowproxy serve`` process under load loses no client request.

The clients play the part of a load balancer's traffic: they keep sending through the
drain delay (readiness already failing) and stop before it ends, as the endpoint is by
then out of rotation. Every request they sent must succeed; requests still in flight when
the listener stops must finish; the process exits 0 with the pair log flushed.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from shadowproxy.compare.comparator import read_snapshot
from shadowproxy.compare.persist import read_snapshot_file
from shadowproxy.pairing.log import read_pair_log
from tests.shadow.helpers import client_requests, echo_handler
from tests.support.load import PATH, SteadyLoad, answered_by_production, production
from tests.support.proxy import free_port, make_config, proxy_process, wait_http_ready
from tests.support.served import all_counted, only, outcomes, serving
from tests.support.servers import Backend, RawServer, read_request


def _config(
    production: Backend, candidate: Backend, tmp: Path, **shutdown: float
) -> dict[str, Any]:
    return make_config(
        production.url,
        listen={"port": free_port()},
        admin={"port": free_port()},
        candidates=[{"name": "cand", "version": "1", "url": candidate.url, "timeout_ms": 1000}],
        pair_log={"path": str(tmp / "pairs.jsonl")},
        shutdown=shutdown,
    )


async def _first_503_after(admin: str, deadline_s: float) -> float | None:
    """Seconds until readiness first answers 503, polling from now."""
    start = time.monotonic()
    async with aiohttp.ClientSession() as session:
        while time.monotonic() - start < deadline_s:
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(admin + "/healthz/ready") as resp:
                    if resp.status == 503:
                        return time.monotonic() - start
            await asyncio.sleep(0.01)
    return None


async def _ready_stays_503(admin: str, seconds: float) -> list[int]:
    statuses = []
    async with aiohttp.ClientSession() as session:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(admin + "/healthz/ready") as resp:
                    statuses.append(resp.status)
            await asyncio.sleep(0.05)
    return statuses


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_stop_signal_under_load_loses_no_request(
    backend: Backend, candidate_backend: Backend, tmp_path: Path, sig: signal.Signals
) -> None:
    """Every request of the drain window is served, and the comparator's state is saved.

    The snapshot interval is far longer than the test: the file can only come from the
    flush at shutdown, and it must hold every pair the proxy counted.
    """
    drain, grace = 1.5, 3.0
    backend.handler = production
    snapshot_path = tmp_path / "snapshot.json"
    config = _config(backend, candidate_backend, tmp_path, drain_delay_s=drain, grace_s=grace)
    config["compare"] = {
        "outputs": {"score": "probabilities"},
        "snapshot": {"path": str(snapshot_path), "interval_s": 3600},
    }
    async with serving(config, tmp_path) as served:
        admin, proc = served.admin_url, served.proc
        load = SteadyLoad({"proxy": served.traffic_url}, clients=20, check=answered_by_production)
        running = asyncio.create_task(load.run())
        await asyncio.sleep(1.5)
        sent_before = len(load.answers)
        proc.send_signal(sig)
        signalled = time.monotonic()
        first_503 = await _first_503_after(admin, deadline_s=0.5)
        later = await _ready_stays_503(admin, 0.4)
        # The endpoint is out of rotation well before the drain delay ends.
        await asyncio.sleep(max(0.0, signalled + drain - 0.5 - time.monotonic()))
        load.stop.set()
        await running
        sent_during_drain = len(load.answers) - sent_before
        # What the proxy counted, read while its admin listener still serves the drain.
        counted = await all_counted(served, ["cand"], len(load.answers))
        assert not snapshot_path.exists()
        code = await asyncio.to_thread(proc.wait, drain + grace + 5)
        exited_after = time.monotonic() - signalled
        log = served.log_text()

    assert first_503 is not None and first_503 < 0.3, first_503
    assert later and set(later) == {503}, later
    assert not load.errors, load.errors[:5]
    assert load.answers and {a.status for a in load.answers} == {200}
    assert not load.failures("proxy")  # every answer is production's, to that request
    assert sent_during_drain > 0, "no traffic was served during the drain delay"
    assert code == 0, log
    assert exited_after < drain + grace + 1.0, exited_after
    assert "Traceback" not in log, log

    # Every response came from production, and every mirrored one is in the pair log.
    total = len(load.answers)
    assert len(client_requests(backend)) == total
    records = list(read_pair_log([tmp_path / "pairs.jsonl"]))
    assert len(records) == total
    assert {r.request_id for r in records} == {a.request_id for a in load.answers}
    lines = (tmp_path / "pairs.jsonl").read_bytes().count(b"\n")
    assert lines == total

    # The snapshot written at shutdown is valid and holds every pair the proxy counted.
    state = read_snapshot(read_snapshot_file(snapshot_path), None, "shutdown snapshot")["cand"]
    assert counted.value("shadowproxy_pairs_total", model="cand", version="1") == total
    assert state.requests == total and state.compared == total and state.rows == total
    assert state.candidate_outcomes == outcomes(counted, "cand") == only(ok=total)


async def test_slow_requests_in_flight_at_sigterm_complete(
    candidate_backend: Backend, tmp_path: Path
) -> None:
    production = await Backend(handler=echo_handler("prod"), delay_s=1.0).start()
    try:
        config = _config(production, candidate_backend, tmp_path, drain_delay_s=0, grace_s=3)
        config["production"]["timeout_ms"] = 3000
        admin = f"http://127.0.0.1:{config['admin']['port']}"
        url = f"http://127.0.0.1:{config['listen']['port']}{PATH}"
        with proxy_process(config, tmp_path) as proc:
            await wait_http_ready(admin)

            async def slow_post(i: int) -> tuple[int, bytes, str, str]:
                async with aiohttp.ClientSession() as session:
                    async with session.post(url, data=b'{"i": %d}' % i) as resp:
                        return (
                            resp.status,
                            await resp.read(),
                            resp.headers.get("Connection", ""),
                            resp.headers.get("X-Request-Id", ""),
                        )

            tasks = [asyncio.create_task(slow_post(i)) for i in range(10)]
            deadline = time.monotonic() + 5
            while len(client_requests(production)) < 10 and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            assert len(client_requests(production)) == 10
            proc.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            outcomes = await asyncio.gather(*tasks, return_exceptions=True)
            code = await asyncio.to_thread(proc.wait, 10)
            exited_after = time.monotonic() - signalled
            stderr = proc.stderr.read().decode() if proc.stderr is not None else ""
            # The listener is closed by now: new connections are refused, not left hanging.
            with pytest.raises(OSError):
                await asyncio.open_connection("127.0.0.1", config["listen"]["port"])
    finally:
        await production.stop()

    errors = [r for r in outcomes if isinstance(r, BaseException)]
    assert not errors, errors
    results = [r for r in outcomes if not isinstance(r, BaseException)]
    for i, (status, body, connection, _) in enumerate(results):
        assert status == 200
        assert orjson.loads(body)["body"] == f'{{"i": {i}}}'
        # The connection closes after this response, and the response says so.
        assert connection.lower() == "close"
    assert code == 0, stderr
    assert exited_after < 3 + 1.0, exited_after
    records = list(read_pair_log([tmp_path / "pairs.jsonl"]))
    assert {r.request_id for r in records} == {r[3] for r in results}


async def _hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_request(reader)
    await asyncio.Event().wait()


async def test_shadow_work_is_cancelled_not_awaited_and_still_logged(
    backend: Backend, tmp_path: Path
) -> None:
    """A hung candidate does not hold up the exit; its calls are logged as dropped."""
    candidate = await RawServer(_hang).start()
    try:
        config = make_config(
            backend.url,
            listen={"port": free_port()},
            admin={"port": free_port()},
            candidates=[{"name": "cand", "version": "1", "url": candidate.url,
                         "timeout_ms": 30_000}],
            pair_log={"path": str(tmp_path / "pairs.jsonl")},
            shutdown={"drain_delay_s": 0, "grace_s": 10},
        )  # fmt: skip
        admin = f"http://127.0.0.1:{config['admin']['port']}"
        with proxy_process(config, tmp_path) as proc:
            await wait_http_ready(admin)
            ids = []
            async with aiohttp.ClientSession() as session:
                for i in range(5):
                    async with session.post(
                        f"http://127.0.0.1:{config['listen']['port']}{PATH}",
                        data=f'{{"i": {i}}}'.encode(),
                    ) as resp:
                        assert resp.status == 200
                        ids.append(resp.headers["X-Request-Id"])
            deadline = time.monotonic() + 5
            while candidate.connections < 5 and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            assert candidate.connections == 5
            proc.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            code = await asyncio.to_thread(proc.wait, 15)
            exited_after = time.monotonic() - signalled
            stderr = proc.stderr.read().decode() if proc.stderr is not None else ""
    finally:
        await candidate.stop()
    assert code == 0, stderr
    # Neither the candidate's 30 s deadline nor the 10 s grace is waited out.
    assert exited_after < 2.0, exited_after
    records = list(read_pair_log([tmp_path / "pairs.jsonl"]))
    assert sorted(r.request_id for r in records) == sorted(ids)
    for record in records:
        assert record.production is not None and record.production.status == 200
        assert record.shadows["cand"].outcome == "dropped"
        assert record.shadows["cand"].detail == "shutdown"


async def test_request_being_received_at_sigterm_is_still_answered(
    backend: Backend, candidate_backend: Backend, tmp_path: Path
) -> None:
    """A client halfway through sending its body when the listener stops gets its answer.

    It was accepted before the stop, so it is in flight: ``grace_s`` covers it.
    """
    config = _config(backend, candidate_backend, tmp_path, drain_delay_s=0, grace_s=3)
    admin = f"http://127.0.0.1:{config['admin']['port']}"
    body = b'{"inputs": [1, 2, 3, 4, 5, 6, 7, 8]}'
    with proxy_process(config, tmp_path) as proc:
        await wait_http_ready(admin)
        reader, writer = await asyncio.open_connection("127.0.0.1", config["listen"]["port"])
        writer.write(
            b"POST %s HTTP/1.1\r\nHost: proxy\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (PATH.encode(), len(body), body[:10])
        )
        await writer.drain()
        await asyncio.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.3)
        writer.write(body[10:])
        await writer.drain()
        try:
            answer = await asyncio.wait_for(reader.read(), 5)
        except ConnectionError as exc:
            answer = repr(exc).encode()
        writer.close()
        code = await asyncio.to_thread(proc.wait, 10)
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
    assert b"connection: close" in answer.lower()
    assert code == 0
    assert [s.body for s in client_requests(backend)] == [body]


class BalancedClients:
    """Keep-alive clients behind a load balancer of two replicas, ``a`` then ``b``.

    A client keeps its connection (and so its replica) until a response says
    ``Connection: close``; it then reconnects, and the balancer sends the new connection to
    ``a`` only while ``a`` is ready. This is how a Kubernetes Service treats a terminating
    pod: new connections go elsewhere, established ones stay until they close.
    """

    def __init__(self, a: str, b: str, admin_a: str, clients: int) -> None:
        self.urls = {"a": a + PATH, "b": b + PATH}
        self.admin_a = admin_a
        self.clients = clients
        self.a_ready = True
        self.stop = asyncio.Event()
        self.served: dict[str, list[int]] = {"a": [], "b": []}
        self.ids: dict[str, list[str]] = {"a": [], "b": []}
        self.errors: list[tuple[str, BaseException]] = []
        self.closes_from_a = 0
        self.final: list[str] = []

    async def watch_readiness(self) -> None:
        async with aiohttp.ClientSession() as session:
            while not self.stop.is_set():
                try:
                    async with session.get(self.admin_a + "/healthz/ready") as resp:
                        self.a_ready = resp.status == 200
                except aiohttp.ClientError:
                    self.a_ready = False
                await asyncio.sleep(0.02)

    async def _client(self, n: int) -> None:
        sessions = {
            name: aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1))
            for name in ("a", "b")
        }
        target = "a"
        try:
            i = 0
            while not self.stop.is_set():
                i += 1
                try:
                    async with sessions[target].post(
                        self.urls[target], data=orjson.dumps({"client": n, "i": i})
                    ) as resp:
                        await resp.read()
                        self.served[target].append(resp.status)
                        self.ids[target].append(resp.headers.get("X-Request-Id", ""))
                        closing = resp.headers.get("Connection", "").lower() == "close"
                except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                    self.errors.append((target, exc))
                    closing = True
                if closing:
                    if target == "a":
                        self.closes_from_a += 1
                    target = "a" if self.a_ready else "b"
            self.final.append(target)
        finally:
            for session in sessions.values():
                await session.close()


async def test_keepalive_clients_are_moved_off_during_the_drain_delay(
    backend: Backend, candidate_backend: Backend, tmp_path: Path
) -> None:
    """After SIGTERM, keep-alive clients are told to reconnect while the listener is open.

    Clients looping on established connections never see readiness; only a
    ``Connection: close`` moves them. If the proxy keeps their connections alive through
    the drain delay and then closes them, requests racing that close are lost.
    """
    drain, grace = 1.0, 2.0
    backend.handler = echo_handler("prod")
    dir_a, dir_b = tmp_path / "a", tmp_path / "b"
    dir_a.mkdir()
    dir_b.mkdir()
    config_a = _config(backend, candidate_backend, dir_a, drain_delay_s=drain, grace_s=grace)
    config_b = _config(backend, candidate_backend, dir_b, drain_delay_s=0, grace_s=grace)
    admin_a = f"http://127.0.0.1:{config_a['admin']['port']}"
    admin_b = f"http://127.0.0.1:{config_b['admin']['port']}"
    with proxy_process(config_a, dir_a) as proc_a, proxy_process(config_b, dir_b) as proc_b:
        await wait_http_ready(admin_a)
        await wait_http_ready(admin_b)
        load = BalancedClients(
            f"http://127.0.0.1:{config_a['listen']['port']}",
            f"http://127.0.0.1:{config_b['listen']['port']}",
            admin_a,
            clients=20,
        )
        watcher = asyncio.create_task(load.watch_readiness())
        clients = asyncio.gather(*(load._client(n) for n in range(load.clients)))
        await asyncio.sleep(1.0)
        served_before = len(load.served["a"])
        proc_a.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        await asyncio.sleep(2.0)  # through the drain delay and past the listener's close
        load.stop.set()
        await clients
        await watcher
        code_a = await asyncio.to_thread(proc_a.wait, drain + grace + 5)
        exited_after = time.monotonic() - signalled
        proc_b.send_signal(signal.SIGTERM)
        code_b = await asyncio.to_thread(proc_b.wait, 10)

    assert not load.errors, (len(load.errors), [(t, repr(e)) for t, e in load.errors[:3]])
    assert set(load.served["a"]) == {200} and set(load.served["b"]) == {200}
    assert len(load.served["a"]) > served_before, "a served nothing during its drain delay"
    assert load.served["b"], "no client was moved to the other replica"
    assert load.final == ["b"] * load.clients
    assert code_a == 0 and code_b == 0
    assert exited_after < drain + grace + 1.0
    for name, folder in (("a", dir_a), ("b", dir_b)):
        records = list(read_pair_log([folder / "pairs.jsonl"]))
        assert sorted(r.request_id for r in records) == sorted(load.ids[name])


async def test_a_stop_while_production_loads_ends_the_process_at_once(tmp_path: Path) -> None:
    import json

    from tests.support.models import logistic_regression

    model = logistic_regression(tmp_path)
    config = make_config("http://unused", listen={"port": free_port()}, admin={"port": free_port()})
    config["production"] = {
        "name": "prod", "version": "1", "model": model.config(),
        # A worker that never finishes loading: start would wait the whole minute.
        "executor": {"kind": "process", "start_timeout_s": 60},
    }  # fmt: skip
    env = {"SHADOWPROXY_TEST_FAULTS": json.dumps({"hang_at_start": True})}
    log = tmp_path / "serve.log"
    with proxy_process(config, tmp_path, env=env, log=log) as proc:
        admin = f"http://127.0.0.1:{config['admin']['port']}"
        async with aiohttp.ClientSession() as session:
            deadline = time.monotonic() + 20
            while True:  # the admin listener answers while production's model loads
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(admin + "/healthz/ready") as resp:
                        if resp.status == 503 and b"loading" in await resp.read():
                            break
                assert time.monotonic() < deadline, log.read_text()[-2000:]
                await asyncio.sleep(0.1)
        asked = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(proc.wait, 20)
        took = time.monotonic() - asked
    assert code == 0, log.read_text()[-2000:]
    assert took < 10, took  # not the 60 s start deadline, nor a kubelet's SIGKILL
    assert "stop requested while starting" in log.read_text()

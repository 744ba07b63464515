"""The serve lifecycle: start, become ready, and drain on SIGTERM.

Shutdown is explicit and ordered, as Kubernetes expects of a front proxy:

1. readiness fails at once, so the endpoint is taken out of rotation, and every response
   from now on carries ``Connection: close`` so keep-alive clients move elsewhere;
2. traffic is still served for ``shutdown.drain_delay_s`` while that propagates;
3. the listener stops accepting, idle keep-alive sockets are closed;
4. in-flight production requests get ``shutdown.grace_s`` to finish;
5. shadow work still pending is cancelled (counted as dropped: shutdown);
6. the pair log is flushed, the admin listener stops, and the process exits 0.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import gc
import logging
import shutil
import signal
import socket
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry

from shadowproxy.admin.app import build_admin_app
from shadowproxy.background import run_in_background
from shadowproxy.compare.comparator import Comparator, read_snapshot
from shadowproxy.compare.decide import report_for
from shadowproxy.compare.gauges import DecisionGauges
from shadowproxy.compare.persist import read_snapshot_file, write_snapshot
from shadowproxy.compare.reference import Reference
from shadowproxy.config.loader import redact_url
from shadowproxy.config.model import Candidate, Config, Executor, ModelFile
from shadowproxy.config.sampling_key import read_sampling_key
from shadowproxy.errors import ModelLoadError, ShadowProxyError, StateError, UpstreamError
from shadowproxy.executor import LocalExecutor, create_executor
from shadowproxy.models.check import check_model
from shadowproxy.observability.comparator_state import ComparatorStateCollector
from shadowproxy.observability.metrics import ExchangeStats, Metrics
from shadowproxy.observability.models import ModelCatalog, ModelEntry
from shadowproxy.observability.scrape import RemoteResources
from shadowproxy.pairing.join import PairStream
from shadowproxy.pairing.log import PairLogWriter
from shadowproxy.pairing.record import Role
from shadowproxy.protocols import ProtocolSpec
from shadowproxy.proxy.connection import ClientConnection
from shadowproxy.proxy.handler import Proxy
from shadowproxy.proxy.upstream import UpstreamConnection, build_request
from shadowproxy.shadow.dispatch import ShadowTarget

log = logging.getLogger("shadowproxy")

LAG_INTERVAL_S = 0.25
READY_PROBE_INTERVAL_S = 1.0
# Client deadlines (head, body, idle, send) are checked this often; they are seconds long,
# so a tenth of a second of slack is immaterial.
DEADLINE_SWEEP_S = 0.1


class _ProbeSink:
    """Buffers the answer to the readiness probe; only the status matters."""

    def __init__(self, done: asyncio.Future[int]) -> None:
        self.done = done
        self.status = 0
        self.upstream: UpstreamConnection | None = None

    @property
    def abandoned(self) -> bool:
        return self.done.done()

    def attach(self, conn: UpstreamConnection) -> None:
        self.upstream = conn

    def abandon(self) -> None:
        """A probe past its deadline: drop its connection rather than leave it waiting."""
        if self.upstream is not None:
            self.upstream.abort()

    def on_head(self, status: int, reason: bytes, head: object, framed: bool) -> None:
        self.status = status

    def on_body(self, data: bytes) -> None:
        pass

    def on_complete(self) -> None:
        if not self.done.done():
            self.done.set_result(self.status)

    def on_error(self, exc: UpstreamError) -> None:
        if not self.done.done():
            self.done.set_exception(exc)


class Runtime:
    """Owns every long-lived part of a running shadowproxy."""

    def __init__(self, config: Config, registry: CollectorRegistry | None = None) -> None:
        self.config = config
        self.metrics = Metrics(registry)
        self.stream = PairStream()
        self.pair_log: PairLogWriter | None = None
        self.proxy: Proxy | None = None
        self.server: asyncio.Server | None = None
        self.admin_runner: web.AppRunner | None = None
        self.shutting_down = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stop_requested = asyncio.Event()
        self.traffic_port = 0
        self.admin_port = 0
        self.catalog = ModelCatalog()
        self.metrics.registry.register(self.catalog)
        self.local: dict[tuple[Role, str], LocalExecutor] = {}
        self.models_loading = True
        self.comparator: Comparator | None = None
        self.sampling_key: bytes | None = None  # read from sampling.key_file at start
        # The periodic snapshot and gate evaluation (bootstrap intervals: a fraction of a
        # CPU second on a full sample) on one thread at background priority, so it never
        # delays production; see shadowproxy.background.
        self.persist_thread = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="shadowproxy-snapshots", initializer=run_in_background
        )
        self.decisions = DecisionGauges()
        self.metrics.registry.register(self.decisions)

    # -- readiness ------------------------------------------------------------------------
    def not_ready_reasons(self) -> list[str]:
        reasons = []
        if self.shutting_down:
            reasons.append("shutting down")
        if self.models_loading:
            reasons.append("local models loading and warming up")
        # A disabled candidate is counted and reported, but production carries on: only a
        # local production model that stopped working takes this replica out of rotation.
        production = self.local.get(("production", self.config.production.name))
        if production is not None and not self.models_loading and not production.ready:
            reasons.append("local production model has no worker running (restarting)")
        if self.proxy is None or self.server is None:
            reasons.append("traffic listener not started")
        elif not self.proxy.has_answered:
            reasons.append("production has not answered yet")
        return reasons

    # -- start ----------------------------------------------------------------------------
    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        cfg = self.config
        key_file = cfg.sampling.key_file
        self.sampling_key = None if key_file is None else read_sampling_key(key_file)
        if cfg.pair_log.path is not None:
            metric = self.metrics.pair_log
            self.pair_log = PairLogWriter(
                cfg.pair_log,
                on_drop=lambda r: metric.labels(r).inc(),
                on_written=metric.labels("written").inc,
                sampling_key=self.sampling_key,
            )
            self.pair_log.start()
            self.stream.subscribe(self.pair_log.submit)
        # Every model file is checked before anything listens: a bad model exits 2 at once.
        for spec in local_models(cfg):
            check_model(spec.model, spec.where)
        # So are the reference and a saved snapshot: a mismatch is never mixed in silently.
        if cfg.compare.enabled:
            self.comparator = self._comparator()
            self.metrics.registry.register(ComparatorStateCollector(self.comparator))
            self.stream.subscribe(self.comparator.submit)
            self.comparator.start()
        self.admin_runner = web.AppRunner(
            build_admin_app(
                cfg, self.metrics, self.not_ready_reasons, self.catalog, self.comparator
            ),
            access_log=None,
            handle_signals=False,
        )
        await self.admin_runner.setup()
        admin_sock = _bind(cfg.admin.host, cfg.admin.port)
        self.admin_port = admin_sock.getsockname()[1]
        await web.SockSite(self.admin_runner, admin_sock).start()
        # The admin listener answers (ready: 503) while workers start and models warm up.
        try:
            await self._start_local_models()
        except BaseException:
            await self.admin_runner.cleanup()
            if self.comparator is not None:
                await asyncio.to_thread(self.comparator.stop, 1.0)
            raise
        self.proxy = Proxy(
            cfg, self.metrics, self.stream, loop, self.local, sampling_key=self.sampling_key
        )
        proxy = self.proxy
        proxy.not_ready = self.not_ready_reasons
        self._catalog_remote_models(proxy)
        self.server = await loop.create_server(
            lambda: ClientConnection(proxy),
            cfg.listen.host,
            cfg.listen.port,
            reuse_address=True,
            backlog=1024,
        )
        self.traffic_port = self.server.sockets[0].getsockname()[1]
        if proxy.local_production is None:
            self.spawn(self._probe_production(), "production-probe")
        else:
            proxy.production_answered(200)  # served here, and warmed up above
        self.spawn(self._watch_loop_lag(), "loop-lag")
        if self.comparator is not None:
            self.spawn(self._snapshots(), "snapshots")
        self.spawn(self._sweep_deadlines(), "client-deadlines")
        log.info(
            "serving traffic on %s:%d, admin on %s:%d",
            cfg.listen.host, self.traffic_port, cfg.admin.host, self.admin_port,
        )  # fmt: skip

    async def _start_local_models(self) -> None:
        protocol = ProtocolSpec.from_config(self.config)
        for spec in local_models(self.config):
            # Candidates' workers decode request bodies themselves (see shadow.local).
            executor = create_executor(
                spec.name, spec.model, spec.executor, where=spec.where,
                protocol=protocol if spec.role == "candidate" else None, version=spec.version,
                serves_production=spec.role == "production",
            )  # fmt: skip
            self.local[(spec.role, spec.name)] = executor
            self.catalog.add(
                ModelEntry(
                    spec.role, spec.name, spec.version, executor=executor, settings=spec.executor
                )
            )
        # Production's model must be up before anything is served; candidates load and warm
        # up beside the traffic (their mirrors are dropped as "starting" meanwhile), so a
        # slow or hanging candidate can never hold production back. Readiness waits for
        # all of them (started, or disabled after executor.start_timeout_s).
        production = {key: e for key, e in self.local.items() if key[0] == "production"}
        try:
            await asyncio.gather(*(e.start() for e in production.values()))
        except BaseException:
            await asyncio.gather(
                *(executor.close() for executor in self.local.values()), return_exceptions=True
            )
            raise
        candidates = [e for key, e in self.local.items() if key[0] != "production"]
        if candidates:
            self.spawn(self._start_candidates(candidates), "candidate-models")
        else:
            self.models_loading = False

    async def _start_candidates(self, executors: list[LocalExecutor]) -> None:
        await asyncio.gather(*(_start_or_disable(executor) for executor in executors))
        self.models_loading = False

    def _catalog_remote_models(self, proxy: Proxy) -> None:
        """Remote models join the catalog; those with ``metrics_url`` are scraped."""
        cfg = self.config
        production = cfg.production
        if production.url is not None:
            entry = self._remote_entry(
                "production", production.name, production.version, production.url,
                production.metrics_url, production.metrics_interval_s,
                partial(_requests_sent, proxy.stats),
            )  # fmt: skip
            proxy.production_cost = entry.cost
        for target in proxy.targets:
            if isinstance(target, ShadowTarget):
                config = target.config
                url = config.metrics_url if isinstance(config, Candidate) else None
                interval = config.metrics_interval_s if isinstance(config, Candidate) else 5.0
                entry = self._remote_entry(
                    target.role, target.name, target.version, config.url or "", url, interval,
                    partial(_requests_sent, target.stats),
                )  # fmt: skip
                target.cost = entry.cost

    def _remote_entry(
        self,
        role: Role,
        name: str,
        version: str,
        url: str,
        metrics_url: str | None,
        interval_s: float,
        requests_sent: Callable[[], int],
    ) -> ModelEntry:
        remote = None
        if metrics_url is not None:
            remote = RemoteResources(metrics_url, requests_sent, interval_s=interval_s)
            self.spawn(remote.run(), f"scrape-{name}")
        return self.catalog.add(ModelEntry(role, name, version, url=redact_url(url), remote=remote))

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """Start a background task and keep a reference until it ends."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _probe_production(self) -> None:
        """Ask production until it answers, so readiness does not wait for client traffic."""
        assert self.proxy is not None
        proxy = self.proxy
        path = self.config.production.health_path.encode()
        while not proxy.has_answered and not self.shutting_down:
            done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
            request = build_request(
                b"GET", proxy.production_target.target_path(path),
                proxy.production_target.host_header, proxy.production_target.headers, b"",
            )  # fmt: skip
            probe = _ProbeSink(done)
            proxy.production_pool.request(request, probe)
            try:
                async with asyncio.timeout(proxy.production_timeout_s):
                    proxy.production_answered(await done)
            except TimeoutError:
                probe.abandon()
                log.debug("production not answering yet: no answer in time")
            except UpstreamError as exc:
                log.debug("production not answering yet: %s", exc)
            if not proxy.has_answered:
                await asyncio.sleep(READY_PROBE_INTERVAL_S)

    def _comparator(self) -> Comparator:
        compare = self.config.compare
        reference = None if compare.reference is None else Reference.load(compare.reference)
        comparator = Comparator(self.config, reference, sampling_key=self.sampling_key)
        path = compare.snapshot.path
        if path is not None and path.exists():
            # A restart resumes where the last snapshot left off.
            try:
                left_out = comparator.load(read_snapshot_file(path), str(path))
            except StateError as exc:
                # Evidence counted under other settings (another layout or sampling key) or
                # a file that cannot be read is never mixed in. Nor may it stop the front
                # proxy of the namespace: it is set aside, whole, and counting starts afresh.
                left_out = dict.fromkeys(["every target"], f"refused: {exc}")
                log.error("comparator snapshot refused: %s", exc)
            if left_out:
                keep_superseded(path, left_out)
        return comparator

    def persist(self) -> None:
        """Write the snapshot (when configured) and re-evaluate the gates; blocking."""
        assert self.comparator is not None
        snapshot = self.comparator.snapshot()
        if self.config.compare.snapshot.path is not None:
            write_snapshot(self.config.compare.snapshot.path, snapshot)
        targets = read_snapshot(snapshot, None, "live state", self.comparator.reservoir_key)
        self.decisions.report = report_for(self.config, targets, self.comparator.reference)

    async def _snapshots(self) -> None:
        interval = self.config.compare.snapshot.interval_s
        while True:
            await asyncio.sleep(interval)
            try:
                await asyncio.get_running_loop().run_in_executor(self.persist_thread, self.persist)
            except (OSError, ShadowProxyError) as exc:
                log.warning("comparator snapshot failed: %s", exc)
            except Exception:  # a bug must not end the snapshots for the life of the pod
                log.exception("comparator snapshot failed; retrying at the next interval")

    async def _sweep_deadlines(self) -> None:
        assert self.proxy is not None
        while True:
            await asyncio.sleep(DEADLINE_SWEEP_S)
            self.proxy.sweep_deadlines()

    async def _watch_loop_lag(self) -> None:
        observe = self.metrics.loop_lag.observe
        while True:
            before = time.perf_counter()
            await asyncio.sleep(LAG_INTERVAL_S)
            observe(max(0.0, time.perf_counter() - before - LAG_INTERVAL_S))

    # -- run & stop -----------------------------------------------------------------------
    def request_stop(self) -> None:
        """SIGTERM/SIGINT: readiness fails now; the drain runs in ``serve_forever``."""
        if not self.shutting_down:
            log.info("stop requested: readiness now failing, draining")
            self.shutting_down = True
            self.metrics.ready.set(0)
            if self.proxy is not None:
                self.proxy.start_draining()
            self._stop_requested.set()

    async def serve_forever(self) -> None:
        loop = asyncio.get_running_loop()
        # Handlers first: as PID 1 in a container, a SIGTERM during start (hashing and
        # loading production's model) would otherwise be ignored until the kubelet's
        # SIGKILL. A stop requested meanwhile drains as soon as the start is done.
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.request_stop)
        try:
            if not await self._start_unless_stopped():
                return
            # Everything allocated so far lives as long as the process: move it out of the
            # collector's reach, so full collections walk only per-request garbage.
            gc.freeze()
            await self._stop_requested.wait()
            await self.drain()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.remove_signal_handler(sig)

    async def _start_unless_stopped(self) -> bool:
        """``start``, cancelled by a stop request; whether it finished.

        A stop during start (say, while production's model loads) ends the process at
        once, cleanly: nothing was served yet, so there is nothing to drain.
        """
        starting = asyncio.ensure_future(self.start())
        stopping = asyncio.ensure_future(self._stop_requested.wait())
        await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if starting.done():
            starting.result()  # a failed start raises here
            return True
        log.info("stop requested while starting: stopping without serving")
        starting.cancel()
        await asyncio.gather(starting, return_exceptions=True)
        # start() unwinds what it had started (listeners, executors, the comparator); the
        # pair log holds nothing yet, but its writer thread must end.
        if self.pair_log is not None:
            await asyncio.to_thread(self.pair_log.close, 1.0)
        return False

    async def drain(self) -> None:
        """The ordered shutdown described in the module docstring."""
        cfg = self.config.shutdown
        self.shutting_down = True
        if self.proxy is not None and not self.proxy.draining:
            self.proxy.start_draining()
        await asyncio.sleep(cfg.drain_delay_s)
        if self.server is not None:
            self.server.close()  # stop accepting
        proxy = self.proxy
        if proxy is not None:
            proxy.stop_keepalive()
            deadline = time.monotonic() + cfg.grace_s
            while (proxy.in_flight or not all(c.idle for c in proxy.connections)) and (
                time.monotonic() < deadline
            ):
                await asyncio.sleep(0.01)
            if proxy.in_flight:
                log.warning("grace period over with %d requests in flight", proxy.in_flight)
            await proxy.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        # A periodic snapshot still being written must land before the last one, never after.
        await asyncio.to_thread(self.persist_thread.shutdown, True)
        if self.comparator is not None:
            # Everything paired so far is folded in before the last snapshot is written.
            if not await asyncio.to_thread(self.comparator.stop, max(cfg.grace_s, 1.0)):
                log.warning("comparator did not finish its queue before the deadline")
            try:
                # At normal priority: the last snapshot is written however busy the node is.
                await asyncio.to_thread(self.persist)
            except (OSError, ShadowProxyError) as exc:
                log.warning("final comparator snapshot failed: %s", exc)
        if self.pair_log is not None:
            flushed = await asyncio.to_thread(self.pair_log.close, max(cfg.grace_s, 1.0))
            if not flushed:
                log.warning("pair log not fully flushed before the deadline")
        if proxy is None:  # stopped while models were loading
            await asyncio.gather(
                *(executor.close() for executor in self.local.values()), return_exceptions=True
            )
        if self.admin_runner is not None:
            await self.admin_runner.cleanup()
        log.info("drained, exiting")


async def _start_or_disable(executor: LocalExecutor) -> None:
    """Start a candidate's model; one that passed its checks but fails to load is disabled.

    Its file was checked before anything listened (a bad file exits 2); what failed here
    is running it: the session, a worker dying, out of memory or out of time while loading.
    Production serves on without the candidate, which is counted and reported disabled.
    (A local production model that cannot load stops the start: see ``Runtime.start``.)
    """
    try:
        await executor.start()
    except ModelLoadError as exc:
        executor.disable(f"executor {executor.name!r} disabled: it failed to start: {exc}")


def _requests_sent(stats: ExchangeStats) -> int:
    """Requests actually sent to an upstream: every outcome but ``dropped``."""
    return sum(stats.outcomes.values()) - stats.outcomes["dropped"]


def keep_superseded(path: Path, left_out: dict[str, str]) -> Path | None:
    """Copy a snapshot whose evidence was partly left out next to it, and say so.

    The next snapshot overwrites ``path`` without that evidence; the copy keeps it for a
    report on the models it measured (``shadowproxy report --source COPY``). None when
    the copy could not be made (logged).
    """
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    copy = path.with_name(f"{path.name}.superseded-{stamp}")
    try:
        shutil.copyfile(path, copy)
    except OSError as exc:
        # Set aside or not, the evidence is left out; the proxy serves on either way.
        log.error("snapshot %s could not be copied aside to %s: %s", path, copy, exc)
        return None
    for name, why in left_out.items():
        log.warning("snapshot evidence of %r left out (%s); kept in %s", name, why, copy)
    return copy


@dataclass(frozen=True)
class LocalModelSpec:
    """A model served locally: where it sits in the config and how it is run."""

    role: Role
    name: str
    version: str
    model: ModelFile
    executor: Executor
    where: str  # dotted config key of its ``model:`` block, for messages


def local_models(config: Config) -> list[LocalModelSpec]:
    """Every model served locally: a local production first, then local candidates."""
    found = []
    p = config.production
    if p.model is not None:
        found.append(
            LocalModelSpec("production", p.name, p.version, p.model, p.executor, "production.model")
        )
    for i, c in enumerate(config.candidates):
        if c.model is not None:
            where = f"candidates[{i}].model"
            found.append(LocalModelSpec("candidate", c.name, c.version, c.model, c.executor, where))
    return found


def _bind(host: str, port: int) -> socket.socket:
    """A listening socket bound up front, so port 0 resolves before anything is served."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.listen(128)
    sock.setblocking(False)
    return sock


def install_uvloop() -> bool:
    """Use uvloop when it is installed; it is a large share of the proxy's speed."""
    try:
        import uvloop
    except ImportError:
        return False
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return True

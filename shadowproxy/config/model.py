"""Typed, frozen configuration objects.

The YAML file is validated once by :mod:`shadowproxy.config.loader` and turned into these
objects; nothing downstream ever sees a raw dict. Field metadata carries the constraints the
loader enforces (``gt``, ``ge``, ``le``, ``choices``, ``doc``), so the documentation and the
validation read the same source.

Relative paths are resolved against the config file's folder by the loader.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

MiB = 1024 * 1024
# Upper bounds on durations and counts. No sensible setting comes near them; they turn a
# typo (an extra three zeros, seconds written as milliseconds) into a config error that
# names the key, instead of a proxy that waits for days or loops a billion times.
DAY_S = 86_400.0
DAY_MS = DAY_S * 1000
MAX_COUNT = 1_000_000

Protocol = Literal["v1", "v2", "json"]
ExecutorKind = Literal["process", "thread"]
NonFinite = Literal["reject", "allow"]


def spec(default: Any = None, doc: str = "", **constraints: Any) -> Any:
    """A dataclass field with a default, documentation and validation constraints."""
    meta = {"doc": doc, **constraints}
    if isinstance(default, (list, dict, set)):
        raise TypeError("mutable defaults are not allowed in frozen config")
    return field(default=default, metadata=meta)


def required(doc: str = "", **constraints: Any) -> Any:
    """A dataclass field that the YAML must provide."""
    return field(metadata={"doc": doc, "required": True, **constraints})


@dataclass(frozen=True)
class Listener:
    host: str = spec("0.0.0.0", "address to bind")
    port: int = spec(8080, "TCP port to bind (0 picks a free port)", ge=0, le=65535)


@dataclass(frozen=True)
class Limits:
    """Protections for the traffic listener. Every limit answers with a proper status."""

    max_body_bytes: int = spec(10 * MiB, "largest request body accepted (413 above)", gt=0)
    max_header_bytes: int = spec(
        32 * 1024, "largest request line plus header block (431 above)", gt=0
    )
    max_headers: int = spec(
        100, "most header fields in one request (431 above)", gt=0, le=MAX_COUNT
    )
    header_timeout_s: float = spec(
        10.0, "deadline to receive a full request head (slowloris guard, 408 after)", gt=0, le=DAY_S
    )
    body_timeout_s: float = spec(
        30.0,
        "deadline to receive a full request body once the head is in (408 after)",
        gt=0,
        le=DAY_S,
    )
    keepalive_timeout_s: float = spec(
        75.0, "idle time before a keep-alive socket is closed", gt=0, le=DAY_S
    )
    send_timeout_s: float = spec(
        30.0,
        "a client that reads none of its response for this long is disconnected",
        gt=0,
        le=DAY_S,
    )
    max_pipelined: int = spec(
        32, "parsed requests queued on one connection before reading pauses", ge=1, le=MAX_COUNT
    )
    max_response_bytes: int = spec(
        256 * MiB, "largest production response relayed; bigger is a 502", gt=0
    )
    mirror_max_body_bytes: int = spec(
        10 * MiB, "request bodies above this are not mirrored and counted as skipped", ge=0
    )
    # Compressed answers are inflated under this cap by zlib, which takes it as a C ssize_t;
    # an answer is held in memory whole, so 1 TiB is already far beyond any real one.
    shadow_max_response_bytes: int = spec(
        1 * MiB,
        "candidate responses above this are refused (declared) or cut off, counted invalid",
        gt=0,
        le=1024 * 1024 * MiB,
    )


@dataclass(frozen=True)
class ModelFile:
    path: Path = required("ONNX file, relative to the config file's folder")
    sha256: str | None = spec(None, "hex SHA-256 of the file; required unless allow_unpinned")
    allow_unpinned: bool = spec(False, "accept a model without a pinned sha256")
    max_bytes: int = spec(512 * MiB, "largest model file read (external data included)", gt=0)


@dataclass(frozen=True)
class Executor:
    kind: ExecutorKind = spec("process", "process (isolated, default) or thread (trusted models)")
    workers: int = spec(1, "worker processes", ge=1, le=64)
    threads: int = spec(1, "onnxruntime intra-op threads per worker", ge=1, le=256)
    max_batch: int = spec(32, "most rows in one micro-batch", ge=1, le=65536)
    # Shadow rows gain nothing by going out early: a longer fill window means fewer, fuller
    # batches, each a frame, a wake-up of the worker and a switch of the core (about half
    # of what mirroring to a local model costs the proxy at 2 ms; see docs/local-models.md).
    max_wait_ms: float = spec(
        10.0,
        "longest a row waits for its batch to fill (and at most half its timeout_ms)",
        ge=0,
        le=DAY_MS,
    )
    # A worker's RLIMIT_DATA is about twice this in bytes, and must fit in a C long.
    memory_mb: int = spec(
        1024,
        "resident memory cap per worker; a worker above it is killed and respawned",
        gt=0,
        le=16 * MiB,
    )
    nice: int = spec(10, "how much lower than the proxy a worker process is scheduled", ge=0, le=19)
    idle_priority: bool = spec(
        True,
        "process workers run under SCHED_IDLE (Linux): CPU only when nothing else wants it, "
        "so a candidate can never delay production on a shared core",
    )
    cpus: tuple[int, ...] = spec(
        (),
        "CPU numbers the process workers may run on (empty: the proxy's own); with several "
        "cores, keep them off the proxy's",
    )
    queue_rows: int = spec(
        1024, "rows waiting for a worker at most; more are dropped", ge=1, le=MAX_COUNT
    )
    max_restarts: int = spec(
        5,
        "crashes within restart_window_s that disable the candidate (counted)",
        ge=1,
        le=MAX_COUNT,
    )
    restart_window_s: float = spec(60.0, "window in which crashes are counted", gt=0, le=DAY_S)
    restart_backoff_s: float = spec(
        0.5, "first delay before respawning a crashed worker; doubles per crash", ge=0, le=DAY_S
    )
    warmup_runs: int = spec(
        3, "inference runs on synthetic inputs before ready", ge=0, le=MAX_COUNT
    )
    start_timeout_s: float = spec(
        120.0,
        "longest a process worker may take to load and warm up; a candidate's that does not "
        "make it is disabled (production serves on), production's stops the start",
        gt=0,
        le=DAY_S,
    )


@dataclass(frozen=True)
class Breaker:
    """Circuit breaker for one shadow target: open after N failures in a row, then probe."""

    failures: int = spec(5, "consecutive failures that open the breaker", ge=1, le=MAX_COUNT)
    reset_s: float = spec(
        10.0, "time open before a single half-open probe is let through", gt=0, le=DAY_S
    )


@dataclass(frozen=True)
class Production:
    name: str = required("model name, used as the metrics label")
    version: str = spec("", "model version, used as the metrics label")
    url: str | None = spec(None, "base URL of the production model service")
    model: ModelFile | None = spec(None, "a local ONNX model served by shadowproxy instead")
    # No batching wait for production by default: a client's request goes to the model
    # at once when a worker is free, and requests that arrive while it is busy still batch.
    # Its process workers run at the proxy's own priority: they serve the clients, and under
    # SCHED_IDLE or a nice value they would wait for the CPU the proxy spends serving them.
    executor: Executor = spec(
        Executor(kind="thread", max_wait_ms=0.0, nice=0, idle_priority=False),
        "how a local production model is run (thread by default, with no batching wait, "
        "process workers at the proxy's priority)",
    )
    timeout_ms: float = spec(
        1000.0,
        "deadline for the response head (504 after), then for each stretch without body progress",
        gt=0,
        le=DAY_MS,
    )
    connect_timeout_ms: float = spec(
        1000.0, "deadline to open a connection (502 after)", gt=0, le=DAY_MS
    )
    pool_size: int = spec(
        256, "most idle keep-alive connections kept to production", ge=1, le=MAX_COUNT
    )
    health_path: str = spec(
        "/", "path probed until production answers (any status below 500), for readiness"
    )
    headers: tuple[tuple[str, str], ...] = spec(
        (), "headers added to every upstream request, replacing the client's (secret)"
    )
    metrics_url: str | None = spec(None, "Prometheus endpoint of a remote model, for resources")
    metrics_interval_s: float = spec(5.0, "seconds between scrapes of metrics_url", gt=0, le=DAY_S)


@dataclass(frozen=True, kw_only=True)
class Mirrored:
    """How a shadow target (candidate or baseline) receives its copy of the traffic."""

    sample_rate: float = spec(
        1.0, "share of requests mirrored, decided from the request id", ge=0, le=1
    )
    timeout_ms: float = spec(100.0, "deadline for one shadow exchange", gt=0, le=DAY_MS)
    connect_timeout_ms: float = spec(100.0, "deadline to open a connection", gt=0, le=DAY_MS)
    max_in_flight: int = spec(
        64, "shadow requests outstanding at once; more are dropped", ge=1, le=MAX_COUNT
    )
    methods: tuple[str, ...] = spec(("POST",), "HTTP methods that are mirrored")
    breaker: Breaker = spec(Breaker(), "circuit breaker")
    headers: tuple[tuple[str, str], ...] = spec(
        (), "headers added to every shadow request, replacing the client's (secret)"
    )
    drop_headers: tuple[str, ...] = spec(
        (),
        "client headers never copied to this target (for example authorization, cookie): "
        "credentials a candidate should not see",
    )


@dataclass(frozen=True, kw_only=True)
class Candidate(Mirrored):
    name: str = required("candidate name, used as the metrics label")
    version: str = spec("", "candidate version, used as the metrics label")
    url: str | None = spec(None, "base URL of a remote candidate service")
    model: ModelFile | None = spec(None, "a local ONNX candidate run in an isolated executor")
    executor: Executor = spec(Executor(), "how a local candidate is run")
    metrics_url: str | None = spec(None, "Prometheus endpoint of a remote model, for resources")
    metrics_interval_s: float = spec(5.0, "seconds between scrapes of metrics_url", gt=0, le=DAY_S)


@dataclass(frozen=True, kw_only=True)
class Baseline(Mirrored):
    """A second production instance, mirrored like a candidate: the noise floor."""

    url: str = required("base URL of the second production instance")
    name: str = spec("baseline", "name used as the metrics label")
    version: str = spec("", "version used as the metrics label")
    sample_rate: float = spec(0.1, "share of requests mirrored", ge=0, le=1)
    timeout_ms: float = spec(1000.0, "deadline for one shadow exchange", gt=0, le=DAY_MS)


@dataclass(frozen=True)
class Payload:
    """How request and response bodies are decoded (strictly) for local models and pairing."""

    max_rows: int = spec(
        1024, "most rows in one request; more is input_invalid", ge=1, le=MAX_COUNT
    )
    max_depth: int = spec(32, "deepest JSON nesting accepted", ge=2, le=512)
    nonfinite: NonFinite = spec(
        "reject", "NaN and Infinity in inputs: reject (input_invalid) or allow"
    )
    rows: str = spec(
        "",
        "json protocol: dotted path to the list of request rows (empty: the body is one row "
        "object or a list of them)",
    )
    response_rows: str = spec(
        "predictions",
        "json protocol: dotted path to the list of response rows (empty: the body itself)",
    )


@dataclass(frozen=True)
class Outputs:
    score: str | None = spec(None, "selector of the output holding scores")
    label: str | None = spec(None, "selector of the output holding labels")


@dataclass(frozen=True)
class Snapshot:
    path: Path | None = spec(None, "where comparator state is written atomically")
    interval_s: float = spec(30.0, "seconds between snapshots", gt=0, le=DAY_S)


@dataclass(frozen=True)
class Compare:
    outputs: Outputs = spec(Outputs(), "which outputs hold scores and labels")
    features: tuple[str, ...] = spec((), "names of the input columns")
    reference: Path | None = spec(None, "input reference made by `shadowproxy reference`")
    # The reservoirs key their hash with the seed as 8 bytes: it must fit in 64 bits.
    seed: int = spec(0, "seed of every random draw (reservoirs, bootstrap)", ge=0, lt=2**64)
    snapshot: Snapshot = spec(Snapshot(), "comparator state persistence")
    enabled: bool = spec(True, "run the comparator in this process (off: pair log only)")
    sample_rate: float = spec(
        1.0,
        "share of pairs compared, decided from the request id (every replica compares the "
        "same ones); the comparator costs CPU in the proxy process for each pair",
        ge=0,
        le=1,
    )


GateOp = Literal["min", "max"]


@dataclass(frozen=True)
class Gate:
    metric: str = required("a gate metric name")
    min: float | None = spec(None, "the value must be at least this")
    max: float | None = spec(None, "the value must be at most this")


@dataclass(frozen=True)
class Promotion:
    min_samples: int = spec(1000, "pairs needed before any gate can pass", ge=1)
    confidence: float = spec(0.95, "confidence level of every interval", gt=0, lt=1)
    gates: tuple[Gate, ...] = spec((), "the checks a candidate must pass")
    anytime_valid: bool = spec(
        False,
        "rates use anytime-valid confidence sequences: safe to check the report as often "
        "as you like, at the price of wider intervals",
    )


@dataclass(frozen=True)
class Sampling:
    """How requests are chosen at a ``sample_rate``."""

    key_file: Path | None = spec(
        None,
        "file holding a secret (16 bytes or more) that keys every sampling decision "
        "(candidates' and baseline's sample_rate, compare.sample_rate, pair_log.sample_rate); "
        "without it a client that sends X-Request-Id can choose which of its requests are "
        "sampled. Give every replica the same key",
    )


@dataclass(frozen=True)
class PairLog:
    """JSON-lines log of paired records, for replay and audit."""

    path: Path | None = spec(None, "file to append pair records to; unset disables the log")
    sample_rate: float = spec(
        1.0, "share of pairs written, decided from the request id", ge=0, le=1
    )
    max_bytes: int = spec(64 * MiB, "rotate the file beyond this size", gt=0)
    backups: int = spec(3, "rotated files kept", ge=0, le=MAX_COUNT)
    max_body_bytes: int = spec(
        64 * 1024, "bodies are truncated to this many bytes in the log", ge=0
    )
    redact: tuple[str, ...] = spec(
        (), 'dotted JSON body fields replaced by "[redacted]" (request and answers)'
    )
    # Small for the same reason as the comparator's inbox (INBOX_RECORDS): every queued
    # record is objects each full garbage collection walks with the event loop stopped.
    queue_size: int = spec(
        1024,
        "records buffered for the writer; more are dropped. Each queued record lengthens "
        "the garbage collector's full pauses (about 1 ms per 1,000)",
        ge=1,
        le=MAX_COUNT,
    )


@dataclass(frozen=True)
class Shutdown:
    drain_delay_s: float = spec(
        5.0, "after SIGTERM, keep serving (readiness already failing) for this long", ge=0, le=DAY_S
    )
    grace_s: float = spec(
        25.0, "then wait this long for in-flight requests before cancelling", ge=0, le=DAY_S
    )


@dataclass(frozen=True)
class Config:
    production: Production = required("the model whose answers clients receive")
    listen: Listener = spec(Listener(), "traffic listener: every path is proxied to production")
    admin: Listener = spec(Listener(port=9090), "admin listener: health, metrics, admin API")
    limits: Limits = spec(Limits(), "request limits")
    protocol: Protocol = spec("v2", "payload protocol: v1 (KServe V1), v2 (OIP REST), json")
    payload: Payload = spec(Payload(), "strict decoding of payloads")
    candidates: tuple[Candidate, ...] = spec((), "models that receive a copy of the traffic")
    baseline: Baseline | None = spec(None, "optional second production instance (noise floor)")
    compare: Compare = spec(Compare(), "comparator settings")
    promotion: Promotion = spec(Promotion(), "promotion gates")
    pair_log: PairLog = spec(PairLog(), "pair record log")
    sampling: Sampling = spec(Sampling(), "how requests are chosen at a sample_rate")
    shutdown: Shutdown = spec(Shutdown(), "drain behaviour on SIGTERM")
    source: Path | None = spec(None, "the file this config was read from (set by the loader)")

    def shadow_targets(self) -> tuple[Candidate | Baseline, ...]:
        """Every mirrored target: the candidates, then the baseline if configured."""
        return (*self.candidates, *(() if self.baseline is None else (self.baseline,)))

"""What every local executor offers: the call result, the resource figures, the protocol."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    # Annotations only: worker processes import this package and should start fast.
    import asyncio

    import numpy as np

    from shadowproxy.models.check import CheckedModel
    from shadowproxy.models.signature import ModelSignature


@dataclass(frozen=True, slots=True)
class Inference:
    """One request's answer and where its time went."""

    outputs: dict[str, np.ndarray]  # this request's rows only
    queue_s: float  # waiting for the batch to fill or a worker to be free
    ipc_s: float  # transfer both ways: the round trip minus the compute time
    compute_s: float  # wall time of the model run of the whole batch
    cpu_s: float  # this request's share (rows / batch rows) of the batch's CPU time
    # How long the worker waited for a CPU while on the batch (process executor; 0 for the
    # thread executor): part of ipc_s and compute_s that a free core would not have cost.
    cpu_wait_s: float = 0.0


@dataclass(frozen=True, slots=True)
class BodyAnswer:
    """The answer to one request body decoded and run in a worker (``submit_body``).

    ``body`` is the model's response encoded with the payload protocol; when the protocol
    refused the request, ``body`` is empty and ``invalid_reason`` holds its reason code.
    """

    body: bytes
    invalid_reason: str
    invalid_message: str
    queue_s: float
    ipc_s: float
    compute_s: float  # the whole frame's decode, model runs and encode
    cpu_s: float  # this request's share of the frame's CPU time
    cpu_wait_s: float = 0.0  # as for Inference


@dataclass(frozen=True)
class ResourceFigures:
    """What running the model costs, refreshed by a sampler task rather than per call.

    For the process executor the OS figures cover every worker process and its descendants;
    for the thread executor they are the proxy process's own (see its module). Counters are
    exact at the time of the call.
    """

    cpu_seconds: float = 0.0  # user + system time, loading and warm-up included
    # Per request ``requests``, loading and warm-up left out (paid once, not per request).
    cpu_seconds_per_request: float = 0.0
    rss_bytes: int = 0  # resident memory now, summed
    peak_rss_bytes: int = 0  # the largest VmHWM of any one process, ever
    threads: int = 0
    child_processes: int = 0  # processes the workers started (the model's helpers)
    requests: int = 0  # requests a worker ran, whether or not their caller still waited
    rows: int = 0
    batches: int = 0
    crashes: int = 0  # worker deaths not asked for (crash, signal, memory, hang kill)
    timeouts: int = 0  # requests failed with the timeout outcome
    # Time the workers were runnable but kept off a CPU (schedstat, plus the wait going
    # on): what a busy core denied an idle-priority model. 0 for the thread executor.
    cpu_wait_seconds: float = 0.0
    restarts: int = 0  # workers respawned after a crash
    disabled: bool = False
    workers_alive: int = 0
    # Sums over ``requests`` of the ``Inference`` fields, for means.
    compute_seconds: float = 0.0
    queue_seconds: float = 0.0
    ipc_seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class LocalExecutor(Protocol):
    """Runs one local ONNX model; implemented by the process and the thread executors."""

    name: str
    signature: ModelSignature  # valid after start()
    model: CheckedModel  # valid after start()

    async def start(self) -> None:
        """Check the model, load it in every worker, warm up, then return.

        ``ModelError`` when the model fails its checks; ``ModelLoadError`` when it passed
        them but could not be loaded or warmed up (session error, a worker that died or ran
        out of memory while loading).
        """
        ...

    def submit(
        self, inputs: dict[str, np.ndarray], rows: int, timeout_s: float
    ) -> asyncio.Future[Inference]:
        """Queue one request. Never raises: failures set an ``ExecutorError`` on the future."""
        ...

    @property
    def accepts_bodies(self) -> bool:
        """Whether ``submit_body`` works: the workers decode and encode with the protocol."""
        ...

    def submit_body(self, body: bytes, timeout_s: float) -> asyncio.Future[BodyAnswer]:
        """Queue one raw request body, decoded, run and encoded in a worker process.

        The proxy's event loop then never parses the payload nor touches numpy for it.
        Never raises: failures set an ``ExecutorError`` on the future.
        """
        ...

    @property
    def ready(self) -> bool: ...

    @property
    def disabled(self) -> bool: ...

    @property
    def starting(self) -> bool:
        """Not started yet, or still loading and warming up its model."""
        ...

    @property
    def disabled_reason(self) -> str | None:
        """Why the executor was switched off; None while it is not."""
        ...

    def disable(self, reason: str) -> None:
        """Switch the executor off for good: queued and later requests are dropped."""
        ...

    def resources(self) -> ResourceFigures: ...

    async def close(self, timeout_s: float = 2.0) -> None:
        """Stop accepting, fail pending requests as ``dropped``, stop the workers."""
        ...

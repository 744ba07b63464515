"""Executors that run local ONNX models: isolated worker processes, or proxy threads.

:func:`create_executor` picks one from the ``executor`` settings. Both batch rows of
concurrent requests, enforce queue limits and deadlines, and report what the model costs
(:class:`ResourceFigures`). The worker processes import this package too, so it stays
light: the executors themselves load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from shadowproxy.config.model import Executor, ModelFile
from shadowproxy.executor.api import BodyAnswer, Inference, LocalExecutor, ResourceFigures

if TYPE_CHECKING:
    from shadowproxy.protocols import ProtocolSpec

__all__ = ["BodyAnswer", "Inference", "LocalExecutor", "ResourceFigures", "create_executor"]


def create_executor(
    name: str,
    model: ModelFile,
    settings: Executor,
    *,
    where: str = "model",
    protocol: ProtocolSpec | None = None,
    version: str = "",
    serves_production: bool = False,
) -> LocalExecutor:
    """The executor ``settings.kind`` names, not started yet (call ``start()``).

    With ``protocol``, a process executor's workers also take raw request bodies
    (``submit_body``): they decode, run and encode them, off the proxy's event loop.
    ``serves_production``: a process executor that answers clients is never disabled by
    crashes and gives a hung worker less time (see :class:`ProcessExecutor`).
    """
    if settings.kind == "process":
        from shadowproxy.executor.process import ProcessExecutor

        return ProcessExecutor(
            name, model, settings, where=where, protocol=protocol, version=version,
            serves_production=serves_production,
        )  # fmt: skip
    if settings.kind == "thread":
        from shadowproxy.executor.thread import ThreadExecutor

        return ThreadExecutor(name, model, settings, where=where)
    raise ValueError(f"unknown executor kind {settings.kind!r}")

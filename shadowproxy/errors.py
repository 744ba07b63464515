"""The one exception root of shadowproxy, and its few subclasses.

Every error the program raises on purpose derives from :class:`ShadowProxyError`, so
callers can catch one type. Messages name the bad input; causes are chained with
``raise ... from``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


class ShadowProxyError(Exception):
    """Root of every error shadowproxy raises deliberately."""


@dataclass(frozen=True)
class Problem:
    """One invalid config value: where it is and what is wrong with it."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class ConfigError(ShadowProxyError):
    """The configuration is invalid; ``problems`` lists every bad key found."""

    def __init__(self, problems: list[Problem] | Problem) -> None:
        self.problems = [problems] if isinstance(problems, Problem) else list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class ModelError(ShadowProxyError):
    """A model file failed its safety or integrity checks, or could not be loaded."""


class ModelLoadError(ModelError):
    """A model passed its checks but could not be loaded, warmed up or kept running.

    The session could not be built, a worker died or ran out of memory while loading:
    something only running the model shows. ``serve`` disables such a candidate and
    carries on; a static check failure (any other ``ModelError``) stops it with exit 2.
    """


FailureOutcome = Literal["error", "timeout", "invalid", "dropped"]


class UpstreamError(ShadowProxyError):
    """An upstream (production, candidate or baseline) could not be reached or misbehaved.

    ``outcome`` is the counted outcome it becomes (``dropped`` when the client left).
    """

    def __init__(self, message: str, outcome: FailureOutcome = "error") -> None:
        super().__init__(message)
        self.outcome = outcome


class PayloadError(ShadowProxyError):
    """A request or response body does not follow the configured payload protocol.

    ``reason`` is a short, stable code (``bad_json``, ``bad_shape``, ``bad_dtype``,
    ``unknown_input``, ``missing_input``, ``ragged``, ``nonfinite``, ``empty_batch``,
    ``batch_too_large``, ``too_deep``, ``int_overflow``, ``bad_selector``, ...). For a
    candidate it becomes the ``invalid`` outcome; for a local production model a 400 in the
    protocol's error format.
    """

    def __init__(self, message: str, reason: str = "invalid") -> None:
        super().__init__(message)
        self.reason = reason


class ExecutorError(ShadowProxyError):
    """A local model call did not produce outputs.

    ``outcome`` is the counted outcome: ``timeout`` (past ``timeout_ms``), ``error`` (the
    worker crashed or onnxruntime raised), ``invalid`` (inputs onnxruntime refused) or
    ``dropped`` (queue full, executor disabled or shutting down, or its worker starved of
    CPU, for which ``reason`` is ``"starved"``: see ``BatchingExecutor._expire``).
    """

    def __init__(
        self, message: str, outcome: FailureOutcome = "error", *, reason: str | None = None
    ) -> None:
        super().__init__(message)
        self.outcome = outcome
        self.reason = reason  # the drop reason, where the executor knows it


class StateError(ShadowProxyError):
    """Comparator state that cannot be used: an incompatible snapshot or reference (a
    different bin layout, schema or seed), or a merge of states that do not match."""

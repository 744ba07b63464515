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


FailureOutcome = Literal["error", "timeout", "invalid", "dropped"]


class UpstreamError(ShadowProxyError):
    """An upstream (production, candidate or baseline) could not be reached or misbehaved.

    ``outcome`` is the counted outcome it becomes (``dropped`` when the client left).
    """

    def __init__(self, message: str, outcome: FailureOutcome = "error") -> None:
        super().__init__(message)
        self.outcome = outcome

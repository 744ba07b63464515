"""The pair record: one request, the production answer and every shadow answer, joined.

Records are plain data. They are built on the event loop and handed to consumers (the pair
log, the comparator) that must never block the producer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Role = Literal["production", "candidate", "baseline"]
# ok: a 2xx answer; error: non-2xx, refused or reset; timeout: past the deadline;
# invalid: unparseable HTTP or an over-size body; dropped: never sent (queue, budget,
# breaker, or a request body over the mirror cap).
Outcome = Literal["ok", "error", "timeout", "invalid", "dropped"]
OUTCOMES: tuple[Outcome, ...] = ("ok", "error", "timeout", "invalid", "dropped")


@dataclass(slots=True)
class Exchange:
    """One upstream's answer to one request."""

    role: Role
    name: str
    version: str
    outcome: Outcome
    status: int | None = None
    latency_s: float = 0.0
    body: bytes = b""
    content_type: str = ""
    detail: str = ""
    body_truncated: bool = False


@dataclass(slots=True)
class PairRecord:
    """A request and its answers, joined by request id.

    ``shadows`` maps each mirrored target's name to its exchange. A target that was not
    sampled for this request does not appear; one that was sampled but dropped does, with
    outcome ``dropped``.
    """

    request_id: str
    started_at: float
    method: str
    path: str
    request_body: bytes
    request_content_type: str = ""
    production: Exchange | None = None
    shadows: dict[str, Exchange] = field(default_factory=dict)
    # Set when read back from a pair log that kept only the start of the body.
    request_body_truncated: bool = False

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
class Cost:
    """What one exchange cost the model that answered it, where that is known.

    Local models fill every field from their executor; remote models with a ``metrics_url``
    give CPU per request and memory from their last scrape; otherwise the record has none.
    ``cpu_s`` is this request's share of the model's CPU time (a batch's CPU divided by its
    rows). ``compute_s`` is pure inference, ``queue_s`` and ``ipc_s`` the waiting and
    transfer around it. The last three fields describe the model process when it answered.
    Not frozen only because a frozen dataclass is slower to build, and one is built per
    exchange; treat it as read-only.
    """

    cpu_s: float | None = None
    compute_s: float | None = None
    queue_s: float | None = None
    ipc_s: float | None = None
    rss_bytes: float | None = None
    threads: int | None = None
    child_processes: int | None = None


def no_cost() -> Cost | None:
    """The cost of an exchange with a model whose resources are not measured."""
    return None


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
    cost: Cost | None = None


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

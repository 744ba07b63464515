"""Replaying logged requests against a model service (``shadowproxy replay``).

A pair log keeps every mirrored request; replaying it sends the same method, path (byte for
byte: not normalised, not re-encoded), body, Content-Type (none when the request had none)
and X-Request-Id to another service, for example a new candidate that was not running when
the traffic was recorded, or shadowproxy itself to rebuild comparator state. Requests carry
``X-Shadow-Replay: 1`` for a model server to tell them apart; shadowproxy drops it, as it
drops every ``X-Shadow-*`` header a client sends, so production behind a proxy replayed to
sees ordinary traffic.

What cannot be replayed faithfully is not sent: a record whose request body the log cut
short (``pair_log.max_body_bytes``) is skipped and counted. A body whose fields were
redacted (``pair_log.redact``) is sent as logged, redaction markers included.

The target is checked before anything is sent (:func:`target_problem`): a target that can
never be reached would otherwise fail every request in transit, one by one.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

import aiohttp
import yarl

from shadowproxy.config.urls import base_problem, split_url
from shadowproxy.pairing.record import PairRecord

REPLAY_HEADER = "X-Shadow-Replay"


@dataclass
class ReplaySummary:
    """What a replay sent and what came back."""

    sent: int = 0
    skipped_truncated: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)

    @property
    def failed(self) -> int:
        return sum(self.errors.values())


def target_problem(url: str) -> str | None:
    """What keeps ``url`` from being a base URL to replay to, if anything.

    A target is an absolute ``http://`` or ``https://`` URL naming a host, with an optional
    path prefix; each request's path and query are appended to it, so it has neither a
    query nor a fragment of its own. The URL is never quoted back: its userinfo may hold a
    password.
    """
    example = "like http://127.0.0.1:8080"
    if not url:
        return f"must not be empty; give the service's base URL ({example})"
    split = split_url(url)
    if isinstance(split, str):
        return split
    parts, port = split
    if parts.scheme.lower() not in ("http", "https"):
        return f"must be an absolute http:// or https:// URL ({example})"
    if not parts.netloc or not parts.hostname:
        return f"must name a host ({example})"
    return base_problem(url, port)


async def replay(
    records: Iterable[PairRecord],
    target_url: str,
    *,
    concurrency: int = 8,
    timeout_s: float = 10.0,
) -> ReplaySummary:
    """Send each replayable record's request to ``target_url`` (its base URL).

    At most ``concurrency`` requests are outstanding; records are read lazily, so a log of
    any size replays in constant memory.

    Raises
    ------
    ValueError
        ``target_url`` is not a usable base URL (see :func:`target_problem`).
    """
    problem = target_problem(target_url)
    if problem is not None:
        raise ValueError(f"target {problem}")
    summary = ReplaySummary()
    base = target_url.rstrip("/")
    limit = asyncio.Semaphore(concurrency)
    pending: set[asyncio.Task[None]] = set()
    timeout = aiohttp.ClientTimeout(total=timeout_s)

    async def send(session: aiohttp.ClientSession, record: PairRecord) -> None:
        headers = {"X-Request-Id": record.request_id, REPLAY_HEADER: "1"}
        # aiohttp would add a Content-Type (octet-stream) and an Accept-Encoding the
        # recorded request did not have.
        skip = ["Accept-Encoding"]
        if record.request_content_type:
            headers["Content-Type"] = record.request_content_type
        else:
            skip.append("Content-Type")
        try:
            async with session.request(
                record.method,
                # encoded: the path as recorded, dots, escapes and case of escapes included.
                yarl.URL(base + record.path, encoded=True),
                data=record.request_body,
                headers=headers,
                skip_auto_headers=skip,
                allow_redirects=False,
            ) as resp:
                await resp.read()
                summary.statuses[resp.status] += 1
        except (aiohttp.ClientError, TimeoutError) as exc:
            summary.errors[type(exc).__name__] += 1
        finally:
            limit.release()

    async with aiohttp.ClientSession(timeout=timeout) as session:
        for record in records:
            if record.request_body_truncated:
                summary.skipped_truncated += 1
                continue
            await limit.acquire()
            task = asyncio.get_running_loop().create_task(send(session, record))
            pending.add(task)
            task.add_done_callback(pending.discard)
            summary.sent += 1
        if pending:
            await asyncio.gather(*pending)
    return summary

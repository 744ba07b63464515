"""What every chaos test shares: production, two real proxies side by side, steady load.

A chaos test runs two ``shadowproxy serve`` processes in front of the same production
backend: one with faulty candidates, one without any. A well-behaved client sends steady
traffic to both, alternating, so both proxies meet the same machine at the same moments.
Production must answer every request through the faulty proxy, byte for byte, and about as
fast as through the clean one; the faults must all be counted in the faulty one's
``/metrics``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

from tests.support.load import BodyFor, SteadyLoad, answered_by_production, numbered_body
from tests.support.proxy import make_config
from tests.support.served import Served, serving

CLIENTS = 4
PAUSE_S = 0.005  # between a client's rounds: steady traffic, not a saturating benchmark
LOAD_S = 3.0
# Production through the faulty proxy may be this much slower than through the clean one
# (median; p95 gets twice as much): a 2-core machine shared with the candidates' own
# processes adds noise, never a candidate's deadline (hundreds of milliseconds).
MEDIAN_SLACK_MS = 3.0
P95_SLACK_MS = 6.0
SLACK_RATIO = 0.5


@contextlib.asynccontextmanager
async def side_by_side(
    production_url: str,
    candidates: list[dict[str, Any]],
    tmp: Path,
    *,
    env: Mapping[str, str] | None = None,
    **overrides: Any,
) -> AsyncIterator[tuple[Served, Served]]:
    """A clean proxy and one with ``candidates`` (``env`` for its process only)."""
    faulty_config = make_config(production_url, candidates=candidates, **overrides)
    async with (
        serving(make_config(production_url), tmp / "clean") as clean,
        serving(faulty_config, tmp / "faulty", env=env) as faulty,
    ):
        yield clean, faulty


async def steady_traffic(
    clean: Served, faulty: Served, seconds: float = LOAD_S, body_for: BodyFor = numbered_body
) -> SteadyLoad:
    load = SteadyLoad(
        {"clean": clean.traffic_url, "faulty": faulty.traffic_url},
        CLIENTS,
        answered_by_production,
        body_for=body_for,
        pause_s=PAUSE_S,
    )
    await load.run_for(seconds)
    return load


def assert_production_unharmed(load: SteadyLoad) -> int:
    """Every request answered 2xx with production's exact body, in time; returns how many.

    Each quantile of production's latency through the faulty proxy stays within a small
    slack of the same quantile through the clean proxy, measured at the same moments.
    """
    for target in ("clean", "faulty"):
        failures = load.failures(target)
        assert not failures, f"{target}: {len(failures)} failed requests: {failures[:5]}"
    for quantile, slack_ms in ((0.5, MEDIAN_SLACK_MS), (0.95, P95_SLACK_MS)):
        clean = load.latency_ms("clean", quantile)
        faulty = load.latency_ms("faulty", quantile)
        allowed = clean + max(slack_ms, SLACK_RATIO * clean)
        assert faulty <= allowed, (
            f"production p{quantile * 100:.0f} is {faulty:.2f} ms through the faulty proxy, "
            f"{clean:.2f} ms through the clean one (allowed {allowed:.2f} ms)"
        )
    return len(load.of("faulty"))

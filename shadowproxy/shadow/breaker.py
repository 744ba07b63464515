"""A circuit breaker for one shadow target (pure: time is passed in, nothing is awaited).

Closed: every call is allowed. After ``failures`` failures in a row the breaker opens and
calls are dropped. After ``reset_s`` it half-opens and lets exactly one probe through: a
success closes it, a failure opens it again for another ``reset_s``.

Every allowed call gets a :class:`Permit`, and its result is recorded against it. A permit
names the breaker's epoch (how many times it had opened when the call was let through), so
a call that started before the breaker last opened cannot close it or count twice: only
the probe decides a half-open breaker. A call that ends without saying anything about the
target's health (an input the model refused, a shutdown) is ``release``\\ d: a probe
released that way lets the next call probe instead, so the breaker never waits on an
answer that will not come.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class BreakerState(Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True)
class Permit:
    """Leave to make one call: the breaker's epoch then, and whether it is the probe."""

    epoch: int
    probe: bool = False


@dataclass
class CircuitBreaker:
    failures: int
    reset_s: float
    state: BreakerState = BreakerState.CLOSED
    consecutive_failures: int = 0
    opened_at: float = 0.0
    probe_in_flight: bool = False
    times_opened: int = 0

    def __post_init__(self) -> None:
        # The permit of a closed breaker's calls, made once: allow() is on the hot path.
        self._closed_permit = Permit(self.times_opened)

    def allow(self, now: float) -> Permit | None:
        """Leave to call at time ``now``, or None; a half-open breaker allows one probe."""
        if self.state is BreakerState.CLOSED:
            return self._closed_permit
        if self.state is BreakerState.OPEN and now - self.opened_at >= self.reset_s:
            self.state = BreakerState.HALF_OPEN
            self.probe_in_flight = False
        if self.state is BreakerState.HALF_OPEN and not self.probe_in_flight:
            self.probe_in_flight = True
            return Permit(self.times_opened, probe=True)
        return None

    def record(self, permit: Permit, success: bool, now: float) -> None:
        """Account for the result of the call ``permit`` allowed."""
        if permit.epoch != self.times_opened:
            return  # began before the breaker last opened: its news is stale
        if self.state is BreakerState.HALF_OPEN:
            if not permit.probe:
                return
            self.probe_in_flight = False
            if success:
                self._close()
            else:
                self._open(now)
            return
        if self.state is BreakerState.OPEN:
            return
        if success:
            self.consecutive_failures = 0
            return
        self.consecutive_failures += 1
        if self.consecutive_failures >= self.failures:
            self._open(now)

    def release(self, permit: Permit) -> None:
        """The call ``permit`` allowed ended without a verdict on the target."""
        if permit.probe and permit.epoch == self.times_opened:
            self.probe_in_flight = False

    def _open(self, now: float) -> None:
        self.times_opened += 1
        self.state = BreakerState.OPEN
        self.opened_at = now
        self.probe_in_flight = False

    def _close(self) -> None:
        self.state = BreakerState.CLOSED
        self.consecutive_failures = 0
        self._closed_permit = Permit(self.times_opened)

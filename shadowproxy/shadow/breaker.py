"""A circuit breaker for one shadow target (pure: time is passed in, nothing is awaited).

Closed: every call is allowed. After ``failures`` failures in a row the breaker opens and
calls are dropped. After ``reset_s`` it half-opens and lets exactly one probe through: a
success closes it, a failure opens it again for another ``reset_s``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class BreakerState(Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass
class CircuitBreaker:
    failures: int
    reset_s: float
    state: BreakerState = BreakerState.CLOSED
    consecutive_failures: int = 0
    opened_at: float = 0.0
    probe_in_flight: bool = False
    times_opened: int = 0

    def allow(self, now: float) -> bool:
        """Whether a call may be made at time ``now``; a half-open breaker allows one probe."""
        if self.state is BreakerState.CLOSED:
            return True
        if self.state is BreakerState.OPEN and now - self.opened_at >= self.reset_s:
            self.state = BreakerState.HALF_OPEN
            self.probe_in_flight = False
        if self.state is BreakerState.HALF_OPEN and not self.probe_in_flight:
            self.probe_in_flight = True
            return True
        return False

    def record(self, success: bool, now: float) -> None:
        """Account for the result of an allowed call."""
        if success:
            self.state = BreakerState.CLOSED
            self.consecutive_failures = 0
            self.probe_in_flight = False
            return
        self.consecutive_failures += 1
        if self.state is BreakerState.HALF_OPEN or self.consecutive_failures >= self.failures:
            if self.state is not BreakerState.OPEN:
                self.times_opened += 1
            self.state = BreakerState.OPEN
            self.opened_at = now
            self.probe_in_flight = False

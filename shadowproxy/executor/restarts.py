"""When a crashed worker is respawned, and when crashes disable the executor."""

from __future__ import annotations

from collections import deque

MAX_BACKOFF_S = 60.0


class CrashPolicy:
    """Counts crashes; backoff doubles per consecutive crash, a burst disables.

    ``max_restarts`` crashes within ``window_s`` seconds disable the executor. A batch
    answered by any worker ends the run of consecutive crashes, so the backoff starts over.
    """

    def __init__(self, max_restarts: int, window_s: float, backoff_s: float) -> None:
        self.max_restarts = max_restarts
        self.window_s = window_s
        self.backoff_s = backoff_s
        self.crashes = 0
        self.consecutive = 0
        self._recent: deque[float] = deque()

    def crashed(self, now: float) -> bool:
        """Record a crash at ``now`` (monotonic seconds); True when it must disable."""
        self.crashes += 1
        self.consecutive += 1
        self._recent.append(now)
        while self._recent and self._recent[0] <= now - self.window_s:
            self._recent.popleft()
        return len(self._recent) >= self.max_restarts

    def recent(self) -> int:
        """Crashes in the current window, as last recorded."""
        return len(self._recent)

    def succeeded(self) -> None:
        self.consecutive = 0

    def backoff(self) -> float:
        """Delay before the next respawn: ``backoff_s`` doubled per consecutive crash."""
        if self.consecutive <= 0:
            return 0.0
        cap = max(MAX_BACKOFF_S, self.backoff_s)
        return min(cap, self.backoff_s * 2.0 ** (self.consecutive - 1))

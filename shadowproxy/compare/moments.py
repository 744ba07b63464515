"""Streaming count, mean, variance, minimum and maximum that merge across replicas.

Each batch is reduced with numpy and folded into the running state with the pairwise
update of Chan, Golub and LeVeque, the same formula that merges two replicas' states; this
is numerically stable (no sum-of-squares cancellation) and costs O(1) memory.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from shadowproxy.errors import StateError

MOMENTS_SCHEMA = "shadowproxy.moments/v1"


class Moments:
    """Running count, mean, ``M2`` (sum of squared deviations), minimum and maximum.

    Only finite values enter the statistics; NaN and infinities would poison the mean, so
    they are counted in ``nonfinite`` instead.

    Attributes
    ----------
    count : int
        Finite values seen.
    mean : float
        Their mean (``nan`` when ``count == 0``).
    m2 : float
        Sum of squared deviations from the mean.
    min, max : float
        Extremes of the finite values (``nan`` when ``count == 0``).
    nonfinite : int
        NaN and infinite values offered and left out.
    """

    def __init__(self) -> None:
        self.count = 0
        self._mean = 0.0
        self.m2 = 0.0
        self._min = math.inf
        self._max = -math.inf
        self.nonfinite = 0

    @property
    def mean(self) -> float:
        return self._mean if self.count else math.nan

    @property
    def variance(self) -> float:
        """Sample variance (``ddof=1``); ``nan`` with fewer than two values."""
        return self.m2 / (self.count - 1) if self.count > 1 else math.nan

    @property
    def std(self) -> float:
        """Sample standard deviation (``ddof=1``)."""
        return math.sqrt(self.variance)

    @property
    def min(self) -> float:
        return self._min if self.count else math.nan

    @property
    def max(self) -> float:
        return self._max if self.count else math.nan

    def add(self, values: np.ndarray) -> None:
        """Fold in every value of ``values`` (any shape) as one batch."""
        array = np.asarray(values, dtype=np.float64).ravel()
        finite = array[np.isfinite(array)]
        self.nonfinite += int(array.size - finite.size)
        if finite.size == 0:
            return
        mean = float(finite.mean())
        m2 = float(np.square(finite - mean).sum())
        self._combine(int(finite.size), mean, m2, float(finite.min()), float(finite.max()))

    def merge(self, other: Moments) -> None:
        """Fold in another replica's state."""
        if not isinstance(other, Moments):
            raise StateError(f"cannot merge Moments with {type(other).__name__}")
        self.nonfinite += other.nonfinite
        if other.count:
            self._combine(other.count, other._mean, other.m2, other._min, other._max)

    def _combine(self, n_b: int, mean_b: float, m2_b: float, min_b: float, max_b: float) -> None:
        n_a = self.count
        n = n_a + n_b
        delta = mean_b - self._mean
        # Weighted form of the mean update keeps precision when one side dominates.
        self._mean = self._mean + delta * (n_b / n)
        self.m2 = self.m2 + m2_b + delta * delta * (n_a * n_b / n)
        self.count = n
        self._min = min(self._min, min_b)
        self._max = max(self._max, max_b)

    def __repr__(self) -> str:
        return (
            f"Moments(count={self.count}, mean={self.mean}, std={self.std}, "
            f"min={self.min}, max={self.max}, nonfinite={self.nonfinite})"
        )

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (strict JSON: empty extremes are ``null``)."""
        return {
            "schema": MOMENTS_SCHEMA,
            "count": self.count,
            "mean": self._mean,
            "m2": self.m2,
            "min": self._min if self.count else None,
            "max": self._max if self.count else None,
            "nonfinite": self.nonfinite,
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Moments:
        """Rebuild from :meth:`to_json` output; ``StateError`` if malformed."""
        if not isinstance(d, Mapping) or d.get("schema") != MOMENTS_SCHEMA:
            got = d.get("schema") if isinstance(d, Mapping) else type(d).__name__
            raise StateError(f"moments have schema {got!r}, expected {MOMENTS_SCHEMA!r}")
        m = cls()
        try:
            count, nonfinite = d["count"], d["nonfinite"]
            for name, value in (("count", count), ("nonfinite", nonfinite)):
                if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                    raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
            m.count, m.nonfinite = count, nonfinite
            m._mean, m.m2 = _finite(d["mean"], "mean"), _finite(d["m2"], "m2")
            if m.m2 < 0:
                raise ValueError(f"m2 must be >= 0, got {m.m2!r}")
            if count:
                m._min, m._max = _finite(d["min"], "min"), _finite(d["max"], "max")
        except (KeyError, TypeError, ValueError) as exc:
            raise StateError(f"moments are malformed: {exc}") from exc
        return m


def _finite(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)

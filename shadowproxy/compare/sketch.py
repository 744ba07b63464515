"""A relative-error quantile sketch with integer buckets (after DDSketch).

Positive values fall in logarithmic buckets ``(gamma**(i-1), gamma**i]`` with
``gamma = (1 + alpha) / (1 - alpha)``; negative values are mirrored into a second set of
buckets and values with magnitude below ``min_value`` into a zero bucket. Any value is
answered by its bucket's representative within relative error ``alpha``. A value's bucket
depends on the value alone and the buckets hold integer counts, so merging sketches is
exact and independent of order and partition. No bucket collapsing is done (it would break
that exactness); memory is bounded instead by the value range, at most about
``log(max|x| / min_value) / log(gamma)`` buckets per sign (some 35,000 for ``alpha=0.01``
over the whole float64 range, a few hundred for typical data).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, overload

import numpy as np

from shadowproxy.errors import StateError

SKETCH_SCHEMA = "shadowproxy.sketch/v1"


class QuantileSketch:
    """Mergeable quantile sketch with relative accuracy ``alpha``.

    Parameters
    ----------
    alpha
        Relative accuracy, ``0 < alpha < 1``: every quantile is answered within ``alpha``
        times the true value (plus ``min_value`` in absolute terms near zero).
    min_value
        Magnitudes below this count in the zero bucket and are answered as ``0``.

    Attributes
    ----------
    count : int
        Finite values added.
    nonfinite : int
        NaN and infinite values offered; they have no bucket and are left out.
    min, max : float
        Exact extremes of the finite values (``nan`` while empty); quantile answers are
        clamped to them, which only ever reduces the error.
    """

    def __init__(self, alpha: float = 0.01, min_value: float = 1e-9) -> None:
        if not (isinstance(alpha, int | float) and 0 < alpha < 1):
            raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
        if not (isinstance(min_value, int | float) and 0 < min_value < math.inf):
            raise ValueError(f"min_value must be positive and finite, got {min_value!r}")
        self.alpha = float(alpha)
        self.min_value = float(min_value)
        self.gamma = (1 + self.alpha) / (1 - self.alpha)
        self._log_gamma = math.log(self.gamma)
        self.positive: dict[int, int] = {}
        self.negative: dict[int, int] = {}
        self.zero = 0
        self.nonfinite = 0
        self._min = math.inf
        self._max = -math.inf

    @property
    def count(self) -> int:
        return self.zero + sum(self.positive.values()) + sum(self.negative.values())

    @property
    def min(self) -> float:
        return self._min if self.count else math.nan

    @property
    def max(self) -> float:
        return self._max if self.count else math.nan

    def _bucket(self, magnitudes: np.ndarray) -> np.ndarray:
        return np.ceil(np.log(magnitudes) / self._log_gamma).astype(np.int64)

    def _values(self, indices: list[int]) -> np.ndarray:
        # The point of (gamma**(i-1), gamma**i] whose relative error to both ends is alpha.
        # The top bucket's gamma**i may overflow; the clamp to the exact maximum in
        # quantile() brings such an answer back.
        with np.errstate(over="ignore"):
            powers = np.power(self.gamma, np.asarray(indices, dtype=np.float64))
            return powers * (2.0 / (self.gamma + 1.0))

    def add(self, values: np.ndarray) -> None:
        """Add every value of ``values`` (any shape)."""
        array = np.asarray(values, dtype=np.float64).ravel()
        finite = array[np.isfinite(array)]
        self.nonfinite += int(array.size - finite.size)
        if finite.size == 0:
            return
        self._min = min(self._min, float(finite.min()))
        self._max = max(self._max, float(finite.max()))
        magnitude = np.abs(finite)
        small = magnitude < self.min_value
        self.zero += int(np.count_nonzero(small))
        for store, mask in (
            (self.positive, (finite > 0) & ~small),
            (self.negative, (finite < 0) & ~small),
        ):
            if mask.any():
                buckets, counts = np.unique(self._bucket(magnitude[mask]), return_counts=True)
                for b, c in zip(buckets.tolist(), counts.tolist(), strict=True):
                    store[b] = store.get(b, 0) + c

    def merge(self, other: QuantileSketch) -> None:
        """Add ``other``'s buckets; ``StateError`` if ``alpha`` or ``min_value`` differ."""
        if not isinstance(other, QuantileSketch):
            raise StateError(f"cannot merge a QuantileSketch with {type(other).__name__}")
        if (self.alpha, self.min_value) != (other.alpha, other.min_value):
            raise StateError(
                "cannot merge sketches with different (alpha, min_value): "
                f"{(self.alpha, self.min_value)} vs {(other.alpha, other.min_value)}"
            )
        for mine, theirs in ((self.positive, other.positive), (self.negative, other.negative)):
            for b, c in theirs.items():
                mine[b] = mine.get(b, 0) + c
        self.zero += other.zero
        self.nonfinite += other.nonfinite
        self._min = min(self._min, other._min)
        self._max = max(self._max, other._max)

    @overload
    def quantile(self, q: float) -> float: ...
    @overload
    def quantile(self, q: np.ndarray) -> np.ndarray: ...
    def quantile(self, q: float | np.ndarray) -> float | np.ndarray:
        """The ``q``-quantile(s), ``0 <= q <= 1``; ``nan`` while the sketch is empty.

        The answer approximates the order statistic of rank ``floor(q * (count - 1))``
        (numpy's ``method="lower"``) within relative error ``alpha``.
        """
        qs = np.asarray(q, dtype=np.float64)
        if np.any(~((qs >= 0) & (qs <= 1))):
            raise ValueError(f"q must lie in [0, 1], got {q!r}")
        total = self.count
        if total == 0:
            out = np.full(qs.shape, np.nan)
            return float(out) if out.ndim == 0 else out
        # Ascending order of value: most negative first, then zero, then positive.
        neg = sorted(self.negative.items(), reverse=True)
        pos = sorted(self.positive.items())
        values = np.concatenate(
            [-self._values([b for b, _ in neg]), [0.0], self._values([b for b, _ in pos])]
        )
        counts = np.asarray([c for _, c in neg] + [self.zero] + [c for _, c in pos])
        cumulative = np.cumsum(counts)
        ranks = np.floor(qs * (total - 1))
        # First bucket whose cumulative count exceeds the rank holds that order statistic.
        idx = np.searchsorted(cumulative, ranks, side="right")
        out = np.clip(values[idx], self._min, self._max)
        # The extremes are known exactly, so the first and last ranks need no estimate.
        out = np.where(ranks == 0, self._min, np.where(ranks == total - 1, self._max, out))
        return float(out) if out.ndim == 0 else out

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, QuantileSketch):
            return NotImplemented
        return self.to_json() == other.to_json()

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return (
            f"QuantileSketch(alpha={self.alpha}, count={self.count}, "
            f"buckets={len(self.positive) + len(self.negative)})"
        )

    def to_json(self) -> dict[str, Any]:
        """A strict-JSON dict; buckets are sparse ``{"index": count}`` maps."""
        empty = not self.count
        return {
            "schema": SKETCH_SCHEMA,
            "alpha": self.alpha,
            "min_value": self.min_value,
            "zero": self.zero,
            "nonfinite": self.nonfinite,
            "min": None if empty else self._min,
            "max": None if empty else self._max,
            "positive": {str(b): c for b, c in sorted(self.positive.items())},
            "negative": {str(b): c for b, c in sorted(self.negative.items())},
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> QuantileSketch:
        """Rebuild a sketch; ``StateError`` if malformed."""
        if not isinstance(d, Mapping) or d.get("schema") != SKETCH_SCHEMA:
            got = d.get("schema") if isinstance(d, Mapping) else type(d).__name__
            raise StateError(f"sketch has schema {got!r}, expected {SKETCH_SCHEMA!r}")
        try:
            sketch = cls(d["alpha"], d["min_value"])
            sketch.zero = _count(d["zero"], "zero")
            sketch.nonfinite = _count(d["nonfinite"], "nonfinite")
            for name, store in (("positive", sketch.positive), ("negative", sketch.negative)):
                for b, c in dict(d[name]).items():
                    if _count(c, f"{name}[{b}]") > 0:
                        store[int(b)] = c
            if sketch.count:
                lo, hi = d["min"], d["max"]
                if not all(
                    isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
                    for v in (lo, hi)
                ):
                    raise ValueError(f"min and max must be finite numbers, got {lo!r}, {hi!r}")
                sketch._min, sketch._max = float(lo), float(hi)
        except (KeyError, TypeError, ValueError) as exc:
            raise StateError(f"sketch is malformed: {exc}") from exc
        return sketch


def _count(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return value

"""Latency sketches as fixed Prometheus histogram buckets, and back again (pure, no I/O).

The comparator keeps each side's latency (ms) in a sketch with 1 % buckets
``(gamma**(i-1), gamma**i]``, created as values arrive. For Prometheus every ``GROUP``
consecutive buckets form one exported bucket ``(G**(j-1), G**j]`` with ``G = gamma**GROUP``,
upper-inclusive like a histogram's ``le``, over a fixed range: one fixed set of ``le``
bounds per side, so the series never change with traffic, and ``histogram_quantile``
works on them. Values at or below the first bound count in it, above the last in ``+Inf``.

Summed over replicas and read back, the buckets make a sketch with ratio ``G``: its
quantiles are within about 8 %, and :func:`quantile_bounds` gives the bucket a quantile
lies in, which holds the exact order statistic whatever the values inside it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from shadowproxy.compare.sketch import SKETCH_SCHEMA, QuantileSketch
from shadowproxy.errors import StateError

GROUP = 8  # sketch buckets per exported bucket: G = 1.0202**8, about 1.17
RANGE_MS = (0.05, 60_000.0)  # below a loopback round trip to past any timeout
FINE = QuantileSketch()  # the comparator's own sketch parameters
GAMMA = FINE.gamma**GROUP
ALPHA = (GAMMA - 1) / (GAMMA + 1)
FIRST = math.floor(math.log(RANGE_MS[0]) / math.log(GAMMA))
LAST = math.ceil(math.log(RANGE_MS[1]) / math.log(GAMMA))
OVERFLOW = LAST + 1  # the index of ``+Inf`` in the rebuilt sketch
BOUNDS_MS = tuple(GAMMA**j for j in range(FIRST, LAST + 1))
LE = (*(repr(bound / 1000) for bound in BOUNDS_MS), "+Inf")  # in seconds
"""The exported ``le`` labels, in order."""

_LE_INDEX = {le: i for i, le in enumerate(LE)}


def cumulative_buckets(sketch: QuantileSketch) -> list[tuple[str, int]]:
    """``(le, values at or below it)`` for every exported bound of a fine latency sketch."""
    counts = [0] * len(LE)
    counts[0] = sketch.zero + sum(sketch.negative.values())
    for i, count in sketch.positive.items():
        j = -(-i // GROUP)  # ceil(i / GROUP): the exported bucket holding fine bucket i
        counts[min(max(j - FIRST, 0), len(LE) - 1)] += count
    return list(zip(LE, np.cumsum(counts).tolist(), strict=True))


def sketch_from_buckets(
    cumulative: Mapping[str, int], minimum: float | None, maximum: float | None, nonfinite: int
) -> QuantileSketch:
    """The coarse sketch of summed ``le`` buckets; ``StateError`` if they do not fit.

    ``minimum`` and ``maximum`` are the exact extremes in ms (answers are clamped to them);
    values at or below the first bound sit in bucket ``FIRST``, overflow in ``OVERFLOW``.
    """
    unknown = sorted(set(cumulative) - set(_LE_INDEX))
    if unknown:
        raise StateError(f"latency buckets le={unknown} are not the exported bounds")
    running = [int(cumulative.get(le, 0)) for le in LE]
    counts = np.diff([0, *running])
    if np.any(counts < 0):
        raise StateError(f"latency buckets are not cumulative: {running}")
    positive = {str(FIRST + k): int(c) for k, c in enumerate(counts.tolist()) if c}
    return QuantileSketch.from_json(
        {
            "schema": SKETCH_SCHEMA,
            "alpha": ALPHA,
            "min_value": FINE.min_value,
            "zero": 0,
            "nonfinite": nonfinite,
            "min": minimum,
            "max": maximum,
            "positive": positive,
            "negative": {},
        }
    )


def quantile_bounds(sketch: QuantileSketch, q: float) -> tuple[float, float, float]:
    """The ``q``-quantile of a sketch from :func:`sketch_from_buckets`, with its bucket.

    Parameters
    ----------
    sketch : QuantileSketch
        A rebuilt, non-empty coarse sketch.
    q : float
        The quantile, ``0 <= q <= 1``.

    Returns
    -------
    tuple of float
        ``(value, low, high)``: the sketch's answer, and the range of the bucket holding
        the order statistic of rank ``floor(q * (count - 1))`` (the one
        :meth:`QuantileSketch.quantile` estimates), narrowed to the exact extremes. The
        order statistic lies in that range, and so does any finer sketch's answer.
    """
    value = float(sketch.quantile(q))
    rank = math.floor(q * (sketch.count - 1))
    if rank == 0 or rank == sketch.count - 1:
        return value, value, value  # the extremes are exact
    items = sorted(sketch.positive.items())
    cumulative = np.cumsum([count for _, count in items])
    j = items[int(np.searchsorted(cumulative, rank, side="right"))][0]
    low = sketch.min if j == FIRST else max(sketch.min, GAMMA ** (j - 1))
    high = sketch.max if j == OVERFLOW else min(sketch.max, GAMMA**j)
    return value, low, high

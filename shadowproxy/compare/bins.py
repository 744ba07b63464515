"""Fixed bin layouts and the integer histograms counted over them.

A :class:`BinLayout` is chosen once (from the training data, or uniformly) and shared by
every replica; a :class:`Histogram` only ever holds integer counts over it, so merging the
histograms of several replicas is exact and independent of order. Every serialised
histogram carries its layout and the layout's fingerprint, so state counted over different
bins is refused instead of being silently added up.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from shadowproxy.errors import StateError

LAYOUT_SCHEMA = "shadowproxy.bins/v1"
HISTOGRAM_SCHEMA = "shadowproxy.histogram/v1"


@dataclass(frozen=True)
class BinLayout:
    """Bin edges shared by every histogram that may be merged together.

    Parameters
    ----------
    edges
        Finite, strictly increasing edges ``e0 < e1 < ... < e_last`` (at least one). They
        define ``len(edges) + 1`` bins: ``(-inf, e0)``, ``[e0, e1)``, ..., ``[e_last, +inf)``,
        so every value, including the infinities, has a bin.
    """

    edges: tuple[float, ...]

    def __post_init__(self) -> None:
        try:
            edges = tuple(float(e) for e in self.edges)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"edges must be numbers, got {self.edges!r}") from exc
        if not edges:
            raise ValueError("edges must hold at least one edge, got ()")
        array = np.asarray(edges, dtype=np.float64)
        if not np.all(np.isfinite(array)):
            raise ValueError(f"edges must be finite, got {edges!r}")
        if np.any(np.diff(array) <= 0):
            raise ValueError(f"edges must be strictly increasing, got {edges!r}")
        # Normalise ints and numpy scalars to Python floats so equality and the
        # fingerprint do not depend on how the edges were passed in.
        object.__setattr__(self, "edges", edges)

    @property
    def bins(self) -> int:
        """The number of bins, ``len(edges) + 1``."""
        return len(self.edges) + 1

    def fingerprint(self) -> str:
        """A short hex digest of the exact edge values (stable across processes)."""
        # float.hex is exact and platform independent, unlike a decimal rendering.
        text = ",".join(e.hex() for e in self.edges)
        return hashlib.sha256(text.encode("ascii")).hexdigest()[:16]

    def index(self, values: np.ndarray) -> np.ndarray:
        """The bin index of every value (``int64``, same shape); NaN maps to ``-1``."""
        array = np.asarray(values, dtype=np.float64)
        # side="right" puts a value equal to an edge into the bin that edge opens.
        idx = np.searchsorted(np.asarray(self.edges), array, side="right").astype(np.int64)
        idx[np.isnan(array)] = -1
        return idx

    @classmethod
    def from_quantiles(cls, data: np.ndarray, bins: int = 10) -> BinLayout:
        """Edges at the interior ``1/bins, ..., (bins-1)/bins`` quantiles of the finite data.

        Each edge is an observed value (numpy's ``method="higher"``).

        Equal quantiles (heavily repeated values) collapse into one edge, so the layout may
        have fewer than ``bins`` bins.
        """
        if isinstance(bins, bool) or not isinstance(bins, int | np.integer) or bins < 2:
            raise ValueError(f"bins must be an integer >= 2, got {bins!r}")
        array = np.asarray(data, dtype=np.float64).ravel()
        finite = array[np.isfinite(array)]
        if finite.size == 0:
            raise ValueError("data must hold at least one finite value to place bin edges")
        qs = np.arange(1, int(bins)) / int(bins)
        # Edges sit on observed values (no interpolation): with discrete data each value
        # then opens its own bin instead of an edge falling between two values.
        edges = np.unique(np.quantile(finite, qs, method="higher"))
        return cls(tuple(float(e) for e in edges))

    @classmethod
    def uniform(cls, lo: float, hi: float, bins: int) -> BinLayout:
        """``bins`` equal-width bins over ``[lo, hi)``, plus the two open outer bins."""
        if isinstance(bins, bool) or not isinstance(bins, int | np.integer) or bins < 1:
            raise ValueError(f"bins must be an integer >= 1, got {bins!r}")
        if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
            raise ValueError(f"need finite lo < hi, got lo={lo!r}, hi={hi!r}")
        return cls(tuple(float(e) for e in np.linspace(lo, hi, int(bins) + 1)))

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict; floats round-trip exactly through ``json``."""
        return {
            "schema": LAYOUT_SCHEMA,
            "edges": list(self.edges),
            "fingerprint": self.fingerprint(),
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> BinLayout:
        """Rebuild a layout; ``StateError`` if the schema or the stored fingerprint differ."""
        _check_schema(d, LAYOUT_SCHEMA, "bin layout")
        try:
            layout = cls(tuple(d["edges"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise StateError(f"bin layout is malformed: {exc}") from exc
        stored = d.get("fingerprint")
        if stored is not None and stored != layout.fingerprint():
            raise StateError(
                f"bin layout fingerprint {stored!r} does not match its edges "
                f"(fingerprint {layout.fingerprint()!r})"
            )
        return layout


def _check_schema(d: Mapping[str, Any], schema: str, what: str) -> None:
    if not isinstance(d, Mapping):
        raise StateError(f"{what} must be a JSON object, got {type(d).__name__}")
    if d.get("schema") != schema:
        raise StateError(f"{what} has schema {d.get('schema')!r}, expected {schema!r}")


class Histogram:
    """Integer counts of values over a :class:`BinLayout`, plus a count of NaNs.

    Parameters
    ----------
    layout
        The bins; only histograms over the same layout (same fingerprint) merge.

    Attributes
    ----------
    counts : numpy.ndarray
        ``int64`` counts, one per bin (``layout.bins`` of them).
    nan : int
        The number of NaN values offered; they belong to no bin.
    """

    def __init__(self, layout: BinLayout) -> None:
        self.layout = layout
        self.counts = np.zeros(layout.bins, dtype=np.int64)
        self.nan = 0

    @property
    def total(self) -> int:
        """All values offered, NaN included."""
        return int(self.counts.sum()) + self.nan

    def add(self, values: np.ndarray) -> None:
        """Count every value of ``values`` (any shape)."""
        idx = self.layout.index(np.asarray(values).ravel())
        valid = idx >= 0
        self.nan += int(idx.size - np.count_nonzero(valid))
        self.counts += np.bincount(idx[valid], minlength=self.layout.bins)

    def merge(self, other: Histogram) -> None:
        """Add ``other``'s counts into this one; ``StateError`` if the layouts differ."""
        if not isinstance(other, Histogram):
            raise StateError(f"cannot merge a Histogram with {type(other).__name__}")
        if other.layout != self.layout:
            raise StateError(
                f"cannot merge histograms over different bin layouts: "
                f"{self.layout.fingerprint()} vs {other.layout.fingerprint()}"
            )
        self.counts += other.counts
        self.nan += other.nan

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Histogram):
            return NotImplemented
        return (
            self.layout == other.layout
            and self.nan == other.nan
            and np.array_equal(self.counts, other.counts)
        )

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return (
            f"Histogram(layout={self.layout.fingerprint()}, counts={self.counts.tolist()}, "
            f"nan={self.nan})"
        )

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict holding the layout, so a reader can check compatibility."""
        return {
            "schema": HISTOGRAM_SCHEMA,
            "layout": self.layout.to_json(),
            "counts": [int(c) for c in self.counts],
            "nan": int(self.nan),
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any], layout: BinLayout | None = None) -> Histogram:
        """Rebuild a histogram.

        ``StateError`` if the data is malformed, or if ``layout`` is given and the stored
        layout differs from it (the message names both fingerprints).
        """
        _check_schema(d, HISTOGRAM_SCHEMA, "histogram")
        stored = BinLayout.from_json(d.get("layout"))  # type: ignore[arg-type]
        if layout is not None and stored != layout:
            raise StateError(
                f"histogram was counted over bin layout {stored.fingerprint()}, "
                f"expected {layout.fingerprint()}"
            )
        counts = d.get("counts")
        nan = d.get("nan")
        if (
            not isinstance(counts, list)
            or len(counts) != stored.bins
            or not all(_is_count(c) for c in counts)
        ):
            raise StateError(
                f"histogram counts must be {stored.bins} non-negative integers, got {counts!r}"
            )
        if not _is_count(nan):
            raise StateError(f"histogram nan must be a non-negative integer, got {nan!r}")
        hist = cls(stored)
        hist.counts = np.asarray(counts, dtype=np.int64)
        hist.nan = int(nan)  # type: ignore[arg-type]
        return hist


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def canonical_json(d: object) -> str:
    """The compact, key-sorted JSON text that fingerprints are computed over."""
    return json.dumps(d, sort_keys=True, separators=(",", ":"), allow_nan=False)

"""Counts of a categorical input feature over a fixed category list (pure, no I/O).

The categories are the reference's, frozen when the comparator starts, so the state stays
bounded whatever values live traffic sends: a value the reference never saw is counted in
one "unseen" cell, a missing value (``null``, absent) in the missing count. Counts over the
same category list add up, so replicas merge exactly; lists that differ are refused.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from shadowproxy.errors import StateError


class CategoryCounts:
    """Counts per reference category, plus one cell for unseen values and a missing count.

    Parameters
    ----------
    categories : sequence of str
        The reference's category values; their order fixes the count vector's layout.
    """

    __slots__ = ("categories", "counts", "missing", "_index")

    def __init__(self, categories: Sequence[str]) -> None:
        self.categories = tuple(categories)
        if len(set(self.categories)) != len(self.categories):
            raise StateError(f"category list has duplicates: {list(self.categories)!r}")
        self._index = {value: i for i, value in enumerate(self.categories)}
        # The last cell counts values outside the reference's categories.
        self.counts = np.zeros(len(self.categories) + 1, dtype=np.int64)
        self.missing = 0

    @property
    def unseen(self) -> int:
        return int(self.counts[-1])

    @property
    def total(self) -> int:
        """Every value counted, missing ones included."""
        return int(self.counts.sum()) + self.missing

    def add(self, values: Iterable[str | None]) -> None:
        """Count each value; ``None`` is missing, anything not in the list is unseen."""
        unseen = len(self.categories)
        index = self._index
        for value in values:
            if value is None:
                self.missing += 1
            else:
                self.counts[index.get(value, unseen)] += 1

    def merge(self, other: CategoryCounts) -> None:
        """Add ``other``'s counts; ``StateError`` if its category list differs."""
        if other.categories != self.categories:
            raise StateError(
                "cannot merge category counts over different category lists: "
                f"{list(self.categories)!r} vs {list(other.categories)!r}"
            )
        self.counts += other.counts
        self.missing += other.missing

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CategoryCounts):
            return NotImplemented
        return (
            self.categories == other.categories
            and self.missing == other.missing
            and np.array_equal(self.counts, other.counts)
        )

    __hash__ = None  # type: ignore[assignment]  # mutable

    def to_json(self) -> dict[str, Any]:
        return {
            "categories": list(self.categories),
            "counts": self.counts.tolist(),
            "missing": self.missing,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CategoryCounts:
        out = cls(tuple(str(c) for c in data["categories"]))
        counts = [int(c) for c in data["counts"]]
        if len(counts) != len(out.categories) + 1 or min(counts, default=0) < 0:
            raise StateError(
                f"category counts need {len(out.categories) + 1} non-negative cells, got {counts!r}"
            )
        missing = int(data["missing"])
        if missing < 0:
            raise StateError(f"missing count must be non-negative, got {missing}")
        out.counts = np.asarray(counts, dtype=np.int64)
        out.missing = missing
        return out

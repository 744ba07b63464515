"""Hypothesis strategies shared by the merge tests of the comparator state."""

from __future__ import annotations

from hypothesis import strategies as st


@st.composite
def partitions(draw: st.DrawFn, elements: st.SearchStrategy[float]) -> tuple[list, list[list]]:
    """Data, and the same data cut at random points into 2-4 parts in a random order."""
    data = draw(st.lists(elements, max_size=200))
    k = draw(st.integers(2, 4))
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), min_size=k - 1, max_size=k - 1)))
    parts = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
    order = draw(st.permutations(range(k)))
    return data, [parts[i] for i in order]

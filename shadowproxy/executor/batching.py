"""Micro-batching as pure functions: which requests share a batch, stacking and splitting.

Rows of several requests are stacked along the first axis when every input and output of
the model has a dynamic first dimension. Requests only share a batch when the rest of their
shapes and their dtypes agree, which ``shape_key`` captures.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable, Iterable, Mapping, Sequence
from itertools import accumulate, pairwise
from typing import Protocol, TypeVar

import numpy as np


class BatchError(ValueError):
    """Batch outputs that cannot be split back into the requests' rows."""


class Queued(Protocol):
    """What ``take_batch`` needs of a queued request."""

    @property
    def key(self) -> Hashable: ...

    @property
    def rows(self) -> int: ...

    @property
    def alone(self) -> bool:
        """Must run in a batch of its own."""
        ...

    @property
    def waiting(self) -> bool:
        """Still wants an answer (not timed out or dropped meanwhile)."""
        ...


Q = TypeVar("Q", bound=Queued)


def shape_key(inputs: Mapping[str, np.ndarray], names: Iterable[str]) -> Hashable:
    """Requests with equal keys can be stacked: same dtype and shape past the first axis."""
    return tuple((inputs[name].dtype.str, inputs[name].shape[1:]) for name in names)


def take_batch(queue: deque[Q], max_batch: int) -> list[Q]:
    """Pop the next batch from the head of ``queue``.

    The head request always goes (even above ``max_batch``: a request is never split);
    followers join while their key matches and the rows fit, unless one of the two must run
    alone. Requests that stopped waiting
    are discarded on the way. Order is kept: a request never overtakes an older one.
    """
    batch: list[Q] = []
    rows = 0
    while queue:
        item = queue[0]
        if not item.waiting:
            queue.popleft()
            continue
        if batch and (
            item.alone or batch[0].alone or item.key != batch[0].key or rows + item.rows > max_batch
        ):
            break
        queue.popleft()
        batch.append(item)
        rows += item.rows
        if rows >= max_batch:
            break
    return batch


def stack(parts: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """One input set from several requests' inputs (no copy for a single request)."""
    if len(parts) == 1:
        return dict(parts[0])
    return {name: np.concatenate([part[name] for part in parts], axis=0) for name in parts[0]}


def split(outputs: Mapping[str, np.ndarray], rows: Sequence[int]) -> list[dict[str, np.ndarray]]:
    """Each request's share of the batch outputs, as views, in request order."""
    if len(rows) == 1:
        return [dict(outputs)]
    total = sum(rows)
    for name, array in outputs.items():
        if array.ndim == 0 or array.shape[0] != total:
            raise BatchError(
                f"output {name!r} has shape {array.shape}, not {total} rows for the batch"
            )
    bounds = list(accumulate(rows, initial=0))
    return [
        {name: array[start:end] for name, array in outputs.items()}
        for start, end in pairwise(bounds)
    ]

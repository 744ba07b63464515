"""The window of recent answers that late ground truth is joined to.

``POST /admin/feedback`` brings a request id and its true label, often long after the
answers. The comparator remembers, for each of the last ``capacity`` requests it compared,
every target's labels beside production's, so that such a label can be scored against both.

The window is the comparator's largest structure, and it lives in the proxy's process.
CPython's full collections walk every container the collector tracks, with the interpreter
lock held, so a window built of tracked containers stops the event loop for as long as it
takes to walk it: an ``OrderedDict`` of 100,000 small dicts took 2 to 4 ms per collection
(about one a second under load). Here the window is a dict from request id to slot, a dict
from request id to the labels encoded as JSON bytes, and a numpy object array of ids in
the order they came. Dicts that hold only strings, integers and bytes are not tracked by
the collector, nor are numpy arrays, so the window costs a collection nothing however full
it is.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import orjson

# One target's labels for one request: (target, production's labels, the target's labels),
# a label per row.
TargetLabels = tuple[str, Sequence[str], Sequence[str]]


class FeedbackWindow:
    """The labels of the last ``capacity`` requests remembered, by request id.

    Parameters
    ----------
    capacity : int
        How many requests are remembered; the oldest is forgotten to make room.

    Notes
    -----
    A request id remembered again (a client reusing one) keeps the newest labels of each
    target and becomes the newest entry, as a fresh request would. Labels that are not
    valid Unicode text (a lone surrogate, which only JSON escapes can produce) cannot be
    encoded and are not remembered: feedback for that request is then unknown.
    """

    def __init__(self, capacity: int) -> None:
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"capacity must be an integer >= 1, got {capacity!r}")
        self.capacity = capacity
        self._ring = np.full(capacity, None, dtype=object)  # ids, in the order remembered
        self._next = 0
        self._slot: dict[str, int] = {}  # id -> its place in the ring
        self._labels: dict[str, bytes] = {}  # id -> JSON [[target, [production], [target]]…]

    def __len__(self) -> int:
        return len(self._slot)

    def __contains__(self, request_id: object) -> bool:
        return request_id in self._slot

    def remember(self, request_id: str, labels: Sequence[TargetLabels]) -> bool:
        """Keep ``labels`` for ``request_id`` as the newest entry; False if they cannot be
        encoded (see Notes)."""
        stored = self._labels.get(request_id)
        if stored is not None:
            newer = {target for target, _, _ in labels}
            labels = [
                *((t, p, c) for t, p, c in orjson.loads(stored) if t not in newer),
                *labels,
            ]
        try:
            encoded = orjson.dumps(labels)
        except orjson.JSONEncodeError:
            return False
        slot = self._next
        oldest = self._ring[slot]
        # The ring may still name an id that feedback took, or one remembered again since
        # (its place is now a newer one): only forget an id whose place this is.
        if oldest is not None and self._slot.get(oldest) == slot:
            del self._slot[oldest]
            del self._labels[oldest]
        self._ring[slot] = request_id
        self._slot[request_id] = slot
        self._labels[request_id] = encoded
        self._next = slot + 1 if slot + 1 < self.capacity else 0
        return True

    def pop(self, request_id: str) -> list[tuple[str, np.ndarray, np.ndarray]] | None:
        """Take a request's labels out of the window: per target, production's and the
        target's labels as arrays of text; None if the request is not remembered."""
        encoded = self._labels.pop(request_id, None)
        if encoded is None:
            return None
        del self._slot[request_id]
        return [
            (target, np.array(production, dtype=str), np.array(candidate, dtype=str))
            for target, production, candidate in orjson.loads(encoded)
        ]

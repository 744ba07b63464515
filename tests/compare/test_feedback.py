"""The feedback window: what it remembers, what it forgets, and that the collector skips it."""

from __future__ import annotations

import gc

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shadowproxy.compare.feedback import FeedbackWindow


def _as_dict(popped: list | None) -> dict | None:
    if popped is None:
        return None
    return {target: (p.tolist(), c.tolist()) for target, p, c in popped}


def test_labels_come_back_as_text_arrays_once() -> None:
    window = FeedbackWindow(10)
    assert window.remember("r1", [("cand", ("1",), ("0",)), ("base", ["a", "b"], ["a", "c"])])
    assert "r1" in window and len(window) == 1
    popped = window.pop("r1")
    assert popped is not None
    target, production, candidate = popped[1]
    assert (target, production.dtype.kind, candidate.tolist()) == ("base", "U", ["a", "c"])
    assert _as_dict(popped) == {"cand": (["1"], ["0"]), "base": (["a", "b"], ["a", "c"])}
    assert window.pop("r1") is None and "r1" not in window and len(window) == 0


def test_the_oldest_request_is_forgotten_to_make_room() -> None:
    window = FeedbackWindow(3)
    for rid in ("a", "b", "c", "d"):
        window.remember(rid, [("cand", ("1",), ("1",))])
    assert [rid in window for rid in "abcd"] == [False, True, True, True]
    assert len(window) == 3


def test_a_request_remembered_again_is_merged_and_becomes_the_newest() -> None:
    window = FeedbackWindow(3)
    window.remember("a", [("cand", ("1",), ("1",)), ("base", ("1",), ("0",))])
    window.remember("b", [("cand", ("0",), ("0",))])
    window.remember("c", [("cand", ("0",), ("0",))])
    window.remember("a", [("cand", ("2",), ("3",))])  # a client reusing the id
    window.remember("d", [("cand", ("0",), ("0",))])  # forgets b, the oldest now
    assert "b" not in window and "a" in window
    assert _as_dict(window.pop("a")) == {"base": (["1"], ["0"]), "cand": (["2"], ["3"])}


def test_a_request_taken_by_feedback_leaves_the_others_their_places() -> None:
    window = FeedbackWindow(2)
    window.remember("a", [("cand", ("1",), ("1",))])
    window.remember("b", [("cand", ("1",), ("1",))])
    assert window.pop("a") is not None
    window.remember("c", [("cand", ("1",), ("1",))])  # takes a's old place: b stays
    assert "b" in window and "c" in window
    window.remember("d", [("cand", ("1",), ("1",))])  # takes b's
    assert ("b" in window, "c" in window, "d" in window) == (False, True, True)


def test_labels_that_are_not_unicode_text_are_not_remembered() -> None:
    window = FeedbackWindow(2)
    assert window.remember("a", [("cand", ("\ud800",), ("1",))]) is False
    assert "a" not in window and window.pop("a") is None


def test_the_garbage_collector_never_walks_the_window() -> None:
    # Each full collection walks every container the collector tracks with the interpreter
    # lock held: a window of tracked containers would stop the event loop for milliseconds.
    window = FeedbackWindow(1000)
    for i in range(3000):
        window.remember(f"req-{i}", [("cand", (str(i % 2),), ("1",)), ("base", ("1",), ("1",))])
    assert len(window) == 1000
    assert [name for name, value in vars(window).items() if gc.is_tracked(value)] == []


def test_a_capacity_below_one_is_refused() -> None:
    for bad in (0, -1, True, 2.5):
        with pytest.raises(ValueError, match="capacity"):
            FeedbackWindow(bad)  # type: ignore[arg-type]


OPS = st.lists(
    st.tuples(
        st.sampled_from(["remember", "pop"]),
        st.sampled_from(["a", "b", "c", "d", "e"]),
        st.sampled_from(["cand", "base"]),
        st.sampled_from(["0", "1", "x"]),
    ),
    max_size=40,
)


@given(capacity=st.integers(1, 4), ops=OPS)
def test_the_window_holds_the_latest_remembered_requests_not_yet_taken(
    capacity: int, ops: list[tuple[str, str, str, str]]
) -> None:
    """Against a plain model: a request is there when its latest remembering is among the
    last ``capacity`` and feedback has not taken it since; it holds the newest labels of
    every target remembered for it since it (re)entered."""
    window = FeedbackWindow(capacity)
    remembered: list[str] = []  # every remember, in order
    model: dict[str, dict[str, tuple[list[str], list[str]]]] = {}

    def present(rid: str) -> bool:
        return rid in model and rid in remembered[-capacity:]

    for op, rid, target, label in ops:
        if op == "remember":
            labels = model.get(rid, {}) if present(rid) else {}
            model[rid] = {**labels, target: ([label], [label + "!"])}
            remembered.append(rid)
            window.remember(rid, [(target, (label,), (label + "!",))])
        else:
            expected = model.pop(rid) if present(rid) else None
            model.pop(rid, None)
            assert _as_dict(window.pop(rid)) == expected
        assert sorted(r for r in model if present(r)) == sorted(r for r in "abcde" if r in window)

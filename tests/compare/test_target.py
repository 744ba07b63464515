"""One target's state: what a snapshot may hold, and what may be merged with what."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shadowproxy.compare.target import OTHER, TargetState
from shadowproxy.errors import StateError
from tests.compare.test_comparator import config, fold, record


def stored() -> dict[str, Any]:
    """A real target state as a snapshot stores it: 3 pairs, one of them a timeout."""
    comparator = fold(
        config(), [record(1, 0.8, 0.7), record(2, 0.3, 0.6), record(3, 0.5, 0.5, "timeout")]
    )
    return comparator.snapshot()["targets"]["cand"]


def edited(change: Any) -> dict[str, Any]:
    data = copy.deepcopy(stored())
    change(data)
    return data


def test_a_stored_state_reads_back_as_it_was() -> None:
    data = stored()
    assert TargetState.from_json(data).to_json() == data


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.update(agree=d["label_rows"] + 1), "agree (3) exceeds label_rows"),
        (lambda d: d.update(compared=d["requests"] + 1), "compared (4) exceeds requests"),
        (lambda d: d["candidate_outcomes"].update(error=5), "candidate_outcomes add up to 8"),
        (lambda d: d["production_outcomes"].update(lost=1), "unknown outcomes ['lost']"),
        (lambda d: d.update(requests=-1), "requests must be an integer"),
        (lambda d: d.update(requests=10**40), "requests must be an integer"),
        (lambda d: d.update(requests="3"), "requests must be an integer"),
        (lambda d: d.update(requests=True), "requests must be an integer"),
        (lambda d: d.update(requests=3.0), "requests must be an integer"),
        (lambda d: d["flips"].update(zz=0), "label pairs"),
        (lambda d: d.update(flips={"1\x1f1": 1}), "flip matrix holds 1 rows, not 2"),
        (lambda d: d.update(feedback_rows=0, production_correct=1), "production_correct (1)"),
        (lambda d: d.update(slice_rows={"age|1": [1, 2]}), "more flips than rows"),
        (lambda d: d.update(version=2), "must be strings"),
        # A score histogram over bins of its own could not be merged with any other.
        (lambda d: d["abs_hist"].update(layout=d["production_hist"]["layout"]), "histogram was"),
    ],
)
def test_counts_that_contradict_each_other_are_refused(change: Any, message: str) -> None:
    with pytest.raises(StateError) as info:
        TargetState.from_json(edited(change))
    assert message in str(info.value)


_WRONG_TYPES = st.sampled_from([None, [], "x", 7, 1.5, True, {}, [[1, 2]], {"a": None}])


@settings(max_examples=300, deadline=None)
@given(data=st.data(), wrong=_WRONG_TYPES)
def test_a_value_of_the_wrong_type_anywhere_is_a_state_error(data: Any, wrong: Any) -> None:
    # A snapshot is a file anyone could edit; a serve restarting on it must refuse it,
    # not crash (an AttributeError would have been exit 70 in a crash loop).
    state = stored()
    paths = list(_paths(state))
    path = data.draw(st.sampled_from(paths))
    target: Any = state
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = wrong
    try:
        TargetState.from_json(state)
    except StateError:
        pass  # refused, as it should be; a value that still makes sense may be read


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> Any:
    """Every key path into a JSON document, containers first."""
    if isinstance(value, dict):
        items: Any = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return
    for key, child in items:
        yield (*prefix, key)
        yield from _paths(child, (*prefix, key))


def test_a_target_state_that_is_not_an_object_is_refused() -> None:
    for wrong in (None, [], "cand", 3):
        with pytest.raises(StateError, match="must be an object"):
            TargetState.from_json(wrong)  # type: ignore[arg-type]


def test_evidence_about_another_version_is_never_merged_in() -> None:
    mine = TargetState.from_json(stored())
    other = TargetState.from_json(edited(lambda d: d.update(version="3")))
    with pytest.raises(StateError, match="version '3'.*into candidate 'cand' version '2'"):
        mine.merge(other)
    assert mine.requests == 3  # untouched


def test_a_stored_state_is_a_copy_of_the_live_counts() -> None:
    # Serialised outside the comparator's lock: later counting must not change it.
    state = TargetState.from_json(stored())
    data = state.to_json()
    state.candidate_outcomes["ok"] += 1
    state.slice_rows["age|0"] = [1, 0]
    assert data["candidate_outcomes"]["ok"] == 2 and "age|0" not in data["slice_rows"]


def _labelled(pairs: list[tuple[int, int]]) -> TargetState:
    state = TargetState.from_json(stored())
    state.flips, state.label_rows, state.agree = {}, 0, 0
    for p, c in pairs:
        state.add_flips(np.array([str(p)]), np.array([str(c)]))
    return state


@pytest.mark.parametrize("labels", [10, 40])  # 100 and 1,600 possible pairs: under and over
def test_the_flip_matrix_is_the_same_in_any_order_and_split(labels: int) -> None:
    rng = np.random.default_rng(4)
    pairs = [tuple(x) for x in rng.integers(0, labels, (6000, 2)).tolist()]
    whole = _labelled(pairs).flips
    assert _labelled(pairs[::-1]).flips == whole
    left, right = _labelled(pairs[::2]), _labelled(pairs[1::2])
    left.merge(right)
    assert left.flips == whole
    assert sum(whole.values()) == 6000
    assert (whole == {OTHER: 6000}) == (labels == 40)

"""Batching as pure functions: stacking then splitting gives every request its own rows."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from shadowproxy.executor.batching import BatchError, shape_key, split, stack, take_batch
from shadowproxy.executor.restarts import CrashPolicy


@dataclass
class Item:
    key: object
    rows: int
    waiting: bool = True
    alone: bool = False


ROWS = st.lists(st.integers(1, 6), min_size=1, max_size=8)


@given(rows=ROWS, width=st.integers(0, 3), seed=st.integers(0, 2**32 - 1))
def test_stack_then_split_returns_each_requests_rows(
    rows: list[int], width: int, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    parts = [
        {"x": rng.normal(size=(n, width)).astype(np.float32), "i": rng.integers(0, 9, size=n)}
        for n in rows
    ]
    batch = stack(parts)
    assert batch["x"].shape == (sum(rows), width)
    # An elementwise "model" keeps rows where they are.
    outputs = {"y": batch["x"] * 2, "label": batch["i"] + 1}
    for part, answer in zip(parts, split(outputs, rows), strict=True):
        assert np.array_equal(answer["y"], part["x"] * 2)
        assert np.array_equal(answer["label"], part["i"] + 1)


def test_single_request_is_neither_copied_nor_checked() -> None:
    x = np.zeros((3, 2))
    assert stack([{"x": x}])["x"] is x
    scalar = {"s": np.float32(1.0) * np.ones(())}
    assert split(scalar, [3])[0]["s"] is scalar["s"]


def test_split_refuses_outputs_without_one_row_per_input_row() -> None:
    with pytest.raises(BatchError, match="not 3 rows"):
        split({"y": np.zeros((2, 1))}, [1, 2])
    with pytest.raises(BatchError):
        split({"y": np.zeros(())}, [1, 2])


def test_shape_key_separates_dtypes_and_trailing_shapes() -> None:
    names = ("x",)
    a = shape_key({"x": np.zeros((1, 4), np.float32)}, names)
    assert a == shape_key({"x": np.zeros((7, 4), np.float32)}, names)
    assert a != shape_key({"x": np.zeros((1, 5), np.float32)}, names)
    assert a != shape_key({"x": np.zeros((1, 4), np.float64)}, names)


@given(
    items=st.lists(
        st.tuples(st.sampled_from("ab"), st.integers(1, 5), st.booleans(), st.booleans()),
        max_size=12,
    ),
    max_batch=st.integers(1, 10),
)
def test_take_batch_keeps_order_limits_and_keys(
    items: list[tuple[str, int, bool, bool]], max_batch: int
) -> None:
    queue = deque(Item(k, r, w, a) for k, r, w, a in items)
    original = list(queue)
    batch = take_batch(queue, max_batch)
    live = [i for i in original if i.waiting]
    if not live:
        assert batch == [] and not queue
        return
    # The oldest waiting request always goes, even alone above max_batch.
    assert batch[0] is live[0]
    assert all(i.key == batch[0].key and i.waiting for i in batch)
    assert len(batch) == 1 or sum(i.rows for i in batch) <= max_batch
    # A request to run alone is a batch of its own.
    assert len(batch) == 1 or not any(i.alone for i in batch)
    # A prefix of the waiting requests, in order; nothing waiting is lost.
    assert batch == live[: len(batch)]
    assert [i for i in queue if i.waiting] == live[len(batch) :]
    if len(batch) < len(live):
        following = live[len(batch)]
        rows = sum(i.rows for i in batch)
        assert (
            following.key != batch[0].key
            or rows + following.rows > max_batch
            or (rows >= max_batch)
            or following.alone
            or batch[0].alone
        )


def test_crash_policy_backoff_doubles_and_a_burst_disables() -> None:
    policy = CrashPolicy(max_restarts=3, window_s=10.0, backoff_s=0.5)
    assert policy.backoff() == 0.0
    assert not policy.crashed(0.0)
    assert policy.backoff() == 0.5
    assert not policy.crashed(1.0)
    assert policy.backoff() == 1.0
    policy.succeeded()
    assert policy.backoff() == 0.0
    # Crashes older than the window are forgotten.
    assert not policy.crashed(20.0)
    assert not policy.crashed(21.0)
    assert policy.crashed(22.0)
    assert policy.crashes == 5 and policy.recent() == 3


def test_crash_policy_backoff_is_capped() -> None:
    policy = CrashPolicy(max_restarts=100, window_s=1.0, backoff_s=1.0)
    for t in range(30):
        policy.crashed(float(t))
    assert policy.backoff() == 60.0

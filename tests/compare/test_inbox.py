"""The comparator's inbox: bounded, ordered, and a sleeping consumer is woken."""

from __future__ import annotations

import threading
import time

import pytest

from shadowproxy.compare.inbox import Inbox


def test_items_come_out_in_order_in_batches_and_a_full_inbox_refuses() -> None:
    inbox: Inbox[int] = Inbox(5)
    assert [inbox.put(i) for i in range(7)] == [True] * 5 + [False] * 2
    assert inbox.qsize() == 5
    inbox.put_always(99)  # the stop marker gets through a full inbox
    assert inbox.take(4, 0.0) == [0, 1, 2, 3]
    assert inbox.take(10, 0.0) == [4, 99]
    assert inbox.empty()
    assert inbox.take(10, 0.0) == []
    with pytest.raises(ValueError, match="size"):
        Inbox(0)


def test_a_sleeping_consumer_is_woken_by_a_put() -> None:
    inbox: Inbox[str] = Inbox(10)
    got: list[list[str]] = []

    def consume() -> None:
        started = time.monotonic()
        while not got and time.monotonic() - started < 20:
            batch = inbox.take(10, 20.0)  # would sleep the whole 20 s if never woken
            if batch:
                got.append(batch)

    consumer = threading.Thread(target=consume)
    consumer.start()
    time.sleep(0.2)  # let it fall asleep
    started = time.monotonic()
    assert inbox.put("pair")
    consumer.join(25)
    assert got == [["pair"]]
    assert time.monotonic() - started < 10  # woken, not timed out


def test_nothing_is_lost_between_a_producer_and_the_consumer() -> None:
    n = 100_000
    inbox: Inbox[int] = Inbox(n)
    received: list[int] = []

    def consume() -> None:
        while len(received) < n:
            received.extend(inbox.take(256, 1.0))

    consumer = threading.Thread(target=consume)
    consumer.start()
    for i in range(n):
        assert inbox.put(i)
        if i % 1000 == 0:
            time.sleep(0)  # let the consumer drain and sleep now and then
    consumer.join(60)
    assert received == list(range(n))

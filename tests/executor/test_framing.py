"""Frames: every datatype round-trips exactly, in any chunking; damage is always a FrameError."""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from shadowproxy.executor import framing
from shadowproxy.executor.framing import FrameAssembler, FrameError, Kind
from shadowproxy.tensors import DATATYPES

SHAPES = hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5)


@st.composite
def bytes_tensor(draw: st.DrawFn) -> np.ndarray:
    shape = draw(SHAPES)
    size = int(np.prod(shape))
    items = draw(
        st.lists(
            st.one_of(st.binary(max_size=12), st.text(max_size=8)), min_size=size, max_size=size
        )
    )
    array = np.empty(size, dtype=object)
    array[:] = items if size else []
    return array.reshape(shape)


def tensor(datatype: str) -> st.SearchStrategy[np.ndarray]:
    if datatype == "BYTES":
        return bytes_tensor()
    return hnp.arrays(DATATYPES[datatype][0], SHAPES)


ANY_TENSOR = st.sampled_from(list(DATATYPES)).flatmap(tensor)
TENSORS = st.dictionaries(st.text(max_size=10), ANY_TENSOR, max_size=4)


def joined(buffers: list[framing.Buffer]) -> bytes:
    return b"".join(bytes(b) for b in buffers)


def body_of(buffers: list[framing.Buffer]) -> bytearray:
    data = joined(buffers)
    (length,) = framing.LENGTH.unpack_from(data)
    assert len(data) == framing.LENGTH.size + length
    return bytearray(data[framing.LENGTH.size :])


def assert_same(sent: dict[str, np.ndarray], received: dict[str, np.ndarray]) -> None:
    assert list(received) == list(sent)
    for name, array in sent.items():
        got = received[name]
        assert got.shape == array.shape
        if array.dtype == object:
            assert got.dtype == object
            for a, b in zip(array.reshape(-1), got.reshape(-1), strict=True):
                assert type(a) is type(b) and a == b
        else:
            # Bit-exact, so NaN payloads and signed zeros count too.
            assert got.dtype == array.dtype
            assert got.tobytes() == array.tobytes()


@settings(max_examples=300, deadline=None)
@given(tensors=TENSORS, batch_id=st.integers(0, 2**64 - 1))
def test_batch_round_trip_of_every_datatype(tensors: dict[str, np.ndarray], batch_id: int) -> None:
    message = framing.decode(body_of(framing.encode_batch(batch_id, tensors)))
    assert message.kind is Kind.BATCH and message.batch_id == batch_id
    assert_same(tensors, message.tensors)


@settings(max_examples=100, deadline=None)
@given(
    tensors=TENSORS,
    compute=st.floats(allow_nan=False),
    cpu=st.floats(allow_nan=False),
    wait=st.floats(allow_nan=False),
)
def test_result_round_trip_keeps_the_times(
    tensors: dict[str, np.ndarray], compute: float, cpu: float, wait: float
) -> None:
    message = framing.decode(body_of(framing.encode_result(9, tensors, compute, cpu, wait)))
    assert message.kind is Kind.RESULT
    assert (message.compute_s, message.cpu_s, message.wait_s) == (compute, cpu, wait)
    assert_same(tensors, message.tensors)


@given(
    outcome=st.sampled_from(framing.OUTCOMES),
    text=st.text(max_size=50),
    batch_id=st.integers(0, 99),
)
def test_failure_round_trip(outcome: framing.FailureOutcome, text: str, batch_id: int) -> None:
    message = framing.decode(body_of(framing.encode_failure(batch_id, outcome, text)))
    assert (message.kind, message.batch_id, message.outcome, message.text) == (
        Kind.FAILURE,
        batch_id,
        outcome,
        text,
    )


def test_json_frames() -> None:
    message = framing.decode(body_of(framing.encode_json(Kind.READY, {"pid": 7, "x": [1.5]})))
    assert message.kind is Kind.READY and message.json() == {"pid": 7, "x": [1.5]}


def test_decoded_arrays_are_aligned_writable_views() -> None:
    tensors = {
        "a": np.arange(3, dtype=np.int8),
        "b": np.arange(5, dtype=np.float64),
        "c": np.ones((2, 3), dtype=np.int64),
    }
    received = framing.decode(body_of(framing.encode_batch(1, tensors))).tensors
    for array in received.values():
        assert array.ctypes.data % 8 == 0
        assert array.flags.writeable


def test_big_endian_arrays_arrive_native() -> None:
    sent = np.arange(6, dtype=">f4").reshape(2, 3)
    got = framing.decode(body_of(framing.encode_batch(1, {"x": sent}))).tensors["x"]
    assert got.dtype == np.dtype("float32") and np.array_equal(got, sent)


def test_large_payloads_are_sent_without_a_copy() -> None:
    big = np.arange(10_000, dtype=np.float32)
    buffers = framing.encode_batch(1, {"x": big})
    assert any(isinstance(b, memoryview) and b.obj is not None for b in buffers)
    assert np.array_equal(framing.decode(body_of(buffers)).tensors["x"], big)


def reassemble(assembler: FrameAssembler, stream: bytes, cuts: list[int]) -> list[bytearray]:
    """Feed ``stream`` cut at ``cuts``, through both of the assembler's entry points."""
    bodies: list[bytearray] = []
    bounds = sorted({0, len(stream), *(c % (len(stream) + 1) for c in cuts)})
    for start, end in zip(bounds, bounds[1:], strict=False):
        chunk = memoryview(stream)[start:end]
        while len(chunk):
            target = assembler.receive_buffer()
            if target is None:
                bodies += assembler.feed(chunk)
                break
            take = min(len(target), len(chunk))
            target[:take] = chunk[:take]
            bodies += assembler.received(take)
            chunk = chunk[take:]
    return bodies


@settings(max_examples=100, deadline=None)
@given(
    frames=st.lists(TENSORS, min_size=1, max_size=4),
    cuts=st.lists(st.integers(0, 10_000), max_size=8),
    direct_min=st.sampled_from([1, 16, 1 << 30]),
)
def test_assembler_cuts_a_stream_at_any_chunking(
    frames: list[dict[str, np.ndarray]], cuts: list[int], direct_min: int
) -> None:
    stream = b"".join(joined(framing.encode_batch(i, t)) for i, t in enumerate(frames))
    assembler = FrameAssembler(max_frame=1 << 30, direct_min=direct_min)
    bodies = reassemble(assembler, stream, cuts)
    assert len(bodies) == len(frames)
    for i, (body, sent) in enumerate(zip(bodies, frames, strict=True)):
        message = framing.decode(body)
        assert message.batch_id == i
        assert_same(sent, message.tensors)


def test_assembler_refuses_oversized_frames_before_allocating() -> None:
    assembler = FrameAssembler(max_frame=100)
    with pytest.raises(FrameError, match="exceeds"):
        assembler.feed(framing.LENGTH.pack(1 << 40))


@settings(max_examples=50, deadline=None)
@given(tensors=TENSORS.filter(bool), data=st.data())
def test_every_truncation_is_a_frame_error(
    tensors: dict[str, np.ndarray], data: st.DataObject
) -> None:
    body = body_of(framing.encode_batch(3, tensors))
    cut = data.draw(st.integers(0, len(body) - 1))
    try:
        message = framing.decode(body[:cut])
    except FrameError:
        return
    # Only a cut inside trailing padding can still decode, to the same tensors.
    assert_same(tensors, message.tensors)


@settings(max_examples=300, deadline=None)
@given(garbage=st.binary(max_size=200))
def test_garbage_is_a_frame_error_or_a_message(garbage: bytes) -> None:
    try:
        framing.decode(bytearray(garbage))
    except FrameError:
        pass


def test_huge_declared_bytes_shape_is_refused() -> None:
    header = bytearray(framing.encode_batch(1, {"s": np.array([b"x"], dtype=object)})[0])
    body = header[framing.LENGTH.size :]
    # Patch the shape of the single BYTES tensor to 2**40 elements.
    offset = 16 + 12 + 1
    body[offset : offset + 8] = (2**40).to_bytes(8, "little")
    with pytest.raises(FrameError):
        framing.decode(body)


# -- request bodies and their answers ----------------------------------------------------

BODIES = st.lists(st.binary(max_size=64), max_size=8)
ANSWERS = st.lists(
    st.tuples(st.sampled_from([0, 1]), st.integers(0, 2**32 - 1), st.binary(max_size=64)),
    max_size=8,
)
TIMES = st.floats(allow_nan=False)


@settings(max_examples=200, deadline=None)
@given(bodies=BODIES, batch_id=st.integers(0, 2**64 - 1))
def test_bodies_round_trip(bodies: list[bytes], batch_id: int) -> None:
    message = framing.decode(body_of(framing.encode_bodies(batch_id, bodies)))
    assert message.kind is Kind.BODIES and message.batch_id == batch_id
    assert message.items == tuple(bodies)
    assert message.tensors == {} and message.answers == ()


@settings(max_examples=200, deadline=None)
@given(answers=ANSWERS, batch_id=st.integers(0, 2**64 - 1), compute=TIMES, cpu=TIMES, wait=TIMES)
def test_answers_round_trip_keeps_statuses_and_times(
    answers: list[tuple[int, int, bytes]], batch_id: int, compute: float, cpu: float, wait: float
) -> None:
    buffers = framing.encode_answers(batch_id, answers, compute, cpu, wait)
    message = framing.decode(body_of(buffers))
    assert message.kind is Kind.ANSWERS and message.batch_id == batch_id
    assert message.answers == tuple(answers)
    assert (message.compute_s, message.cpu_s, message.wait_s) == (compute, cpu, wait)
    assert message.items == () and message.tensors == {}


def test_empty_bodies_and_answers_are_kept_apart() -> None:
    bodies = [b"", b"{}", b"", b"\0"]
    assert framing.decode(body_of(framing.encode_bodies(1, bodies))).items == tuple(bodies)
    answers = [
        (framing.ANSWER_OK, 1, b""),
        (framing.ANSWER_INVALID, 0, b"bad_json\0no"),
        (0, 3, b""),
    ]
    message = framing.decode(body_of(framing.encode_answers(2, answers, 0.5, 0.25)))
    assert message.answers == tuple(answers)


@settings(max_examples=100, deadline=None)
@given(
    frames=st.lists(st.one_of(BODIES, ANSWERS), min_size=1, max_size=4),
    cuts=st.lists(st.integers(0, 10_000), max_size=8),
)
def test_assembler_cuts_bodies_and_answers_at_any_chunking(
    frames: list[list[Any]], cuts: list[int]
) -> None:
    def encode(i: int, frame: list[Any]) -> bytes:
        if frame and isinstance(frame[0], tuple):
            return joined(framing.encode_answers(i, frame, 1.0, 2.0))
        return joined(framing.encode_bodies(i, frame))

    stream = b"".join(encode(i, f) for i, f in enumerate(frames))
    assembler = FrameAssembler(max_frame=1 << 20, direct_min=16)
    bodies = reassemble(assembler, stream, cuts)
    assert [framing.decode(b).batch_id for b in bodies] == list(range(len(frames)))
    for body, frame in zip(bodies, frames, strict=True):
        message = framing.decode(body)
        got = message.answers if message.kind is Kind.ANSWERS else message.items
        assert got == tuple(frame)


@settings(max_examples=200, deadline=None)
@given(
    frame=st.one_of(
        BODIES.map(lambda b: framing.encode_bodies(4, b)),
        ANSWERS.map(lambda a: framing.encode_answers(4, a, 0.1, 0.2)),
    ),
    data=st.data(),
)
def test_every_truncation_of_bodies_and_answers_is_a_frame_error(
    frame: list[framing.Buffer], data: st.DataObject
) -> None:
    body = body_of(frame)
    cut = data.draw(st.integers(0, len(body) - 1))
    # No padding in these frames: every byte counts, so any cut is detected.
    with pytest.raises(FrameError):
        framing.decode(body[:cut])
    extra = data.draw(st.binary(min_size=1, max_size=8))
    with pytest.raises(FrameError):
        framing.decode(body + extra)


@settings(max_examples=500, deadline=None)
@given(
    kind=st.sampled_from([Kind.BODIES, Kind.ANSWERS]),
    tensors=st.sampled_from([0, 0, 0, 1, 0xFFFF]),
    count=st.one_of(st.integers(0, 12), st.just(2**32 - 1)),
    garbage=st.binary(max_size=200),
)
def test_garbage_bodies_and_answers_are_a_frame_error_or_a_message(
    kind: Kind, tensors: int, count: int, garbage: bytes
) -> None:
    head = struct.pack("<BBHIQ", kind, 0, tensors, count, 5)
    try:
        message = framing.decode(bytearray(head + garbage))
    except FrameError:
        return
    assert message.kind is kind and tensors == 0
    assert len(message.items if kind is Kind.BODIES else message.answers) == count


def test_an_unknown_answer_status_is_a_frame_error() -> None:
    body = body_of(framing.encode_answers(1, [(0, 1, b"ok"), (1, 0, b"r\0m")], 0.0, 0.0))
    status_at = 16 + 24 + 9 + 2  # fixed part, times, first item, second item's status
    assert body[status_at] == framing.ANSWER_INVALID
    body[status_at] = 2
    with pytest.raises(FrameError, match="unknown answer status 2"):
        framing.decode(body)


def test_a_large_payload_of_odd_length_keeps_the_next_tensor_aligned() -> None:
    """A payload sent as its own buffer ends off the 8-byte grid; what follows must not."""
    odd = np.arange(2049, dtype=np.int16)  # 4098 bytes: sent uncopied, not a multiple of 8
    tensors = {"odd": odd, "after": np.arange(3.0), "last": np.array([True, False, True])}
    message = framing.decode(body_of(framing.encode_batch(5, tensors)))
    assert_same(tensors, message.tensors)
    assert message.tensors["after"].ctypes.data % 8 == 0

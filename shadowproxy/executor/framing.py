"""The binary frames exchanged between the proxy and a worker process.

No pickle: a frame only ever turns into numpy arrays, numbers and text, so a misbehaving
worker can send garbage but never code. Tensors travel as their raw buffers, sent without
copying (a list of buffers for ``writelines``/``sendmsg``) and read back as arrays that
view the received frame.

Wire format, every integer little-endian::

    frame   = u64 body_length, body
    body    = u8 kind, u8 0, u16 tensor_count, u32 code, u64 batch_id,   (16 bytes)
              [RESULT and ANSWERS only: f64 compute_s, f64 cpu_s, f64 wait_s]
              tensor * tensor_count | utf-8 text (HELLO, READY, FAILURE)
    tensor  = u16 name_length, u8 datatype, u8 ndim, u64 payload_length,
              name, i64 * ndim (shape), zero padding to 8, payload, zero padding to 8
    payload = C-order little-endian raw values, or for BYTES per element
              u32 (length | 0x80000000 when the element is str) then its bytes (str as UTF-8)

Request bodies (BODIES) and their answers (ANSWERS) carry ``code`` items, no tensors::

    BODIES  item = u32 length, the request body as the client sent it
    ANSWERS (after the times) item = u8 status, u32 rows, u32 length, bytes
            status 0: the encoded response of ``rows`` rows; status 1: "reason\0message"
            (input invalid, 0 rows)

Offsets of tensor headers and payloads are multiples of 8 from the start of the body, so
arrays viewing a received body are aligned for every datatype. ``code`` is the failure
outcome of a FAILURE frame and 0 otherwise. HELLO carries the worker's configuration and
READY its pid and load figures, both as JSON text.
"""

from __future__ import annotations

import enum
import functools
import json
import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shadowproxy.errors import FailureOutcome
from shadowproxy.tensors import DATATYPES, datatype_of_array

Buffer = bytes | bytearray | memoryview


class Kind(enum.IntEnum):
    HELLO = 1  # parent -> worker: configuration (JSON)
    READY = 2  # worker -> parent: the model is loaded and warmed up (JSON)
    BATCH = 3  # parent -> worker: input tensors of one batch
    RESULT = 4  # worker -> parent: output tensors, compute wall time and CPU time
    FAILURE = 5  # worker -> parent: the batch (or the load) failed; outcome and message
    BODIES = 6  # parent -> worker: request bodies, decoded by the worker with the protocol
    ANSWERS = 7  # worker -> parent: per body an encoded response or why it was invalid


OUTCOMES: tuple[FailureOutcome, ...] = ("error", "timeout", "invalid", "dropped")
DATATYPE_CODES: tuple[str, ...] = tuple(DATATYPES)
_CODE_OF = {name: code for code, name in enumerate(DATATYPE_CODES)}

LENGTH = struct.Struct("<Q")
_FIXED = struct.Struct("<BBHIQ")
_TIMES = struct.Struct("<ddd")  # compute_s, cpu_s, wait_s
_TENSOR = struct.Struct("<HBBQ")
_ELEMENT = struct.Struct("<I")
_ANSWER = struct.Struct("<BII")
ANSWER_OK, ANSWER_INVALID = 0, 1
_TEXT_FLAG = 0x80000000
_ALIGN = 8
_ZEROS = bytes(_ALIGN)
_COPY_BELOW = 4096


class FrameError(ValueError):
    """A frame does not follow the format (truncated, inconsistent or unknown values)."""


@dataclass(frozen=True, slots=True)
class Message:
    """One decoded frame body."""

    kind: Kind
    batch_id: int
    tensors: dict[str, np.ndarray] = field(default_factory=dict)
    compute_s: float = 0.0
    cpu_s: float = 0.0
    wait_s: float = 0.0  # how long the worker waited for a CPU while on this batch
    outcome: FailureOutcome = "error"
    text: str = ""
    # BODIES: the request bodies; ANSWERS: (status, bytes) per body.
    items: tuple[bytes, ...] = ()
    answers: tuple[tuple[int, int, bytes], ...] = ()  # (status, rows, data) per body

    def json(self) -> dict[str, Any]:
        value = json.loads(self.text)
        if not isinstance(value, dict):
            raise FrameError(f"{self.kind.name} frame does not hold a JSON object")
        return value


@functools.cache
def _dims(ndim: int) -> struct.Struct:
    return struct.Struct(f"<{ndim}q")


def _pad(offset: int) -> int:
    return -offset % _ALIGN


def _encode_bytes(array: np.ndarray) -> bytes:
    parts: list[bytes] = []
    for item in array.reshape(-1):
        if isinstance(item, str):
            data, flag = item.encode("utf-8"), _TEXT_FLAG
        elif isinstance(item, (bytes, bytearray, memoryview)):
            data, flag = bytes(item), 0
        else:
            raise TypeError(f"BYTES element of type {type(item).__name__}")
        if len(data) >= _TEXT_FLAG:
            raise ValueError("BYTES element larger than 2 GiB")
        parts.append(_ELEMENT.pack(len(data) | flag))
        parts.append(data)
    return b"".join(parts)


def _datatype(array: np.ndarray) -> str:
    if array.dtype.kind in "OSU":
        return "BYTES"
    try:
        # Byte order is the wire's business, not the datatype's.
        return datatype_of_array(array.view(array.dtype.newbyteorder("=")))
    except KeyError:
        raise ValueError(f"dtype {array.dtype} has no tensor datatype") from None


def _raw(array: np.ndarray, datatype: str) -> Buffer:
    """The payload of one tensor: its values in wire order, without a copy when possible."""
    if datatype == "BYTES":
        return _encode_bytes(array)
    wire = DATATYPES[datatype][0].newbyteorder("<")
    flat = np.ascontiguousarray(array, dtype=wire).reshape(-1)
    if flat.nbytes == 0:
        return b""
    return flat.data.cast("B")


def _encode(
    kind: Kind,
    batch_id: int,
    tensors: Mapping[str, np.ndarray] | None = None,
    *,
    code: int = 0,
    times: tuple[float, float, float] | None = None,
    text: str = "",
) -> list[Buffer]:
    """Buffers whose concatenation is one frame, length prefix included."""
    tensors = tensors or {}
    pending = bytearray(LENGTH.size)
    pending += _FIXED.pack(kind, 0, len(tensors), code, batch_id)
    if times is not None:
        pending += _TIMES.pack(*times)
    first = pending
    buffers: list[Buffer] = []
    for name, array in tensors.items():
        datatype = _datatype(array)
        payload = _raw(array, datatype)
        name_bytes = name.encode("utf-8")
        if array.ndim > 255 or len(name_bytes) > 0xFFFF:
            raise ValueError(f"tensor {name!r}: too many dimensions or too long a name")
        pending += _TENSOR.pack(len(name_bytes), _CODE_OF[datatype], array.ndim, len(payload))
        pending += name_bytes
        pending += _dims(array.ndim).pack(*array.shape)
        pending += _ZEROS[: _pad(len(pending))]
        if len(payload) < _COPY_BELOW:
            # Small payloads are cheaper copied than sent as one more buffer.
            pending += payload
            pending += _ZEROS[: _pad(len(pending))]
        else:
            # The padding travels with the payload, so the next chunk starts aligned.
            buffers += (pending, payload, _ZEROS[: _pad(len(payload))])
            pending = bytearray()
    pending += text.encode("utf-8")
    buffers.append(pending)
    # Every chunk starts at a multiple of 8 (the prefix is 8 bytes long), so padding computed
    # on a chunk's own length keeps the body offsets aligned.
    length = sum(len(b) for b in buffers) - LENGTH.size
    LENGTH.pack_into(first, 0, length)
    return buffers


def encode_batch(batch_id: int, tensors: Mapping[str, np.ndarray]) -> list[Buffer]:
    return _encode(Kind.BATCH, batch_id, tensors)


def encode_result(
    batch_id: int,
    tensors: Mapping[str, np.ndarray],
    compute_s: float,
    cpu_s: float,
    wait_s: float = 0.0,
) -> list[Buffer]:
    return _encode(Kind.RESULT, batch_id, tensors, times=(compute_s, cpu_s, wait_s))


def encode_failure(batch_id: int, outcome: FailureOutcome, message: str) -> list[Buffer]:
    return _encode(Kind.FAILURE, batch_id, code=OUTCOMES.index(outcome), text=message)


def encode_json(kind: Kind, payload: Mapping[str, Any], batch_id: int = 0) -> list[Buffer]:
    return _encode(kind, batch_id, text=json.dumps(payload, separators=(",", ":")))


def encode_bodies(batch_id: int, bodies: Sequence[bytes]) -> list[Buffer]:
    """One BODIES frame: the request bodies of a batch, for the worker to decode."""
    parts: list[Buffer] = [b""]  # the fixed part, filled in below
    for body in bodies:
        parts.append(_ELEMENT.pack(len(body)))
        parts.append(body)
    parts[0] = _frame_head(Kind.BODIES, batch_id, len(bodies), sum(map(len, parts)))
    return [b"".join(parts)]


def encode_answers(
    batch_id: int,
    answers: Sequence[tuple[int, int, bytes]],
    compute_s: float,
    cpu_s: float,
    wait_s: float = 0.0,
) -> list[Buffer]:
    """One ANSWERS frame: per body of a BODIES frame, its status, its rows (so the parent
    can share the batch's CPU by row) and its response or why it was invalid."""
    parts: list[Buffer] = [b"", _TIMES.pack(compute_s, cpu_s, wait_s)]
    for status, rows, data in answers:
        parts.append(_ANSWER.pack(status, rows, len(data)))
        parts.append(data)
    parts[0] = _frame_head(Kind.ANSWERS, batch_id, len(answers), sum(map(len, parts)))
    return [b"".join(parts)]


def _frame_head(kind: Kind, batch_id: int, items: int, rest: int) -> bytes:
    return LENGTH.pack(_FIXED.size + rest) + _FIXED.pack(kind, 0, 0, items, batch_id)


def _decode_items(view: memoryview, offset: int, count: int) -> tuple[bytes, ...]:
    items = []
    end = len(view)
    for _ in range(count):
        if offset + _ELEMENT.size > end:
            raise FrameError("BODIES item header truncated")
        (size,) = _ELEMENT.unpack_from(view, offset)
        offset += _ELEMENT.size
        if offset + size > end:
            raise FrameError("BODIES item truncated")
        items.append(bytes(view[offset : offset + size]))
        offset += size
    if offset != end:
        raise FrameError("bytes after the last BODIES item")
    return tuple(items)


def _decode_answers(
    view: memoryview, offset: int, count: int
) -> tuple[tuple[int, int, bytes], ...]:
    answers = []
    end = len(view)
    for _ in range(count):
        if offset + _ANSWER.size > end:
            raise FrameError("ANSWERS item header truncated")
        status, rows, size = _ANSWER.unpack_from(view, offset)
        offset += _ANSWER.size
        if status not in (ANSWER_OK, ANSWER_INVALID):
            raise FrameError(f"unknown answer status {status}")
        if offset + size > end:
            raise FrameError("ANSWERS item truncated")
        answers.append((status, rows, bytes(view[offset : offset + size])))
        offset += size
    if offset != end:
        raise FrameError("bytes after the last ANSWERS item")
    return tuple(answers)


def _decode_bytes(view: memoryview, count: int, shape: tuple[int, ...]) -> np.ndarray:
    out = np.empty(count, dtype=object)
    offset, end = 0, len(view)
    for i in range(count):
        if offset + _ELEMENT.size > end:
            raise FrameError("BYTES payload truncated")
        (word,) = _ELEMENT.unpack_from(view, offset)
        offset += _ELEMENT.size
        size = word & ~_TEXT_FLAG
        if offset + size > end:
            raise FrameError("BYTES element truncated")
        data = bytes(view[offset : offset + size])
        offset += size
        try:
            out[i] = data.decode("utf-8") if word & _TEXT_FLAG else data
        except UnicodeDecodeError as exc:
            raise FrameError("BYTES text element is not UTF-8") from exc
    if offset != end:
        raise FrameError("BYTES payload longer than its elements")
    return out.reshape(shape)


def _decode_tensors(view: memoryview, offset: int, count: int) -> tuple[dict, int]:
    tensors: dict[str, np.ndarray] = {}
    end = len(view)
    for _ in range(count):
        if offset + _TENSOR.size > end:
            raise FrameError("tensor header truncated")
        name_len, code, ndim, payload_len = _TENSOR.unpack_from(view, offset)
        offset += _TENSOR.size
        if code >= len(DATATYPE_CODES):
            raise FrameError(f"unknown datatype code {code}")
        if offset + name_len + 8 * ndim > end:
            raise FrameError("tensor header truncated")
        try:
            name = bytes(view[offset : offset + name_len]).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise FrameError("tensor name is not UTF-8") from exc
        offset += name_len
        shape = _dims(ndim).unpack_from(view, offset)
        offset += 8 * ndim
        offset += _pad(offset)
        if any(dim < 0 for dim in shape):
            raise FrameError(f"tensor {name!r}: negative dimension in {shape}")
        if name in tensors:
            raise FrameError(f"tensor {name!r} sent twice")
        if offset + payload_len > end:
            raise FrameError(f"tensor {name!r}: payload truncated")
        payload = view[offset : offset + payload_len]
        offset += payload_len
        offset += _pad(offset)
        datatype = DATATYPE_CODES[code]
        count_values = math.prod(shape)
        if datatype == "BYTES":
            if count_values * _ELEMENT.size > payload_len:
                raise FrameError(f"tensor {name!r}: {payload_len} bytes cannot hold {shape}")
            tensors[name] = _decode_bytes(payload, count_values, shape)
            continue
        dtype = DATATYPES[datatype][0].newbyteorder("<")
        if count_values * dtype.itemsize != payload_len:
            raise FrameError(f"tensor {name!r}: {payload_len} bytes do not fit shape {shape}")
        array = np.frombuffer(payload, dtype=dtype, count=count_values).reshape(shape)
        if not dtype.isnative:
            array = array.astype(dtype.newbyteorder("="))
        tensors[name] = array
    return tensors, offset


def decode(body: Buffer) -> Message:
    """Decode one frame body (without its length prefix).

    Arrays view ``body``: pass a ``bytearray`` to get writable arrays, and do not reuse it.
    """
    view = memoryview(body).cast("B")
    if len(view) < _FIXED.size:
        raise FrameError("frame shorter than its fixed header")
    raw_kind, _, count, code, batch_id = _FIXED.unpack_from(view, 0)
    try:
        kind = Kind(raw_kind)
    except ValueError as exc:
        raise FrameError(f"unknown frame kind {raw_kind}") from exc
    offset = _FIXED.size
    if kind in (Kind.BODIES, Kind.ANSWERS) and count:
        raise FrameError(f"{kind.name} frame with tensors")
    if kind is Kind.BODIES:
        return Message(kind, batch_id, items=_decode_items(view, offset, code))
    if kind in (Kind.RESULT, Kind.ANSWERS):
        if len(view) < offset + _TIMES.size:
            raise FrameError(f"{kind.name} frame without its times")
        compute_s, cpu_s, wait_s = _TIMES.unpack_from(view, offset)
        offset += _TIMES.size
    else:
        compute_s = cpu_s = wait_s = 0.0
    if kind is Kind.ANSWERS:
        answers = _decode_answers(view, offset, code)
        return Message(
            kind, batch_id, compute_s=compute_s, cpu_s=cpu_s, wait_s=wait_s, answers=answers
        )
    if kind in (Kind.BATCH, Kind.RESULT):
        tensors, offset = _decode_tensors(view, offset, count)
        if offset != len(view):
            raise FrameError("bytes after the last tensor")
        return Message(kind, batch_id, tensors, compute_s=compute_s, cpu_s=cpu_s, wait_s=wait_s)
    if count:
        raise FrameError(f"{kind.name} frame with tensors")
    try:
        text = bytes(view[offset:]).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FrameError("frame text is not UTF-8") from exc
    if kind is Kind.FAILURE:
        if code >= len(OUTCOMES):
            raise FrameError(f"unknown outcome code {code}")
        return Message(kind, batch_id, outcome=OUTCOMES[code], text=text)
    return Message(kind, batch_id, text=text)


class FrameAssembler:
    """Cuts a byte stream into frame bodies; the pure half of a receiving protocol.

    Bodies larger than ``direct_min`` are received straight into their own buffer
    (``receive_buffer``/``received``); smaller data goes through ``feed``. A length above
    ``max_frame`` is refused before anything is allocated for it.
    """

    def __init__(self, max_frame: int, direct_min: int = 64 * 1024) -> None:
        self.max_frame = max_frame
        self.direct_min = direct_min
        self._head = bytearray()
        self._body: bytearray | None = None
        self._filled = 0

    def _start_body(self, length: int) -> None:
        if length > self.max_frame:
            raise FrameError(f"frame of {length} bytes exceeds the limit of {self.max_frame}")
        self._body = bytearray(length)
        self._filled = 0

    def receive_buffer(self) -> memoryview | None:
        """Where the next bytes can go directly, when a large body is being received."""
        body = self._body
        if body is not None and len(body) - self._filled >= self.direct_min:
            return memoryview(body)[self._filled :]
        return None

    def received(self, count: int) -> list[bytearray]:
        """``count`` bytes were written into the buffer from ``receive_buffer``."""
        self._filled += count
        return self._finish()

    def _finish(self) -> list[bytearray]:
        body = self._body
        if body is not None and self._filled == len(body):
            self._body = None
            return [body]
        return []

    def feed(self, data: Buffer) -> list[bytearray]:
        """Consume ``data``; return every body it completes, in order."""
        view = memoryview(data).cast("B")
        done: list[bytearray] = []
        while len(view):
            body = self._body
            if body is None:
                need = LENGTH.size - len(self._head)
                self._head += view[:need]
                view = view[need:]
                if len(self._head) == LENGTH.size:
                    (length,) = LENGTH.unpack(self._head)
                    self._head.clear()
                    self._start_body(length)
                    done += self._finish()
                continue
            take = min(len(body) - self._filled, len(view))
            body[self._filled : self._filled + take] = view[:take]
            self._filled += take
            view = view[take:]
            done += self._finish()
        return done

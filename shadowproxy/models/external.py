"""Bring a model's external data into memory, safely, so onnxruntime never opens a file.

ONNX lets large tensors live in side files named by a relative ``location`` (with optional
``offset`` and ``length``). Left to itself, onnxruntime would open those files by name when
the session is built, after our checks, and would read anything the name reaches.

The choice made here: every external file is read once, here, through :func:`open_inside`
(no absolute path, no ``..``, no symlink at any level, no hard link, nothing outside the
model's own folder), counted against the model's byte budget, and hashed with the model file.
Each tensor's bytes are then copied into the in-memory ``ModelProto`` as ``raw_data`` and
its external reference removed. The session is built from that self-contained proto, so the
bytes onnxruntime sees are exactly the bytes that were checked and hashed, and the special
locations onnxruntime honours (such as in-memory addresses) never reach it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto

from shadowproxy.models.files import (
    FileRefused,
    TooLarge,
    open_inside,
    read_capped,
    split_location,
)
from shadowproxy.models.walk import iter_tensors

__all__ = ["ExternalFile", "embed_external_data", "external_tensors", "read_external_files"]

# Element types packed two to a byte.
_FOUR_BIT = {
    getattr(TensorProto, name)
    for name in ("INT4", "UINT4", "FLOAT4E2M1")
    if hasattr(TensorProto, name)
}


@dataclass(frozen=True)
class ExternalFile:
    """One side file, read once: its normalized location and its bytes."""

    location: str
    data: bytes


def _is_external(tensor: TensorProto) -> bool:
    return tensor.data_location == TensorProto.EXTERNAL or len(tensor.external_data) > 0


def external_tensors(model: onnx.ModelProto) -> list[TensorProto]:
    """Every tensor of ``model`` whose data lives in a side file."""
    return [t for t in iter_tensors(model) if _is_external(t)]


def _entries(tensor: TensorProto) -> dict[str, str]:
    entries: dict[str, str] = {}
    for entry in tensor.external_data:
        if entry.key in entries:
            raise FileRefused(f"repeats the external-data key {entry.key!r}")
        entries[entry.key] = entry.value
    if "location" not in entries:
        raise FileRefused("has external data without a location")
    return entries


def _int_entry(entries: dict[str, str], key: str) -> int | None:
    if key not in entries:
        return None
    try:
        value = int(entries[key])
    except ValueError as exc:
        raise FileRefused(f"has a non-integer external-data {key} {entries[key]!r}") from exc
    if value < 0:
        raise FileRefused(f"has a negative external-data {key}")
    return value


def _expected_length(tensor: TensorProto) -> int | None:
    """Bytes the tensor's raw data must hold, or ``None`` for a type without fixed width."""
    count = int(np.prod(tensor.dims, dtype=np.int64)) if tensor.dims else 1
    if tensor.data_type in _FOUR_BIT:
        return (count + 1) // 2
    if tensor.data_type in (TensorProto.STRING, TensorProto.UNDEFINED):
        return None
    itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    return count * int(itemsize)


def _location_key(location: str) -> str:
    return "/".join(split_location(location))


def read_external_files(
    model: onnx.ModelProto, folder: str, budget: int
) -> tuple[ExternalFile, ...]:
    """Read every side file ``model`` names, each once, in sorted order of location.

    ``budget`` is how many bytes all of them may hold together. Raises :class:`FileRefused`
    with a message that starts with the offending location.
    """
    keys: set[str] = set()
    for tensor in external_tensors(model):
        location = _entries(tensor)["location"]
        try:
            keys.add(_location_key(location))
        except FileRefused as exc:
            raise FileRefused(f"external data {location!r} {exc}") from exc
    files: list[ExternalFile] = []
    for key in sorted(keys):
        try:
            fd = open_inside(folder, tuple(key.split("/")))
            try:
                data = read_capped(fd, budget)
            finally:
                os.close(fd)
        except TooLarge as exc:
            raise TooLarge(
                f"external data {key!r} does not fit in max_bytes, which counts the model "
                "file and all its external data together; raise max_bytes if the model is "
                "this big"
            ) from exc
        except FileRefused as exc:
            raise FileRefused(f"external data {key!r} {exc}") from exc
        budget -= len(data)
        files.append(ExternalFile(key, data))
    return tuple(files)


def embed_external_data(model: onnx.ModelProto, files: tuple[ExternalFile, ...]) -> None:
    """Copy each external tensor's bytes into ``model`` and drop its external reference."""
    by_location = {f.location: f.data for f in files}
    for tensor in external_tensors(model):
        entries = _entries(tensor)
        key = _location_key(entries["location"])
        where = f"external data {key!r} (tensor {tensor.name!r})"
        data = by_location[key]
        offset = _int_entry(entries, "offset") or 0
        length = _int_entry(entries, "length")
        if length is None:
            length = len(data) - offset
        if offset + length > len(data):
            raise FileRefused(
                f"{where} reaches byte {offset + length}, past the end of the {len(data)}-byte file"
            )
        expected = _expected_length(tensor)
        if expected is None:
            raise FileRefused(f"{where} has a data type that cannot be stored externally")
        if length != expected:
            raise FileRefused(
                f"{where} holds {length} bytes, but its type and shape need {expected}"
            )
        tensor.raw_data = data[offset : offset + length]
        del tensor.external_data[:]
        tensor.data_location = TensorProto.DEFAULT

"""Recognise common non-ONNX model formats from their first bytes, before anything parses them.

A model file named ``.onnx`` may really be a pickle, a joblib dump or a PyTorch checkpoint.
Those formats are refused by name, so the operator learns what the file is and what to do,
instead of reading a protobuf decoding error. Loading a pickle runs arbitrary code, so a
pickle is recognised here and never handed to any loader.

The test is on the raw bytes only. A serialized ONNX ``ModelProto`` starts with the tag of
field 1 (``ir_version``, byte ``0x08``), which none of the signatures below start with, so a
real ONNX file is never mistaken for one of them.
"""

from __future__ import annotations

import io
import pickletools
import re
import struct
from dataclasses import dataclass

__all__ = ["Detected", "sniff_format"]

_PICKLE_ADVICE = (
    "unpickling runs arbitrary code, so pickles are never loaded; export the model to ONNX "
    "(for example with skl2onnx or torch.onnx.export) and pin the .onnx file instead"
)
_NOT_ONNX_ADVICE = "only ONNX models are loaded; export the model to ONNX"


@dataclass(frozen=True)
class Detected:
    """A recognised non-ONNX format: its name and what the operator should do about it."""

    name: str
    advice: str

    def describe(self) -> str:
        return f"is {self.name}, not an ONNX model: {self.advice}"


# PyTorch's legacy (pre-1.6) ``torch.save`` format is a pickle stream that opens with a
# protocol-2 pickle of the magic number 0x1950a86a20f9469cfc6c.
_LEGACY_TORCH = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"

# Pickle protocols 0 and 1 have no header; these are the openings Python writes for the usual
# top-level objects (dict, list, tuple, class instance, module global).
_OLD_PICKLE_PREFIXES = (b"(dp", b"(lp", b"(tp", b"(i", b"(c", b"}q", b"]q", b"}(", b"](", b")q")
_OLD_PICKLE_GLOBAL = re.compile(rb"c[A-Za-z_][\w.]*\n[A-Za-z_][\w.]*\n")
# First opcodes of a protocol 0/1 pickle (MARK, EMPTY_DICT/LIST/TUPLE, GLOBAL, INT, STRING...);
# with a stream of well-formed opcodes after them, they identify one the prefixes above miss.
_OLD_PICKLE_OPENERS = frozenset(b"(}])cIJKLNSVXUFGT")
_PICKLE_SCAN_BYTES = 1 << 16  # how much of such a file is decoded as opcodes, at most
_PICKLE_SCAN_OPS = 8  # this many well-formed opcodes in a row make a pickle

_ZLIB_HEADERS = (b"\x78\x01", b"\x78\x5e", b"\x78\x9c", b"\x78\xda")


def _compressed(article_and_kind: str) -> Detected:
    # joblib.dump(..., compress=...) writes its pickles through one of these compressors.
    return Detected(
        f"{article_and_kind} compressed file (joblib writes compressed pickles this way)",
        "it most likely holds a pickle; " + _PICKLE_ADVICE,
    )


def _is_pickle(data: bytes) -> bool:
    if len(data) >= 2 and data[0] == 0x80 and 2 <= data[1] <= 5:
        return True
    if data.startswith(_OLD_PICKLE_PREFIXES) or _OLD_PICKLE_GLOBAL.match(data):
        return True
    return bool(data) and data[0] in _OLD_PICKLE_OPENERS and _reads_as_opcodes(data)


def _reads_as_opcodes(data: bytes) -> bool:
    """Whether ``data`` opens with a well-formed protocol 0/1 pickle stream.

    ``pickletools.genops`` only decodes opcodes and their arguments; it builds no object and
    imports nothing, so this is safe on hostile bytes. A stream that reaches STOP is a
    pickle, whatever follows it; so is one that decodes cleanly over its first opcodes.
    """
    ops = 0
    try:
        for opcode, _arg, _pos in pickletools.genops(io.BytesIO(data[:_PICKLE_SCAN_BYTES])):
            ops += 1
            if opcode.name == "STOP" or ops >= _PICKLE_SCAN_OPS:
                return True
    except (ValueError, UnicodeDecodeError, struct.error):
        return False
    return False


def _is_safetensors(data: bytes) -> bool:
    # An 8-byte little-endian header length, then a JSON object header (which JSON lets
    # start with whitespace).
    if len(data) < 10:
        return False
    (header_len,) = struct.unpack("<Q", data[:8])
    header = data[8 : 8 + min(header_len, 64)].lstrip(b" \t\r\n")
    return 2 <= header_len <= len(data) - 8 and header[:2] in (b'{"', b"{}")


def _zip_kind(data: bytes) -> Detected:
    # torch.save (1.6+) and TorchScript write a zip whose members include pickles.
    if b"data.pkl" in data or b"constants.pkl" in data:
        return Detected("a PyTorch checkpoint (zip of pickles)", _PICKLE_ADVICE)
    return Detected(
        "a zip archive (PyTorch, .npz, .keras and others use this container)", _NOT_ONNX_ADVICE
    )


def sniff_format(data: bytes) -> Detected | None:
    """The non-ONNX format ``data`` is recognised as, or ``None`` if it is none of them."""
    if data.startswith(_LEGACY_TORCH):
        return Detected("a legacy PyTorch checkpoint (a pickle)", _PICKLE_ADVICE)
    if data.startswith(b"PK\x03\x04") or data.startswith(b"PK\x05\x06"):
        return _zip_kind(data)
    if data.startswith(b"ZF"):
        # joblib's old zlib container: b"ZF", a length, then a zlib stream of a pickle.
        return Detected("a joblib dump (zlib-compressed pickle)", _PICKLE_ADVICE)
    if data.startswith(_ZLIB_HEADERS):
        return _compressed("a zlib")
    if data.startswith(b"\x1f\x8b"):
        return _compressed("a gzip")
    if data.startswith(b"BZh"):
        return _compressed("a bzip2")
    if data.startswith(b"\xfd7zXZ\x00") or data.startswith(b"\x5d\x00\x00"):
        return _compressed("an xz/lzma")
    if data.startswith(b"\x04\x22\x4d\x18"):
        return _compressed("an lz4")
    if _is_pickle(data):
        return Detected("a Python pickle (or a joblib dump)", _PICKLE_ADVICE)
    if data.startswith(b"\x93NUMPY"):
        return Detected("a numpy .npy array file", _NOT_ONNX_ADVICE)
    if data.startswith(b"\x89HDF\r\n\x1a\n") or data[512:520] == b"\x89HDF\r\n\x1a\n":
        return Detected("an HDF5 file (Keras .h5 models use this)", _NOT_ONNX_ADVICE)
    if data.startswith(b"GGUF"):
        return Detected("a GGUF weights file", _NOT_ONNX_ADVICE)
    if data[4:8] == b"TFL3":
        return Detected("a TensorFlow Lite model", _NOT_ONNX_ADVICE)
    if _is_safetensors(data):
        return Detected("a safetensors weights file (tensors without a graph)", _NOT_ONNX_ADVICE)
    return None

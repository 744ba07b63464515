"""Check a model file before anything runs it: integrity, format, operators, signature.

:func:`check_model` reads the file once and returns a :class:`CheckedModel` whose ``data`` is
what :func:`~shadowproxy.models.session.build_session` gives onnxruntime. In order:

1. the path is resolved (a symlinked model file is fine: the pin decides what it may hold),
   opened once, refused unless it is a regular file, and read within ``max_bytes``;
2. the first bytes are compared with known non-ONNX formats (pickle, joblib, PyTorch, zip,
   safetensors, npy, HDF5...), which are refused by name and never parsed;
3. the bytes are parsed as an ONNX protobuf;
4. external data, if any, is read from inside the model's folder, counted against
   ``max_bytes`` and embedded (see :mod:`shadowproxy.models.external`);
5. the SHA-256 is compared with the pin (``sha256`` in the config); an unpinned model is
   refused unless ``allow_unpinned``, with the value to pin in the message;
6. the operator allowlist and the ONNX checker run, and the signature is read.

The pin covers every byte the model is built from. For a self-contained model that is the
file, so the pin is what ``sha256sum model.onnx`` prints. For a model with external data it
is the model file followed by its external files in sorted order of location, what
``cat model.onnx weights.bin | sha256sum`` prints; the mismatch message names the files and
prints the value, ready to copy.

The pin is compared after parsing because only the parsed model names its external files.
Parsing protobuf is memory-safe and runs no code from the file; nothing else (operators,
checker, onnxruntime) sees a model whose pin does not match.

Every refusal is a :class:`~shadowproxy.errors.ModelError` whose message starts with the
config key and the file, then says why and what to do.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from shadowproxy.config.model import ModelFile
from shadowproxy.errors import ModelError
from shadowproxy.models.external import embed_external_data, external_tensors, read_external_files
from shadowproxy.models.files import FileRefused, open_model_file, read_capped
from shadowproxy.models.operators import OperatorRefused, check_operators
from shadowproxy.models.signature import ModelSignature, SignatureRefused, read_signature
from shadowproxy.models.sniff import sniff_format

__all__ = ["CheckedModel", "check_model", "PROTOBUF_LIMIT"]

PROTOBUF_LIMIT = 2**31 - 1
"""A serialized protobuf message cannot be larger; a bigger model cannot be built in memory."""


@dataclass(frozen=True)
class CheckedModel:
    """A model that passed every check, with the bytes to build its session from.

    ``data`` is the model file's bytes exactly as read and hashed; for a model with external
    data, the serialization of the parsed model with those hashed external bytes embedded.
    ``size`` counts every byte read (model file plus external files).
    """

    path: Path
    sha256: str
    data: bytes
    signature: ModelSignature
    size: int

    def __repr__(self) -> str:
        # The default repr would print the whole model.
        return f"CheckedModel(path={str(self.path)!r}, sha256={self.sha256!r}, size={self.size})"


class _Refusal(Exception):
    """Internal: a check failed; turned into a ModelError naming the key and the file."""


def check_model(spec: ModelFile, where: str = "model") -> CheckedModel:
    """Read and check the model ``spec`` points at; :class:`ModelError` if anything is wrong.

    ``where`` is the dotted config key of ``spec`` (``candidates[0].model``), for messages.
    """
    path = Path(spec.path)
    prefix = f"{where}: {path}"
    try:
        return _check(spec, path)
    except (_Refusal, FileRefused, OperatorRefused, SignatureRefused) as exc:
        raise ModelError(f"{prefix} {exc}") from exc


def _check(spec: ModelFile, path: Path) -> CheckedModel:
    try:
        resolved = os.path.realpath(path, strict=True)
    except FileNotFoundError as exc:
        raise _Refusal("does not exist") from exc
    except OSError as exc:
        raise _Refusal(f"cannot be resolved ({exc.strerror})") from exc
    data = _read(resolved, spec.max_bytes)

    detected = sniff_format(data)
    if detected is not None:
        raise _Refusal(detected.describe())
    model = _parse(data)

    files = read_external_files(model, os.path.dirname(resolved), spec.max_bytes - len(data))
    size = len(data) + sum(len(f.data) for f in files)
    digest = hashlib.sha256(data)
    for external in files:
        digest.update(external.data)
    actual = digest.hexdigest()
    covered = " followed by ".join([path.name, *(f.location for f in files)])
    if spec.sha256 is None and not spec.allow_unpinned:
        raise _Refusal(
            f"has no pinned sha256. Pin it by adding to its config: sha256: {actual} "
            f"(the sha256 of {covered}), or set allow_unpinned: true to run it unverified"
        )
    if spec.sha256 is not None and not hmac.compare_digest(actual, spec.sha256.lower()):
        raise _Refusal(
            f"does not match its pinned sha256: pinned {spec.sha256.lower()}, actual {actual} "
            f"(sha256 of {covered}). If this file is the intended model, pin the actual value"
        )

    if files:
        embed_external_data(model, files)
        if model.ByteSize() > PROTOBUF_LIMIT:
            raise _Refusal("with its external data embedded is over the 2 GiB protobuf limit")
        data = model.SerializeToString()
    if external_tensors(model):
        raise _Refusal("still references external data after embedding it")

    opsets = check_operators(model)
    _run_checker(model)
    return CheckedModel(path, actual, data, read_signature(model, opsets), size)


def _read(resolved: str, max_bytes: int) -> bytes:
    fd = open_model_file(resolved)
    try:
        return read_capped(fd, max_bytes)
    except FileRefused as exc:
        raise _Refusal(f"{exc} (max_bytes); raise max_bytes if the model is this big") from exc
    finally:
        os.close(fd)


def _parse(data: bytes) -> onnx.ModelProto:
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise _Refusal("is not a valid ONNX model (truncated or corrupt)") from exc
    # Protobuf accepts many byte strings (unknown fields are kept), so a "successful" parse
    # of a damaged file can still lack the fields every real model has.
    if model.ir_version <= 0 or not model.HasField("graph") or not model.opset_import:
        raise _Refusal("is not a valid ONNX model (truncated or corrupt)")
    return model


def _run_checker(model: onnx.ModelProto) -> None:
    try:
        # full_check adds strict shape inference, which catches graphs onnxruntime would
        # reject at load, with a clearer message.
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise _Refusal(f"is not a valid ONNX model: {_one_line(exc)}") from exc
    except Exception as exc:  # the checker is native code; any failure refuses the model
        raise _Refusal(f"could not be checked as an ONNX model: {_one_line(exc)}") from exc


def _one_line(exc: Exception) -> str:
    """The checker's message on one line: ``validate`` prints one line per problem."""
    return " ".join(str(exc).split())

"""Build onnxruntime sessions for checked models, run them, and warm them up.

Sessions are built from :attr:`CheckedModel.data`, the checked bytes, never from the path:
onnxruntime does not open any file. Only the CPU execution provider is used and no custom
operator library is ever registered, so a session runs the standard ONNX kernels shipped
with onnxruntime and nothing else.

Threads are capped twice: :func:`build_session` sizes onnxruntime's own pools, and
:func:`thread_environment` gives the variables that cap every BLAS/OpenMP pool a process
might start, which must be in the environment before those libraries load (so a worker
process gets them at spawn).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnxruntime as ort

from shadowproxy.errors import ModelError
from shadowproxy.models.check import CheckedModel
from shadowproxy.models.signature import ModelSignature
from shadowproxy.tensors import DATATYPES, TensorSpec, datatype_of_array, numpy_dtype

__all__ = ["build_session", "run_model", "session_options", "thread_environment", "warmup_inputs"]

PROVIDERS = ("CPUExecutionProvider",)


def session_options(threads: int) -> ort.SessionOptions:
    """Options for a predictable neighbour: fixed threads, no busy-waiting, no extensions."""
    if threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Spinning threads burn CPU between calls, stealing it from the proxy and production.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    # The checks parsed the bytes as ONNX protobuf; never let onnxruntime reinterpret them
    # as its own flatbuffer format, which no check has looked at.
    options.add_session_config_entry("session.load_model_format", "ONNX")
    options.log_severity_level = 3  # errors only: warnings would flood worker logs
    return options


def build_session(model: CheckedModel, threads: int) -> ort.InferenceSession:
    """An onnxruntime session for ``model``, on the CPU, with ``threads`` intra-op threads."""
    options = session_options(threads)
    try:
        return ort.InferenceSession(model.data, sess_options=options, providers=list(PROVIDERS))
    except Exception as exc:  # onnxruntime raises its own unrelated exception types
        raise ModelError(f"{model.path}: onnxruntime could not load the model: {exc}") from exc


def _zipmap_to_array(rows: Sequence[Mapping[Any, float]], labels: Sequence[object]) -> np.ndarray:
    """``[{class: probability}, ...]`` as a float32 ``[rows, classes]`` array."""
    order = list(labels) if labels else (sorted(rows[0]) if rows else [])
    out = np.empty((len(rows), len(order)), dtype=np.float32)
    for i, row in enumerate(rows):
        for j, label in enumerate(order):
            out[i, j] = row[label]
    return out


def run_model(
    session: ort.InferenceSession, signature: ModelSignature, inputs: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Run ``session`` and return every output of ``signature`` as a numpy array, by name.

    ZipMap outputs (a list of maps) become float32 ``[rows, classes]`` arrays in the order
    of the ZipMap's class labels. Arrays come back in the datatype table's own dtypes (see
    :func:`canonical`). onnxruntime's exceptions are not translated: the caller decides
    whether a failure is the input's fault or the model's.
    """
    names = [spec.name for spec in signature.outputs]
    values = session.run(names, inputs)
    result: dict[str, np.ndarray] = {}
    for name, value in zip(names, values, strict=True):
        if name in signature.zipmaps:
            result[name] = _zipmap_to_array(value, signature.zipmaps[name])
        else:
            result[name] = canonical(np.asarray(value))
    return result


def canonical(array: np.ndarray) -> np.ndarray:
    """``array`` viewed in the datatype table's own dtype (no copy).

    onnxruntime returns INT64 as numpy's ``longlong``: equal to ``int64``, but a distinct
    scalar type that JSON encoders refuse when they write values one by one (v1 and json
    responses do).
    """
    try:
        wanted = DATATYPES[datatype_of_array(array)][0]
    except KeyError:
        return array  # the protocol reports what it cannot write
    if array.dtype.kind in "OSU" or array.dtype.char == wanted.char:
        return array
    return array.view(wanted)


def _warmup_shape(spec: TensorSpec, rows: int) -> tuple[int, ...]:
    # The first dimension is the batch; other unknown dimensions get the smallest size.
    return tuple((rows if i == 0 else 1) if size < 0 else size for i, size in enumerate(spec.shape))


def _warmup_array(spec: TensorSpec, rows: int, rng: np.random.Generator) -> np.ndarray:
    shape = _warmup_shape(spec, rows)
    dtype = numpy_dtype(spec.datatype)
    if spec.datatype == "BYTES":
        return np.full(shape, "a", dtype=object)
    if spec.datatype == "BOOL":
        return rng.integers(0, 2, size=shape).astype(np.bool_)
    if dtype.kind in "iu":
        # 0 and 1 are valid for every integer input, indices and categories included.
        return rng.integers(0, 2, size=shape).astype(dtype)
    return rng.standard_normal(size=shape).astype(dtype)


def warmup_inputs(signature: ModelSignature, rows: int = 1, seed: int = 0) -> dict[str, np.ndarray]:
    """Valid, seeded inputs for ``signature``: the batch dimension is ``rows``, others ``1``."""
    if rows < 1:
        raise ValueError(f"rows must be at least 1, got {rows}")
    rng = np.random.default_rng(seed)
    return {spec.name: _warmup_array(spec, rows, rng) for spec in signature.inputs}


def thread_environment(threads: int) -> dict[str, str]:
    """Environment variables that cap every BLAS/OpenMP thread pool at ``threads``.

    They must be set before numpy or onnxruntime is imported, so they belong in a worker
    process's environment at spawn, not in ``os.environ`` of a running process.

    ``OMP_WAIT_POLICY=PASSIVE`` and ``KMP_BLOCKTIME=0`` stop idle OpenMP threads from
    spinning, for the same reason sessions are built without spinning.
    """
    if threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    count = str(threads)
    return {
        "OMP_NUM_THREADS": count,
        "MKL_NUM_THREADS": count,
        "OPENBLAS_NUM_THREADS": count,
        "BLIS_NUM_THREADS": count,
        "VECLIB_MAXIMUM_THREADS": count,
        "NUMEXPR_NUM_THREADS": count,
        "OMP_WAIT_POLICY": "PASSIVE",
        "KMP_BLOCKTIME": "0",
    }

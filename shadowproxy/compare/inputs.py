"""The input features of a request, for input drift and slices (pure, no I/O).

Remote models do not tell shadowproxy their input signature, so features are read by
position: ``compare.features`` names the columns of the request's feature matrix (the v2
request's first input, the v1 instances, or the json protocol's configured fields). A body
that does not give such a matrix contributes no input figures; it is still compared.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import orjson

from shadowproxy.errors import PayloadError
from shadowproxy.protocols import JsonProtocol, PayloadProtocol, V1Protocol, V2Protocol
from shadowproxy.tensors import TensorSpec


def feature_rows(
    protocol: PayloadProtocol, body: bytes, features: Sequence[str]
) -> dict[str, np.ndarray] | None:
    """Column per feature name (float64, NaN for missing values), or None."""
    if not features:
        return None
    try:
        matrix = _matrix(protocol, body, len(features))
    except (PayloadError, ValueError, TypeError, KeyError, IndexError, orjson.JSONDecodeError):
        return None
    if matrix is None or matrix.ndim != 2 or matrix.shape[1] != len(features):
        return None
    return {name: matrix[:, i] for i, name in enumerate(features)}


def _matrix(protocol: PayloadProtocol, body: bytes, width: int) -> np.ndarray | None:
    if isinstance(protocol, JsonProtocol):
        spec = TensorSpec("features", "FP64", (-1, width))
        decoded = protocol.decode_request(body, (spec,))
        return next(iter(decoded.arrays.values())).astype(np.float64)
    value = orjson.loads(body)
    if isinstance(protocol, V2Protocol):
        first = value["inputs"][0]
        data = np.asarray(first["data"], dtype=np.float64)
        return data.reshape(-1, width)
    if isinstance(protocol, V1Protocol):
        return np.asarray(value["instances"], dtype=np.float64).reshape(-1, width)
    return None

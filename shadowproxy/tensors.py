"""Tensor descriptions shared by the payload protocols, the model checks and the executors.

One table maps each Open Inference Protocol datatype to its numpy dtype and ONNX element
type, so a name means the same thing wherever it is read.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# OIP datatype -> (numpy dtype, ONNX TensorProto element type). BYTES is carried as numpy
# object arrays of ``bytes``/``str`` (ONNX ``string``).
DATATYPES: dict[str, tuple[np.dtype, int]] = {
    "BOOL": (np.dtype(np.bool_), 9),
    "UINT8": (np.dtype(np.uint8), 2),
    "UINT16": (np.dtype(np.uint16), 4),
    "UINT32": (np.dtype(np.uint32), 12),
    "UINT64": (np.dtype(np.uint64), 13),
    "INT8": (np.dtype(np.int8), 3),
    "INT16": (np.dtype(np.int16), 5),
    "INT32": (np.dtype(np.int32), 6),
    "INT64": (np.dtype(np.int64), 7),
    "FP16": (np.dtype(np.float16), 10),
    "FP32": (np.dtype(np.float32), 1),
    "FP64": (np.dtype(np.float64), 11),
    "BYTES": (np.dtype(object), 8),
}

_BY_ONNX = {onnx_type: name for name, (_, onnx_type) in DATATYPES.items()}
_BY_NUMPY = {dtype: name for name, (dtype, _) in DATATYPES.items() if name != "BYTES"}


def datatype_of_onnx(elem_type: int) -> str:
    """The OIP datatype of an ONNX element type; ``KeyError`` if it has none."""
    return _BY_ONNX[elem_type]


def datatype_of_array(array: np.ndarray) -> str:
    """The OIP datatype of a numpy array (strings and bytes are ``BYTES``)."""
    if array.dtype.kind in "OSU":
        return "BYTES"
    return _BY_NUMPY[array.dtype]


def numpy_dtype(datatype: str) -> np.dtype:
    return DATATYPES[datatype][0]


@dataclass(frozen=True)
class TensorSpec:
    """A model input or output as the model declares it.

    ``shape`` uses ``-1`` for a dynamic dimension (the batch dimension is usually dynamic).
    """

    name: str
    datatype: str
    shape: tuple[int, ...]

    @property
    def batchable(self) -> bool:
        """Rows of several requests can be stacked along the first dimension."""
        return bool(self.shape) and self.shape[0] == -1

    def as_metadata(self) -> dict[str, object]:
        """The OIP metadata form: ``{"name", "datatype", "shape"}``."""
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}

"""What a model takes and returns, read from its graph: the shape of its API.

Inputs and outputs become :class:`~shadowproxy.tensors.TensorSpec` values with OIP datatype
names, the same table the payload protocols use. A dimension without a fixed size (a named
``dim_param`` or none at all) is ``-1``.

scikit-learn classifiers converted with skl2onnx's defaults end in a ``ZipMap`` whose output
is a list of ``{class: probability}`` maps, one per row. No protocol carries that type, so the
signature reports it as the FP32 ``[-1, n_classes]`` tensor :func:`run_model` turns it into,
with the class order taken from the ``ZipMap`` node (kept in :attr:`ModelSignature.zipmaps`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import onnx

from shadowproxy.tensors import TensorSpec, datatype_of_onnx

__all__ = ["ModelSignature", "SignatureRefused", "read_signature"]

ClassLabels = tuple[int, ...] | tuple[str, ...]


class SignatureRefused(Exception):
    """An input or output has a type no protocol can carry; the message is the reason."""


@dataclass(frozen=True)
class ModelSignature:
    """A model's inputs, outputs and operator sets."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    opsets: dict[str, int]
    # ZipMap outputs by name -> class labels in the order of the probability columns
    # (empty when the ZipMap node does not list them; then the map keys are sorted).
    zipmaps: dict[str, ClassLabels] = field(default_factory=dict)

    def as_metadata(self) -> dict[str, list[dict[str, object]]]:
        """The ``inputs`` and ``outputs`` of an OIP model metadata response."""
        return {
            "inputs": [spec.as_metadata() for spec in self.inputs],
            "outputs": [spec.as_metadata() for spec in self.outputs],
        }

    def input(self, name: str) -> TensorSpec:
        """The input called ``name``; ``KeyError`` if there is none."""
        for spec in self.inputs:
            if spec.name == name:
                return spec
        raise KeyError(name)


def _shape(tensor_type: onnx.TypeProto.Tensor) -> tuple[int, ...] | None:
    if not tensor_type.HasField("shape"):
        return None
    return tuple(
        dim.dim_value if dim.HasField("dim_value") and dim.dim_value > 0 else -1
        for dim in tensor_type.shape.dim
    )


def _tensor_spec(value: onnx.ValueInfoProto, kind: str) -> TensorSpec:
    tensor_type = value.type.tensor_type
    try:
        datatype = datatype_of_onnx(tensor_type.elem_type)
    except KeyError:
        type_name = onnx.TensorProto.DataType.Name(tensor_type.elem_type)
        raise SignatureRefused(
            f"{kind} {value.name!r} has element type {type_name}, which no payload protocol carries"
        ) from None
    shape = _shape(tensor_type)
    if shape is None:
        if kind == "input":
            raise SignatureRefused(
                f"input {value.name!r} declares no shape, so requests cannot be checked "
                "against it; re-export the model with input shapes"
            )
        # An output of unknown rank still runs; report it as a flat dynamic tensor.
        shape = (-1,)
    return TensorSpec(value.name, datatype, shape)


def _is_zipmap_type(type_proto: onnx.TypeProto) -> bool:
    if type_proto.WhichOneof("value") != "sequence_type":
        return False
    element = type_proto.sequence_type.elem_type
    if element.WhichOneof("value") != "map_type":
        return False
    value_type = element.map_type.value_type
    return (
        value_type.WhichOneof("value") == "tensor_type"
        and value_type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    )


def _zipmap_labels(graph: onnx.GraphProto, output: str) -> ClassLabels:
    for node in graph.node:
        if node.op_type == "ZipMap" and output in node.output:
            for attr in node.attribute:
                if attr.name == "classlabels_int64s":
                    return tuple(int(v) for v in attr.ints)
                if attr.name == "classlabels_strings":
                    return tuple(v.decode("utf-8") for v in attr.strings)
    return ()


def read_signature(model: onnx.ModelProto, opsets: dict[str, int]) -> ModelSignature:
    """The signature of a checked model; :class:`SignatureRefused` if a type is unsupported."""
    graph = model.graph
    # Before IR 4, initializers were also listed as inputs (as defaults); they are not fed.
    initializers = {init.name for init in graph.initializer}
    inputs: list[TensorSpec] = []
    for value in graph.input:
        if value.name in initializers:
            continue
        if value.type.WhichOneof("value") != "tensor_type":
            raise SignatureRefused(f"input {value.name!r} is not a tensor")
        inputs.append(_tensor_spec(value, "input"))
    outputs: list[TensorSpec] = []
    zipmaps: dict[str, ClassLabels] = {}
    for value in graph.output:
        kind = value.type.WhichOneof("value")
        if kind == "tensor_type":
            outputs.append(_tensor_spec(value, "output"))
        elif _is_zipmap_type(value.type):
            labels = _zipmap_labels(graph, value.name)
            zipmaps[value.name] = labels
            outputs.append(TensorSpec(value.name, "FP32", (-1, len(labels) or -1)))
        else:
            raise SignatureRefused(
                f"output {value.name!r} is a {kind or 'untyped value'}, which no payload "
                "protocol carries (only tensors and ZipMap probability maps are supported)"
            )
    return ModelSignature(tuple(inputs), tuple(outputs), dict(opsets), zipmaps)

"""Visit every graph, node and tensor of an ONNX model, subgraphs and functions included.

Checks that look only at ``model.graph.node`` miss what hides one level down: the branches of
an ``If``, the bodies of ``Loop`` and ``Scan``, model-local functions and training graphs. The
walkers here reach all of them, so a check written once covers every place ONNX can hold a
node or a tensor.
"""

from __future__ import annotations

from collections.abc import Iterator

import onnx
from onnx import AttributeProto

__all__ = ["iter_graphs", "iter_nodes", "iter_tensors"]


def _subgraphs(node: onnx.NodeProto) -> Iterator[onnx.GraphProto]:
    for attr in node.attribute:
        if attr.type == AttributeProto.GRAPH:
            yield attr.g
        elif attr.type == AttributeProto.GRAPHS:
            yield from attr.graphs


def _nested(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    yield graph
    for node in graph.node:
        for sub in _subgraphs(node):
            yield from _nested(sub)


def _function_subgraphs(function: onnx.FunctionProto) -> Iterator[onnx.GraphProto]:
    for node in function.node:
        for sub in _subgraphs(node):
            yield from _nested(sub)


def iter_graphs(model: onnx.ModelProto) -> Iterator[onnx.GraphProto]:
    """The main graph, every subgraph, subgraphs inside functions, and training graphs."""
    yield from _nested(model.graph)
    for function in model.functions:
        yield from _function_subgraphs(function)
    for training in model.training_info:
        yield from _nested(training.initialization)
        yield from _nested(training.algorithm)


def iter_nodes(model: onnx.ModelProto) -> Iterator[onnx.NodeProto]:
    """Every node: those of :func:`iter_graphs` plus the top level of each function body."""
    for graph in iter_graphs(model):
        yield from graph.node
    for function in model.functions:
        yield from function.node


def _attribute_tensors(node: onnx.NodeProto) -> Iterator[onnx.TensorProto]:
    for attr in node.attribute:
        if attr.type == AttributeProto.TENSOR:
            yield attr.t
        elif attr.type == AttributeProto.TENSORS:
            yield from attr.tensors
        elif attr.type == AttributeProto.SPARSE_TENSOR:
            yield attr.sparse_tensor.values
            yield attr.sparse_tensor.indices
        elif attr.type == AttributeProto.SPARSE_TENSORS:
            for sparse in attr.sparse_tensors:
                yield sparse.values
                yield sparse.indices


def iter_tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Every tensor that can carry data: initializers and tensor-valued attributes."""
    for graph in iter_graphs(model):
        yield from graph.initializer
        for sparse in graph.sparse_initializer:
            yield sparse.values
            yield sparse.indices
    for node in iter_nodes(model):
        yield from _attribute_tensors(node)

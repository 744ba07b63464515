"""The operator allowlist: standard ONNX operator sets only, at versions both runtimes know.

A node outside the standard domains is a custom operator, whose kernel is native code from a
shared library; shadowproxy never registers such libraries, and refusing the model here says
so plainly instead of letting onnxruntime fail later with a less helpful message. Every node
is checked, including those inside ``If``/``Loop``/``Scan`` bodies and model-local functions.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

import onnx

from shadowproxy.models.walk import iter_nodes

__all__ = ["ALLOWED_DOMAINS", "OperatorRefused", "check_operators", "opset_ceilings"]

ONNX_DOMAIN = ""
ML_DOMAIN = "ai.onnx.ml"
ALLOWED_DOMAINS = (ONNX_DOMAIN, ML_DOMAIN)
_ALIASES = {"ai.onnx": ONNX_DOMAIN}


class OperatorRefused(Exception):
    """The model uses an operator or operator set that is not allowed; message is the reason."""


def normalize_domain(domain: str) -> str:
    """``ai.onnx`` and ``""`` name the same default domain."""
    return _ALIASES.get(domain, domain)


def _schema_ceilings(schemas: Iterable[object]) -> dict[str, int]:
    ceilings: dict[str, int] = {}
    for schema in schemas:
        domain = normalize_domain(str(getattr(schema, "domain", "")))
        version = int(getattr(schema, "since_version", 0))
        ceilings[domain] = max(ceilings.get(domain, 0), version)
    return ceilings


@functools.cache
def _cached_ceilings() -> tuple[tuple[str, int], ...]:
    known = _schema_ceilings(onnx.defs.get_all_schemas_with_history())
    known[ONNX_DOMAIN] = onnx.defs.onnx_opset_version()
    try:
        # onnxruntime has no public accessor for its operator schemas; when this private one
        # is missing, onnxruntime still refuses an opset it does not know when it loads.
        from onnxruntime.capi import _pybind_state

        runtime = _schema_ceilings(_pybind_state.get_all_operator_schema())
    except (ImportError, AttributeError, RuntimeError):
        runtime = {}
    return tuple(
        (domain, min(known.get(domain, 0), runtime.get(domain, known.get(domain, 0))))
        for domain in ALLOWED_DOMAINS
    )


def opset_ceilings() -> dict[str, int]:
    """Highest opset per allowed domain that both onnx and the installed onnxruntime know."""
    return dict(_cached_ceilings())


def _check_imports(imports: Iterable[onnx.OperatorSetIdProto], owner: str) -> dict[str, int]:
    ceilings = opset_ceilings()
    versions: dict[str, int] = {}
    for opset in imports:
        domain = normalize_domain(opset.domain)
        if domain not in ALLOWED_DOMAINS:
            raise OperatorRefused(
                f"{owner} imports operator set domain {opset.domain!r}; only the standard "
                "ONNX domains ('' / 'ai.onnx' and 'ai.onnx.ml') are allowed, because any "
                "other domain needs custom operator code, which is never loaded"
            )
        ceiling = ceilings.get(domain, 0)
        if not 1 <= opset.version <= ceiling:
            raise OperatorRefused(
                f"{owner} imports opset {opset.version} of domain {domain or 'ai.onnx'!r}; "
                f"the installed onnx and onnxruntime support versions 1 to {ceiling}"
            )
        versions[domain] = opset.version
    return versions


def _node_label(node: onnx.NodeProto) -> str:
    return f"node {node.name!r} (op {node.op_type!r})" if node.name else f"op {node.op_type!r}"


def check_operators(model: onnx.ModelProto) -> dict[str, int]:
    """Refuse any operator outside the allowlist; return the model's opsets, domain -> version."""
    opsets = _check_imports(model.opset_import, "the model")
    for function in model.functions:
        _check_imports(function.opset_import, f"function {function.name!r}")
    for node in iter_nodes(model):
        domain = normalize_domain(node.domain)
        if domain not in ALLOWED_DOMAINS:
            raise OperatorRefused(
                f"{_node_label(node)} is in domain {node.domain!r}: custom operators and "
                "functions outside the standard ONNX domains are not allowed, because their "
                "kernels are native code that shadowproxy never loads"
            )
        if not onnx.defs.has(node.op_type, domain):
            raise OperatorRefused(
                f"{_node_label(node)} is not a standard operator of domain "
                f"{domain or 'ai.onnx'!r} (model-local functions are not allowed)"
            )
    return opsets

"""Health and metadata bodies of a local production model (pure, no I/O).

The status code carries the health answer (200 ready, 503 not); these bodies repeat it for
people and tools that read them.
"""

from __future__ import annotations

from collections.abc import Sequence

from shadowproxy import __version__
from shadowproxy.protocols import jsonio
from shadowproxy.tensors import TensorSpec

SERVER_NAME = "shadowproxy"
PLATFORM = "onnxruntime_onnx"


def server_metadata() -> bytes:
    """``GET /v2``: ``{"name", "version", "extensions"}``."""
    return jsonio.dumps({"name": SERVER_NAME, "version": __version__, "extensions": []})


def model_metadata(
    name: str, version: str, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]
) -> bytes:
    """``GET /v2/models/{name}[/versions/{v}]``: the OIP model metadata.

    Parameters
    ----------
    name, version : str
        The model; an empty version lists no versions.
    inputs, outputs : sequence of TensorSpec
        The model's tensors, written with :meth:`TensorSpec.as_metadata`.
    """
    return jsonio.dumps(
        {
            "name": name,
            "versions": [version] if version else [],
            "platform": PLATFORM,
            "inputs": [spec.as_metadata() for spec in inputs],
            "outputs": [spec.as_metadata() for spec in outputs],
        }
    )


def live() -> bytes:
    """``GET /v2/health/live``: ``{"live": true}``."""
    return jsonio.dumps({"live": True})


def ready(is_ready: bool) -> bytes:
    """``GET /v2/health/ready``: ``{"ready": ...}``."""
    return jsonio.dumps({"ready": is_ready})


def model_ready(name: str, is_ready: bool) -> bytes:
    """``GET /v2/models/{name}/ready`` and v1 ``GET /v1/models/{name}``: ``{"name", "ready"}``."""
    return jsonio.dumps({"name": name, "ready": is_ready})

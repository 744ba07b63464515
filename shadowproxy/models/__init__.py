"""Safe loading of ONNX models: check the file, then build and run an onnxruntime session.

:func:`check_model` refuses anything that is not a pinned, well-formed ONNX model of standard
operators; :func:`build_session` builds a CPU session from the checked bytes only.
"""

from __future__ import annotations

from shadowproxy.models.check import CheckedModel, check_model
from shadowproxy.models.session import build_session, run_model, thread_environment, warmup_inputs
from shadowproxy.models.signature import ModelSignature

__all__ = [
    "CheckedModel",
    "ModelSignature",
    "build_session",
    "check_model",
    "run_model",
    "thread_environment",
    "warmup_inputs",
]

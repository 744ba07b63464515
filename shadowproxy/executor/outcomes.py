"""How a failed model run is counted."""

from __future__ import annotations

from shadowproxy.errors import FailureOutcome


def failure_outcome(exc: BaseException) -> FailureOutcome:
    """``invalid`` when onnxruntime refused the inputs, ``error`` for anything else."""
    from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument

    return "invalid" if isinstance(exc, (InvalidArgument, ValueError, TypeError)) else "error"

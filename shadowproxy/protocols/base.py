"""What every payload protocol offers, and the values it returns."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple

import numpy as np
import orjson

from shadowproxy.config.model import Outputs, Payload
from shadowproxy.errors import PayloadError
from shadowproxy.protocols import arrays, jsonio
from shadowproxy.tensors import TensorSpec


@dataclass(frozen=True, slots=True)
class Decoded:
    """A request decoded for a local model.

    Attributes
    ----------
    arrays : dict[str, numpy.ndarray]
        One array per model input, in the model's dtype; the first dimension is the rows.
    rows : int
        Rows in the request (1 to ``payload.max_rows``).
    id : str or None
        The request's ``id`` (v2 only).
    outputs : tuple[str, ...]
        Output names the request asked for (v2 ``outputs``); empty means all. The caller
        filters the outputs it passes to ``encode_response``.
    """

    arrays: dict[str, np.ndarray]
    rows: int
    id: str | None = None
    outputs: tuple[str, ...] = field(default=())


@dataclass(frozen=True, slots=True)
class Comparable:
    """What the comparator reads from one response.

    Attributes
    ----------
    scores : numpy.ndarray or None
        float64, shape ``[rows, k]``; a one-value-per-row score has ``k == 1``.
    labels : numpy.ndarray or None
        One label per row: int64, or an object array of ``str``.
    rows : int
        Rows in the response.
    """

    scores: np.ndarray | None
    labels: np.ndarray | None
    rows: int


class OneRow(NamedTuple):
    """A one-row answer read on the comparator's fast path, as plain Python values.

    The comparator folds hundreds of thousands of answers a minute; most hold one row, and
    building numpy arrays for each costs more than everything else it does with them. (A
    named tuple, because it is built twice per pair: a frozen dataclass costs twice as
    much to build.)
    ``extract_row`` reads such answers into this; :meth:`comparable` gives what ``extract``
    gives for the same body, with the label as text (the comparator compares labels as
    text either way).

    Attributes
    ----------
    scores : list of float or None
        The row's scores (at least one).
    label : str or None
        The row's label as text, as the comparator compares labels.
    """

    scores: list[float] | None
    label: str | None

    def comparable(self) -> Comparable:
        scores = None if self.scores is None else np.array([self.scores], dtype=np.float64)
        labels = None if self.label is None else np.array([self.label], dtype=object)
        return Comparable(scores=scores, labels=labels, rows=1)


class PayloadProtocol(ABC):
    """A payload protocol: how bodies map to model inputs and from model outputs.

    Implementations are pure (no I/O) and safe to share between threads.
    """

    #: The config value that selects this protocol (``v1``, ``v2`` or ``json``).
    name: ClassVar[str]
    content_type: ClassVar[bytes] = b"application/json"

    def __init__(self, payload: Payload) -> None:
        self.payload = payload

    def model_problem(self, inputs: Sequence[TensorSpec]) -> str | None:
        """Why no request could ever feed a model with ``inputs``, or None.

        Checked with the model files (``validate``, and ``serve`` before it listens), so a
        model the protocol cannot feed is a config error, not a 400 on every request.
        """
        return None

    @abstractmethod
    def decode_request(self, body: bytes, inputs: Sequence[TensorSpec]) -> Decoded:
        """Decode a request body into one array per model input.

        Parameters
        ----------
        body : bytes
            The request body.
        inputs : sequence of TensorSpec
            The model's inputs.

        Returns
        -------
        Decoded
            The arrays, the row count and (v2) the request id.

        Raises
        ------
        PayloadError
            The body breaks the protocol; ``reason`` says how.
        """

    @abstractmethod
    def encode_response(
        self,
        outputs: Mapping[str, np.ndarray],
        *,
        model_name: str,
        model_version: str,
        request_id: str | None,
        rows: int | None = None,
    ) -> bytes:
        """Encode a local model's outputs as this protocol's response body.

        Parameters
        ----------
        outputs : mapping of str to numpy.ndarray
            Output arrays by name, first dimension the rows, in the model's order.
        model_name, model_version : str
            Reported by protocols whose responses name the model.
        request_id : str or None
            Echoed by protocols whose responses carry an id.
        rows : int, optional
            The rows of the request answered. A protocol that answers row by row (v1,
            json) refuses outputs with another number of rows (``bad_output``): a client
            must never get 1 prediction for 2 instances. v2 carries every shape as it is.

        Returns
        -------
        bytes
            The JSON body.

        Raises
        ------
        PayloadError
            ``bad_output`` when the outputs cannot be written.
        """

    def encode_error(self, message: str) -> bytes:
        """The protocol's error body, ``{"error": message}``."""
        return jsonio.dumps({"error": message})

    @abstractmethod
    def extract(self, body: bytes, outputs: Outputs) -> Comparable:
        """Read scores and labels from a production or candidate response body.

        Responses may hold ``NaN``/``Infinity`` literals and ``null`` scores (how non-finite
        outputs are written); both read as non-finite floats. Which parts are scores and
        labels: see :mod:`shadowproxy.protocols.selection`.

        Parameters
        ----------
        body : bytes
            The response body.
        outputs : Outputs
            The configured selectors; unset ones take the protocol's defaults.

        Returns
        -------
        Comparable
            Scores and labels, at least one of them set.

        Raises
        ------
        PayloadError
            ``bad_response``, ``bad_selector`` or a more specific reason.
        """

    def _parse_fast(self, body: bytes) -> Any:
        """A response body for ``extract_row``: orjson under the depth limit, or None for
        anything the full reader must look at (malformed, too deep, non-finite numbers)."""
        try:
            jsonio.check_depth(body, self.payload.max_depth)
            return orjson.loads(body)
        except (PayloadError, orjson.JSONDecodeError):
            return None

    def extract_row(self, body: bytes, outputs: Outputs) -> OneRow | None:
        """``extract`` for the common case of a plain one-row answer, without numpy.

        Returns None whenever the body is anything else (several rows, nested data, a
        value ``extract`` would convert or refuse, malformed JSON): the caller then uses
        ``extract``, which gives the result or the error. When it returns a row, that row's
        :meth:`OneRow.comparable` matches what ``extract`` returns. This default has no
        fast path.
        """
        return None

    def _parse(self, body: bytes, *, allow_nonfinite: bool | None = None) -> object:
        """Parse with the payload limits; non-finite numbers per ``payload.nonfinite``."""
        if allow_nonfinite is None:
            allow_nonfinite = self.payload.nonfinite == "allow"
        return jsonio.parse(body, max_depth=self.payload.max_depth, allow_nonfinite=allow_nonfinite)

    def _parse_object(self, body: bytes) -> dict[str, Any]:
        """Parse a request body that must be a JSON object (v1 and v2 envelopes)."""
        value = self._parse(body)
        if not isinstance(value, dict):
            raise PayloadError(
                f"body: expected an object, got {arrays.json_type(value)}", "bad_body"
            )
        return value

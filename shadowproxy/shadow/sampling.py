"""Deterministic sampling from the request id (pure, no I/O).

Every replica and every candidate hashes the same request id to the same point in
[0, 1), so a request sampled at rate r is sampled everywhere at every rate >= r: the
sampled sets of different candidates nest, and pairs line up across replicas.
"""

from __future__ import annotations

import hashlib

_SCALE = float(1 << 64)


def sample_point(request_id: str, salt: bytes = b"") -> float:
    """Map a request id to a uniform point in [0, 1).

    Parameters
    ----------
    request_id : str
        The request's id (``X-Request-Id``).
    salt : bytes
        Separates independent decisions (e.g. mirroring vs. pair logging) so they do
        not select the same requests.
    """
    digest = hashlib.blake2b(request_id.encode("utf-8", "surrogatepass"), digest_size=8, key=salt)
    return int.from_bytes(digest.digest(), "big") / _SCALE


def is_sampled(request_id: str, rate: float, salt: bytes = b"") -> bool:
    """True when the request falls in the sampled share ``rate``."""
    if rate >= 1.0:
        return True
    if rate <= 0.0:
        return False
    return sample_point(request_id, salt) < rate

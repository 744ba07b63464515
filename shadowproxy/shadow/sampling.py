"""Deterministic sampling from the request id (pure, no I/O).

Every replica and every candidate hashes the same request id to the same point in
[0, 1), so a request sampled at rate r is sampled everywhere at every rate >= r: the
sampled sets of different candidates nest, and pairs line up across replicas.

A client may send its own ``X-Request-Id``. Without a key it could then pick ids that are
(or are not) sampled, and so choose which of its requests a candidate is judged on. With
``sampling.key_file``, every decision hashes the id under a secret the replicas share and
clients never see (:func:`keyed_salt`): the points stay uniform and agree across replicas,
and no client can compute them.
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


# Mirroring and the comparator's own sample_rate decide from the same point, so the pairs
# compared at a lower rate are a subset of those mirrored.
MIRROR_PURPOSE = b""
# The comparator's reservoirs hash request ids under their own secret (nothing samples at a
# rate with it).
RESERVOIR_PURPOSE = b"compare-reservoir"


def keyed_salt(key: bytes | None, purpose: bytes) -> bytes:
    """The salt of one kind of sampling decision.

    Parameters
    ----------
    key : bytes or None
        The shared secret (``sampling.key_file``), or None for none.
    purpose : bytes
        Separates independent decisions (mirroring vs. pair logging).

    Returns
    -------
    bytes
        ``purpose`` itself without a key; with one, a 32-byte digest of the key and
        ``purpose``, which a client cannot compute.
    """
    if key is None:
        return purpose
    master = hashlib.blake2b(key, digest_size=32).digest()
    return hashlib.blake2b(purpose, key=master, digest_size=32).digest()


def is_sampled(request_id: str, rate: float, salt: bytes = b"") -> bool:
    """True when the request falls in the sampled share ``rate``."""
    if rate >= 1.0:
        return True
    if rate <= 0.0:
        return False
    return sample_point(request_id, salt) < rate

"""A seeded bottom-k sample of rows that merges exactly across replicas.

Every item gets a pseudo-random key from a keyed hash of its id and the seed; the sample
is the ``capacity`` items with the smallest keys. Because the key depends only on
``(seed, id)``, the sample of a stream does not depend on the order of the items or on how
they were split between replicas: merging two samples and keeping the smallest keys gives
exactly the sample of the union. Memory is bounded by ``capacity`` rows kept, plus fewer
than twice that many offers waiting to be merged in (below).

With ``sampling.key_file`` the hash is also keyed with a secret derived from it
(``key``): request ids can come from clients, and with the seed alone (0 by default, and
written in every snapshot) a client could compute which ids enter the sample and fill it with
requests of its choosing. Replicas share the key, so their samples still merge exactly. A
snapshot records the key's id (a digest that reveals nothing of it), never the key.

The ids are kept next to the rows (``capacity`` short strings at most): they make a sampled
row traceable to its request, let a snapshot be checked against its seed when it is read
back, and give duplicate offers of one id a single place in the sample.

Offers are not merged into the sample one batch at a time: those that can still enter
(a key below the largest kept one) wait in a buffer, and the buffer is merged once it
holds ``capacity`` items, or as soon as anything reads the sample. Merging re-sorts the
whole sample, so doing it per batch of a few hundred would cost O(capacity) per batch; the
buffer makes it O(log capacity) per offer, amortised. What the sample holds is a function
of the set of offers, so when the merge happens never changes it.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from shadowproxy.errors import StateError

RESERVOIR_SCHEMA = "shadowproxy.reservoir/v1"
_U64 = 2**64
MAX_KEY_BYTES = 56  # blake2b takes a 64-byte key: 8 for the seed, the rest for the secret


def key_id(key: bytes) -> str | None:
    """The public id of a reservoir key: a digest that tells keys apart and reveals nothing
    of them; None for no key."""
    if not key:
        return None
    return hashlib.blake2b(key, digest_size=8, person=b"shadowproxy-rkid").hexdigest()


def item_keys(seed: int, ids: Sequence[str], key: bytes = b"") -> np.ndarray:
    """The ``uint64`` key of every id: an 8-byte blake2b digest keyed with ``seed`` and
    ``key``."""
    # Copying a keyed state is cheaper than keying a new one, and hashes the same.
    start = hashlib.blake2b(key=seed.to_bytes(8, "big") + key, digest_size=8).copy
    digests = []
    try:
        for i in ids:
            h = start()
            h.update(i.encode("utf-8"))
            digests.append(h.digest())
    except AttributeError as exc:  # only str has .encode among what could be passed
        raise ValueError("ids must be strings") from exc
    digest = b"".join(digests)
    # Big-endian so the key orders like the digest bytes; native uint64 for fast sorting.
    return np.frombuffer(digest, dtype=">u8").astype(np.uint64)


class Reservoir:
    """Bottom-k sample of ``(id, row)`` items; exact under merge, order and partition.

    Parameters
    ----------
    capacity
        The most items kept.
    seed
        Hash seed, ``0 <= seed < 2**64``; replicas must share it for their samples to merge.
    width
        Each row holds ``width`` float64 values.
    key
        Secret bytes hashed with the seed (at most 56), so that clients cannot compute which
        ids enter the sample; replicas must share it too. Empty for none.

    Attributes
    ----------
    seen : int
        Items offered in total (duplicates of one id included).

    Notes
    -----
    Ids are expected to be unique. An id offered more than once has one key, so it takes at
    most one place in the sample; if its rows differ, the lexicographically smallest row is
    kept, which keeps the result independent of order.
    """

    def __init__(self, capacity: int, seed: int, width: int, key: bytes = b"") -> None:
        for name, value, low in (("capacity", capacity, 1), ("width", width, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < _U64:
            raise ValueError(f"seed must be an integer in [0, 2**64), got {seed!r}")
        if not isinstance(key, bytes) or len(key) > MAX_KEY_BYTES:
            raise ValueError(f"key must be at most {MAX_KEY_BYTES} bytes")
        self.capacity = capacity
        self.seed = seed
        self.width = width
        self.key: bytes | None = key  # None: read from a snapshot without its key (see from_json)
        self.key_id = key_id(key)
        self.seen = 0
        self._keys = np.zeros(0, dtype=np.uint64)
        self._ids = np.zeros(0, dtype=object)
        self._rows = np.zeros((0, width), dtype=np.float64)
        # Offers waiting to be merged in (see the module docs): chunks of keys, ids, rows.
        self._waiting: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._waiting_items = 0

    def __len__(self) -> int:
        self._settle()
        return int(self._keys.size)

    @property
    def keys(self) -> np.ndarray:
        """The kept keys, ascending (a copy)."""
        self._settle()
        return self._keys.copy()

    @property
    def ids(self) -> list[str]:
        """The kept ids, in key order."""
        self._settle()
        return [str(i) for i in self._ids]

    def rows(self) -> np.ndarray:
        """The kept rows, shape ``(len(self), width)``, in key order (a copy)."""
        self._settle()
        return self._rows.copy()

    def add(self, ids: Sequence[str], rows: np.ndarray) -> None:
        """Offer one item per id; ``rows`` has shape ``(len(ids), width)``."""
        ids = list(ids)
        array = np.asarray(rows, dtype=np.float64)
        if array.ndim == 1 and array.size == self.width and len(ids) == 1:
            array = array.reshape(1, self.width)
        if array.ndim != 2 or array.shape != (len(ids), self.width):
            raise ValueError(
                f"rows must have shape ({len(ids)}, {self.width}), got {np.shape(rows)}"
            )
        if not ids:
            return
        if self.key is None:
            raise StateError(
                f"this reservoir was read without its sampling key (key id {self.key_id}): "
                "it can be merged and read, not added to"
            )
        keys = item_keys(self.seed, ids, self.key)  # ValueError for an id that is not a string
        self.seen += len(ids)
        # Cheap vectorised pre-filters before the full sort: a key above the current largest
        # of a full sample cannot enter, nor one above the batch's own capacity-th smallest
        # distinct key (distinct, because repeated ids share a key and one place).
        keep = np.ones(keys.size, dtype=bool)
        if self._keys.size >= self.capacity:
            keep &= keys <= self._keys[-1]
        if keys.size > self.capacity:
            distinct = np.unique(keys)
            if distinct.size > self.capacity:
                keep &= keys <= distinct[self.capacity - 1]
        if not keep.all():
            if not keep.any():
                return
            keys, array = keys[keep], array[keep]
            ids = [i for i, k in zip(ids, keep.tolist(), strict=True) if k]
        self._waiting.append((keys, np.asarray(ids, dtype=object), array))
        self._waiting_items += keys.size
        if self._waiting_items >= self.capacity:
            self._settle()

    def _settle(self) -> None:
        """Merge the waiting offers into the sample."""
        if not self._waiting:
            return
        chunks = self._waiting
        self._waiting, self._waiting_items = [], 0
        self._absorb(
            np.concatenate([keys for keys, _, _ in chunks]),
            np.concatenate([ids for _, ids, _ in chunks]),
            np.concatenate([rows for _, _, rows in chunks]),
        )

    def merge(self, other: Reservoir) -> None:
        """Fold in another sample; the result is the sample of the union of both streams."""
        if not isinstance(other, Reservoir):
            raise StateError(f"cannot merge a Reservoir with {type(other).__name__}")
        mine = (self.capacity, self.seed, self.width)
        theirs = (other.capacity, other.seed, other.width)
        if mine != theirs:
            raise StateError(
                "cannot merge reservoirs with different (capacity, seed, width): "
                f"{mine} vs {theirs}"
            )
        if self.key_id != other.key_id:
            raise StateError(
                f"cannot merge a reservoir drawn under {_describe(self.key_id)} with one "
                f"drawn under {_describe(other.key_id)}: the replicas must share "
                "sampling.key_file"
            )
        self.seen += other.seen
        self._settle()
        other._settle()
        if len(other):
            self._absorb(other._keys, other._ids, other._rows)

    def _absorb(self, keys: np.ndarray, ids: np.ndarray, rows: np.ndarray) -> None:
        all_keys = np.concatenate([self._keys, keys])
        all_ids = np.concatenate([self._ids, ids])
        all_rows = np.concatenate([self._rows, rows])
        # Primary order by key; ties (the same id offered twice, or a 2**-64 collision) are
        # broken by id and then by row content so the outcome never depends on arrival order.
        # Ties are rare, and the full sort (ids as text) costs ten times the key sort: it
        # runs only when there is one.
        order = np.argsort(all_keys, kind="stable")
        by_key = all_keys[order]
        if bool((by_key[1:] == by_key[:-1]).any()):
            sort_keys = [all_rows[:, j] for j in range(self.width - 1, -1, -1)]
            order = np.lexsort([*sort_keys, all_ids.astype(str), all_keys])
        all_keys, all_ids, all_rows = all_keys[order], all_ids[order], all_rows[order]
        first = np.ones(all_keys.size, dtype=bool)
        first[1:] = (all_keys[1:] != all_keys[:-1]) | (all_ids[1:] != all_ids[:-1])
        take = np.flatnonzero(first)[: self.capacity]
        self._keys, self._ids, self._rows = all_keys[take], all_ids[take], all_rows[take]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Reservoir):
            return NotImplemented
        self._settle()
        other._settle()
        return (
            (self.capacity, self.seed, self.width, self.key_id, self.seen)
            == (other.capacity, other.seed, other.width, other.key_id, other.seen)
            and np.array_equal(self._keys, other._keys)
            and self.ids == other.ids
            and np.array_equal(self._rows, other._rows, equal_nan=True)
        )

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return (
            f"Reservoir(capacity={self.capacity}, seed={self.seed}, width={self.width}, "
            f"size={len(self)}, seen={self.seen})"
        )

    def to_json(self) -> dict[str, Any]:
        """A strict-JSON dict; keys as 16 hex digits, non-finite row values as strings.
        The key itself is never written: ``key_id`` (present only with a key) names it."""
        self._settle()
        keyed = {} if self.key_id is None else {"key_id": self.key_id}
        return {
            "schema": RESERVOIR_SCHEMA,
            "capacity": self.capacity,
            "seed": self.seed,
            **keyed,
            "width": self.width,
            "seen": self.seen,
            "keys": [f"{int(k):016x}" for k in self._keys],
            "ids": self.ids,
            "rows": [[_encode_float(v) for v in row] for row in self._rows.tolist()],
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any], key: bytes | None = b"") -> Reservoir:
        """Rebuild a sample; ``StateError`` if malformed or if a key does not match its id
        under the stored seed (the snapshot was altered or made with another hash).

        ``key`` is the secret the sample must have been drawn under (empty: none); a
        sample drawn under another one is refused. With ``key=None`` (a report run
        without ``sampling.key_file``) a keyed sample is taken as stored, unchecked, and
        can then be merged and read but not added to.
        """
        if not isinstance(d, Mapping) or d.get("schema") != RESERVOIR_SCHEMA:
            got = d.get("schema") if isinstance(d, Mapping) else type(d).__name__
            raise StateError(f"reservoir has schema {got!r}, expected {RESERVOIR_SCHEMA!r}")
        try:
            stored_id = d.get("key_id")
            if stored_id is not None and not isinstance(stored_id, str):
                raise ValueError(f"key_id must be a string, got {stored_id!r}")
            res = cls(d["capacity"], d["seed"], d["width"], key or b"")
            seen, ids, rows, keys = d["seen"], list(d["ids"]), d["rows"], d["keys"]
            if isinstance(seen, bool) or not isinstance(seen, int) or seen < 0:
                raise ValueError(f"seen must be a non-negative integer, got {seen!r}")
            if not len(ids) == len(rows) == len(keys) or len(ids) > min(res.capacity, seen):
                raise ValueError(
                    f"{len(keys)} keys, {len(ids)} ids and {len(rows)} rows do not fit "
                    f"capacity {res.capacity} and seen {seen}"
                )
            if not all(isinstance(i, str) for i in ids):
                raise ValueError("ids must be strings")
            array = np.asarray(
                [[_decode_float(v) for v in row] for row in rows], dtype=np.float64
            ).reshape(len(rows), res.width)
            stored = np.asarray([int(k, 16) for k in keys], dtype=np.uint64)
        except (KeyError, TypeError, ValueError) as exc:
            raise StateError(f"reservoir is malformed: {exc}") from exc
        if key is None and stored_id is not None:
            res.key, res.key_id, expected = None, stored_id, stored
        elif stored_id != res.key_id:
            raise StateError(
                f"reservoir was drawn under {_describe(stored_id)} and is read with "
                f"{_describe(res.key_id)}: give the sampling.key_file of the replicas "
                "that wrote it"
            )
        else:
            expected = item_keys(res.seed, ids, res.key or b"")
        if not np.array_equal(stored, expected):
            raise StateError(
                f"reservoir keys do not match its ids under seed {res.seed}; "
                "the snapshot was altered or made with a different hash"
            )
        res.seen = seen
        # Re-sorting through _absorb restores the invariant even if the list was reordered.
        res._absorb(expected, np.asarray(ids, dtype=object), array)
        if len(res) != len(ids):
            raise StateError("reservoir snapshot holds the same id more than once")
        return res


def _describe(key_id: str | None) -> str:
    return "no sampling key" if key_id is None else f"the sampling key with id {key_id}"


def _encode_float(v: float) -> float | str:
    # Strict JSON has no NaN or infinities; spell them as strings that float() reads back.
    return v if math.isfinite(v) else repr(v)


def _decode_float(v: object) -> float:
    if isinstance(v, str) and v in ("nan", "inf", "-inf"):
        return float(v)
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise ValueError(f"row values must be numbers, got {v!r}")
    return float(v)

"""The input reference: per-feature distributions of the training data.

``shadowproxy reference`` reads the training data once (a CSV with a header row or a 2-D
numeric ``.npy``) and stores, per feature, either a histogram over quantile bins (numeric)
or category counts (categorical), together with the rate of missing values. Live traffic is
later counted over the very same bins, so the reference and the live state are comparable;
the reference's fingerprint identifies it in snapshots and reports.
"""

from __future__ import annotations

import csv
import errno
import hashlib
import json
import math
import os
import tempfile
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from shadowproxy.compare.bins import BinLayout, Histogram, canonical_json
from shadowproxy.errors import StateError

REFERENCE_SCHEMA = "shadowproxy.reference/v1"

# Cells that mean "no value" in a CSV, compared case-insensitively after stripping.
MISSING_TOKENS = frozenset({"", "na", "n/a", "nan", "null", "none"})

# Quantile bins per numeric feature, at most. Every bin is a count in each snapshot and a
# series of the exported input histogram, so the bound keeps both small; PSI does not get
# any better from bins holding a thousandth of the training rows.
MAX_BINS = 1000

FeatureKind = Literal["numeric", "categorical"]


@dataclass(frozen=True)
class FeatureReference:
    """The training distribution of one feature.

    Parameters
    ----------
    name
        The feature (column) name.
    kind
        ``"numeric"`` (``layout`` and ``counts`` set) or ``"categorical"`` (``categories``).
    layout
        Bins of a numeric feature; ``None`` for a categorical one.
    counts
        Training counts per bin of ``layout`` (numeric only; ``()`` otherwise).
    categories
        Training count per category value (categorical only; ``{}`` otherwise).
    nan_rate
        Fraction of training rows where the feature was missing (NaN or an empty cell).
    """

    name: str
    kind: FeatureKind
    layout: BinLayout | None = None
    counts: tuple[int, ...] = ()
    categories: dict[str, int] = field(default_factory=dict)
    nan_rate: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"feature name must be a non-empty string, got {self.name!r}")
        object.__setattr__(self, "counts", tuple(int(c) for c in self.counts))
        object.__setattr__(self, "categories", dict(self.categories))
        if not (isinstance(self.nan_rate, int | float) and 0.0 <= self.nan_rate <= 1.0):
            raise ValueError(f"feature {self.name!r}: nan_rate must be in [0, 1]")
        object.__setattr__(self, "nan_rate", float(self.nan_rate))
        if any(c < 0 for c in self.counts) or any(
            not isinstance(c, int) or isinstance(c, bool) or c < 0 for c in self.categories.values()
        ):
            raise ValueError(f"feature {self.name!r}: counts must be non-negative integers")
        if self.kind == "numeric":
            if self.layout is None or len(self.counts) != self.layout.bins:
                raise ValueError(
                    f"numeric feature {self.name!r} needs a layout and one count per bin"
                )
            if self.categories:
                raise ValueError(f"numeric feature {self.name!r} cannot have categories")
        elif self.kind == "categorical":
            if self.layout is not None or self.counts:
                raise ValueError(f"categorical feature {self.name!r} cannot have bins")
            if not all(isinstance(k, str) for k in self.categories):
                raise ValueError(f"feature {self.name!r}: category values must be strings")
        else:
            raise ValueError(
                f"feature {self.name!r}: kind must be 'numeric' or 'categorical', got {self.kind!r}"
            )

    def histogram(self) -> Histogram:
        """The training counts as a :class:`Histogram` (numeric features only)."""
        if self.layout is None:
            raise ValueError(f"feature {self.name!r} is categorical and has no histogram")
        hist = Histogram(self.layout)
        hist.counts = np.asarray(self.counts, dtype=np.int64)
        return hist

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "kind": self.kind, "nan_rate": self.nan_rate}
        if self.layout is not None:
            d["layout"] = self.layout.to_json()
            d["counts"] = list(self.counts)
        else:
            d["categories"] = dict(sorted(self.categories.items()))
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> FeatureReference:
        layout = d.get("layout")
        return cls(
            name=d["name"],
            kind=d["kind"],
            layout=None if layout is None else BinLayout.from_json(layout),
            counts=tuple(d.get("counts", ())),
            categories=dict(d.get("categories", {})),
            nan_rate=d["nan_rate"],
        )


@dataclass(frozen=True)
class Reference:
    """Per-feature training distributions (schema ``shadowproxy.reference/v1``).

    Parameters
    ----------
    features
        One :class:`FeatureReference` per feature, in input column order; names are unique.
    rows
        The number of training rows.
    """

    features: tuple[FeatureReference, ...]
    rows: int
    schema: str = REFERENCE_SCHEMA

    def __post_init__(self) -> None:
        object.__setattr__(self, "features", tuple(self.features))
        if self.schema != REFERENCE_SCHEMA:
            raise StateError(f"reference has schema {self.schema!r}, expected {REFERENCE_SCHEMA!r}")
        if isinstance(self.rows, bool) or not isinstance(self.rows, int) or self.rows < 0:
            raise ValueError(f"rows must be a non-negative integer, got {self.rows!r}")
        names = [f.name for f in self.features]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"feature names must be unique, repeated: {dupes}")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.features)

    def feature(self, name: str) -> FeatureReference:
        """The feature called ``name``; ``KeyError`` naming it if absent."""
        for f in self.features:
            if f.name == name:
                return f
        raise KeyError(f"reference has no feature {name!r}")

    def _body(self) -> dict[str, Any]:
        return {
            "schema": self.schema,
            "rows": self.rows,
            "features": [f.to_json() for f in self.features],
        }

    def fingerprint(self) -> str:
        """A short hex digest of the whole content (features, bins, counts, rows)."""
        return hashlib.sha256(canonical_json(self._body()).encode("utf-8")).hexdigest()[:16]

    def to_json(self) -> dict[str, Any]:
        """A strict-JSON dict including the fingerprint, checked again on reading."""
        return {**self._body(), "fingerprint": self.fingerprint()}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Reference:
        """Rebuild a reference; ``StateError`` if the schema, content or fingerprint is bad."""
        if not isinstance(d, Mapping):
            raise StateError(f"reference must be a JSON object, got {type(d).__name__}")
        if d.get("schema") != REFERENCE_SCHEMA:
            raise StateError(
                f"reference has schema {d.get('schema')!r}, expected {REFERENCE_SCHEMA!r}"
            )
        try:
            ref = cls(
                features=tuple(FeatureReference.from_json(f) for f in d["features"]),
                rows=d["rows"],
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise StateError(f"reference is malformed: {exc!r}") from exc
        stored = d.get("fingerprint")
        if stored is not None and stored != ref.fingerprint():
            raise StateError(
                f"reference fingerprint {stored!r} does not match its content "
                f"(fingerprint {ref.fingerprint()!r})"
            )
        return ref

    def save(self, path: Path) -> None:
        """Write to ``path`` atomically: a temporary file beside it, fsync, then rename.

        Raises
        ------
        OSError
            ``path`` cannot be written (see :func:`check_destination`); its ``strerror``
            says why.
        """
        path = Path(path)
        check_destination(path)
        text = json.dumps(self.to_json(), indent=1, sort_keys=False, allow_nan=False) + "\n"
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        # Make the rename itself durable; not every platform can open a directory.
        try:
            dir_fd = os.open(path.parent, os.O_RDONLY)
        except OSError:
            return
        try:
            os.fsync(dir_fd)
        except OSError:
            pass
        finally:
            os.close(dir_fd)

    @classmethod
    def load(cls, path: Path) -> Reference:
        """Read a saved reference; ``StateError`` naming the file if it cannot be read or
        its content is bad."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise StateError(f"{path}: cannot read: {exc.strerror or exc}") from exc
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise StateError(f"{path}: not a JSON reference file: {exc}") from exc
        try:
            return cls.from_json(data)
        except StateError as exc:
            raise StateError(f"{path}: {exc}") from exc


def check_destination(path: Path) -> None:
    """Refuse a reference destination that can never be written, before any work is done.

    Checked up front because the failures the atomic write would meet later name its
    temporary file rather than ``path`` (a missing folder), or come only after the
    temporary file was written beside a folder that is in the way.

    Raises
    ------
    OSError
        ``path`` is a directory, or its folder does not exist or is a file; ``strerror``
        says which and ``filename`` is ``path``.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, "is a directory, not a file", str(path))
    if path.parent.exists() and not path.parent.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, f"{path.parent} is not a folder", str(path))
    if not path.parent.is_dir():
        raise FileNotFoundError(errno.ENOENT, f"folder {path.parent} does not exist", str(path))


def check_bins(bins: int) -> None:
    """``ValueError`` unless ``bins`` is a usable number of quantile bins (2 to
    :data:`MAX_BINS`); the message does not name the argument, the caller does."""
    integer = isinstance(bins, int | np.integer) and not isinstance(bins, bool)
    if not (integer and 2 <= bins <= MAX_BINS):
        raise ValueError(f"must be an integer from 2 to {MAX_BINS}, got {bins!r}")


# -- training data -----------------------------------------------------------------------


def load_training_data(
    path: Path, features: Sequence[str] | None = None
) -> tuple[list[np.ndarray], tuple[str, ...]]:
    """Read training data as a list of columns and their names.

    A ``.npy`` file must hold a 2-D numeric array; its columns are named by ``features``
    (one name per column) or ``f0 .. fn``. It is read with pickle disabled and an array of
    objects is refused before any of it is loaded. Any other file is read as CSV with a
    header row, in UTF-8 (a leading byte-order mark is dropped): ``features`` then selects
    columns by name (in that order). A CSV column whose every present cell parses as a
    number is numeric (``float64``, missing cells ``NaN``); any other column is categorical
    (an ``object`` array of ``str``, missing cells ``None``). Missing cells are those in
    :data:`MISSING_TOKENS`.

    A ``.npy`` file is checked against its header before its data is read, so a file that
    is cut short, or whose header claims more data than the file holds, is refused instead
    of being allocated for.

    Raises
    ------
    ValueError
        The file is unreadable as training data; the message names the file.
    """
    path = Path(path)
    if path.suffix.lower() == ".npy":
        return _load_npy(path, features)
    return _load_csv(path, features)


def _load_npy(
    path: Path, features: Sequence[str] | None
) -> tuple[list[np.ndarray], tuple[str, ...]]:
    with path.open("rb") as fh:
        try:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
            else:
                shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
        except ValueError as exc:
            raise ValueError(f"{path}: not a valid .npy file: {exc}") from exc
        # Checked from the header alone, so a pickled payload is never even read.
        if dtype.hasobject or dtype.kind not in "biuf":
            raise ValueError(f"{path}: .npy must hold a numeric array, got dtype {dtype}")
        if len(shape) != 2:
            raise ValueError(f"{path}: .npy must hold a 2-D array, got shape {shape}")
        # numpy allocates the whole array before reading into it: a header that claims
        # more than the file holds would fail only after asking for that much memory.
        needed = math.prod(shape) * dtype.itemsize
        held = os.fstat(fh.fileno()).st_size - fh.tell()
        if held != needed:
            # More than the header says is as wrong as less: a second array appended with
            # another np.save would otherwise be left out without a word.
            problem = "cut short or corrupt" if held < needed else "followed by trailing bytes"
            raise ValueError(
                f"{path}: .npy is {problem}: its header says shape {shape} of "
                f"{dtype}, {needed} bytes of data, but the file holds {held}"
            )
        # Read from the file just checked, not from the path again.
        fh.seek(0)
        try:
            array = np.lib.format.read_array(fh, allow_pickle=False).astype(np.float64)
        except (ValueError, MemoryError) as exc:
            raise ValueError(f"{path}: cannot load the array: {exc}") from exc
    n_cols = array.shape[1]
    if features is None:
        names = tuple(f"f{i}" for i in range(n_cols))
    else:
        names = tuple(features)
        if len(names) != n_cols:
            raise ValueError(
                f"{path}: {n_cols} columns but {len(names)} feature names {list(names)}"
            )
    return [np.ascontiguousarray(array[:, i]) for i in range(n_cols)], names


def _load_csv(
    path: Path, features: Sequence[str] | None
) -> tuple[list[np.ndarray], tuple[str, ...]]:
    try:
        rows = _read_csv(path)
    except UnicodeDecodeError as exc:
        raise ValueError(
            f"{path}: not UTF-8 text ({_first_undecodable(path) or exc.reason}); save it as UTF-8"
        ) from exc
    if not rows:
        raise ValueError(f"{path}: CSV file is empty (no header row)")
    header = [h.strip() for h in rows[0]]
    records = [row for row in rows[1:] if row]
    dupes = sorted({h for h in header if header.count(h) > 1})
    if dupes or "" in header:
        raise ValueError(f"{path}: header names must be unique and non-empty, got {header}")
    for n, row in enumerate(records, start=2):
        if len(row) != len(header):
            raise ValueError(f"{path}: row {n} has {len(row)} cells, header has {len(header)}")
    if features is None:
        names = tuple(header)
    else:
        names = tuple(features)
        missing = [n for n in names if n not in header]
        if missing:
            raise ValueError(f"{path}: no column(s) {missing} in header {header}")
    columns = [_parse_column([row[header.index(n)] for row in records]) for n in names]
    return columns, names


def _read_csv(path: Path) -> list[list[str]]:
    """Every row of a CSV file, the header first; ``ValueError`` naming the file and line
    of a malformed row."""
    # utf-8-sig drops the byte-order mark Excel writes, which would otherwise become part
    # of the first column's name.
    with path.open(newline="", encoding="utf-8-sig") as fh:
        # Strict, so that a quote never closed is an error rather than one last cell that
        # swallows the rest of the file.
        reader = csv.reader(fh, strict=True)
        rows = []
        while True:
            # The reader hands back blank lines as empty rows, so the next row starts on
            # the line after the last one read.
            start = reader.line_num + 1
            try:
                rows.append(next(reader))
            except StopIteration:
                return rows
            except csv.Error as exc:
                hint = " (a quoted cell is never closed)" if "end of data" in str(exc) else ""
                raise ValueError(f"{path}, line {start}: malformed CSV: {exc}{hint}") from exc


def _first_undecodable(path: Path) -> str | None:
    """Where the first byte that is not UTF-8 is (``"line 3: byte 0xe9, ..."``), if found."""
    with path.open("rb") as fh:
        # Splitting on newlines never cuts a UTF-8 sequence: none of its bytes is 0x0a.
        for n, line in enumerate(fh, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as exc:
                return f"line {n}: byte 0x{line[exc.start]:02x}, {exc.reason}"
    return None


def _parse_column(cells: list[str]) -> np.ndarray:
    present = [c.strip() for c in cells]
    missing = [c.lower() in MISSING_TOKENS for c in present]
    try:
        return np.asarray(
            [math.nan if m else float(c) for c, m in zip(present, missing, strict=True)],
            dtype=np.float64,
        )
    except ValueError:
        column = np.empty(len(cells), dtype=object)
        column[:] = [None if m else c for c, m in zip(present, missing, strict=True)]
        return column


def build_reference(path: Path, features: Sequence[str] | None = None, bins: int = 10) -> Reference:
    """Build the reference of the training data at ``path`` (see :func:`load_training_data`).

    Numeric features get :meth:`BinLayout.from_quantiles` bins (``bins`` at most) and their
    training counts; categorical features get their category counts.

    Raises
    ------
    ValueError
        ``bins`` is out of range (see :func:`check_bins`), the data has no rows, or a
        feature has no value at all (the message names it).
    """
    try:
        check_bins(bins)
    except ValueError as exc:
        raise ValueError(f"bins {exc}") from None
    columns, names = load_training_data(path, features)
    rows = len(columns[0]) if columns else 0
    if rows == 0:
        raise ValueError(f"{path}: training data has no rows")
    out = []
    for name, column in zip(names, columns, strict=True):
        if column.dtype == object:
            values = [v for v in column.tolist() if v is not None]
            if not values:
                raise ValueError(f"{path}: feature {name!r} has no values")
            out.append(
                FeatureReference(
                    name=name,
                    kind="categorical",
                    categories=dict(Counter(values).most_common()),
                    nan_rate=(rows - len(values)) / rows,
                )
            )
            continue
        if not np.isfinite(column).any():
            raise ValueError(f"{path}: feature {name!r} has no finite values")
        layout = BinLayout.from_quantiles(column, bins)
        hist = Histogram(layout)
        hist.add(column)
        out.append(
            FeatureReference(
                name=name,
                kind="numeric",
                layout=layout,
                counts=tuple(int(c) for c in hist.counts),
                nan_rate=hist.nan / rows,
            )
        )
    return Reference(features=tuple(out), rows=rows)

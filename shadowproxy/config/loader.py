"""Read the YAML config and turn it into the frozen dataclasses of :mod:`.model`.

The validator is driven by the dataclasses themselves: it walks their type hints and field
metadata (``required``, ``gt``, ``ge``, ``lt``, ``le``, ``choices``), so a new field with a
type and constraints needs no change here. What the types cannot say is kept in two small
tables at the end of this module:

* ``_FIELD_RULES``: checks and normalisations for every field of a given name
  (``url``, ``name``, ``sha256``, ``methods``, ...), wherever it appears;
* ``_OBJECT_RULES``: rules that span several fields of one dataclass
  (``set exactly one of 'url' or 'model'``, duplicate candidate names, ...).

Every problem is collected before anything is raised, so one run of ``shadowproxy validate``
lists all of them, one line each, named by a dotted path such as
``candidates[1].timeout_ms``. A value that failed is replaced by the ``_INVALID`` marker so
that later rules can skip it instead of piling a second, derived complaint onto it.

Secrets (header values, URL userinfo) are never echoed in a problem message.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import operator
import os
import re
import types
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints
from urllib.parse import SplitResult, urlsplit, urlunsplit

import yaml

from shadowproxy.config.gates import GATE_METRICS
from shadowproxy.config.model import (
    Baseline,
    Candidate,
    Config,
    Gate,
    Limits,
    ModelFile,
    PairLog,
    Production,
    Snapshot,
)
from shadowproxy.config.urls import base_problem, split_url
from shadowproxy.errors import ConfigError, Problem

__all__ = [
    "MAX_CONFIG_BYTES",
    "MAX_YAML_ENTRIES",
    "REDACTED",
    "config_from_dict",
    "load_config",
    "redacted_config",
]

MAX_CONFIG_BYTES = 1024 * 1024
"""A config larger than this is refused: it is almost surely the wrong file."""

MAX_YAML_ENTRIES = 1_000_000
"""Most list items and mapping pairs a config may build once merge keys are flattened.

A 1 MiB file holds fewer written out; only merge keys (``<<``) that copy and recopy the
same pairs can reach it."""

REDACTED = "[redacted]"
"""What a secret is replaced with in :func:`redacted_config`."""

# Fields the loader fills in itself; a YAML key of that name is an unknown key.
_LOADER_FIELDS = frozenset({(Config, "source")})

# RFC 9110 token: header field names and method names.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Names become Prometheus label values and report keys: short and plain.
_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
# Header values may hold tab and visible Latin-1, never CR/LF/NUL or other controls,
# which would let a value split into a second header (request smuggling).
_BAD_HEADER_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]|[^\x00-\xff]")
# The proxy writes these itself; letting a config set them would break message framing.
_MANAGED_HEADERS = frozenset(
    {
        "connection",
        "content-length",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
_WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::"})
_LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
# Far above any machine's CPU count; os.sched_setaffinity overflows on huge numbers
# instead of refusing them like a CPU this machine does not have.
_MAX_CPU = 65535
# Where a problem of the top-level mapping itself is reported (its dotted path is empty).
_TOP_LEVEL = "<top level>"


class _Invalid:
    """The type of :data:`_INVALID`."""

    def __repr__(self) -> str:
        return "<invalid>"


_INVALID: Any = _Invalid()
"""Stands for a value that failed validation; its problem has already been recorded."""


def _ok(*values: Any) -> bool:
    """True when none of ``values`` failed validation (rules skip what already failed)."""
    return all(value is not _INVALID for value in values)


@dataclasses.dataclass
class _Walk:
    """State of one validation run: where relative paths start, and the problems so far."""

    base_dir: Path | None
    problems: list[Problem] = dataclasses.field(default_factory=list)
    # Dotted paths of the keys the file gives, so that rules can tell a key written out
    # from one the loader filled with its default.
    given: set[str] = dataclasses.field(default_factory=set)

    def fail(self, path: str, message: str) -> Any:
        """Record a problem and return the marker that stands for the failed value."""
        self.problems.append(Problem(path, message))
        return _INVALID


# --------------------------------------------------------------------------- public API


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read, parse and validate the YAML config file at ``path``.

    Relative paths inside the file are resolved against the file's folder. The folder is
    taken as written (symlinks are not followed), so a config mounted through a symlink
    (as Kubernetes does for ConfigMaps) resolves next to where the operator put it.

    Raises
    ------
    ConfigError
        The file is missing, unreadable, not YAML, or invalid; ``problems`` lists every
        problem found, one per bad key.
    """
    # Absolute but not resolved: problems name the file unambiguously, and paths in it
    # resolve next to where the operator put it even through symlinks.
    file = Path(path).absolute()
    where = str(file)
    text = _read_text(file, where)
    data, duplicates = _parse_yaml(text, where)
    try:
        config = config_from_dict(data, base_dir=file.parent, source=file)
    except ConfigError as exc:
        raise ConfigError([*duplicates, *exc.problems]) from None
    if duplicates:
        raise ConfigError(duplicates)
    return config


def config_from_dict(
    data: Any,
    base_dir: str | os.PathLike[str] | None = None,
    source: str | os.PathLike[str] | None = None,
) -> Config:
    """Validate already-parsed config data and build the frozen :class:`Config`.

    Parameters
    ----------
    data
        The parsed YAML document (normally a mapping).
    base_dir
        Folder that relative paths are resolved against; ``None`` keeps them as written.
    source
        The file the data came from; stored as ``Config.source`` and used to name
        problems that belong to no key.

    Raises
    ------
    ConfigError
        With every problem found, never just the first.
    """
    where = "" if source is None else str(source)
    if data is None:
        raise ConfigError(Problem(where, "the config is empty; it needs at least 'production'"))
    if not isinstance(data, Mapping):
        raise ConfigError(
            Problem(where, f"the top level must be a mapping of keys, got {_describe(data)}")
        )
    walk = _Walk(None if base_dir is None else Path(base_dir))
    config: Config = _build(Config, data, "", walk)
    if walk.problems:
        raise ConfigError(walk.problems)
    if source is not None:
        config = dataclasses.replace(config, source=Path(source))
    return config


def redacted_config(config: Config) -> dict[str, Any]:
    """The config as a JSON-ready dict, for ``GET /admin/config``, with secrets hidden.

    Header values become ``"[redacted]"`` (headers are shown as a mapping, as in the
    YAML), a URL's userinfo password becomes ``[redacted]`` (a bare username, which is
    usually a token, is redacted whole), paths become strings and tuples lists.
    """
    return _plain_dataclass(config)


# --------------------------------------------------------------------------- reading


def _read_text(file: Path, where: str) -> str:
    """The file's text, or a ConfigError naming the file and what is wrong with it."""
    try:
        with open(file, "rb") as stream:
            raw = stream.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(Problem(where, "no such file")) from None
    except IsADirectoryError:
        raise ConfigError(Problem(where, "is a directory, not a config file")) from None
    except OSError as exc:
        raise ConfigError(Problem(where, f"cannot be read: {exc.strerror or exc}")) from exc
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(Problem(where, "is larger than 1 MiB; is this the config file?"))
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            Problem(where, f"is not UTF-8 text (bad byte at offset {exc.start})")
        ) from None


def _parse_yaml(text: str, where: str) -> tuple[Any, list[Problem]]:
    """Parse one YAML document as ``yaml.safe_load`` does; also report keys given twice.

    Plain YAML keeps the last of two equal keys without a word, which hides typos such as
    two ``timeout_ms`` lines. Repeats are found on the composed node tree, which holds
    only scalars and positions. The tree is checked before any Python object is built from
    it (with the safe constructor only): merge keys copy what they bring in, so a few lines
    of them could otherwise fill the memory.
    """
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        if root is None:
            return None, []
        _check_expansion(root, where)
        duplicates = [
            Problem(where, f"line {line}: key {key!r} is given twice (YAML would keep the last)")
            for key, line in _repeated_keys(root)
        ]
        return _construct(root), duplicates
    except yaml.YAMLError as exc:
        raise ConfigError(Problem(where, _yaml_message(exc))) from exc
    except RecursionError:
        # The composer recurses once per nesting level; no config nests hundreds deep.
        raise ConfigError(Problem(where, "not valid YAML: nested too deeply")) from None


def _construct(root: yaml.Node) -> Any:
    """The Python data of a composed document, built by the safe constructor."""
    loader = yaml.SafeLoader("")
    try:
        return loader.construct_document(root)
    finally:
        loader.dispose()


def _nodes(root: yaml.Node) -> Iterator[yaml.Node]:
    """Every node of the tree once, in document order.

    An alias is the very node its anchor names, so a node can be reached many times (and,
    through a recursive alias, from inside itself). Each is visited only once: a walk that
    followed every alias would be exponential in the number of lines ("billion laughs").
    """
    seen: set[int] = set()
    stack = [root]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        yield node
        if isinstance(node, yaml.MappingNode):
            stack.extend(child for pair in reversed(node.value) for child in reversed(pair))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(reversed(node.value))


def _repeated_keys(root: yaml.Node) -> list[tuple[str, int]]:
    """(key, line) of every key written twice in one mapping, each mapping looked at once."""
    found: list[tuple[str, int]] = []
    for node in _nodes(root):
        if not isinstance(node, yaml.MappingNode):
            continue
        seen: set[tuple[str, str]] = set()
        for key_node, _value in node.value:
            # Merge keys (<<) may legitimately repeat and be overridden.
            if isinstance(key_node, yaml.ScalarNode) and not _is_merge(key_node):
                ident = (key_node.tag, key_node.value)
                if ident in seen:
                    found.append((key_node.value, key_node.start_mark.line + 1))
                seen.add(ident)
    found.sort(key=lambda item: item[1])
    return found


def _is_merge(key_node: yaml.Node) -> bool:
    return key_node.tag == "tag:yaml.org,2002:merge"


def _check_expansion(root: yaml.Node, where: str) -> None:
    """Refuse a document whose merge keys would build more than ``MAX_YAML_ENTRIES``.

    Aliases alone cost nothing: the constructor builds each node once and shares it. But a
    mapping with ``<<`` gets its own copy of every pair merged into it, so nine lines that
    each merge the previous one nine times build 9**9 pairs. Entries are counted on the
    tree, each mapping's merged pairs once (memoised), so the count itself stays linear.
    """
    merged: dict[int, int] = {}
    total = 0
    for node in _nodes(root):
        if isinstance(node, yaml.SequenceNode):
            total += len(node.value)
        elif isinstance(node, yaml.MappingNode):
            total += _merged_pairs(node, merged)
        if total > MAX_YAML_ENTRIES:
            raise ConfigError(
                Problem(
                    where,
                    f"line {node.start_mark.line + 1}: merge keys (<<) expand the config to "
                    f"more than {MAX_YAML_ENTRIES:,} entries",
                )
            )


def _merged_pairs(node: yaml.MappingNode, merged: dict[int, int]) -> int:
    """How many pairs ``node`` holds once its merge keys are flattened, as PyYAML does.

    Iterative, so that a long chain of merges cannot exhaust the stack; a mapping that
    merges itself (through a recursive alias) counts its own pairs only once.
    """
    active: set[int] = set()
    stack = [node]
    while stack:
        top = stack[-1]
        if id(top) in merged:
            stack.pop()
            continue
        sources = _merge_sources(top)
        waiting = [s for s in sources if id(s) not in merged and id(s) not in active]
        if waiting and id(top) not in active:
            active.add(id(top))
            stack.extend(waiting)
            continue
        own = sum(1 for key_node, _value in top.value if not _is_merge(key_node))
        merged[id(top)] = own + sum(merged.get(id(source), 0) for source in sources)
        active.discard(id(top))
        stack.pop()
    return merged[id(node)]


def _merge_sources(node: yaml.MappingNode) -> list[yaml.MappingNode]:
    """The mappings that the merge keys of ``node`` bring in (``<<: *a`` or ``<<: [*a, *b]``)."""
    sources: list[yaml.MappingNode] = []
    for key_node, value_node in node.value:
        if not _is_merge(key_node):
            continue
        if isinstance(value_node, yaml.MappingNode):
            sources.append(value_node)
        elif isinstance(value_node, yaml.SequenceNode):
            # Anything but mappings is refused by the constructor afterwards.
            sources.extend(v for v in value_node.value if isinstance(v, yaml.MappingNode))
    return sources


def _yaml_message(exc: yaml.YAMLError) -> str:
    """One line for a YAML error (PyYAML's own text spans several lines)."""
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        return f"not valid YAML (line {mark.line + 1}, column {mark.column + 1}): {exc.problem}"
    return "not valid YAML: " + " ".join(str(exc).split())


# --------------------------------------------------------------------------- messages


_KIND_NAMES: dict[type, str] = {dict: "mapping", list: "list", tuple: "list", type(None): "null"}


def _kind(value: Any) -> str:
    """The YAML-ish name of a value's type: ``str``, ``int``, ``mapping``, ``list``..."""
    if isinstance(value, Mapping):
        return "mapping"
    return _KIND_NAMES.get(type(value), type(value).__name__)


def _show(value: Any) -> str:
    """A short repr of a scalar (collections are named by kind only)."""
    if value is None or isinstance(value, (Mapping, list, tuple)):
        return _kind(value)
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _describe(value: Any) -> str:
    """``str ('abc')``, ``int (3)``, ``mapping``, ``null``: what was found instead."""
    if value is None or isinstance(value, (Mapping, list, tuple)):
        return _kind(value)
    return f"{_kind(value)} ({_show(value)})"


def _did_you_mean(word: str, choices: Sequence[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest choice, or nothing when none is close."""
    lowered = {choice.lower(): choice for choice in choices}
    close = difflib.get_close_matches(word.lower(), list(lowered), n=1, cutoff=0.6)
    return f" (did you mean {lowered[close[0]]!r}?)" if close else ""


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


# --------------------------------------------------------------------------- the walk


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    """Resolved type hints of a dataclass (model.py uses postponed annotations)."""
    return get_type_hints(cls)


@functools.cache
def _fields(cls: type) -> dict[str, dataclasses.Field[Any]]:
    return {f.name: f for f in dataclasses.fields(cls)}


def _settable_keys(cls: type) -> list[str]:
    return [name for name in _fields(cls) if (cls, name) not in _LOADER_FIELDS]


def _build(cls: type, data: Any, path: str, walk: _Walk, defaults: Any = None) -> Any:
    """Build dataclass ``cls`` from a mapping, recording every problem on the way.

    ``defaults``, an instance of ``cls``, gives the keys the mapping leaves out: a section's
    defaults can differ by place (``production.executor`` is not a candidate's), and a
    mapping that sets one key keeps that place's defaults for the others.

    Keys are checked in the order the file gives them, so problems read top to bottom.
    When some field failed, a partial object is still returned (failed fields hold
    ``_INVALID``) so that sibling rules can run; it never leaves this module because the
    run ends in a ConfigError.
    """
    if not isinstance(data, Mapping):
        return walk.fail(path, f"expected a mapping, got {_describe(data)}")
    fields = _fields(cls)
    settable = _settable_keys(cls)
    values: dict[str, Any] = {}
    for key, raw in data.items():
        if not isinstance(key, str):
            walk.fail(path or _TOP_LEVEL, f"keys must be strings, got {_describe(key)}")
        elif key not in settable:
            walk.fail(_join(path, key), "unknown key" + _did_you_mean(key, settable))
        else:
            walk.given.add(_join(path, key))
            values[key] = _field_value(fields[key], _hints(cls)[key], raw, _join(path, key), walk)
    for name, spec in fields.items():
        if name not in values:
            if defaults is not None:
                values[name] = getattr(defaults, name)
            else:
                values[name] = _default(spec, _join(path, name), walk)
    obj = _instantiate(cls, values, path, walk)
    for rule in _OBJECT_RULES.get(cls, ()):
        rule(obj, path, walk)
    return obj


def _default(spec: dataclasses.Field[Any], path: str, walk: _Walk) -> Any:
    """The value of a field the YAML left out: its default, or a ``required`` problem."""
    if spec.metadata.get("required"):
        return walk.fail(path, "required")
    if spec.default is not dataclasses.MISSING:
        return spec.default
    if spec.default_factory is not dataclasses.MISSING:
        return spec.default_factory()
    return walk.fail(path, "required")


def _instantiate(cls: type, values: dict[str, Any], path: str, walk: _Walk) -> Any:
    """``cls(**values)``, or a partial instance when some value failed."""
    if _ok(*values.values()):
        try:
            return cls(**values)
        except (TypeError, ValueError) as exc:  # a __post_init__ check in the model
            walk.fail(path, str(exc))
    # Bypass __init__: the object only carries what passed to the cross-field rules.
    obj: Any = object.__new__(cls)
    for name, value in values.items():
        object.__setattr__(obj, name, value)
    return obj


def _field_value(spec: dataclasses.Field[Any], hint: Any, raw: Any, path: str, walk: _Walk) -> Any:
    """Convert one YAML value to the field's type, then apply metadata and name rules."""
    value = _convert(hint, raw, path, walk, spec.default)
    if value is None or value is _INVALID:
        return value
    value = _check_metadata(spec.metadata, value, path, walk)
    rule = _FIELD_RULES.get(spec.name)
    if rule is not None and value is not _INVALID:
        value = rule(value, path, walk)
    return value


_BOUNDS: tuple[tuple[str, Callable[[Any, Any], bool], str], ...] = (
    ("gt", operator.gt, ">"),
    ("ge", operator.ge, ">="),
    ("lt", operator.lt, "<"),
    ("le", operator.le, "<="),
)


def _check_metadata(meta: Mapping[str, Any], value: Any, path: str, walk: _Walk) -> Any:
    """Apply the ``gt``/``ge``/``lt``/``le``/``choices`` constraints of a field."""
    if isinstance(value, (int, float)):
        for key, holds, symbol in _BOUNDS:
            if key in meta and not holds(value, meta[key]):
                return walk.fail(path, f"must be {symbol} {meta[key]}")
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        listed = ", ".join(repr(choice) for choice in choices)
        return walk.fail(path, f"must be one of {listed}, got {_show(value)}")
    return value


# --------------------------------------------------------------------------- conversions


def _convert(hint: Any, value: Any, path: str, walk: _Walk, defaults: Any = None) -> Any:
    """Convert ``value`` to type ``hint``, or record a problem and return ``_INVALID``.

    ``defaults``: the field's default; when it is an instance of a dataclass ``hint``, its
    values fill the keys the mapping leaves out (see :func:`_build`).
    """
    origin = get_origin(hint)
    if origin is Union or origin is types.UnionType:
        return _convert_optional(hint, value, path, walk, defaults)
    if origin is Literal:
        return _convert_literal(hint, value, path, walk)
    if origin is tuple:
        return _convert_tuple(hint, value, path, walk)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        if not isinstance(defaults, hint):
            defaults = None
        return _build(hint, value, path, walk, defaults)
    scalar = _SCALARS.get(hint)
    if scalar is None:
        # A model field of a type the loader does not know: a bug, not a config problem.
        raise TypeError(f"config field {path!r} has unsupported type {hint!r}")
    return scalar(value, path, walk)


def _convert_optional(hint: Any, value: Any, path: str, walk: _Walk, defaults: Any = None) -> Any:
    """``X | None``: null means None, anything else must be an X."""
    inner = [arg for arg in get_args(hint) if arg is not type(None)]
    if len(inner) != 1 or len(get_args(hint)) != 2:
        raise TypeError(f"config field {path!r}: only 'X | None' unions are supported")
    return None if value is None else _convert(inner[0], value, path, walk, defaults)


def _convert_literal(hint: Any, value: Any, path: str, walk: _Walk) -> Any:
    choices = get_args(hint)
    for choice in choices:
        # Compare types too: YAML's true must not pass for a Literal[1].
        if type(value) is type(choice) and value == choice:
            return choice
    listed = ", ".join(repr(choice) for choice in choices)
    return walk.fail(path, f"must be one of {listed}, got {_show(value)}")


def _convert_tuple(hint: Any, value: Any, path: str, walk: _Walk) -> Any:
    """``tuple[T, ...]`` from a YAML list; ``tuple[tuple[str, str], ...]`` from a mapping."""
    args = get_args(hint)
    if len(args) != 2 or args[1] is not Ellipsis:
        raise TypeError(f"config field {path!r}: only 'tuple[T, ...]' is supported")
    item = args[0]
    if item == tuple[str, str]:
        return _convert_headers(value, path, walk)
    if not isinstance(value, (list, tuple)):
        return walk.fail(path, f"expected a list, got {_describe(value)}")
    # Failed items stay in place as _INVALID so indexes in later messages stay right.
    return tuple(_convert(item, entry, f"{path}[{i}]", walk) for i, entry in enumerate(value))


def _convert_headers(value: Any, path: str, walk: _Walk) -> Any:
    """A ``{Name: value}`` mapping into ``((name, value), ...)``, checked as HTTP headers.

    Values are secrets (tokens, API keys): messages say what is wrong, never what it was.
    """
    if not isinstance(value, Mapping):
        return walk.fail(path, f"expected a mapping of header names to values, got {_kind(value)}")
    pairs: list[tuple[str, str]] = []
    seen: dict[str, str] = {}
    failed = False
    for name, text in value.items():
        if not isinstance(name, str) or not _TOKEN.fullmatch(name):
            walk.fail(path, f"{_show(name)} is not a valid HTTP header name")
            failed = True
            continue
        where = _join(path, name)
        problem = _header_problem(name, text, seen)
        if problem is not None:
            walk.fail(where, problem)
            failed = True
        seen[name.lower()] = name
        pairs.append((name, text))
    return _INVALID if failed else tuple(pairs)


def _header_problem(name: str, text: Any, seen: Mapping[str, str]) -> str | None:
    """What is wrong with one configured header, if anything."""
    if name.lower() in _MANAGED_HEADERS:
        return "is managed by the proxy and cannot be set"
    if name.lower() in seen:
        return f"duplicate header (also {seen[name.lower()]!r})"
    if not isinstance(text, str):
        return f"expected a string value, got {_kind(text)}"
    if _BAD_HEADER_VALUE.search(text):
        return "value must be Latin-1 text without control characters (CR, LF, NUL, ...)"
    return None


def _to_bool(value: Any, path: str, walk: _Walk) -> Any:
    if isinstance(value, bool):
        return value
    return walk.fail(path, f"expected true or false, got {_describe(value)}")


def _to_int(value: Any, path: str, walk: _Walk) -> Any:
    # bool is an int subclass in Python; `port: yes` is still a mistake.
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return walk.fail(path, f"expected an integer, got {_describe(value)}")


def _to_float(value: Any, path: str, walk: _Walk) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return walk.fail(path, f"expected a number, got {_describe(value)}")
    try:
        number = float(value)
    except OverflowError:  # an int too large for a float
        number = math.inf
    # .inf/.nan are valid YAML floats, but no timeout, rate or threshold wants them.
    if not math.isfinite(number):
        return walk.fail(path, "must be a finite number")
    return number


def _to_str(value: Any, path: str, walk: _Walk) -> Any:
    if isinstance(value, str):
        return value
    # `version: 1.10` is the float 1.1 in YAML: say how to keep the text.
    hint = "" if value is None or isinstance(value, (Mapping, list)) else "; put it in quotes"
    return walk.fail(path, f"expected a string, got {_describe(value)}{hint}")


def _to_path(value: Any, path: str, walk: _Walk) -> Any:
    """A file path; relative paths are taken from the config file's folder."""
    if not isinstance(value, str):
        return walk.fail(path, f"expected a file path, got {_describe(value)}")
    if not value or "\x00" in value:
        return walk.fail(path, "must be a non-empty file path")
    result = Path(value)
    if walk.base_dir is not None and not result.is_absolute():
        result = walk.base_dir / result
    return result


_SCALARS: dict[Any, Callable[[Any, str, _Walk], Any]] = {
    bool: _to_bool,
    int: _to_int,
    float: _to_float,
    str: _to_str,
    Path: _to_path,
}


# --------------------------------------------------------------------------- field rules
# Checks and normalisations applied to every field of a given name, after its type.


def _check_label(value: str, path: str, walk: _Walk) -> Any:
    """Model names are metrics label values and report keys."""
    if not _LABEL.fullmatch(value):
        return walk.fail(
            path,
            f"must match ^{_LABEL.pattern}$ (it is used as a metrics label), got {_show(value)}",
        )
    return value


def _check_host(value: str, path: str, walk: _Walk) -> Any:
    if "://" in value:
        return walk.fail(path, "must be a host name or IP address, not a URL")
    if not value or any(c.isspace() for c in value):
        return walk.fail(path, f"must be a host name or IP address, got {_show(value)}")
    return value


def _check_url(value: str, path: str, walk: _Walk) -> Any:
    problem = _url_problem(value)
    return value if problem is None else walk.fail(path, problem)


def _url_problem(url: str) -> str | None:
    """What keeps ``url`` from being a usable upstream base URL, if anything.

    The URL itself is never quoted back: its userinfo may hold a password.
    """
    split = split_url(url)
    if isinstance(split, str):
        return split
    parts, port = split
    scheme = parts.scheme.lower()
    if scheme == "https":
        return (
            "https is not supported by the fast path; use http:// "
            "(terminate TLS in a sidecar or the service mesh)"
        )
    if scheme != "http" or not parts.netloc:
        return "must be an absolute http:// URL (like http://host:8080)"
    if not parts.hostname:
        return "must name a host (like http://host:8080)"
    return base_problem(url, port)


def _check_request_path(value: str, path: str, walk: _Walk) -> Any:
    """A path sent on the wire as the request target of a probe."""
    if not value.startswith("/"):
        return walk.fail(path, f"must start with '/', got {_show(value)}")
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in value) or "#" in value:
        return walk.fail(path, "must not contain spaces, control characters or '#'")
    return value


def _check_sha256(value: str, path: str, walk: _Walk) -> Any:
    if not _SHA256.fullmatch(value):
        return walk.fail(path, "must be 64 hex characters (the file's SHA-256 digest)")
    return value.lower()


def _check_tokens(
    value: tuple[Any, ...], path: str, walk: _Walk, what: str, normal: Callable[[str], str]
) -> tuple[Any, ...]:
    """Each item an HTTP token (a method, a header name), written in its ``normal`` case."""
    tokens: list[Any] = []
    for i, token in enumerate(value):
        if token is not _INVALID and not _TOKEN.fullmatch(token):
            token = walk.fail(f"{path}[{i}]", f"{_show(token)} is not a valid HTTP {what}")
        tokens.append(token if token is _INVALID else normal(token))
    return tuple(tokens)


def _check_methods(value: tuple[Any, ...], path: str, walk: _Walk) -> Any:
    """HTTP methods are case-sensitive on the wire; configs may write them in any case."""
    return _check_tokens(value, path, walk, "method", str.upper)


def _check_header_names(value: tuple[Any, ...], path: str, walk: _Walk) -> Any:
    """Header names, compared in lower case as HTTP does."""
    return _check_tokens(value, path, walk, "header name", str.lower)


def _check_cpus(value: tuple[Any, ...], path: str, walk: _Walk) -> Any:
    """CPU numbers: non-negative, each once (whether this machine has them is checked when
    the workers start, on the machine that runs them)."""
    seen: set[int] = set()
    cpus: list[Any] = []
    for i, cpu in enumerate(value):
        if cpu is not _INVALID and cpu < 0:
            cpu = walk.fail(f"{path}[{i}]", f"must be >= 0, got {cpu}")
        elif cpu is not _INVALID and cpu > _MAX_CPU:
            cpu = walk.fail(f"{path}[{i}]", f"must be <= {_MAX_CPU}, got {cpu}")
        elif cpu is not _INVALID and cpu in seen:
            cpu = walk.fail(f"{path}[{i}]", f"CPU {cpu} is listed twice")
        elif cpu is not _INVALID:
            seen.add(cpu)
        cpus.append(cpu)
    return tuple(cpus)


def _check_features(value: tuple[Any, ...], path: str, walk: _Walk) -> Any:
    """Input column names: each names one column, so none is empty or given twice."""
    first: dict[str, int] = {}
    features: list[Any] = []
    for i, name in enumerate(value):
        if name is not _INVALID and not name:
            name = walk.fail(f"{path}[{i}]", "must be a non-empty column name")
        elif name is not _INVALID and name in first:
            name = walk.fail(
                f"{path}[{i}]", f"{_show(name)} is listed twice (also {path}[{first[name]}])"
            )
        elif name is not _INVALID:
            first[name] = i
        features.append(name)
    return tuple(features)


_FIELD_RULES: dict[str, Callable[[Any, str, _Walk], Any]] = {
    "name": _check_label,
    "host": _check_host,
    "url": _check_url,
    "metrics_url": _check_url,
    "sha256": _check_sha256,
    "methods": _check_methods,
    "drop_headers": _check_header_names,
    "cpus": _check_cpus,
    "features": _check_features,
    "health_path": _check_request_path,
}


# --------------------------------------------------------------------------- object rules
# Rules across the fields of one dataclass. They run on partial objects too, so each one
# first checks with _ok() that the fields it reads did not already fail.


def _one_source(obj: Production | Candidate, path: str, walk: _Walk) -> None:
    """A model is either a remote service or a local file, never both or neither."""
    if _ok(obj.url, obj.model) and (obj.url is None) == (obj.model is None):
        walk.fail(path, "set exactly one of 'url' or 'model'")


def _executor_needs_model(obj: Production | Candidate, path: str, walk: _Walk) -> None:
    """A remote model runs elsewhere: an executor written beside its url would be ignored.

    Only a key the file gives counts; the default executor every model carries does not.
    """
    where = _join(path, "executor")
    if _ok(obj.url, obj.model) and obj.url is not None and obj.model is None:
        if where in walk.given:
            walk.fail(where, "only for a local model (model:), not with url:")


def _pinned(obj: ModelFile, path: str, walk: _Walk) -> None:
    """An unpinned model file could be swapped under us; opting out must be explicit."""
    if _ok(obj.sha256, obj.allow_unpinned) and obj.sha256 is None and not obj.allow_unpinned:
        walk.fail(_join(path, "sha256"), "required (or set allow_unpinned: true)")


def _gate(obj: Gate, path: str, walk: _Walk) -> None:
    if _ok(obj.min, obj.max) and (obj.min is None) == (obj.max is None):
        walk.fail(path, "set exactly one of 'min' or 'max'")
    if _ok(obj.metric) and obj.metric not in GATE_METRICS:
        hint = _did_you_mean(obj.metric, GATE_METRICS)
        walk.fail(_join(path, "metric"), f"unknown gate metric {obj.metric!r}{hint}")


def _not_a_directory(example: str) -> Callable[[Any, str, _Walk], None]:
    """A ``path`` the proxy writes a file at (pair log, snapshot) must not be a folder.

    Every write would fail, and the state or the records be lost; a Kubernetes subPath
    mount of a file that does not exist yet makes exactly that folder. A path that does
    not exist yet is fine: the file and its folders are created.
    """

    def check(obj: PairLog | Snapshot, path: str, walk: _Walk) -> None:
        if _ok(obj.path) and obj.path is not None and os.path.isdir(obj.path):
            walk.fail(
                _join(path, "path"),
                f"is a directory, not a file (name a file in it, like {example})",
            )

    return check


def _limits(obj: Limits, path: str, walk: _Walk) -> None:
    mirror, body = obj.mirror_max_body_bytes, obj.max_body_bytes
    if _ok(mirror, body) and mirror > body:
        walk.fail(
            _join(path, "mirror_max_body_bytes"),
            f"must be <= {_join(path, 'max_body_bytes')} ({body})",
        )


def _unique_names(cfg: Config, path: str, walk: _Walk) -> None:
    """Candidate and baseline names key metrics and reports, so they must differ."""
    first: dict[str, str] = {}
    for where, target in _shadow_targets(cfg):
        if not _ok(target.name):
            continue
        if target.name in first:
            walk.fail(
                _join(where, "name"),
                f"duplicate {_role(where)} name {target.name!r} (also {first[target.name]})",
            )
        else:
            first[target.name] = where


def _json_features(cfg: Config, path: str, walk: _Walk) -> None:
    """The json protocol builds a local model's feature row from named fields."""
    if not _ok(cfg.protocol, cfg.compare, cfg.production, cfg.candidates):
        return
    local = [cfg.production, *(c for c in cfg.candidates if _ok(c))]
    if (
        cfg.protocol == "json"
        and any(getattr(m, "model", None) is not None for m in local)
        and _ok(cfg.compare.features)
        and not cfg.compare.features
    ):
        walk.fail(
            "compare.features",
            "required with protocol: json and a local model (the fields that make a row)",
        )


def _role(where: str) -> str:
    return "baseline" if where == "baseline" else "candidate"


def _distinct_services(cfg: Config, path: str, walk: _Walk) -> None:
    """Shadowing production against itself would prove nothing and double its load."""
    production = cfg.production
    if not _ok(production) or not isinstance(production.url, str):
        return
    key = _url_key(production.url)
    for where, target in _shadow_targets(cfg):
        if isinstance(target.url, str) and _url_key(target.url) == key:
            what = (
                "the baseline must be another instance"
                if where == "baseline"
                else "a candidate must be a different service"
            )
            walk.fail(_join(where, "url"), f"equals production.url; {what}")


def _no_loop(cfg: Config, path: str, walk: _Walk) -> None:
    """An upstream on shadowproxy's own traffic port would send each request round forever."""
    listen = cfg.listen
    if not _ok(listen) or not _ok(listen.host, listen.port) or listen.port == 0:
        return
    for where, url in _upstream_urls(cfg):
        parts = urlsplit(url)
        host, port = (parts.hostname or ""), (parts.port or 80)
        if port == listen.port and _same_machine(host, listen.host):
            walk.fail(
                where,
                f"points at shadowproxy's own listener ({listen.host}:{listen.port}); "
                "requests would loop",
            )


def _listeners_apart(cfg: Config, path: str, walk: _Walk) -> None:
    """Both listeners must be bindable at once (port 0 picks a free port, so never clashes)."""
    listen, admin = cfg.listen, cfg.admin
    if not _ok(listen, admin) or not _ok(listen.host, listen.port, admin.host, admin.port):
        return
    if listen.port == 0 or listen.port != admin.port:
        return
    a, b = listen.host.lower(), admin.host.lower()
    if a == b or a in _WILDCARD_HOSTS or b in _WILDCARD_HOSTS:
        walk.fail(
            "admin.port",
            f"clashes with listen ({listen.host}:{listen.port}); use another port",
        )


def _same_machine(url_host: str, bind_host: str) -> bool:
    url_host, bind_host = url_host.lower(), bind_host.lower()
    if url_host == bind_host:
        return True
    local_bind = bind_host in _WILDCARD_HOSTS or bind_host in _LOOPBACK_HOSTS
    return local_bind and url_host in _LOOPBACK_HOSTS


def _url_key(url: str) -> str:
    """A URL normalised for "same service" checks: case, default port, trailing slash.

    The userinfo is left out: other credentials do not make another service.
    """
    parts: SplitResult = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    return f"{parts.scheme.lower()}://{host}:{parts.port or 80}{parts.path.rstrip('/')}"


def _shadow_targets(cfg: Config) -> Iterator[tuple[str, Candidate | Baseline]]:
    """(path, target) of every candidate and the baseline that built at least partly."""
    if _ok(cfg.candidates):
        for i, candidate in enumerate(cfg.candidates):
            if _ok(candidate):
                yield f"candidates[{i}]", candidate
    if cfg.baseline is not None and _ok(cfg.baseline):
        yield "baseline", cfg.baseline


def _upstream_urls(cfg: Config) -> Iterator[tuple[str, str]]:
    """(path, url) of every valid upstream URL: production, candidates, baseline."""
    if _ok(cfg.production) and isinstance(cfg.production.url, str):
        yield "production.url", cfg.production.url
    for where, target in _shadow_targets(cfg):
        if isinstance(target.url, str):
            yield _join(where, "url"), target.url


_OBJECT_RULES: dict[type, tuple[Callable[[Any, str, _Walk], None], ...]] = {
    Production: (_one_source, _executor_needs_model),
    Candidate: (_one_source, _executor_needs_model),
    ModelFile: (_pinned,),
    Gate: (_gate,),
    Limits: (_limits,),
    PairLog: (_not_a_directory("pairs.jsonl"),),
    Snapshot: (_not_a_directory("snapshot.json"),),
    Config: (_unique_names, _distinct_services, _no_loop, _listeners_apart, _json_features),
}


# --------------------------------------------------------------------------- redaction


def _plain_dataclass(obj: Any) -> dict[str, Any]:
    cls: type = type(obj)
    hints = _hints(cls)
    return {
        spec.name: _plain(getattr(obj, spec.name), hints[spec.name])
        for spec in dataclasses.fields(obj)
    }


def _plain(value: Any, hint: Any) -> Any:
    """A JSON-ready copy of one config value, secrets replaced."""
    hint = _strip_optional(hint)
    if value is None:
        return None
    if dataclasses.is_dataclass(value):
        return _plain_dataclass(value)
    if get_origin(hint) is tuple:
        item = get_args(hint)[0]
        if item == tuple[str, str]:
            return {name: REDACTED for name, _secret in value}
        return [_plain(entry, item) for entry in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, str):
        return redact_url(value)
    return value


def _strip_optional(hint: Any) -> Any:
    if get_origin(hint) in (Union, types.UnionType):
        inner = [arg for arg in get_args(hint) if arg is not type(None)]
        if len(inner) == 1:
            return inner[0]
    return hint


def redact_url(text: str) -> str:
    """``http://user:pw@host`` -> ``http://user:[redacted]@host``; other text unchanged.

    A username alone (``http://token@host``) is usually the credential, so it goes whole.
    """
    if "://" not in text or "@" not in text:
        return text
    try:
        parts = urlsplit(text)
    except ValueError:
        return REDACTED
    userinfo, at, hostport = parts.netloc.rpartition("@")
    if not at:
        return text
    user, colon, _password = userinfo.partition(":")
    safe = f"{user}:{REDACTED}" if colon else REDACTED
    return urlunsplit(parts._replace(netloc=f"{safe}@{hostport}"))

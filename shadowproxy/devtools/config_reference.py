"""The config reference, generated from the config dataclasses so that it cannot drift.

``python -m shadowproxy.devtools.config_reference`` prints Markdown for every key of
:class:`shadowproxy.config.model.Config`: one section per nested dataclass, named by its
dotted path (``candidates[].executor``), and one table row per key with its type, default
(or "required"), constraints (from the ``gt``/``ge``/``lt``/``le``/``choices`` field metadata
and from ``Literal`` types) and the ``doc`` text of the field. The gate metric names of
:mod:`shadowproxy.config.gates` follow.

``--write`` replaces the generated block of ``docs/config.md`` (between the
``<!-- generated:begin -->`` and ``<!-- generated:end -->`` markers, the hand-written intro
above them is kept); ``--check`` exits 1 when that block is out of date.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import sys
import types
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from shadowproxy.config.gates import GATE_METRIC_DOCS
from shadowproxy.config.model import Config

__all__ = [
    "BEGIN",
    "END",
    "DEFAULT_DOC",
    "Entry",
    "Section",
    "entries",
    "render",
    "replace_block",
    "sections",
    "main",
]

BEGIN = "<!-- generated:begin -->"
END = "<!-- generated:end -->"
DEFAULT_DOC = Path(__file__).resolve().parents[2] / "docs" / "config.md"

# Fields the loader fills in itself: not settable from YAML, so not documented as keys.
_LOADER_SET = frozenset({(Config, "source")})

_SCALAR_NAMES: dict[Any, str] = {
    str: "string",
    int: "integer",
    float: "number",
    bool: "boolean",
    Path: "path",
}
_MiB = 1024 * 1024


@dataclass(frozen=True)
class Entry:
    """One documented key."""

    path: str  # dotted path, lists written as ``[]``: ``candidates[].executor.max_batch``
    type: str
    default: str
    constraints: str
    doc: str
    section: bool  # the value is a mapping documented in a section of its own


@dataclass(frozen=True)
class Section:
    """One dataclass of the config, at one place in the tree."""

    path: str  # "" for the top level
    doc: str
    entries: tuple[Entry, ...]


# --------------------------------------------------------------------------- types


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


def _is_dataclass_type(hint: Any) -> bool:
    return isinstance(hint, type) and dataclasses.is_dataclass(hint)


def _split_optional(hint: Any) -> tuple[Any, bool]:
    """``X | None`` -> ``(X, True)``; anything else -> ``(hint, False)``."""
    if get_origin(hint) in (Union, types.UnionType):
        args = get_args(hint)
        inner = [arg for arg in args if arg is not type(None)]
        if len(inner) == 1 and len(args) == 2:
            return inner[0], True
    return hint, False


def _is_mapping_of_strings(hint: Any) -> bool:
    """``tuple[tuple[str, str], ...]``: written in YAML as a mapping (headers)."""
    args = get_args(hint)
    return get_origin(hint) is tuple and len(args) == 2 and args[0] == tuple[str, str]


def _list_item(hint: Any) -> Any | None:
    """The item type of ``tuple[T, ...]`` (a YAML list), else None."""
    args = get_args(hint)
    if get_origin(hint) is tuple and len(args) == 2 and args[1] is Ellipsis:
        return args[0]
    return None


def _type_name(hint: Any) -> str:
    inner, optional = _split_optional(hint)
    if _is_mapping_of_strings(inner):
        name = "mapping of string to string"
    elif _is_dataclass_type(inner):
        name = "mapping"
    elif get_origin(inner) is Literal:
        name = " or ".join(
            sorted({_SCALAR_NAMES.get(type(arg), "value") for arg in get_args(inner)})
        )
    elif (item := _list_item(inner)) is not None:
        name = "list of " + ("mappings" if _is_dataclass_type(item) else _type_name(item))
    else:
        name = _SCALAR_NAMES.get(inner, getattr(inner, "__name__", str(inner)))
    return f"{name} or null" if optional else name


# --------------------------------------------------------------------------- values


def _number(value: Any) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        value = int(value)  # 86400000, not 8.64e+07
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return _number(value)
    if isinstance(value, str):
        return '""' if value == "" else value
    return str(value)


def _default(name: str, value: Any, hint: Any) -> str:
    inner, _optional = _split_optional(hint)
    if value is None:
        return "`null`"
    if dataclasses.is_dataclass(value):
        return "see below"
    if _is_mapping_of_strings(inner):
        shown = ", ".join(f"{key}: {val}" for key, val in value)
        return f"`{{{shown}}}`"
    if isinstance(value, tuple):
        return "`[" + ", ".join(_scalar(item) for item in value) + "]`"
    text = f"`{_scalar(value)}`"
    if (
        isinstance(value, int)
        and not isinstance(value, bool)
        and name.endswith("bytes")
        and value >= _MiB
        and value % _MiB == 0
    ):
        text += f" ({value // _MiB} MiB)"
    return text


def _constraints(meta: Any, hint: Any) -> str:
    parts = []
    lower = (">", meta["gt"]) if "gt" in meta else ("≥", meta["ge"]) if "ge" in meta else None
    upper = ("<", meta["lt"]) if "lt" in meta else ("≤", meta["le"]) if "le" in meta else None
    if lower is not None and upper is not None:
        # "0 ≤ x ≤ 1" reads left to right, so the lower bound's sign flips: x > 0 is 0 < x.
        flipped = {">": "<", "≥": "≤"}[lower[0]]
        parts.append(f"{_number(lower[1])} {flipped} x {upper[0]} {_number(upper[1])}")
    elif lower is not None:
        parts.append(f"{lower[0]} {_number(lower[1])}")
    elif upper is not None:
        parts.append(f"{upper[0]} {_number(upper[1])}")
    inner, _optional = _split_optional(hint)
    choices: Sequence[Any] | None = meta.get("choices")
    if choices is None and get_origin(inner) is Literal:
        choices = get_args(inner)
    if choices:
        parts.append("one of " + ", ".join(f"`{_scalar(choice)}`" for choice in choices))
    return "; ".join(parts)


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return " ".join(text.split()).replace("|", "\\|")


def _class_doc(cls: type) -> str:
    """A dataclass's own docstring; not the signature dataclasses makes up for it."""
    doc = cls.__dict__.get("__doc__") or ""
    if doc.startswith(f"{cls.__name__}("):
        return ""
    return " ".join(doc.split())


# --------------------------------------------------------------------------- the walk


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def sections(cls: type = Config) -> list[Section]:
    """Every section of the config, depth first, in field order."""
    found: list[Section] = []
    _walk(cls, "", None, found)
    return found


def _walk(cls: type, path: str, instance: Any, found: list[Section]) -> None:
    rows: list[Entry] = []
    nested: list[tuple[type, str, Any]] = []
    for spec in dataclasses.fields(cls):
        if (cls, spec.name) in _LOADER_SET:
            continue
        hint = _hints(cls)[spec.name]
        key = _join(path, spec.name)
        meta = spec.metadata
        if meta.get("required"):
            default, value = "required", None
        else:
            # A nested default instance (production.executor is Executor(kind="thread"))
            # carries its own defaults down to the keys of its section.
            value = getattr(instance, spec.name) if instance is not None else spec.default
            default = _default(spec.name, value, hint)
        inner, _optional = _split_optional(hint)
        item = _list_item(inner)
        section = False
        if _is_dataclass_type(inner):
            section = True
            nested.append((inner, key, value if dataclasses.is_dataclass(value) else None))
        elif item is not None and _is_dataclass_type(item):
            section = True
            nested.append((item, key + "[]", None))
        rows.append(
            Entry(
                path=key,
                type=_type_name(hint),
                default=default,
                constraints=_constraints(meta, hint),
                doc=str(meta.get("doc", "")),
                section=section,
            )
        )
    found.append(Section(path, _class_doc(cls), tuple(rows)))
    for child, child_path, child_instance in nested:
        _walk(child, child_path, child_instance, found)


def entries(cls: type = Config) -> Iterator[Entry]:
    """Every documented key, depth first."""
    for section in sections(cls):
        yield from section.entries


# --------------------------------------------------------------------------- Markdown


def render(cls: type = Config) -> str:
    """The generated Markdown (without the begin/end markers), ending in one newline."""
    out: list[str] = []
    for section in sections(cls):
        title = "Top level" if not section.path else f"`{section.path}`"
        out += [f"### {title}", ""]
        if section.doc:
            out += [section.doc, ""]
        out += [
            "| key | type | default | constraints | description |",
            "| --- | --- | --- | --- | --- |",
        ]
        for entry in section.entries:
            doc = entry.doc
            if entry.section:
                below = entry.path + ("[]" if entry.type.startswith("list of") else "")
                doc = f"{doc} (section `{below}`)" if doc else f"section `{below}`"
            out.append(
                f"| `{entry.path}` | {_cell(entry.type)} | {_cell(entry.default)} | "
                f"{_cell(entry.constraints) or '–'} | {_cell(doc)} |"
            )
        out.append("")
    out += [
        "### Gate metrics",
        "",
        "The names `promotion.gates[].metric` accepts. Deltas and ratios are candidate minus /",
        "over production, measured on the same requests.",
        "",
        "| metric | meaning |",
        "| --- | --- |",
    ]
    out += [f"| `{name}` | {_cell(doc)} |" for name, doc in GATE_METRIC_DOCS.items()]
    return "\n".join(out) + "\n"


def replace_block(document: str, block: str) -> str:
    """``document`` with the text between the markers replaced by ``block``.

    A document without the markers gets them, with the block, appended.
    """
    begin, end = document.find(BEGIN), document.find(END)
    if begin < 0 or end < begin:
        return document.rstrip("\n") + f"\n\n{BEGIN}\n\n{block}\n{END}\n"
    return document[: begin + len(BEGIN)] + f"\n\n{block}\n" + document[end:]


def generated_block(document: str) -> str | None:
    """The text between the markers of ``document``, as :func:`render` writes it."""
    begin, end = document.find(BEGIN), document.find(END)
    if begin < 0 or end < begin:
        return None
    return document[begin + len(BEGIN) : end].removeprefix("\n\n").removesuffix("\n")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m shadowproxy.devtools.config_reference",
        description="Print the config reference as Markdown, generated from the config types.",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="rewrite the generated block of FILE")
    mode.add_argument("--check", action="store_true", help="exit 1 if FILE is out of date")
    parser.add_argument("--file", type=Path, default=DEFAULT_DOC, help="default: docs/config.md")
    args = parser.parse_args(argv)
    block = render()
    if not (args.write or args.check):
        sys.stdout.write(block)
        return 0
    try:
        document = args.file.read_text(encoding="utf-8")
    except FileNotFoundError:
        document = ""
    if args.check:
        if generated_block(document) != block:
            print(f"{args.file}: config reference out of date; run with --write", file=sys.stderr)
            return 1
        return 0
    updated = replace_block(document, block)
    if updated != document:
        args.file.write_text(updated, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())

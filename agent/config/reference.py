"""The configuration reference table, generated from the Structs of :mod:`agent.config.schema` (CFG-1).

``docs/configuration.md`` holds the table between :data:`BEGIN` and :data:`END`; a test fails when it
differs from :func:`reference_table`. Regenerate with::

    .venv/bin/python -m agent.config.reference --write docs/configuration.md
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from enum import Enum
from pathlib import Path
from typing import Final

import msgspec
from msgspec import inspect as mi

from agent.config.schema import TARIFF_FORMS, AgentConfig

BEGIN: Final = "<!-- BEGIN GENERATED: python -m agent.config.reference --write docs/configuration.md -->"
END: Final = "<!-- END GENERATED -->"
_HEX_FIELDS: Final = frozenset(
    {"read_card_header", "status_response_header", "rfid_uid_tag", "accepted_preambles"}
)
_TARIFF_NOTE: Final = "see docs/tariff.md"


def _unwrap(t: mi.Type) -> tuple[mi.Type, list[str]]:
    """Strip Metadata layers; return the inner type and the descriptions, outermost first."""
    descriptions: list[str] = []
    while isinstance(t, mi.Metadata):
        extra = t.extra_json_schema or {}
        if "description" in extra:
            descriptions.append(str(extra["description"]))
        t = t.type
    return t, descriptions


def _range(low: object, high: object) -> str:
    if low is None and high is None:
        return ""
    if high is None:
        return f" ≥ {low}"
    if low is None:
        return f" ≤ {high}"
    return f" {low}..{high}"


def _type_text(t: mi.Type, hex_ints: bool = False) -> str:
    t, descriptions = _unwrap(t)
    if isinstance(t, mi.StrType) and "absolute path" in descriptions:
        return "absolute path"
    if isinstance(t, mi.IntType):
        low = t.ge if t.ge is not None else (t.gt + 1 if t.gt is not None else None)
        if hex_ints and t.le is not None:
            return f"int 0x{low or 0:X}..0x{t.le:X}"
        return "int" + _range(low, t.le)
    if isinstance(t, mi.StrType):
        return "string" + (f" ≤ {t.max_length} chars" if t.max_length is not None else "")
    if isinstance(t, mi.BoolType):
        return "bool"
    if isinstance(t, mi.NoneType):
        return "null"
    if isinstance(t, mi.LiteralType):
        return " \\| ".join(f"0x{v:02X}" if hex_ints and isinstance(v, int) else str(v) for v in t.values)
    if isinstance(t, mi.EnumType):
        return " \\| ".join(str(member.value) for member in t.cls)
    if isinstance(t, (mi.VarTupleType, mi.ListType)):
        return f"list of {_type_text(t.item_type, hex_ints)}"
    if isinstance(t, mi.UnionType):
        return " or ".join(_type_text(member, hex_ints) for member in t.types)
    if isinstance(t, (mi.StructType, mi.DictType)):
        return "mapping"
    return type(t).__name__.removesuffix("Type").lower()


def _default_text(field: mi.Field, hex_ints: bool) -> str:
    if field.required:
        return "**required**"
    if field.default_factory is not msgspec.NODEFAULT:
        return "(mapping)"
    value = field.default
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, Enum):
        return str(value.value)
    if isinstance(value, int) and hex_ints:
        return f"0x{value:02X}"
    if isinstance(value, tuple):
        return "[" + ", ".join(_default_value(v, hex_ints) for v in value) + "]"
    if isinstance(value, str):
        return f'"{value}"'
    return str(value)


def _default_value(value: object, hex_ints: bool) -> str:
    if isinstance(value, Enum):
        return str(value.value)
    if isinstance(value, int) and hex_ints:
        return f"0x{value:02X}"
    return str(value)


def _structs(t: mi.Type) -> Iterator[tuple[str, mi.StructType]]:
    """The Struct types reachable from ``t`` with the path suffix leading into them."""
    t, _ = _unwrap(t)
    if isinstance(t, mi.StructType):
        yield "", t
    elif isinstance(t, (mi.VarTupleType, mi.ListType)):
        for suffix, struct in _structs(t.item_type):
            yield "[]" + suffix, struct
    elif isinstance(t, mi.UnionType):
        for member in t.types:
            yield from _structs(member)


def _rows(struct: mi.StructType, prefix: str, tariff: bool, seen: set[str] | None = None) -> Iterator[str]:
    for field in struct.fields:
        path = f"{prefix}{field.name}"
        if seen is not None:  # the tariff's forms share keys (timezone, minor_unit_digits): once
            if path in seen:
                continue
            seen.add(path)
        hex_ints = field.name in _HEX_FIELDS
        inner, descriptions = _unwrap(field.type)
        under_tariff = tariff or path == "tariff"
        description = descriptions[0] if descriptions else (_TARIFF_NOTE if under_tariff else "")
        description = description.replace("|", "\\|")
        type_text, default = _type_text(inner, hex_ints), _default_text(field, hex_ints)
        if path == "tariff":  # a mapping in one of the forms (no msgspec union of Structs)
            type_text = "mapping: simple or OCPI form"
        yield f"| `{path}` | {type_text} | {default} | {description} |"
        if path == "tariff":
            forms: set[str] = set()
            for form in TARIFF_FORMS:
                yield from _rows(_struct(form), "tariff.", True, forms)
            continue
        for suffix, child in _structs(field.type):
            yield from _rows(child, f"{path}{suffix}.", under_tariff)


def _struct(cls: type[msgspec.Struct]) -> mi.StructType:
    info = mi.type_info(cls)
    assert isinstance(info, mi.StructType)
    return info


def reference_table() -> str:
    """The Markdown table of every key of the config file, in file order."""
    info = mi.type_info(AgentConfig)
    assert isinstance(info, mi.StructType)
    lines = ["| key | type | default | meaning |", "|---|---|---|---|", *_rows(info, "", False)]
    return "\n".join(lines) + "\n"


def render(document: str) -> str:
    """``document`` with the generated block replaced by the current table."""
    head, begin, rest = document.partition(BEGIN)
    _, end, tail = rest.partition(END)
    if not begin or not end:
        raise ValueError(f"the document has no {BEGIN!r} … {END!r} block")
    return f"{head}{BEGIN}\n{reference_table()}{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agent.config.reference", description=__doc__)
    parser.add_argument("--write", type=Path, metavar="FILE", help="update the generated block of FILE")
    args = parser.parse_args(argv)
    if args.write is None:
        sys.stdout.write(reference_table())
        return 0
    path: Path = args.write
    path.write_text(render(path.read_text(encoding="utf-8")), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())

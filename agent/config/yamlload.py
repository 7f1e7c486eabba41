"""A strict, safe YAML loader that remembers where every key came from (DESIGN.md §5.1, CFG-1).

:func:`read_yaml_file` / :func:`load_yaml` return the plain data (dicts, lists, scalars, as
``yaml.safe_load`` would) together with the 1-based line of every mapping key and sequence item,
keyed by its path (``("connectors", 1, "max_current_a")``), so a validation error found later can
name the line. On top of ``yaml.SafeLoader`` it rejects, with ``FILE:LINE: PATH: REASON``
(:class:`agent.errors.ConfigError`):

- duplicate keys at any depth (``terminal.url: duplicate key (first at line 9)``);
- keys that are not plain strings (``1:``, ``yes:``, ``null:``, complex keys) and merge keys ``<<``;
- aliases (``*name``): they are never expanded, so an alias bomb ("billion laughs") costs nothing;
  a config file writes values out instead (anchors alone are harmless and ignored);
- explicit tags other than the standard scalar ones (``!!set``, ``!!omap``, ``!python/…``);
- more than one document, nesting deeper than :data:`MAX_DEPTH` and files above :data:`MAX_BYTES`.

YAML syntax errors name the file and line (the key path is not known while the text does not parse).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import yaml

from agent.errors import ConfigError, KeyPath, PathItem
from agent.errors import format_path as _format_path

__all__ = [
    "MAX_BYTES",
    "MAX_DEPTH",
    "KeyPath",
    "PathItem",
    "YamlDocument",
    "format_path",
    "load_yaml",
    "read_json_file",
    "read_yaml_file",
]


MAX_BYTES: Final = 1024 * 1024  # a config file is a few KiB; refuse anything absurd
MAX_DEPTH: Final = 32  # the deepest config path is 4 levels; deeper input is a mistake or an attack
ROOT_PATH_TEXT: Final = "(document)"

_ALIAS_TAG: Final = "!evpay-agent/alias"  # stands in for an alias node; never constructed
_STR_TAG: Final = "tag:yaml.org,2002:str"
_MAP_TAG: Final = "tag:yaml.org,2002:map"
_SEQ_TAG: Final = "tag:yaml.org,2002:seq"
_MERGE_TAG: Final = "tag:yaml.org,2002:merge"


def format_path(path: Iterable[PathItem]) -> str:
    """``("connectors", 1, "max_current_a")`` → ``"connectors[1].max_current_a"``; ``()`` → ``(document)``."""
    return _format_path(path) or ROOT_PATH_TEXT


@dataclass(frozen=True, slots=True)
class YamlDocument:
    """Loaded data plus the line of every key path (``()`` is the document itself)."""

    file: str
    data: object
    lines: Mapping[KeyPath, int]
    errors: tuple[ConfigError, ...] = ()  # duplicate keys, when loaded with collect=True

    def line_of(self, path: Iterable[PathItem]) -> int:
        """The line of ``path``, or of its longest prefix that exists in the file (a missing key is
        reported at its parent's line)."""
        full = tuple(path)
        for n in range(len(full), -1, -1):
            line = self.lines.get(full[:n])
            if line is not None:
                return line
        return 1

    def error(self, path: Iterable[PathItem], reason: str) -> ConfigError:
        """A :class:`ConfigError` located at ``path``."""
        full = tuple(path)
        return ConfigError(self.file, reason, line=self.line_of(full), path=format_path(full))


class _Loader(yaml.SafeLoader):
    """SafeLoader whose composer turns every alias into an inert placeholder node."""

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            event = self.get_event()  # type: ignore[no-untyped-call]
            return yaml.ScalarNode(_ALIAS_TAG, str(event.anchor), event.start_mark, event.end_mark)
        return super().compose_node(parent, index)


def _line(node: yaml.Node) -> int:
    return int(node.start_mark.line) + 1


class _Builder:
    def __init__(self, loader: _Loader, file: str, *, collect: bool = False) -> None:
        self._loader = loader
        self._file = file
        self._collect = collect
        self.lines: dict[KeyPath, int] = {}
        self.errors: list[ConfigError] = []

    def _error(self, node: yaml.Node, path: KeyPath, reason: str) -> ConfigError:
        return ConfigError(self._file, reason, line=_line(node), path=format_path(path))

    def build(self, node: yaml.Node, path: KeyPath, depth: int) -> object:
        if depth > MAX_DEPTH:
            raise self._error(node, path, f"nested deeper than {MAX_DEPTH} levels")
        if node.tag == _ALIAS_TAG:
            raise self._error(node, path, f"YAML alias *{node.value} is not supported; write the value out")
        if isinstance(node, yaml.MappingNode):
            if node.tag != _MAP_TAG:
                raise self._error(node, path, f"unsupported YAML tag {node.tag}")
            return self._mapping(node, path, depth)
        if isinstance(node, yaml.SequenceNode):
            if node.tag != _SEQ_TAG:
                raise self._error(node, path, f"unsupported YAML tag {node.tag}")
            items: list[object] = []
            for index, item in enumerate(node.value):
                self.lines[(*path, index)] = _line(item)
                items.append(self.build(item, (*path, index), depth + 1))
            return items
        try:
            return self._loader.construct_object(node, deep=True)
        except yaml.MarkedYAMLError as exc:
            raise self._error(node, path, str(exc.problem or exc)) from None

    def _mapping(self, node: yaml.MappingNode, path: KeyPath, depth: int) -> dict[str, object]:
        result: dict[str, object] = {}
        first_line: dict[str, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                raise self._error(key_node, path, "merge keys (<<) are not supported; write the keys out")
            if key_node.tag == _ALIAS_TAG:
                raise self._error(key_node, path, f"YAML alias *{key_node.value} is not supported as a key")
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag != _STR_TAG:
                shown = key_node.value if isinstance(key_node, yaml.ScalarNode) else key_node.id
                raise self._error(key_node, path, f"key {shown!r} is not a string (quote it)")
            key = str(key_node.value)
            child = (*path, key)
            if key in first_line:
                error = self._error(key_node, child, f"duplicate key (first at line {first_line[key]})")
                if not self._collect:
                    raise error
                self.errors.append(error)  # the first value stays; the rest of the file is checked
                continue
            first_line[key] = self.lines[child] = _line(key_node)
            result[key] = self.build(value_node, child, depth + 1)
        return result


def load_yaml(text: str, file: str, *, collect: bool = False) -> YamlDocument:
    """Parse one YAML document from ``text``; ``file`` is only used in error messages.

    An empty document (only comments or nothing) gives ``data=None``. Raises :class:`ConfigError`.
    ``collect``: a duplicate key does not raise but is recorded in :attr:`YamlDocument.errors`
    (the first value is kept) so that the rest of the file can still be checked.
    """
    if len(text) > MAX_BYTES:
        raise ConfigError(file, f"file larger than {MAX_BYTES} bytes")
    try:
        loader = _Loader(text)
    except yaml.reader.ReaderError as exc:
        line = text[: exc.position].count("\n") + 1
        raise ConfigError(
            file, f"invalid YAML: unacceptable character #x{exc.character:04x}", line=line
        ) from None
    try:
        node = loader.get_single_node()
        if node is None:
            return YamlDocument(file, None, {(): 1})
        builder = _Builder(loader, file, collect=collect)
        builder.lines[()] = _line(node)
        data = builder.build(node, (), 0)
        return YamlDocument(file, data, builder.lines, tuple(builder.errors))
    except yaml.composer.ComposerError as exc:
        if exc.problem == "but found another document" or "single document" in str(exc.context):
            mark = exc.problem_mark
            doc_line = int(mark.line) + 1 if mark is not None else None
            reason = "more than one YAML document (---); a config file holds one"
            raise ConfigError(file, reason, line=doc_line) from None
        raise _syntax_error(file, exc) from None
    except yaml.MarkedYAMLError as exc:
        raise _syntax_error(file, exc) from None
    except yaml.YAMLError as exc:  # ReaderError (control characters) and friends carry no mark
        raise ConfigError(file, f"invalid YAML: {exc}") from None
    except RecursionError:
        raise ConfigError(file, "invalid YAML: nested too deeply") from None
    finally:
        loader.dispose()


def _syntax_error(file: str, exc: yaml.MarkedYAMLError) -> ConfigError:
    mark = exc.problem_mark or exc.context_mark
    if mark is None:
        return ConfigError(file, f"invalid YAML: {exc.problem or exc}")
    problem = exc.problem or str(exc)
    if "\\t" in problem or "\t" in problem:
        problem += "; indent with spaces, not tabs"
    return ConfigError(
        file, f"invalid YAML: {problem} (column {int(mark.column) + 1})", line=int(mark.line) + 1
    )


def _read_limited(path: Path, file: str) -> bytes:
    """The bytes of ``path``, at most :data:`MAX_BYTES` (``file``: its name in messages)."""
    try:
        with path.open("rb") as stream:
            raw = stream.read(MAX_BYTES + 1)
    except OSError as exc:
        raise ConfigError(file, f"cannot read: {exc.strerror or type(exc).__name__}") from None
    if len(raw) > MAX_BYTES:
        raise ConfigError(file, f"file larger than {MAX_BYTES} bytes")
    return raw


def read_yaml_file(path: Path, *, display: str | None = None, collect: bool = False) -> YamlDocument:
    """Read and parse ``path`` (UTF-8, optional BOM). ``display`` names the file in messages
    (default: the path as given). Raises :class:`ConfigError`, e.g. ``agent.yaml: cannot read: No
    such file or directory``. ``collect``: as for :func:`load_yaml`."""
    file = display if display is not None else str(path)
    raw = _read_limited(path, file)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(file, "not UTF-8 text", line=line) from None
    return load_yaml(text, file, collect=collect)


def read_json_file(path: Path, *, display: str | None = None) -> object:
    """Read and decode the JSON file ``path`` with :func:`read_yaml_file`'s limits (UTF-8, optional
    BOM, :data:`MAX_BYTES`) and duplicate keys rejected. Raises :class:`ConfigError` (with the
    line for a syntax error)."""
    file = display if display is not None else str(path)
    raw = _read_limited(path, file)
    try:
        return json.loads(raw.decode("utf-8-sig"), object_pairs_hook=_no_duplicate_keys)
    except UnicodeDecodeError:
        raise ConfigError(file, "not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(file, f"invalid JSON: {exc.msg} (column {exc.colno})", line=exc.lineno) from None
    except ValueError as exc:  # a duplicate key
        raise ConfigError(file, str(exc)) from None


def _no_duplicate_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    found: dict[str, object] = {}
    for name, value in pairs:
        if name in found:
            raise ValueError(f"duplicate key {name!r}")
        found[name] = value
    return found

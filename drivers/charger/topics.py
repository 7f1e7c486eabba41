"""MQTT topic templates of the charger bridge (DESIGN.md §3.3), validated once at construction.

Six topic names, each a template with the placeholders ``{prefix}`` and ``{connector}``:

=========  ================================  =================
name       default template                  direction
=========  ================================  =================
plug       ``{prefix}/{connector}/plug``     charger → agent
status     ``{prefix}/{connector}/status``   charger → agent
meter      ``{prefix}/{connector}/meter``    charger → agent
alive      ``{prefix}/alive``                charger → agent
cmd        ``{prefix}/{connector}/cmd``      agent → charger
payment    ``{prefix}/{connector}/payment``  agent → charger
=========  ================================  =================

Rules: only those two placeholders (no format specs); the per-connector topics contain
``{connector}`` exactly once, ``alive`` not at all; no MQTT wildcards (``+``, ``#``), no NUL, no
leading ``$``, no empty result; the ``{connector}`` topic level may have literal text around the
placeholder (``cp{connector}``); the six topics must be distinguishable from each other.
Subscriptions replace the topic level holding ``{connector}`` with ``+`` so that messages for
unknown connectors are seen (and counted) rather than silently missed.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from drivers.charger.base import ChargerError, ChargerErrorCode

TOPIC_NAMES = ("plug", "status", "meter", "alive", "cmd", "payment")
PER_CONNECTOR = frozenset({"plug", "status", "meter", "cmd", "payment"})
CHARGER_TO_AGENT = ("alive", "plug", "status", "meter")
DEFAULT_PREFIX = "charger"
DEFAULT_TOPICS: Mapping[str, str] = MappingProxyType(
    {
        "plug": "{prefix}/{connector}/plug",
        "status": "{prefix}/{connector}/status",
        "meter": "{prefix}/{connector}/meter",
        "alive": "{prefix}/alive",
        "cmd": "{prefix}/{connector}/cmd",
        "payment": "{prefix}/{connector}/payment",
    }
)
_CONNECTOR = "{connector}"
_SAMPLE_CONNECTOR = "1"


def _invalid(detail: str) -> ChargerError:
    return ChargerError(ChargerErrorCode.INVALID_CONFIG, detail)


def _check_topic_text(what: str, text: str) -> None:
    if not text:
        raise _invalid(f"{what}: empty")
    if any(ch in text for ch in "+#\x00"):
        raise _invalid(f"{what}: {text!r} contains an MQTT wildcard or NUL")
    if text.startswith("$"):
        raise _invalid(f"{what}: {text!r} starts with '$' (reserved for the broker)")


@dataclass(frozen=True, slots=True)
class _Template:
    name: str
    text: str  # prefix substituted, "{connector}" kept
    filter: str  # subscription filter
    pattern: re.Pattern[str]  # full match; group "connector" when per connector


class TopicMap:
    """The six topics for one prefix and a set of template overrides."""

    def __init__(self, prefix: str = DEFAULT_PREFIX, overrides: Mapping[str, str] | None = None) -> None:
        if not isinstance(prefix, str) or any(ch in prefix for ch in "{}"):
            raise _invalid(f"prefix {prefix!r}: must be a string without braces")
        _check_topic_text("prefix", prefix)
        overrides = dict(overrides or {})
        unknown = sorted(set(overrides) - set(TOPIC_NAMES))
        if unknown:
            raise _invalid(f"topics: unknown name(s) {unknown}; known: {list(TOPIC_NAMES)}")
        self.prefix = prefix
        self._templates: dict[str, _Template] = {}
        for name in TOPIC_NAMES:
            template = overrides.get(name, DEFAULT_TOPICS[name])
            self._templates[name] = self._compile(name, template)
        self._check_distinct()

    def _compile(self, name: str, template: object) -> _Template:
        what = f"topics.{name}"
        if not isinstance(template, str):
            raise _invalid(f"{what}: expected a string, got {type(template).__name__}")
        try:
            parsed = [(field, spec, conv) for _, field, spec, conv in string.Formatter().parse(template)]
        except ValueError as exc:
            raise _invalid(f"{what}: {template!r}: {exc}") from None
        fields = [field for field, _, _ in parsed if field is not None]
        specs = [(spec, conv) for field, spec, conv in parsed if field is not None]
        bad = sorted({f for f in fields if f not in ("prefix", "connector")})
        if bad:
            raise _invalid(
                f"{what}: {template!r}: unknown placeholder(s) {bad}; use {{prefix}}, {{connector}}"
            )
        if any(spec or conv for spec, conv in specs):
            raise _invalid(f"{what}: {template!r}: placeholders take no format spec or conversion")
        count = fields.count("connector")
        if name in PER_CONNECTOR and count != 1:
            raise _invalid(f"{what}: {template!r}: must contain {{connector}} exactly once")
        if name not in PER_CONNECTOR and count:
            raise _invalid(f"{what}: {template!r}: must not contain {{connector}}")
        text = template.format(prefix=self.prefix, connector=_CONNECTOR)
        _check_topic_text(what, text.replace(_CONNECTOR, _SAMPLE_CONNECTOR))
        if count == 0:
            return _Template(name, text, text, re.compile(re.escape(text)))
        levels = text.split("/")
        regex_levels: list[str] = []
        filter_levels: list[str] = []
        for level in levels:
            if _CONNECTOR in level:
                before, after = level.split(_CONNECTOR)
                regex_levels.append(f"{re.escape(before)}(?P<connector>[^/]+?){re.escape(after)}")
                filter_levels.append("+")
            else:
                regex_levels.append(re.escape(level))
                filter_levels.append(level)
        return _Template(name, text, "/".join(filter_levels), re.compile("/".join(regex_levels)))

    def _check_distinct(self) -> None:
        for name, tpl in self._templates.items():
            sample = tpl.text.replace(_CONNECTOR, _SAMPLE_CONNECTOR)
            for other, other_tpl in self._templates.items():
                if other != name and other_tpl.pattern.fullmatch(sample):
                    raise _invalid(f"topics.{name} and topics.{other} overlap ({sample!r} matches both)")

    @property
    def templates(self) -> Mapping[str, str]:
        """The effective templates (prefix substituted, ``{connector}`` kept), by name."""
        return MappingProxyType({name: tpl.text for name, tpl in self._templates.items()})

    def topic(self, name: str, connector_id: int | None = None) -> str:
        """The concrete topic of ``name`` (for ``connector_id`` when per connector)."""
        tpl = self._templates[name]
        if name in PER_CONNECTOR:
            if connector_id is None:
                raise ValueError(f"topic {name!r} needs a connector id")
            return tpl.text.replace(_CONNECTOR, str(connector_id))
        return tpl.text

    def subscription(self, name: str) -> str:
        """The subscription filter of ``name`` (``+`` for the connector level)."""
        return self._templates[name].filter

    def match(self, topic: str, names: tuple[str, ...] = TOPIC_NAMES) -> tuple[str, str | None] | None:
        """``(name, connector text or None)`` of a received topic; ``None`` if no name matches."""
        for name in names:
            found = self._templates[name].pattern.fullmatch(topic)
            if found:
                return name, found.groupdict().get("connector")
        return None


def parse_connector(text: str | None, known: frozenset[int]) -> int | None:
    """The connector id written in a topic (decimal, no sign, no leading zeros), if it is ``known``."""
    if text is None or not text.isdigit() or not text.isascii() or (len(text) > 1 and text[0] == "0"):
        return None
    value = int(text)
    return value if value in known else None

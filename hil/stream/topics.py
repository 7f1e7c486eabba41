"""Topic names of the upstream contract (docs/upstream.md "Topics"), read without the agent.

The prefix (default ``evpay/v1/{station_id}``) is either given — a template where
``{station_id}`` and ``+`` match one level — or inferred from the suffix, which is one of the
contract's: ``status``, ``terminal``, ``connectors/{id}/state|meter|events``, ``receipts``,
``reports/reconciliation``, ``alarms``, ``auth/request|response``, ``cmd/{name}[/result]``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

__all__ = ["DEFAULT_PREFIX", "Topic", "TopicKind", "TopicParser"]

DEFAULT_PREFIX: Final = "evpay/v1/{station_id}"


class TopicKind(StrEnum):
    STATUS = "status"  # retained birth / last will
    TERMINAL = "terminal"  # retained
    CONNECTOR_STATE = "connector_state"  # retained
    METER = "meter"  # outbox
    EVENTS = "events"  # outbox
    RECEIPTS = "receipts"  # outbox
    RECONCILIATION = "reconciliation"  # outbox
    ALARMS = "alarms"  # outbox
    AUTH = "auth"  # request/response, not the outbox
    COMMAND = "command"  # cmd/{name} and cmd/{name}/result, not the outbox
    UNKNOWN = "unknown"  # under the prefix, but not a topic of the contract


OUTBOX_KINDS: Final = frozenset(
    {TopicKind.METER, TopicKind.EVENTS, TopicKind.RECEIPTS, TopicKind.RECONCILIATION, TopicKind.ALARMS}
)

_SUFFIXES: Final = (
    r"(?P<status>status)"
    r"|(?P<terminal>terminal)"
    r"|connectors/(?P<cid>[^/]+)/(?P<per_connector>state|meter|events)"
    r"|(?P<receipts>receipts)"
    r"|(?P<reconciliation>reports/reconciliation)"
    r"|(?P<alarms>alarms)"
    r"|(?P<auth>auth/(?:request|response))"
    r"|(?P<command>cmd/[^/]+(?:/result)?)"
)
_PER_CONNECTOR: Final = {
    "state": TopicKind.CONNECTOR_STATE,
    "meter": TopicKind.METER,
    "events": TopicKind.EVENTS,
}


@dataclass(frozen=True, slots=True)
class Topic:
    """A classified topic. ``connector_id`` is set on the per-connector topics when the level is
    a decimal number; ``connector_text`` is the level as written."""

    prefix: str
    kind: TopicKind
    connector_id: int | None = None
    connector_text: str | None = None

    @property
    def outbox(self) -> bool:
        return self.kind in OUTBOX_KINDS


def _prefix_pattern(template: str) -> str:
    levels = template.strip("/").split("/")
    return "/".join(
        "[^/]+" if level == "+" else "[^/]+".join(re.escape(part) for part in level.split("{station_id}"))
        for level in levels
    )


class TopicParser:
    """``TopicParser(prefix)(topic)`` → :class:`Topic`, or ``None`` for a topic outside the
    prefix (with a given prefix) or matching no suffix of the contract (without one)."""

    def __init__(self, prefix: str | None = None) -> None:
        self.prefix = prefix
        if prefix is None:
            self._full = re.compile(rf"^(?P<prefix>.+?)/(?:{_SUFFIXES})$")
            self._under: re.Pattern[str] | None = None
        else:
            pattern = _prefix_pattern(prefix)
            self._full = re.compile(rf"^(?P<prefix>{pattern})/(?:{_SUFFIXES})$")
            self._under = re.compile(rf"^(?P<prefix>{pattern})/.")
        self._cache: dict[str, Topic | None] = {}

    def __call__(self, topic: str) -> Topic | None:
        if topic in self._cache:
            return self._cache[topic]
        parsed = self._parse(topic)
        if len(self._cache) < 100_000:
            self._cache[topic] = parsed
        return parsed

    def _parse(self, topic: str) -> Topic | None:
        match = self._full.match(topic)
        if match is None:
            if self._under is not None and (under := self._under.match(topic)) is not None:
                return Topic(under["prefix"], TopicKind.UNKNOWN)
            return None
        prefix = match["prefix"]
        if match["per_connector"]:
            text = match["cid"]
            cid = int(text) if text.isascii() and text.isdigit() and len(text) <= 6 else None
            return Topic(prefix, _PER_CONNECTOR[match["per_connector"]], cid, text)
        for group in ("status", "terminal", "receipts", "reconciliation", "alarms", "auth", "command"):
            if match[group]:
                return Topic(prefix, TopicKind(group))
        return Topic(prefix, TopicKind.UNKNOWN)  # pragma: no cover - the pattern has no other branch

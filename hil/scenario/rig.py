"""``rig.yaml``: the real hardware of a HIL rig (docs/hil-rig.md).

```yaml
terminal:
  url: tcp://192.168.1.40:3201        # or serial:///dev/ttyUSB0?baudrate=57600
  family: apollo                       # apollo | p6x
  test_serials: [APO1234567]           # terminals registered in the *test* MyPayter portal
charger:
  broker_url: mqtt://192.168.1.10:1883 # the charger's bridge broker (docs/charger-bridge.md)
  prefix: charger/acme-1
connectors: 2
cards:                                 # the physical test cards, by scenario card name
  visa: "VISA test card ending 0119"
  declined: "Mastercard test card ending 0007 (declines)"
  rfid: "Fleet RFID tag (blue)"
prompt_timeout_s: 120
agent_config: {}                       # merged into the generated agent configuration
```
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from agent.config.yamlload import read_yaml_file
from agent.errors import ConfigError
from hil.scenario.schema import ScenarioError, _error, _located

__all__ = ["RigCharger", "RigConfig", "RigTerminal", "load_rig"]


class RigTerminal(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    url: Annotated[str, Meta(pattern=r"^(tcp://|serial://).+")]
    family: Literal["apollo", "p6x"]
    # Request IDs serial numbers of the rig's test terminals; any other terminal counts as a
    # production one (psp-reference: PSP does not say which portal a terminal belongs to [GAP]).
    test_serials: list[Annotated[str, Meta(min_length=1, max_length=64)]] = msgspec.field(
        default_factory=list
    )

    @property
    def tcp(self) -> tuple[str, int] | None:
        """(host, port) of a TCP terminal; None for serial."""
        if not self.url.startswith("tcp://"):
            return None
        host, _, port = self.url.removeprefix("tcp://").partition("/")[0].rpartition(":")
        return host, int(port)


class RigCharger(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    broker_url: Annotated[str, Meta(pattern=r"^mqtts?://.+")]
    prefix: Annotated[str, Meta(min_length=1, max_length=128)]


class RigConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    terminal: RigTerminal
    charger: RigCharger
    connectors: Annotated[int, Meta(ge=1, le=8)] = 1
    cards: dict[str, Annotated[str, Meta(min_length=1, max_length=128)]] = msgspec.field(default_factory=dict)
    prompt_timeout_s: Annotated[float, Meta(gt=0, le=3600)] = 120.0
    agent_config: dict[str, Any] = msgspec.field(default_factory=dict)
    file: str = ""

    def __post_init__(self) -> None:
        if self.terminal.tcp is not None:
            host, port = self.terminal.tcp
            if not host or not 0 < port < 65536:
                raise ValueError(f"`terminal.url`: expected tcp://HOST:PORT, got {self.terminal.url!r}")


def load_rig(path: Path) -> RigConfig:
    """Read and validate ``rig.yaml``; raises :class:`ScenarioError` (``FILE:LINE: PATH: REASON``)."""
    try:
        doc = read_yaml_file(path, display=str(path))
    except ConfigError as exc:
        raise ScenarioError(exc.file, exc.reason, line=exc.line, path=exc.path) from None
    if not isinstance(doc.data, dict):
        raise _located(doc, (), "rig.yaml is a mapping (terminal, charger, cards …)")
    try:
        rig = msgspec.convert(doc.data, RigConfig)
    except (msgspec.ValidationError, ValueError) as exc:
        raise _error(doc, (), exc) from None
    return msgspec.structs.replace(rig, file=str(path))

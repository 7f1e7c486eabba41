"""JUnit XML of a runner's results (``python -m hil.run --junit FILE``; docs/hil-rig.md).

One ``<testsuite name="hil">`` in ``<testsuites>``, one ``<testcase>`` per scenario:
``classname="hil.{mode}.{family}"``, ``name`` the scenario id, ``file`` its path, ``time`` seconds,
and ``<properties>`` with one ``requirement`` property per requirement id plus ``mode``, ``family``
and ``title``. A failed scenario has ``<failure type="ScenarioFailed">`` (the message, the step log
as text) and ``<system-out>`` with the work directory, the agent's log and the upstream capture
(their tails, :data:`ATTACHMENT_BYTES` each); a skipped one ``<skipped message=…/>``; a scenario
file that cannot be read an ``<error type="ScenarioError">`` with its ``FILE:LINE: PATH: REASON``.

The report follows the common JUnit schema; :data:`SCHEMA` (``junit.xsd`` beside this module) is
that shape and :func:`validate` checks a report against it (``xmlschema``, a development
dependency, imported only there).
"""

from __future__ import annotations

import io
import re
import socket
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from hil.scenario.engine import ScenarioResult

__all__ = ["ATTACHMENT_BYTES", "SCHEMA", "BrokenScenario", "to_xml", "validate", "write_junit"]

SCHEMA: Final = Path(__file__).with_name("junit.xsd")
ATTACHMENT_BYTES: Final = 200_000  # per attachment (agent log, capture): CI servers keep reports in memory
MESSAGE_CHARS: Final = 2_000  # a failure's message attribute (the step log follows as text)
SUITE_NAME: Final = "hil"

# characters XML 1.0 cannot carry, not even escaped (control characters, surrogates, U+FFFE/FFFF)
_ILLEGAL_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


@dataclass(frozen=True, slots=True)
class BrokenScenario:
    """A scenario file that cannot be run; ``error`` is its ``FILE:LINE: PATH: REASON``."""

    file: str
    error: str


def xml_text(text: str) -> str:
    """``text`` without the characters XML cannot carry (an agent log may hold ANSI escapes)."""
    return _ILLEGAL_XML.sub("", text)


def tail(text: str, limit: int = ATTACHMENT_BYTES) -> str:
    """The last ``limit`` bytes (UTF-8) of ``text``, from a line start, saying what was left out."""
    data = text.encode("utf-8", errors="replace")
    if len(data) <= limit:
        return text
    kept = data[-limit:]
    newline = kept.find(b"\n")
    if 0 <= newline < len(kept) - 1:
        kept = kept[newline + 1 :]
    left_out = len(data) - len(kept)
    return f"[… the first {left_out} bytes left out]\n" + kept.decode("utf-8", errors="replace")


def file_tail(path: Path, limit: int = ATTACHMENT_BYTES) -> str:
    """The last ``limit`` bytes of the file at ``path``, read from its end (captures grow large)."""
    try:
        with path.open("rb") as f:
            size = f.seek(0, 2)
            f.seek(max(0, size - limit))
            data = f.read()
    except OSError as exc:
        return f"[cannot read {path}: {exc.strerror or exc}]"
    if size <= limit:
        return data.decode("utf-8", errors="replace")
    newline = data.find(b"\n")
    if 0 <= newline < len(data) - 1:
        data = data[newline + 1 :]
    note = f"[… {path.name} has {size} bytes, the first {size - len(data)} left out]\n"
    return note + data.decode("utf-8", errors="replace")


def _seconds(value: float) -> str:
    return f"{max(value, 0.0):.3f}"


def _system_out(result: ScenarioResult) -> str:
    parts: list[str] = []
    capture = result.capture_path
    if capture is not None:
        parts.append(f"work directory: {capture.parent}")
    parts += ["", "===== agent log (agent.log, its tail) =====", tail(result.agent_log) or "[empty]"]
    if capture is not None:
        parts += [
            "",
            f"===== upstream capture ({capture.name}, its tail) =====",
            file_tail(capture) if capture.exists() else "[no capture file]",
        ]
    return "\n".join(parts)


def _testcase(result: ScenarioResult) -> ET.Element:
    scenario = result.scenario
    case = ET.Element(
        "testcase",
        {
            "classname": f"{SUITE_NAME}.{result.mode}.{result.family}",
            "name": scenario.id,
            "file": scenario.file,
            "time": _seconds(result.duration_s),
        },
    )
    properties = ET.SubElement(case, "properties")
    named = [("requirement", rid) for rid in scenario.requirements]
    named += [("mode", result.mode), ("family", result.family), ("title", scenario.title)]
    for name, value in named:
        ET.SubElement(properties, "property", {"name": name, "value": xml_text(value)})
    if result.status == "failed":
        failure = ET.SubElement(
            case, "failure", {"message": xml_text(result.message[:MESSAGE_CHARS]), "type": "ScenarioFailed"}
        )
        failure.text = xml_text(tail("\n".join(result.log)))
        ET.SubElement(case, "system-out").text = xml_text(_system_out(result))
    elif result.status == "skipped":
        ET.SubElement(case, "skipped", {"message": xml_text(result.message[:MESSAGE_CHARS])})
    return case


def _broken_case(broken: BrokenScenario, mode: str) -> ET.Element:
    case = ET.Element(
        "testcase",
        {
            "classname": f"{SUITE_NAME}.{mode}.unreadable",
            "name": Path(broken.file).stem,
            "file": broken.file,
            "time": _seconds(0.0),
        },
    )
    error = ET.SubElement(case, "error", {"message": xml_text(broken.error), "type": "ScenarioError"})
    error.text = xml_text(broken.error)
    return case


def to_xml(
    results: Sequence[ScenarioResult],
    *,
    broken: Sequence[BrokenScenario] = (),
    mode: str = "sim",
    timestamp: datetime | None = None,
    hostname: str | None = None,
) -> bytes:
    """The report (UTF-8 bytes with the XML declaration); ``mode`` names the unreadable files' run."""
    failures = sum(1 for r in results if r.status == "failed")
    skipped = sum(1 for r in results if r.status == "skipped")
    total_s = _seconds(sum(r.duration_s for r in results))
    tests = len(results) + len(broken)
    started = (timestamp or datetime.now(UTC)).replace(microsecond=0)
    root = ET.Element(
        "testsuites",
        {
            "name": "evpay-agent HIL scenarios",
            "tests": str(tests),
            "failures": str(failures),
            "errors": str(len(broken)),
            "time": total_s,
        },
    )
    suite = ET.SubElement(
        root,
        "testsuite",
        {
            "name": SUITE_NAME,
            "tests": str(tests),
            "failures": str(failures),
            "errors": str(len(broken)),
            "skipped": str(skipped),
            "time": total_s,
            "timestamp": started.isoformat(),
            "hostname": xml_text(hostname if hostname is not None else socket.gethostname()),
        },
    )
    suite.extend(_broken_case(b, mode) for b in broken)
    suite.extend(_testcase(r) for r in results)
    ET.indent(root)
    data: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    return data


def write_junit(
    path: Path,
    results: Sequence[ScenarioResult],
    *,
    broken: Sequence[BrokenScenario] = (),
    mode: str = "sim",
) -> None:
    """Write :func:`to_xml` to ``path`` through a temporary file (a CI server never reads half a report)."""
    data = to_xml(results, broken=broken, mode=mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(data)
    partial.replace(path)


def validate(report: bytes | Path) -> list[str]:
    """What is wrong with ``report`` by :data:`SCHEMA` (``[]``: it validates)."""
    import xmlschema  # a development dependency: only tests and CI validate reports

    schema = xmlschema.XMLSchema(str(SCHEMA))
    source = io.BytesIO(report) if isinstance(report, bytes) else str(report)
    try:
        return [f"{error.path}: {error.reason}" for error in schema.iter_errors(source)]
    except (ET.ParseError, xmlschema.XMLSchemaException) as exc:
        return [f"not readable as XML: {exc}"]

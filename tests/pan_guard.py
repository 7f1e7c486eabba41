"""Card-data guard (DESIGN.md §5.7, OPS-2): no full PAN in anything the test suite produced.

A pytest plugin (registered by ``tests/conftest.py``): during the session every log record of every
logger is scanned; at the end every file under pytest's temporary directory (journals, logs,
configs, captured process output, SQLite WAL files included) is scanned too. A PAN-like digit run
— 13 to 19 digits, a card-brand first digit (2 to 6) and a valid Luhn check digit — fails the session.
The simulators only ever emit masked PANs and card hashes, so any hit is a leak.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

_DIGIT_RUN = re.compile(rb"(?<![0-9])[2-6][0-9]{12,18}(?![0-9])")
MAX_FILE_BYTES = 32 * 1024 * 1024


def luhn_ok(digits: bytes) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ch - 0x30
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


# a compact ISO 8601 date and "T" (session refs ``1-20261202T201538471551``): the time after it
# is no PAN, but in a binary SQLite page the byte after the ref may be a digit (a record header),
# making a 13-digit run from 20:00 UTC on that passed Luhn one time in ten (a flaky guard)
_COMPACT_DATE_T = re.compile(rb"[0-9]{8}T")


def find_pans(data: bytes) -> list[str]:
    """PAN-like runs in ``data``, shown masked (first 6, last 4) so the report leaks nothing."""
    hits = []
    for mo in _DIGIT_RUN.finditer(data):
        run = mo.group()
        if _COMPACT_DATE_T.fullmatch(data, max(0, mo.start() - 9), mo.start()):
            continue
        if luhn_ok(run):
            text = run.decode()
            hits.append(text[:6] + "*" * (len(text) - 10) + text[-4:])
    return hits


class _Scanner(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.hits: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
            if record.exc_info and record.exc_info[1] is not None:
                text += " " + str(record.exc_info[1])
        except Exception:  # a broken log call is not ours to report here
            return
        for hit in find_pans(text.encode("utf-8", "replace")):
            self.hits.append(f"log {record.name}: {hit}")


_SCANNER = _Scanner()


def pytest_sessionstart(session: pytest.Session) -> None:
    root = logging.getLogger()
    root.addHandler(_SCANNER)
    if root.level > logging.DEBUG:
        root.setLevel(logging.DEBUG)


HITS_FILE_PREFIX = "pan-guard-log-hits-"


def _basetemp(session: pytest.Session) -> Path | None:
    factory = getattr(session.config, "_tmp_path_factory", None)
    if factory is None:
        return None
    try:
        base: Path = factory.getbasetemp()
    except Exception:  # no temporary directory was made
        return None
    return base


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    logging.getLogger().removeHandler(_SCANNER)
    hits = list(_SCANNER.hits)
    base = _basetemp(session)
    worker = getattr(session.config, "workerinput", None)
    if worker is not None:
        # pytest-xdist worker: its exit status does not reach the controller. Hand the (masked)
        # log hits over in a file under this worker's basetemp, which lies inside the
        # controller's; the controller scans every file there, workers' included.
        if hits and base is not None:
            (base / f"{HITS_FILE_PREFIX}{worker.get('workerid', 'w')}.txt").write_text("\n".join(hits))
        return
    if base is not None and base.exists():
        for path in base.rglob("*"):
            try:
                if not path.is_file() or path.is_symlink() or path.stat().st_size > MAX_FILE_BYTES:
                    continue
                if path.name.startswith(HITS_FILE_PREFIX):
                    hits.extend(path.read_text().splitlines())
                    continue
                hits.extend(f"{path}: {hit}" for hit in find_pans(path.read_bytes()))
            except OSError:
                continue
    if hits and not session.config.getoption("collectonly", False):
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_sep("=", "card data found in test output (OPS-2)", red=True)
            for hit in hits[:50]:
                reporter.write_line(hit)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED

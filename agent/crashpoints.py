"""Test-only crash points: ``EVPAY_CRASH_AT=POINT`` or ``POINT#N`` SIGKILLs this process.

:func:`reached` is called at the points listed in ``docs/runtime.md`` ("Crash points"). When the
environment variable ``EVPAY_CRASH_AT`` names the point, the N-th time (default the first) it is
reached the process sends itself ``SIGKILL``: no flush, no cleanup, exactly like a power cut for
everything above the kernel (the journal's committed, fsynced transactions survive).

Zero cost when the variable is unset: the variable is read once at import and :func:`reached`
returns after one comparison.
"""

from __future__ import annotations

import os
import signal

ENV_VAR = "EVPAY_CRASH_AT"


def _parse(spec: str | None) -> tuple[str | None, int]:
    if not spec:
        return None, 0
    point, sep, count = spec.rpartition("#")
    if sep and point and count.isdigit() and int(count) >= 1:
        return point, int(count)
    return spec, 1


_POINT, _AT = _parse(os.environ.get(ENV_VAR))
_seen = 0


def reached(point: str) -> None:
    """Record that ``point`` was reached; SIGKILL the process at the configured occurrence."""
    global _seen
    if _POINT is None or point != _POINT:
        return
    _seen += 1
    if _seen >= _AT:
        os.kill(os.getpid(), signal.SIGKILL)


def enabled() -> bool:
    """Whether a crash point is armed (lets callers skip work done only for crash points)."""
    return _POINT is not None


def configure(spec: str | None) -> None:
    """Re-arm from ``spec`` (tests in-process; the daemon uses the environment)."""
    global _POINT, _AT, _seen
    _POINT, _AT = _parse(spec)
    _seen = 0

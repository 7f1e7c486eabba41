"""``python -m hil.check_stream FILE [--prefix PREFIX] [--complete] [--json]``:
see :mod:`hil.stream.rules`."""

from __future__ import annotations

from hil.stream.rules import main

if __name__ == "__main__":
    raise SystemExit(main())

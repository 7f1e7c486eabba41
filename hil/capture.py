"""``python -m hil.capture --broker mqtt://HOST:PORT --prefix PREFIX --out FILE [--duration S]``:
see :mod:`hil.stream.capture`."""

from __future__ import annotations

from hil.stream.capture import main

if __name__ == "__main__":
    raise SystemExit(main())

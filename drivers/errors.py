"""The root of every exception raised by ``drivers`` (style.md §10)."""

from __future__ import annotations


class DriverError(Exception):
    """Base class for driver errors."""


class TransportError(DriverError):
    """The byte link could not be opened or was lost."""

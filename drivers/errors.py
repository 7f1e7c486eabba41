"""The root of every exception raised by ``drivers`` (style.md §10)."""

from __future__ import annotations


class DriverError(Exception):
    """Base class for driver errors."""


class TransportError(DriverError):
    """The byte link could not be opened or was lost."""


class NotSupported(DriverError):
    """The terminal family (or its configuration) cannot do what was asked (e.g. List Sessions on Apollo)."""

    def __init__(self, operation: str, family: str) -> None:
        super().__init__(operation, family)
        self.operation = operation
        self.family = family

    def __str__(self) -> str:
        return f"{self.operation} is not supported by {self.family}"

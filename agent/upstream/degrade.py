"""Conform a payload to its contract schema, degrading the fields that do not fit.

The session/payment stream never loses a message (integrity issue A): a payload built from a
typed engine effect fits the contract's Python types by construction (mypy), but not always its
value constraints (``Meta(ge=0, max_length=…, pattern=…)``), which msgspec checks only when it
decodes. :func:`conform` checks the payload the way a back office will decode it; a field that
does not fit is replaced — ``None`` where the field may be null, an integer clamped into its
bounds, a string cut to its maximum length, otherwise the field's default — and the caller
publishes the degraded payload and logs an ERROR naming the fields (a bug to fix, never a lost
message).
"""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec
from msgspec import inspect as mi

T = TypeVar("T", bound=msgspec.Struct)

_DECODERS: dict[type[Any], msgspec.json.Decoder[Any]] = {}
_ENCODER = msgspec.json.Encoder()


def valid(payload: msgspec.Struct) -> bool:
    """Whether ``payload`` decodes as its own type (every constraint of the contract holds)."""
    try:
        _decoder(type(payload)).decode(_ENCODER.encode(payload))
    except msgspec.ValidationError:
        return False
    return True


def conform(payload: T) -> tuple[T, list[str]]:
    """``(payload, [])`` when it fits its schema, else a degraded copy that fits and the names of
    the fields that were changed."""
    if valid(payload):
        return payload, []
    info = mi.type_info(type(payload))
    assert isinstance(info, mi.StructType)
    annotations = {f.name: f.type for f in msgspec.structs.fields(type(payload))}
    changes: dict[str, Any] = {}
    problems: list[str] = []
    for field in info.fields:
        value = getattr(payload, field.name)
        annotation = annotations[field.name]
        if _fits(value, annotation):
            continue
        fixed, ok = _repair(value, field, annotation)
        if not ok:  # nothing sensible: the schema cannot hold this payload (a bug in the contract)
            problems.append(f"{field.name} (unrepairable)")
            continue
        changes[field.name] = fixed
        problems.append(field.name)
    degraded = msgspec.structs.replace(payload, **changes) if changes else payload
    return degraded, problems


def _decoder(cls: type[Any]) -> msgspec.json.Decoder[Any]:
    decoder = _DECODERS.get(cls)
    if decoder is None:
        decoder = _DECODERS[cls] = msgspec.json.Decoder(cls)
    return decoder


def _fits(value: object, annotation: Any) -> bool:
    """Whether ``value`` decodes as ``annotation`` (a field's type, constraints included)."""
    try:
        msgspec.json.decode(_ENCODER.encode(value), type=annotation)
    except (msgspec.ValidationError, msgspec.EncodeError, TypeError):
        return False
    return True


def _unwrap(typ: mi.Type) -> mi.Type:
    while isinstance(typ, mi.Metadata):
        typ = typ.type
    return typ


def _repair(value: object, field: mi.Field, annotation: Any) -> tuple[object, bool]:
    typ = _unwrap(field.type)
    options = tuple(_unwrap(t) for t in typ.types) if isinstance(typ, mi.UnionType) else (typ,)
    if any(isinstance(t, mi.NoneType) for t in options):
        return None, True
    for t in options:
        if isinstance(t, mi.IntType) and isinstance(value, int) and not isinstance(value, bool):
            low = t.ge if t.ge is not None else (t.gt + 1 if t.gt is not None else None)
            high = t.le if t.le is not None else (t.lt - 1 if t.lt is not None else None)
            fixed = value
            if low is not None:
                fixed = max(fixed, low)
            if high is not None:
                fixed = min(fixed, high)
            if _fits(fixed, annotation):
                return fixed, True
        if isinstance(t, mi.StrType) and isinstance(value, str) and t.max_length is not None:
            fixed_text = value[: t.max_length]
            if _fits(fixed_text, annotation):
                return fixed_text, True
    if field.default is not msgspec.NODEFAULT:
        return field.default, True
    if field.default_factory is not msgspec.NODEFAULT:
        return field.default_factory(), True
    return value, False

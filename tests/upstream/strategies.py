"""Hypothesis strategies for msgspec Structs, derived from ``msgspec.inspect`` (constraints included)."""

from __future__ import annotations

import functools
from typing import Any

import msgspec
import msgspec.inspect as mi
from hypothesis import strategies as st

_INT64 = (-(2**63), 2**63 - 1)


def _int(t: mi.IntType) -> st.SearchStrategy[int]:
    low = t.ge if t.ge is not None else (t.gt + 1 if t.gt is not None else _INT64[0])
    high = t.le if t.le is not None else (t.lt - 1 if t.lt is not None else _INT64[1])
    return st.integers(min_value=low, max_value=high)


def _str(t: mi.StrType) -> st.SearchStrategy[str]:
    low, high = t.min_length or 0, t.max_length
    if t.pattern is not None:
        base = st.from_regex(t.pattern, fullmatch=True)
        return base.filter(lambda s: len(s) >= low and (high is None or len(s) <= high))
    return st.text(min_size=low, max_size=min(high if high is not None else 40, 40))


def for_type(t: mi.Type) -> st.SearchStrategy[Any]:
    match t:
        case mi.Metadata():
            return for_type(t.type)
        case mi.NoneType():
            return st.none()
        case mi.BoolType():
            return st.booleans()
        case mi.IntType():
            return _int(t)
        case mi.FloatType():
            low = t.ge if t.ge is not None else t.gt
            return st.floats(min_value=low, max_value=1e6, allow_nan=False, allow_infinity=False).filter(
                lambda x: t.gt is None or x > t.gt
            )
        case mi.StrType():
            return _str(t)
        case mi.LiteralType():
            return st.sampled_from(t.values)
        case mi.EnumType():
            return st.sampled_from(list(t.cls))
        case mi.UnionType():
            return st.one_of([for_type(x) for x in t.types])
        case mi.VarTupleType() | mi.ListType():
            items = st.lists(
                for_type(t.item_type), min_size=t.min_length or 0, max_size=min(t.max_length or 3, 3)
            )
            return items.map(tuple) if isinstance(t, mi.VarTupleType) else items
        case mi.DictType():
            return st.dictionaries(for_type(t.key_type), for_type(t.value_type), max_size=3)
        case mi.StructType():
            return structs(t.cls)
    raise NotImplementedError(f"no strategy for {t!r}")


def _ocpi_tariff(price: str) -> dict[str, Any]:
    return {
        "country_code": "NL",
        "party_id": "EVP",
        "id": "t1",
        "currency": "EUR",
        "last_updated": "2026-01-01T00:00:00Z",
        "elements": [{"price_components": [{"type": "ENERGY", "price": price, "vat": 21, "step_size": 1}]}],
    }


@functools.cache
def tariff_objects() -> st.SearchStrategy[dict[str, Any]]:
    """``SetTariff.tariff``, which msgspec types as any object: the documented forms (the simple
    form as drawn from its Struct, the OCPI wrapper, a bare OCPI Tariff), as docs/asyncapi.yaml
    lists them; anything else the command handler refuses (``tariff_error``)."""
    from agent.money.tariff import TariffConfig

    prices = st.sampled_from(["0.30", "0.39", "1"])
    return st.one_of(
        structs(TariffConfig).map(lambda t: msgspec.json.decode(msgspec.json.encode(t))),
        st.builds(
            lambda price, zone: {"ocpi": _ocpi_tariff(price), "timezone": zone, "minor_unit_digits": 2},
            prices,
            st.sampled_from([None, "Europe/Amsterdam"]),
        ),
        prices.map(_ocpi_tariff),
    )


def _field_strategy(cls: type[msgspec.Struct], field: mi.Field) -> st.SearchStrategy[Any]:
    from agent.upstream.contract import SetTariff

    if cls is SetTariff and field.name == "tariff":
        return tariff_objects()
    return for_type(field.type)


@functools.cache
def structs(cls: type[msgspec.Struct]) -> st.SearchStrategy[msgspec.Struct]:
    """Instances of ``cls`` satisfying every msgspec constraint (optional fields drawn or left out)."""
    info = mi.type_info(cls)
    assert isinstance(info, mi.StructType)
    required = {f.name: _field_strategy(cls, f) for f in info.fields if f.required}
    optional = {f.name: _field_strategy(cls, f) for f in info.fields if not f.required}
    return st.fixed_dictionaries(required, optional=optional).map(lambda kw: cls(**kw))

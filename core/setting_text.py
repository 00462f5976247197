"""Settings text: how a value given as text (environment, ``--set``, a string in the TOML file) is read as its
field's type, and what that type is without its range (``core.sections``, ``core.settings``)."""

from __future__ import annotations

import json
from functools import cache
from types import NoneType, UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import TypeAdapter, ValidationError


def _list_items(value: str) -> list[str]:
    """A list setting from text: a JSON list (``["鞋", "靴子"]``) or items separated by ``;``
    (not ``,``: JD category ids such as ``1318,12099,9756`` contain commas). ``""`` is the empty list."""
    text = value.strip()
    if text.startswith("["):
        items = json.loads(text)  # a JSONDecodeError is a ValueError: "cannot read ... as list"
        if not isinstance(items, list):
            raise ValueError("not a JSON list")
        return [str(v) for v in items]
    return [v.strip() for v in text.split(";") if v.strip()]


def bare_type(annotation: Any) -> Any:
    """``annotation`` without its ranges (``Annotated`` metadata), at every level: what a value must be
    readable as (``Count`` -> ``int``, ``tuple[Fraction, ...]`` -> ``tuple[float, ...]``)."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        return bare_type(args[0])
    if not args or origin is Literal:
        return annotation
    inner = tuple(bare_type(a) for a in args)
    return Union[inner] if origin in (Union, UnionType) else origin[inner]


def readable_as(annotation: Any, value: Any) -> bool:
    """Whether ``value`` (text as in ``--set``, or a TOML value) reads as ``annotation``, whatever its range."""
    try:
        _adapter(bare_type(annotation)).validate_python(from_text(bare_type(annotation), value))
    except (ValidationError, ValueError):
        return False
    return True


@cache
def _adapter(annotation: Any) -> TypeAdapter:
    return TypeAdapter(annotation)


def from_text(annotation: Any, value: Any) -> Any:
    """``value`` made readable by pydantic for a field of type ``annotation`` (text lists and "none")."""
    if not isinstance(value, str):
        return value
    if get_origin(annotation) in (list, tuple):
        try:  # read here so that an error shows the text as given, not the split items (ranges: by the field)
            return _adapter(bare_type(annotation)).validate_python(_list_items(value))
        except ValidationError as exc:
            raise ValueError(exc.errors()[0]["msg"]) from None
    if NoneType in get_args(annotation) and value.strip().lower() in ("", "none", "null"):
        return None
    return value

"""Typed wire data: frozen dataclasses, checked field by field on the way in.

Every message body and every output record is a frozen dataclass whose fields carry their
constraints in metadata (``num(lo, hi)``, ``rank_field()``, ``nan_ok``). Three things are
derived from those declarations, so they can never drift apart:

- ``from_wire(cls, data, world_size=...)`` builds an instance from msgpack or JSON data and
  raises ``DecodeError`` naming the field on anything missing, mistyped, non-finite, out of
  range or naming a rank outside the world;
- ``to_wire(obj)`` gives the plain map (enums as their values, tuples as lists);
- ``json_schema(cls)`` gives the JSON Schema of the JSONL form (NaN becomes null there).

Supported field types: ``int``, ``float``, ``str``, ``bool``, ``X | None``, ``tuple[T, ...]``,
``dict[str, str]``, ``dict[str, Any]``, str enums and nested dataclasses of the same kind.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import types
import typing
from collections.abc import Callable
from functools import cache
from typing import Any, TypeVar

T = TypeVar("T")
Checker = Callable[[Any, "Context"], Any]
MAX_STR = 1 << 16
MAX_ITEMS = 1 << 16


class DecodeError(ValueError):
    """Data that is not a valid message or record; the caller drops it and counts it."""


@dataclasses.dataclass(frozen=True)
class Context:
    """What a check needs beyond the data: the world size bounds rank fields."""

    world_size: int | None = None


def num(
    lo: float | None = None,
    hi: float | None = None,
    *,
    nan_ok: bool = False,
    default: Any = dataclasses.MISSING,
) -> Any:
    """A numeric field within [lo, hi]; floats must be finite unless ``nan_ok``."""
    meta = {"lo": lo, "hi": hi, "nan_ok": nan_ok}
    return dataclasses.field(default=default, metadata=meta)


def rank_field(*, default: Any = dataclasses.MISSING, allow_none: bool = False) -> Any:
    """A global rank: 0 <= value < world size (-1 too when ``allow_none``)."""
    meta = {"lo": -1 if allow_none else 0, "hi": None, "rank": True, "nan_ok": False}
    return dataclasses.field(default=default, metadata=meta)


def _fail(path: str, why: str) -> DecodeError:
    return DecodeError(f"{path}: {why}")


def _number_checker(kind: type, meta: dict[str, Any], path: str) -> Checker:
    lo, hi, nan_ok, is_rank = meta.get("lo"), meta.get("hi"), meta.get("nan_ok"), meta.get("rank")

    def check(value: Any, ctx: Context) -> Any:
        if type(value) is bool or not isinstance(value, int if kind is int else (int, float)):
            raise _fail(path, f"expected {kind.__name__}, got {type(value).__name__}")
        if kind is float:
            value = float(value)
            if math.isnan(value):
                if nan_ok:
                    return value
                raise _fail(path, "not a number")
            if math.isinf(value):
                raise _fail(path, "not finite")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise _fail(path, f"{value!r} outside [{lo}, {hi}]")
        if is_rank and ctx.world_size is not None and value >= ctx.world_size:
            raise _fail(path, f"rank {value} outside a world of {ctx.world_size}")
        return value

    return check


def _checker(hint: Any, meta: dict[str, Any], path: str) -> Checker:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType) and type(None) in args:
        inner = _checker(next(a for a in args if a is not type(None)), meta, path)
        return lambda value, ctx: None if value is None else inner(value, ctx)
    if hint in (int, float):
        return _number_checker(hint, meta, path)
    if hint is bool:

        def check_bool(value: Any, ctx: Context) -> bool:
            if type(value) is not bool:
                raise _fail(path, "expected a boolean")
            return value

        return check_bool
    if hint is str:

        def check_str(value: Any, ctx: Context) -> str:
            if not isinstance(value, str) or len(value) > MAX_STR:
                raise _fail(path, "expected a string")
            return value

        return check_str
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        members = {member.value: member for member in hint}

        def check_enum(value: Any, ctx: Context) -> Any:
            if isinstance(value, hint):
                return value
            try:
                return members[value]
            except (KeyError, TypeError):
                raise _fail(path, f"{value!r} is not one of {sorted(members)}") from None

        return check_enum
    if dataclasses.is_dataclass(hint):
        return lambda value, ctx: _build(hint, value, ctx, path)
    if origin is tuple:
        item = _checker(args[0], meta, f"{path}[]")

        def check_tuple(value: Any, ctx: Context) -> tuple[Any, ...]:
            if not isinstance(value, list | tuple) or len(value) > MAX_ITEMS:
                raise _fail(path, "expected a list")
            return tuple(item(v, ctx) for v in value)

        return check_tuple
    if origin is dict:
        value_type = args[1]

        def check_dict(value: Any, ctx: Context) -> dict[str, Any]:
            if not isinstance(value, dict) or len(value) > MAX_ITEMS:
                raise _fail(path, "expected a map")
            if not all(isinstance(k, str) for k in value):
                raise _fail(path, "map keys must be strings")
            if value_type is str and not all(isinstance(v, str) for v in value.values()):
                raise _fail(path, "map values must be strings")
            return dict(value)

        return check_dict
    if hint is Any:
        return lambda value, ctx: value
    raise TypeError(f"{path}: unsupported field type {hint!r}")


@cache
def _fields(cls: type) -> tuple[tuple[str, Checker, bool], ...]:
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        optional = f.default is not dataclasses.MISSING or (
            f.default_factory is not dataclasses.MISSING
        )
        out.append(
            (
                f.name,
                _checker(hints[f.name], dict(f.metadata), f"{cls.__name__}.{f.name}"),
                optional,
            )
        )
    return tuple(out)


def _build(cls: type[T], data: Any, ctx: Context, path: str) -> T:
    if not isinstance(data, dict):
        raise _fail(path, "expected a map")
    values = {}
    for name, check, optional in _fields(cls):
        if name not in data:
            if optional:
                continue
            raise _fail(f"{cls.__name__}.{name}", "missing")
        values[name] = check(data[name], ctx)
    return cls(**values)


def from_wire(cls: type[T], data: Any, *, world_size: int | None = None) -> T:
    """Build and validate a ``cls`` from wire data; raises DecodeError. Unknown keys are ignored
    (a newer peer may add information)."""
    return _build(cls, data, Context(world_size), cls.__name__)


@cache
def _names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


def prepare(cls: type) -> None:
    """Build ``cls``'s checkers and field names (and those of the dataclasses it holds) now:
    a process that forks many children does it once, instead of every child on its first
    message (each would also copy the pages that building writes)."""
    _names(cls)
    for hint in typing.get_type_hints(cls).values():
        for nested in _nested_dataclasses(hint):
            prepare(nested)
    _fields(cls)


_PLAIN = (int, float, str, bool, type(None))


def to_wire(value: Any) -> Any:
    """The plain msgpack/JSON form of a dataclass (recursively)."""
    if isinstance(value, _PLAIN):
        return value.value if isinstance(value, enum.Enum) else value
    if hasattr(value, "__dataclass_fields__") and not isinstance(value, type):
        out = {}
        for name in _names(type(value)):
            item = getattr(value, name)
            out[name] = item if type(item) in _PLAIN else to_wire(item)
        return out
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, list | tuple):
        return [to_wire(v) for v in value]
    if isinstance(value, dict):
        return {k: to_wire(v) for k, v in value.items()}
    return value


def _json_type(hint: Any, meta: dict[str, Any]) -> dict[str, Any]:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType) and type(None) in args:
        inner = _json_type(next(a for a in args if a is not type(None)), meta)
        return {"anyOf": [inner, {"type": "null"}]}
    if hint in (int, float):
        out: dict[str, Any] = {"type": "integer" if hint is int else "number"}
        if meta.get("lo") is not None:
            out["minimum"] = meta["lo"]
        if meta.get("hi") is not None:
            out["maximum"] = meta["hi"]
        if meta.get("nan_ok"):
            return {"anyOf": [out, {"type": "null"}], "description": "null: not a number"}
        return out
    if hint is bool:
        return {"type": "boolean"}
    if hint is str:
        return {"type": "string"}
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return {"enum": [member.value for member in hint]}
    if dataclasses.is_dataclass(hint):
        return {"$ref": f"#/$defs/{hint.__name__}"}
    if origin is tuple:
        return {"type": "array", "items": _json_type(args[0], meta)}
    if origin is dict:
        values = {"type": "string"} if args[1] is str else {}
        return {"type": "object", "additionalProperties": values}
    return {}


def json_schema(cls: type, defs: dict[str, Any]) -> dict[str, Any]:
    """The JSON Schema of ``cls``'s JSONL form; nested dataclasses are added to ``defs``."""
    hints = typing.get_type_hints(cls)
    properties, required = {}, []
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        properties[f.name] = _json_type(hint, dict(f.metadata))
        for nested in _nested_dataclasses(hint):
            if nested.__name__ not in defs:
                defs[nested.__name__] = {}
                defs[nested.__name__] = json_schema(nested, defs)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            required.append(f.name)
    out = {"type": "object", "properties": properties, "required": required}
    if cls.__doc__:
        out["description"] = cls.__doc__.strip().splitlines()[0]
    return out


def _nested_dataclasses(hint: Any) -> list[type]:
    if dataclasses.is_dataclass(hint):
        return [hint]
    return [n for arg in typing.get_args(hint) for n in _nested_dataclasses(arg)]

"""Typed construction of the frozen configuration dataclasses from plain mappings, with errors that name the
full key and say how to fix it (used by `config`)."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from typing import Any

from .errors import ConfigError


def section(parent: Mapping, key: str, where: str | None = None) -> dict:
    where = where or key
    if key not in parent:
        raise ConfigError(f"params.yaml has no section {where!r}.")
    value = parent[key]
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must be a mapping, got {type(value).__name__}.")
    return value


def check_keys(d: Mapping, valid: set[str], where: str, required: set[str] | None = None) -> None:
    unknown = set(d) - valid
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}; valid keys: {sorted(valid)}.")
    missing = (valid if required is None else required) - set(d)
    if missing:
        raise ConfigError(f"{where}: missing key(s) {sorted(missing)}; add them to params.yaml.")


def typed(value: Any, tp: Any, where: str) -> Any:
    """Check `value` against a simple annotation (int, float, bool, str, tuple[...], X | None)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return typed(value, inner, where)
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list, got {value!r}.")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(typed(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{where} must be a list of {len(args)} values, got {value!r}.")
        return tuple(typed(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}.")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer, got {value!r}.")
        return value
    if tp is float:
        if isinstance(value, str) and value.strip().lower().lstrip("+-").replace(".", "", 1).replace("e", "", 1).replace("-", "", 1).isdigit():
            raise ConfigError(f"{where} must be a number, got the text {value!r}: YAML reads exponents without a "
                              f"decimal point as text; write e.g. 1.0e-5 instead of 1e-5.")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number, got {value!r}.")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {value!r}.")
        return value
    return value


def build(cls: type, d: Any, where: str):
    if not isinstance(d, Mapping):
        raise ConfigError(f"{where} must be a mapping, got {d!r}.")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    required = {n for n, f in fields.items() if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
    check_keys(d, set(fields), where, required=required)
    return cls(**{k: typed(v, hints[k], f"{where}.{k}") for k, v in d.items()})


def positive(value: float, where: str) -> None:
    if not (value > 0 and math.isfinite(value)):
        raise ConfigError(f"{where} must be a finite number > 0, got {value!r}.")


def non_negative(value: float, where: str) -> None:
    if not (value >= 0 and math.isfinite(value)):
        raise ConfigError(f"{where} must be a finite number >= 0, got {value!r}.")

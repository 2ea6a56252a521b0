"""Reading values into config fields: the one error type of bad settings, the closest
valid name, and each value made to fit its field's type (YAML and the command line give
strings where numbers are meant)."""

from __future__ import annotations

import difflib
import math
import typing
from typing import Any


class ConfigError(ValueError):
    """A config key or value that cannot be used; the message names it."""


def closest(name: str, choices: typing.Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest choice, or an empty string."""
    match = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.4)
    return f"; did you mean {match[0]!r}?" if match else ""


def coerce(value: Any, hint: Any, key: str) -> Any:
    """Make YAML/CLI values fit the field's type (YAML reads ``1e-3`` as a string)."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None and type(None) in args:
            return None
        real = [a for a in args if a is not type(None)]
        if len(real) == 1:  # ``float | None``: the float's own message
            return coerce(value, real[0], key)
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(value, arg, key)
            except ConfigError:
                continue
        raise ConfigError(f"config key {key!r}: cannot use {value!r} as {hint}")
    name = getattr(hint, "__name__", str(hint))
    if hint in (float, int) and (isinstance(value, bool) or not isinstance(value, (int, float, str))):
        raise ConfigError(f"config key {key!r}: expected a number, got {type(value).__name__} {value!r}")
    if hint in (bool, str, dict) and not isinstance(value, (hint, str) if hint is bool else hint):
        raise ConfigError(f"config key {key!r}: expected {'a mapping' if hint is dict else name}, "
                          f"got {type(value).__name__} {value!r}")
    if origin in (tuple, list) and not isinstance(value, (list, tuple)):
        raise ConfigError(f"config key {key!r}: expected a list, got {type(value).__name__} {value!r}")
    if hint is float:
        try:
            number = float(value)
        except ValueError:
            raise ConfigError(f"config key {key!r}: cannot use {value!r} as float") from None
        if not math.isfinite(number):  # NaN trains, then fails deep inside a distribution
            raise ConfigError(f"config key {key!r}: must be a finite number, got {value!r}")
        return number
    try:
        if hint is int:
            if isinstance(value, float) and value.is_integer():
                return int(value)
            if isinstance(value, int):
                return value
            if isinstance(value, str):
                number = float(value)  # '1e6' is a fine way to write a step count
                if number.is_integer():
                    return int(number)
            raise ValueError(value)
        if hint is int and isinstance(value, float):
            raise ValueError(value)
        if hint is bool and isinstance(value, str):
            if value.lower() in ("true", "1", "yes"):
                return True
            if value.lower() in ("false", "0", "no"):
                return False
            raise ValueError(value)
        if hint is str and not isinstance(value, str):
            raise ValueError(value)
        if origin is tuple and isinstance(value, (list, tuple)):
            if len(args) == 2 and args[1] is Ellipsis:
                return tuple(coerce(v, args[0], key) for v in value)
            if len(args) != len(value):
                raise ValueError(value)
            return tuple(coerce(v, a, key) for v, a in zip(value, args))
        if origin is list and isinstance(value, (list, tuple)):
            return [coerce(v, args[0], key) for v in value] if args else list(value)
    except ValueError:
        raise ConfigError(f"config key {key!r}: cannot use {value!r} as {name}") from None
    return value



def parse_key_values(pairs: list[str], *, flag: str, value_name: str = "VALUE") -> dict[str, Any]:
    """``KEY=VALUE`` flags (``--set``, ``--search``), each VALUE read as YAML."""
    import yaml

    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{flag} expects KEY={value_name}, got {pair!r}")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise ConfigError(f"{flag} {pair!r}: not a YAML value: {str(e).splitlines()[0]}") from None
    return out

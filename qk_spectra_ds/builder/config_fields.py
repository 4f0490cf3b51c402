"""Fields of config.json, read by name: the first present of several names, sizes checked, switches typed.

Every model type's record (:mod:`.model_types`) reads its config through these, so a missing,
mistyped or absurd field is one line naming it, never a traceback or a silently wrong shape.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from ..errors import CheckpointError
from . import config_checks

_MISSING = object()


def config_value(config: Mapping[str, Any], *names: str, default: Any = _MISSING) -> Any:
    """The first of ``names`` present (and not null) in config.json, else ``default``."""
    return config_field(config, names, default)[1]


def config_field(config: Mapping[str, Any], names: tuple[str, ...], default: Any = _MISSING) -> tuple[str, Any]:
    """(name, value) of the first of ``names`` present and not null in config.json, else (names[0], ``default``)."""
    for name in names:
        value = config.get(name)
        if value is not None:
            return name, value
    if default is _MISSING:
        raise CheckpointError(
            f"config.json of this {config.get('model_type')} model has none of {', '.join(names)}: is it complete?"
        )
    return names[0], default


def config_count(config: Mapping[str, Any], *names: str, default: Any = _MISSING) -> int:
    """A size from config.json (layers, heads, widths): a positive whole number, else a one-line error naming it.

    Strings, booleans, floats (even 8.0), zero and negative values are refused
    here, so that no later division or reshape turns them into a traceback or
    a silently wrong shape; so are sizes past :data:`config_checks.SIZE_LIMITS`
    (num_hidden_layers 1e12 must not reach a loop over the layers).
    """
    name, value = config_field(config, names, default)
    return config_checks.whole(name, value)


def config_switch(config: Mapping[str, Any], name: str, default: bool) -> bool:
    """A true/false setting of config.json; anything but a JSON boolean is a one-line error naming it."""
    value = config.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise CheckpointError(f"config.json: {name} is {shown(value)}, but must be true or false")
    return value


def shown(value: Any, limit: int = 60) -> str:
    """A config value as JSON, cut short for a one-line message."""
    text = json.dumps(value, default=repr)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def head_width(
    config: Mapping[str, Any], width: tuple[str, ...], heads: tuple[str, ...], d_model: int, n_heads: int
) -> int:
    """d_model / n_heads when config.json gives no head_dim; a one-line error if it does not divide."""
    if d_model % n_heads:
        raise CheckpointError(
            f"config.json: {config_field(config, width)[0]} {d_model} is not a multiple of "
            f"{config_field(config, heads)[0]} {n_heads}, and no head_dim is given"
        )
    return d_model // n_heads


def has_any(config: Mapping[str, Any], names: tuple[str, ...]) -> bool:
    """Whether config.json gives any of ``names`` (not null)."""
    return any(config.get(name) is not None for name in names)


def json_kind(value: Any) -> str:
    """The JSON name of a parsed value's type (list -> array, str -> string, ...)."""
    kinds = {list: "array", str: "string", bool: "boolean", int: "number", float: "number", type(None): "null"}
    return kinds.get(type(value), type(value).__name__)

"""Checks of config.json fields by name: each bad value is one line naming the field and the value.

Pure functions (no torch, no checkpoint reads), so that a bad rotary setting, layer kind or
size is refused before any work, instead of surfacing later as a KeyError, a TypeError, a
ZeroDivisionError, an eigh that does not converge or an integer that overflows int32 after
the whole computation. What transformers 5.x requires of each ``rope_type``
(``RotaryEmbeddingConfigMixin._validate_*_rope_parameters``) is required here too; where it only
warns (a factor below 1, long_factor of the wrong length) the value is still refused if it
cannot give finite, positive frequencies. Names are those of config.json, dotted into nested
objects (``rope_scaling.factor``, ``rope_parameters.sliding_attention.rope_theta``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any, NoReturn

from ..errors import CheckpointError

MAX_LAYERS = 4096
"""More layers than any published transformer has (the deepest have ~200): above it config.json is corrupt."""
MAX_HEADS = 65536
MAX_WIDTH = 2**20
"""d_model and every per-head width (the widest published d_model is ~3e4, d_head 512)."""
MAX_POSITIONS = 2**31 - 1
"""Positions and offsets are stored as int32."""

SIZE_LIMITS = {
    **dict.fromkeys(("num_hidden_layers", "n_layer"), MAX_LAYERS),
    **dict.fromkeys(("num_attention_heads", "n_head", "num_key_value_heads", "num_kv_heads"), MAX_HEADS),
    **dict.fromkeys(
        (
            "hidden_size",
            "n_embd",
            "n_embed",
            "head_dim",
            "rotary_dim",
            "qk_nope_head_dim",
            "qk_rope_head_dim",
            "kv_lora_rank",
            "q_lora_rank",
        ),
        MAX_WIDTH,
    ),
    **dict.fromkeys(
        (
            "sliding_window",
            "max_position_embeddings",
            "n_positions",
            "original_max_position_embeddings",
            "attention_chunk_size",
            "local_attention",
        ),
        MAX_POSITIONS,
    ),
}
"""The largest value :func:`whole` accepts for a size field, by its config.json name."""

NON_ATTENTION_KINDS = ("linear_attention",)
"""transformers' layer_types of layers without softmax attention that the builder knows (and skips)."""

_FLOAT32_MAX = 3.4028234663852886e38


def shown(value: Any, limit: int = 60) -> str:
    """A config value as JSON (NaN, Infinity as Python writes them), cut short for a one-line message."""
    text = json.dumps(value, default=repr)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def refuse(name: str, value: Any, must: str) -> NoReturn:
    raise CheckpointError(f"config.json: {name} is {shown(value)}, but must be {must}")


def missing(name: str, why: str) -> NoReturn:
    raise CheckpointError(f"config.json: {name} is missing, but {why}")


def whole(name: str, value: Any, minimum: int = 1, maximum: int | None = None) -> int:
    """A whole number in [minimum, maximum] (default maximum: :data:`SIZE_LIMITS` of the field's last name part)."""
    if type(value) is not int or value < minimum:  # bool is an int subclass: refused too
        refuse(name, value, "a positive whole number" if minimum == 1 else f"a whole number >= {minimum}")
    maximum = SIZE_LIMITS.get(name.rsplit(".", 1)[-1]) if maximum is None else maximum
    if maximum is not None and value > maximum:
        raise CheckpointError(
            f"config.json: {name} is {shown(value)}, above the {maximum} this builder accepts: is config.json corrupt?"
        )
    return value


def real(
    name: str, value: Any, *, above: float | None = None, at_least: float | None = None, below: float | None = None
) -> float:
    """A finite JSON number (not a string or boolean), > ``above``, >= ``at_least``, < ``below``."""
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    ok = ok and (above is None or value > above) and (at_least is None or value >= at_least)
    ok = ok and (below is None or value < below)
    if not ok:
        bounds = [
            f"{sign} {bound:g}" for sign, bound in ((">", above), (">=", at_least), ("<", below)) if bound is not None
        ]
        refuse(name, value, " ".join(["a finite number", " and ".join(bounds)]).strip())
    return float(value)


def switch(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        refuse(name, value, "true or false")
    return value


def rope_theta(name: str, value: Any) -> float:
    """The rotary base: finite, above 1 (frequencies must fall with the dim; yarn divides by ln theta) and float32."""
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and 1 < value < _FLOAT32_MAX
    if not ok:
        refuse(name, value, "a finite number > 1 that float32 holds (the rotary base, e.g. 10000)")
    return float(value)


def positions(name: str, value: Any) -> int | None:
    """A position count (max_position_embeddings, n_positions, ...): None when absent, else 1 .. 2^31 - 1."""
    return None if value is None else whole(name, value, 1, MAX_POSITIONS)


def layer_kind(name: str, value: Any, softmax_kinds) -> str:
    """One layer_types entry (after transformers' legacy renames): a kind with softmax attention or a known other one."""
    known = sorted({*softmax_kinds, *NON_ATTENTION_KINDS})
    if not isinstance(value, str) or value not in known:
        raise CheckpointError(
            f"config.json: {name} is {shown(value)}, a layer kind this builder does not know (known: {', '.join(known)})"
        )
    return value


def rope_scaling(
    name: str,
    params: Any,
    *,
    rotary_dim: int,
    max_position_embeddings: int | None,
    original_max_position_embeddings: int | None,
) -> None:
    """The fields of one layer's rope parameters (``name``: where they sit in config.json), by rope_type.

    ``params`` is the dict with ``type`` renamed to ``rope_type`` and rope_theta and
    partial_rotary_factor removed (checked elsewhere). Unknown rope types are left to
    :mod:`.rotary`, which builds no positional spectra for them.
    """
    if params is None:
        return
    if not isinstance(params, Mapping):
        refuse(name, params, "an object of rope settings or null")
    kind = params.get("rope_type", "default")
    if not isinstance(kind, str):
        refuse(f"{name}.rope_type", kind, 'a string such as "linear" or "yarn"')
    field = f"{name}.{{}}".format

    def number(key, **bounds):
        value = params.get(key)
        return None if value is None else real(field(key), value, **bounds)

    def needed(key, **bounds):
        if params.get(key) is None:
            missing(field(key), f"rope_type {kind} needs it")
        return number(key, **bounds)

    original = params.get("original_max_position_embeddings")
    if original is not None:
        whole(field("original_max_position_embeddings"), original, 1, MAX_POSITIONS)
    original = original or original_max_position_embeddings or max_position_embeddings
    if kind in ("linear", "dynamic", "llama3"):
        needed("factor", above=0.0)
    if kind in ("llama3", "yarn", "longrope") and original is None:
        missing(field("original_max_position_embeddings"), f"rope_type {kind} needs it (or max_position_embeddings)")
    if kind == "llama3":
        needed("low_freq_factor", above=0.0)
        needed("high_freq_factor", above=0.0)
    elif kind in ("yarn", "longrope"):
        if number("factor", above=0.0) is None and max_position_embeddings is None:
            missing(field("factor"), f"rope_type {kind} needs it when max_position_embeddings is not given")
        number("attention_factor", above=0.0)
    if kind == "yarn":
        for key in ("beta_fast", "beta_slow", "mscale", "mscale_all_dim"):
            number(key, at_least=0.0)  # 0 (or null) means the default, as transformers' `or` reads it
        if params.get("truncate") is not None:
            switch(field("truncate"), params["truncate"])
    elif kind == "longrope":
        if original < 2:
            refuse(field("original_max_position_embeddings"), original, "at least 2 (longrope divides by its log)")
        for key in ("short_factor", "long_factor"):
            if params.get(key) is None:
                missing(field(key), "rope_type longrope needs it")
            factor_list(field(key), params[key], (rotary_dim + 1) // 2)


def factor_list(name: str, value: Any, length: int) -> list[float]:
    """longrope's short_factor / long_factor: ``length`` finite numbers > 0 (one per rotary frequency)."""
    ok = isinstance(value, list) and len(value) == length
    ok = ok and all(
        not isinstance(x, bool) and isinstance(x, (int, float)) and math.isfinite(x) and x > 0 for x in value
    )
    if not ok:
        refuse(name, value, f"a list of {length} finite numbers > 0 (one per rotary frequency)")
    return [float(x) for x in value]


def check_layers_present(
    model_id: str, config: Mapping[str, Any], layout: Any, checkpoint: Any, n_layers: int, layers
) -> None:
    """The last attention layer config.json implies is in the checkpoint's headers (no data read).

    Run before any layer is read, so that a ``num_hidden_layers`` far beyond the weights is one
    line at once rather than a missing-tensor error after the earlier layers' work.
    """
    if not layers or layout.has_layer(checkpoint, layers[-1]):
        return
    text = config.get("text_config") if isinstance(config.get("text_config"), Mapping) else {}
    name = next((n for n in ("num_hidden_layers", "n_layer") if n in config or n in text), "num_hidden_layers")
    raise CheckpointError(
        f"{model_id}: config.json: {name} is {n_layers}, but the weights have no {layout.query_tensor(layers[-1])} "
        f"(layer {layers[-1]}): config and weights do not match"
    )

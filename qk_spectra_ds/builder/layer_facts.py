"""What each softmax-attention layer does, read from config.json: its kind (full / sliding / chunked) and its rotary.

The vocabulary the model-type records (:mod:`.model_types`) describe their layers with:
:class:`LayerFacts` and :class:`RopeSpec`, transformers 5.x's ``layer_types`` and
``rope_parameters`` / legacy ``rope_scaling`` reading, and the per-layer patterns that several
families share (a window everywhere, every n-th layer global, ...).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import CheckpointError
from . import config_checks
from .config_fields import config_count, config_value, shown
from .layouts import AttentionShape


@dataclass(frozen=True)
class RopeSpec:
    """The rotary embedding of one layer, as config.json defines it (transformers 5.x semantics)."""

    theta: float  # base
    rotary_dim: int  # dims of each head that rotate (partial rotary: < d_head)
    interleaved: bool  # True: pairs (2i, 2i+1) (GPT-J style); False: rotate-half pairs (i, i + r/2)
    scaling: dict | None  # the rope_scaling / rope_parameters dict (rope_type, factor, ...); None for default
    max_position_embeddings: int | None
    rotary_start: int = 0  # first rotating dim within the head (MLA: qk_nope_head_dim; else 0)


@dataclass(frozen=True)
class LayerFacts:
    """What one softmax-attention layer does, from config.json."""

    layer: int  # true layer index in the model
    attention_type: str  # 'full', 'sliding' or 'chunked'
    sliding_window: int | None  # tokens each query sees (sliding layers only)
    rope: RopeSpec | None  # None: no rotary at this layer (NoPE, absolute positions, ALiBi)


FULL, SLIDING, CHUNKED = "full_attention", "sliding_attention", "chunked_attention"
SOFTMAX_KINDS = {FULL: "full", SLIDING: "sliding", CHUNKED: "chunked", "hybrid": "full"}
"""transformers' layer_types values that hold softmax attention, and the attention_type they give."""

_LEGACY_KINDS = {"attention": FULL, "mamba": "linear_attention"}  # transformers' _LEGACY_LAYER_TYPE_REMAP


def layer_kinds(config: Mapping[str, Any], n_layers: int, default: Callable[[int], str]) -> list[str]:
    """transformers' ``layer_types`` of every layer: config.json's list if given, else ``default(i)``.

    A kind the builder does not know is refused (as transformers refuses it), never skipped:
    skipping would drop that layer's rows while n_layers still counts it.
    """
    given = config.get("layer_types")
    if given is None:
        return [default(i) for i in range(n_layers)]
    if not isinstance(given, list) or len(given) != n_layers or not all(isinstance(k, str) for k in given):
        raise CheckpointError(f"config.json: layer_types is {shown(given)}, not a list of {n_layers} layer kinds")
    return [
        config_checks.layer_kind(f"layer_types[{i}]", _LEGACY_KINDS.get(k, k), SOFTMAX_KINDS)
        for i, k in enumerate(given)
    ]


def rope_parameters(
    config: Mapping[str, Any], kind: str, default_theta: float, legacy_theta: str = "rope_theta"
) -> tuple[float, dict | None, float | None]:
    """(theta, scaling, partial_rotary_factor) of layers of ``kind``, as transformers 5.x reads config.json.

    ``rope_parameters`` (flat, or nested per layer kind) wins; else the legacy
    keys: ``rope_scaling`` and ``legacy_theta`` (``rope_theta``; Gemma 3's local
    layers: ``rope_local_base_freq``), else the config class's default theta.
    """
    return _rope_parameters(config, kind, default_theta, legacy_theta)[:3]


def _rope_parameters(
    config: Mapping[str, Any], kind: str, default_theta: float, legacy_theta: str
) -> tuple[float, dict | None, float | None, str]:
    """:func:`rope_parameters` and where its scaling sits in config.json (for messages); theta checked by name."""
    params, where = config.get("rope_parameters"), "rope_parameters"
    if params is not None and not isinstance(params, Mapping):
        config_checks.refuse(where, params, "an object of rope settings or null")
    if isinstance(params, Mapping) and any(isinstance(v, Mapping) for v in params.values()):
        key = kind if params.get(kind) else FULL
        params, where = params.get(key), f"rope_parameters.{key}"
        if params is not None and not isinstance(params, Mapping):
            config_checks.refuse(where, params, "an object of rope settings or null")
    if isinstance(params, Mapping):
        theta = config_checks.rope_theta(f"{where}.rope_theta", params.get("rope_theta", default_theta))
        scaling = params
    else:
        theta = config_checks.rope_theta(legacy_theta, config_value(config, legacy_theta, default=default_theta))
        scaling, where = config.get("rope_scaling"), "rope_scaling"
        if scaling is not None and not isinstance(scaling, Mapping):
            config_checks.refuse(where, scaling, "an object of rope settings or null")
    partial = (scaling or {}).get("partial_rotary_factor", config.get("partial_rotary_factor"))
    scaling = {
        ("rope_type" if k == "type" else k): v
        for k, v in (scaling or {}).items()
        if k not in ("rope_theta", "partial_rotary_factor")
    }
    if scaling.get("rope_type", "default") == "default":
        scaling = None
    return theta, scaling, partial, where


def rope_spec(
    config: Mapping[str, Any],
    kind: str,
    d_rot: int,
    *,
    default_theta: float = 10000.0,
    interleaved: bool = False,
    default_partial: float = 1.0,
    legacy_theta: str = "rope_theta",
    rotary_start: int = 0,
) -> RopeSpec:
    """The rotary embedding of a layer of ``kind`` whose heads have ``d_rot`` dims open to rotation.

    Every rotary field is checked by name here (:func:`config_checks.rope_scaling`), before any work.
    """
    theta, scaling, partial, where = _rope_parameters(config, kind, default_theta, legacy_theta)
    partial = default_partial if partial is None else partial
    if isinstance(partial, bool) or not isinstance(partial, (int, float)) or not 0 < partial <= 1:
        raise CheckpointError(f"config.json: partial_rotary_factor is {shown(partial)}, not in (0, 1]")
    max_pos = config_checks.positions("max_position_embeddings", config.get("max_position_embeddings"))
    original = config_checks.positions(
        "original_max_position_embeddings", config.get("original_max_position_embeddings")
    )
    rotary_dim = int(d_rot * partial)
    if rotary_dim % 2 and rotary_dim == d_rot:  # transformers rounds an odd partial width up: a whole head cannot be
        raise CheckpointError(
            f"config.json: partial_rotary_factor is {shown(partial)} on heads of {d_rot} rotary dims, but rotary "
            "embeddings rotate pairs of dims: an odd head cannot rotate whole (check head_dim, hidden_size / num_attention_heads)"
        )
    config_checks.rope_scaling(
        where,
        scaling,
        rotary_dim=rotary_dim,
        max_position_embeddings=max_pos,
        original_max_position_embeddings=original,
    )
    return RopeSpec(theta, rotary_dim, interleaved, scaling, max_pos, rotary_start)


def window_of(config: Mapping[str, Any], default: int | None = None) -> int | None:
    """config.json's sliding_window (a positive whole number), or ``default``; 0 (Qwen2-MoE without a window): None."""
    if config.get("sliding_window") is None:
        return default
    if config.get("sliding_window") == 0 and type(config.get("sliding_window")) is int:
        return None
    return config_count(config, "sliding_window")


def facts_from_kinds(
    kinds: list[str], window: int | None, rope: Callable[[int, str], RopeSpec | None]
) -> list[LayerFacts]:
    """LayerFacts of the softmax layers among ``kinds``; ``rope(layer, kind)`` gives each one's rotary."""
    facts = []
    for layer, kind in enumerate(kinds):
        if kind not in SOFTMAX_KINDS:
            continue
        attention = SOFTMAX_KINDS[kind]
        facts.append(LayerFacts(layer, attention, window if attention == "sliding" else None, rope(layer, kind)))
    return facts


def llama_like_facts(
    *,
    default_kind: Callable[[Mapping[str, Any], int], str] = lambda c, i: FULL,
    default_window: int | None = None,
    default_theta: float = 10000.0,
    interleaved: bool = False,
    default_partial: float = 1.0,
    has_rope: Callable[[Mapping[str, Any], int, str], bool] = lambda c, i, kind: True,
) -> Callable[[Mapping[str, Any], AttentionShape], list[LayerFacts]]:
    """Facts of a decoder whose layers differ only by kind (full / sliding / ...) and by rope or NoPE."""

    def facts(config: Mapping[str, Any], shape: AttentionShape) -> list[LayerFacts]:
        kinds = layer_kinds(config, shape.n_layers, lambda i: default_kind(config, i))
        window = window_of(config, default_window)

        def rope(layer: int, kind: str) -> RopeSpec | None:
            if not has_rope(config, layer, kind):
                return None
            return rope_spec(
                config,
                kind,
                shape.d_head,
                default_theta=default_theta,
                interleaved=interleaved,
                default_partial=default_partial,
            )

        return facts_from_kinds(kinds, window, rope)

    return facts


def window_everywhere(config: Mapping[str, Any], i: int) -> str:
    """Mistral, Mixtral, Starcoder2, Phi-3: every layer slides when config.json sets a sliding_window."""
    return SLIDING if config.get("sliding_window") is not None else FULL


def every_nth_full(pattern_key: str, default: int) -> Callable[[Mapping[str, Any], int], str]:
    """Layer i is global iff (i + 1) % pattern == 0, else sliding (Gemma 3, Cohere2, Exaone4 ...)."""

    def kind(config: Mapping[str, Any], i: int) -> str:
        pattern = config_value(config, pattern_key, default=default)
        if type(pattern) is not int or pattern <= 0:
            raise CheckpointError(f"config.json: {pattern_key} is {shown(pattern)}, not a positive whole number")
        return FULL if (i + 1) % pattern == 0 else SLIDING

    return kind


def no_facts(config: Mapping[str, Any], shape: AttentionShape) -> list[LayerFacts]:
    """Absolute positions or ALiBi: every layer full attention, no rotary."""
    return [LayerFacts(layer, "full", None, None) for layer in range(shape.n_layers)]


def layer_pattern(config: Mapping[str, Any], name: str, default: int, minimum: int = 1) -> int:
    """A layer-pattern count of config.json (an interval, a layer index): a whole number >= ``minimum``, by name."""
    return config_checks.whole(name, config_value(config, name, default=default), minimum, config_checks.MAX_POSITIONS)

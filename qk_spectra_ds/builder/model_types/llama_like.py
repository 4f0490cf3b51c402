"""Llama-like decoders: separate ``q_proj`` / ``k_proj`` per layer under ``layers.N.self_attn.``.

Llama, Mistral, Mixtral, Qwen 2/3 (and their MoE), Gemma 1/2/3, OLMo 1/2/3, Granite, the
2025-26 decoders (gpt-oss, SmolLM3, Cohere2, GLM-4, EXAONE 4, Starcoder2, Llama 4's text
tower, Falcon-H1), and two variants of the layout: Phi-3's fused ``qkv_proj`` and
Qwen3-Next's gated ``q_proj``. Only the self_attn tensors are read (MoE experts never are).
Rows split per head; head_dim from config.json when present (Gemma: d_head * H != d_model).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ...errors import CheckpointError
from ..config_fields import config_count, config_switch, config_value, shown
from ..layer_facts import (
    CHUNKED,
    FULL,
    SLIDING,
    LayerFacts,
    RopeSpec,
    every_nth_full,
    facts_from_kinds,
    layer_kinds,
    layer_pattern,
    llama_like_facts,
    rope_spec,
    window_everywhere,
    window_of,
)
from ..layouts import AttentionShape, FusedSections, GatedQuery, SeparateProjections
from .folding_rules import LAYER, FoldingFacts, head_dim, llama_like_folding, positive_number
from .record import FactsReader, FoldingRule, ModelType, shape_reader

LLAMA_SHAPE = shape_reader(("num_hidden_layers",), ("num_attention_heads",), ("hidden_size",))


def _self_attn(*projections: str) -> tuple[str, ...]:
    """The tensor names (suffixes) of a layer's ``self_attn`` projections."""
    return tuple(f"layers.{{layer}}.self_attn.{p}.weight" for p in projections)


LLAMA_LAYOUT = SeparateProjections(*_self_attn("q_proj", "k_proj", "v_proj", "o_proj"))

# ---------------------------------------------------------------- layer kinds


def _qwen2_kind(config: Mapping[str, Any], i: int) -> str:
    """Qwen2/Qwen3: layers from max_window_layers on slide when use_sliding_window is set."""
    slides = config_switch(config, "use_sliding_window", False) and config.get("sliding_window") is not None
    return SLIDING if slides and i >= layer_pattern(config, "max_window_layers", 28, minimum=0) else FULL


def _alternating(config: Mapping[str, Any], i: int) -> str:
    """Gemma 2: even layers slide, odd layers are global."""
    return SLIDING if (i + 1) % 2 else FULL


def _gpt_oss_kind(config: Mapping[str, Any], i: int) -> str:
    """gpt-oss: even layers slide (window 128), odd layers are global."""
    return SLIDING if i % 2 == 0 else FULL


def _qwen2_moe_kind(config: Mapping[str, Any], i: int) -> str:
    """Qwen2-MoE: even layers below max_window_layers slide when use_sliding_window is set."""
    slides = config_switch(config, "use_sliding_window", False)
    return SLIDING if slides and i % 2 == 0 and i < layer_pattern(config, "max_window_layers", 28, minimum=0) else FULL


def _qwen3_moe_kind(config: Mapping[str, Any], i: int) -> str:
    """Qwen3-MoE: every layer slides when use_sliding_window is set."""
    return SLIDING if config_switch(config, "use_sliding_window", False) and config.get("sliding_window") else FULL


def _qwen3_next_kind(config: Mapping[str, Any], i: int) -> str:
    """Qwen3-Next / Qwen3.5: softmax attention every full_attention_interval-th layer, linear attention between."""
    interval = layer_pattern(config, "full_attention_interval", 4)
    return FULL if (i + 1) % interval == 0 else "linear_attention"


def _rope_flags(config: Mapping[str, Any], n_layers: int) -> list[bool]:
    """Llama 4 / SmolLM3 ``no_rope_layers``: 1 = rotary, 0 = NoPE; default every no_rope_layer_interval-th is NoPE."""
    flags = config.get("no_rope_layers")
    if not flags:  # null or [] -> the config class's default
        interval = config_value(config, "no_rope_layer_interval", default=4)
        if type(interval) is not int or interval <= 0:
            raise CheckpointError(
                f"config.json: no_rope_layer_interval is {shown(interval)}, not a positive whole number"
            )
        return [(i + 1) % interval != 0 for i in range(n_layers)]
    if not isinstance(flags, list) or len(flags) < n_layers or any(f not in (0, 1) for f in flags):
        raise CheckpointError(f"config.json: no_rope_layers is {shown(flags)}, not {n_layers} flags of 0 or 1")
    return [bool(f) for f in flags[:n_layers]]


# ---------------------------------------------------------------- layer facts beyond llama_like_facts


def _gemma3_facts(config: Mapping[str, Any], shape: AttentionShape) -> list[LayerFacts]:
    """Gemma 3: sliding layers rotate with rope_local_base_freq (1e4), global ones with rope_theta (1e6)."""
    kinds = layer_kinds(config, shape.n_layers, lambda i: every_nth_full("sliding_window_pattern", 6)(config, i))

    def rope(layer: int, kind: str) -> RopeSpec:
        if kind == SLIDING:
            local = {k: v for k, v in config.items() if k != "rope_scaling"}  # legacy rope_scaling: global layers only
            return rope_spec(local, kind, shape.d_head, default_theta=1e4, legacy_theta="rope_local_base_freq")
        return rope_spec(config, kind, shape.d_head, default_theta=1e6)

    return facts_from_kinds(kinds, window_of(config, 4096), rope)


def _llama4_facts(config: Mapping[str, Any], shape: AttentionShape) -> list[LayerFacts]:
    """Llama 4: rotary layers do chunked attention (attention_chunk_size), NoPE layers global attention."""
    ropes = _rope_flags(config, shape.n_layers)
    chunked = config.get("attention_chunk_size") is not None and bool(config_count(config, "attention_chunk_size"))
    kinds = layer_kinds(config, shape.n_layers, lambda i: CHUNKED if ropes[i] and chunked else FULL)
    return facts_from_kinds(
        kinds,
        None,
        lambda layer, kind: (
            rope_spec(config, kind, shape.d_head, default_theta=5e5, interleaved=True) if ropes[layer] else None
        ),
    )


def _smollm3_facts(config: Mapping[str, Any], shape: AttentionShape) -> list[LayerFacts]:
    """SmolLM3: NoPE every 4th layer; with use_sliding_window those NoPE layers slide."""
    ropes = _rope_flags(config, shape.n_layers)
    slides = config_switch(config, "use_sliding_window", False) and config.get("sliding_window") is not None
    kinds = layer_kinds(config, shape.n_layers, lambda i: SLIDING if slides and not ropes[i] else FULL)
    return facts_from_kinds(
        kinds,
        window_of(config),
        lambda layer, kind: rope_spec(config, kind, shape.d_head, default_theta=2e6) if ropes[layer] else None,
    )


def _olmo3_facts(config: Mapping[str, Any], shape: AttentionShape) -> list[LayerFacts]:
    """OLMo 3: global every 4th layer, else sliding (4096); a legacy rope_theta sets the global layers only."""
    kinds = layer_kinds(config, shape.n_layers, lambda i: FULL if (i + 1) % 4 == 0 else SLIDING)
    local = {k: v for k, v in config.items() if k != "rope_theta"}

    def rope(layer: int, kind: str) -> RopeSpec:
        return rope_spec(config if kind == FULL else local, kind, shape.d_head, default_theta=5e5)

    return facts_from_kinds(kinds, window_of(config, 4096), rope)


def _exaone4_facts(config: Mapping[str, Any], shape: AttentionShape) -> list[LayerFacts]:
    """EXAONE 4: with a sliding window, global every sliding_window_pattern-th layer and NoPE there."""
    windowed = config.get("sliding_window") is not None
    pattern = every_nth_full("sliding_window_pattern", 4)
    kinds = layer_kinds(config, shape.n_layers, lambda i: pattern(config, i) if windowed else FULL)
    return facts_from_kinds(
        kinds,
        window_of(config),
        lambda layer, kind: rope_spec(config, kind, shape.d_head) if not windowed or kind == SLIDING else None,
    )


# ---------------------------------------------------------------- folding rules


def _query_pre_attn(c, layer):
    return positive_number(c, "query_pre_attn_scalar", 256.0) ** -0.5


def _granite(c, layer):
    return positive_number(c, "attention_multiplier", 1.0)


def _olmo(c, layer):
    return FoldingFacts(
        (),
        LAYER,
        0.0,
        None,
        None,
        "head",
        0.0,
        head_dim(c) ** -0.5,
        ("clip_qkv: clamp of q, k, v",) if c.get("clip_qkv") else (),
    )


def _olmo2(c, layer):
    return FoldingFacts(
        (),
        None,
        0.0,
        f"layers.{layer}.self_attn.q_norm.weight",
        f"layers.{layer}.self_attn.k_norm.weight",
        "full",
        0.0,
        head_dim(c) ** -0.5,
    )


# ---------------------------------------------------------------- the records


def _decoder(
    name: str,
    facts: FactsReader,
    folding: FoldingRule | None,
    *,
    layout=LLAMA_LAYOUT,
    post_attention_norm: float | None = None,
) -> ModelType:
    """A decoder with the Llama shape fields; ``folding`` is required (None: no folded variant)."""
    return ModelType(
        name=name,
        shape_fn=LLAMA_SHAPE,
        layout_fn=lambda c: layout,
        facts_fn=facts,
        folding=folding,
        post_attention_norm=post_attention_norm,
    )


_SOFTCAP = ("attn_logit_softcapping: tanh soft-cap of the logits",)

RECORDS = (
    _decoder("llama", llama_like_facts(), llama_like_folding()),
    _decoder("olmo", llama_like_facts(), _olmo),
    _decoder("olmo2", llama_like_facts(), _olmo2, post_attention_norm=0.0),
    _decoder("gemma", llama_like_facts(), llama_like_folding(offset=1.0)),
    _decoder("mistral", llama_like_facts(default_kind=window_everywhere, default_window=4096), llama_like_folding()),
    _decoder("mixtral", llama_like_facts(default_kind=window_everywhere, default_theta=1e6), llama_like_folding()),
    _decoder("qwen2", llama_like_facts(default_kind=_qwen2_kind), llama_like_folding()),
    _decoder("qwen3", llama_like_facts(default_kind=_qwen2_kind), llama_like_folding(qk="head")),
    _decoder(
        "gemma2",
        llama_like_facts(default_kind=_alternating, default_window=4096),
        llama_like_folding(offset=1.0, scale_fn=_query_pre_attn, outside=_SOFTCAP),
        post_attention_norm=1.0,
    ),
    _decoder(
        "gemma3_text",
        _gemma3_facts,
        llama_like_folding(offset=1.0, qk="head", qk_offset=1.0, scale_fn=_query_pre_attn),
        post_attention_norm=1.0,
    ),
    # 2025-26 dense and MoE decoders (experts never read: only self_attn tensors are)
    _decoder("olmo3", _olmo3_facts, _olmo2, post_attention_norm=0.0),
    _decoder("qwen2_moe", llama_like_facts(default_kind=_qwen2_moe_kind), llama_like_folding()),
    _decoder("qwen3_moe", llama_like_facts(default_kind=_qwen3_moe_kind), llama_like_folding(qk="head")),
    _decoder("gpt_oss", llama_like_facts(default_kind=_gpt_oss_kind, default_window=128, default_theta=1.5e5), None),
    _decoder("smollm3", _smollm3_facts, llama_like_folding()),
    _decoder(
        "cohere2",
        llama_like_facts(
            default_kind=every_nth_full("sliding_window_pattern", 4),
            default_window=4096,
            interleaved=True,
            has_rope=lambda c, i, kind: kind == SLIDING,
        ),
        None,
    ),
    _decoder("glm4", llama_like_facts(interleaved=True, default_partial=0.5), None),
    _decoder("exaone4", _exaone4_facts, None),
    _decoder("granite", llama_like_facts(), llama_like_folding(scale_fn=_granite)),
    _decoder("starcoder2", llama_like_facts(default_kind=window_everywhere), None),
    _decoder("llama4_text", _llama4_facts, None),
    _decoder("falcon_h1", llama_like_facts(default_kind=lambda c, i: "hybrid"), None),
    _decoder(
        "qwen3_next",
        llama_like_facts(default_kind=_qwen3_next_kind, default_partial=0.25),
        None,
        layout=GatedQuery(*_self_attn("q_proj", "k_proj", "v_proj", "o_proj")),
    ),
    _decoder(  # head_dim from config.json when present, as Phi3Attention does
        "phi3",
        llama_like_facts(default_kind=window_everywhere),
        llama_like_folding(),
        layout=FusedSections(*_self_attn("qkv_proj", "o_proj")),
    ),
)

"""Multi-head latent attention (MLA): DeepSeek V2 and V3.

Q and K are compositions of latent maps (:class:`..latent_layout.LatentAttention`); the
latent norms' gains sit inside those maps, so the folding rule names them as ``latent_norms``
and the layout composes them; the OV circuit's head width is ``v_head_dim``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from ...errors import CheckpointError
from ..config_fields import config_count, config_switch
from ..latent_layout import LatentAttention
from ..layer_facts import FULL, LayerFacts, rope_parameters, rope_spec
from ..layouts import AttentionShape, Layout
from .folding_rules import RMS, FoldingFacts
from .record import ModelType

# ---------------------------------------------------------------- shape, layout, layer facts


def _mla_sizes(config: Mapping[str, Any]) -> tuple[int, int, int]:
    """(qk_nope_head_dim, qk_rope_head_dim, kv_lora_rank) of an MLA config."""
    return (
        config_count(config, "qk_nope_head_dim"),
        config_count(config, "qk_rope_head_dim"),
        config_count(config, "kv_lora_rank"),
    )


def _mla_shape(config: Mapping[str, Any]) -> AttentionShape:
    """MLA: d_head = qk_nope_head_dim + qk_rope_head_dim (never config's head_dim, = the rope dims); a key per head."""
    n_layers = config_count(config, "num_hidden_layers")
    n_heads = config_count(config, "num_attention_heads")
    d_model = config_count(config, "hidden_size")
    dn, dr, _ = _mla_sizes(config)
    return AttentionShape(n_layers, n_heads, n_heads, d_model, dn + dr)


def _mla_layout(config: Mapping[str, Any]) -> Layout:
    dn, dr, rkv = _mla_sizes(config)
    q_lora = config.get("q_lora_rank") is not None
    if q_lora:
        config_count(config, "q_lora_rank")
    return LatentAttention(q_lora=q_lora, d_nope=dn, d_rope=dr, kv_rank=rkv)


def _mla_facts(honours_rope_interleave: bool) -> Callable[[Mapping[str, Any], AttentionShape], list[LayerFacts]]:
    """MLA: every layer full attention; the last qk_rope_head_dim dims of each head rotate.

    DeepSeek V2 always pairs adjacent dims (its ``apply_rotary_emb`` views them as complex
    numbers); V3 does when ``rope_interleave`` (default true), else rotate-half within the rope dims.
    """

    def facts(config: Mapping[str, Any], shape: AttentionShape) -> list[LayerFacts]:
        dn, dr, _ = _mla_sizes(config)
        interleaved = config_switch(config, "rope_interleave", True) if honours_rope_interleave else True
        spec = rope_spec(config, FULL, dr, interleaved=interleaved, rotary_start=dn)
        return [LayerFacts(layer, "full", None, spec) for layer in range(shape.n_layers)]

    return facts


# ---------------------------------------------------------------- folding rule


MLA_OUTSIDE = (
    "latent RMS norms: q_a_layernorm divides the whole query by its latent's RMS, but kv_a_layernorm divides "
    "only the key's nope rows by the kv latent's RMS (the shared rope rows are not): the per-token weight of the "
    "nope part against the rope part of the logit"
)


def _mla(c, layer):
    """DeepSeek V2/V3: RMS input_layernorm, the latent norms' gains inside the maps, c = the module's scaling."""
    base = f"layers.{layer}.self_attn."
    q_norm = base + "q_a_layernorm.weight" if c.get("q_lora_rank") is not None else None
    return FoldingFacts(
        (f"layers.{layer}.input_layernorm.weight",),
        RMS,
        0.0,
        None,
        None,
        "head",
        0.0,
        _mla_scale(c),
        (MLA_OUTSIDE,),
        (q_norm, base + "kv_a_layernorm.weight"),
    )


def _mla_scale(c) -> float:
    """DeepseekV2/V3Attention.scaling: qk_head_dim^-1/2, times mscale^2 (yarn_apply_mscale) for scaled rope."""
    scale = (config_count(c, "qk_nope_head_dim") + config_count(c, "qk_rope_head_dim")) ** -0.5
    _, scaling, _ = rope_parameters(c, FULL, 10000.0)
    mscale_all_dim = (scaling or {}).get("mscale_all_dim")
    if mscale_all_dim:  # any rope_type but default, as transformers does
        factor = scaling.get("factor")
        if isinstance(factor, bool) or not isinstance(factor, (int, float)):
            raise CheckpointError(f"config.json: the rope factor is {factor!r}, but mscale_all_dim needs a number")
        mscale = 1.0 if factor <= 1 else 0.1 * mscale_all_dim * math.log(factor) + 1.0
        scale *= mscale * mscale
    return scale


RECORDS = tuple(
    ModelType(
        name=name,
        shape_fn=_mla_shape,
        layout_fn=_mla_layout,
        facts_fn=_mla_facts(honours_rope_interleave),
        folding=_mla,
        value_head_dim="v_head_dim",
    )
    for name, honours_rope_interleave in (("deepseek_v2", False), ("deepseek_v3", True))
)

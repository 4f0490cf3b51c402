"""GPT-style and encoder layouts: the older decoders and encoders, each with its own tensor names.

GPT-J and OPT (separate q_proj / k_proj under their own prefixes), BERT (query / key), GPT-2
(a transposed Conv1D ``c_attn``), GPT-NeoX and BLOOM (fused QKV interleaved per head), Falcon
(multi-query, per-head or per-KV-group fused QKV) and ModernBERT (fused ``Wqkv`` sections).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .. import config_checks
from ..config_fields import config_count, config_switch, config_value, head_width
from ..layer_facts import (
    FULL,
    SLIDING,
    LayerFacts,
    RopeSpec,
    facts_from_kinds,
    layer_kinds,
    layer_pattern,
    llama_like_facts,
    no_facts,
    rope_spec,
    window_of,
)
from ..layouts import AttentionShape, Conv1DFused, FusedGroups, FusedSections, Layout, SeparateProjections
from .folding_rules import LAYER, FoldingFacts, head_dim, layer_norm_folding
from .record import ModelType, shape_reader

# ---------------------------------------------------------------- shapes and layouts


def _falcon_shape(config: Mapping[str, Any]) -> AttentionShape:
    n_layers = config_count(config, "num_hidden_layers", "n_layer")
    n_heads = config_count(config, "num_attention_heads", "n_head")
    d_model = config_count(config, "hidden_size", "n_embed")
    if config_switch(config, "new_decoder_architecture", False):
        n_kv = config_count(config, "num_kv_heads", default=n_heads)
    elif config_switch(config, "multi_query", True):
        n_kv = 1
    else:
        n_kv = n_heads
    d_head = head_width(config, ("hidden_size", "n_embed"), ("num_attention_heads", "n_head"), d_model, n_heads)
    return AttentionShape(n_layers, n_heads, n_kv, d_model, d_head)


def _falcon_layout(config: Mapping[str, Any]) -> Layout:
    name, output = "h.{layer}.self_attention.query_key_value.weight", "h.{layer}.self_attention.dense.weight"
    if not config_switch(config, "new_decoder_architecture", False) and config_switch(config, "multi_query", True):
        return FusedSections(name, output)
    return FusedGroups(name, output)


# ---------------------------------------------------------------- layer facts


def _gptj_facts(config: Mapping[str, Any], shape: AttentionShape) -> list[LayerFacts]:
    """GPT-J: interleaved rotary on the first rotary_dim dims of each head (all of them when null)."""
    rotary_dim = config.get("rotary_dim")
    d_rot = shape.d_head if rotary_dim is None else config_count(config, "rotary_dim")
    lengths = [config_checks.positions(n, config.get(n)) for n in ("max_position_embeddings", "n_positions")]
    spec = RopeSpec(10000.0, min(d_rot, shape.d_head), True, None, lengths[0] or lengths[1])
    return [LayerFacts(layer, "full", None, spec) for layer in range(shape.n_layers)]


def _gpt_neox_facts(config: Mapping[str, Any], shape: AttentionShape) -> list[LayerFacts]:
    """GPT-NeoX / Pythia: rotate-half on the first rotary_pct of each head, base rotary_emb_base."""
    params = dict(config)
    if "rope_parameters" not in params:
        params.setdefault("rope_theta", config.get("rotary_emb_base"))
        params.setdefault("partial_rotary_factor", config.get("rotary_pct"))
    spec = rope_spec(params, FULL, shape.d_head, default_partial=0.25)
    return [LayerFacts(layer, "full", None, spec) for layer in range(shape.n_layers)]


def _falcon_facts(config: Mapping[str, Any], shape: AttentionShape) -> list[LayerFacts]:
    """Falcon: rotary unless alibi."""
    if config_switch(config, "alibi", False):
        return no_facts(config, shape)
    return llama_like_facts()(config, shape)


def _modernbert_facts(config: Mapping[str, Any], shape: AttentionShape) -> list[LayerFacts]:
    """ModernBERT: global every global_attn_every_n_layers-th layer (from 0), else local (local_attention / 2 each side)."""
    every = layer_pattern(config, "global_attn_every_n_layers", 3)
    kinds = layer_kinds(config, shape.n_layers, lambda i: FULL if i % every == 0 else SLIDING)
    local = config_value(config, "local_attention", default=128)
    window = window_of(config, config_checks.whole("local_attention", local, 2) // 2)  # tokens each side: at least 1

    def rope(layer: int, kind: str) -> RopeSpec:
        if kind == FULL:
            return rope_spec(config, kind, shape.d_head, default_theta=1.6e5, legacy_theta="global_rope_theta")
        return rope_spec(config, kind, shape.d_head, default_theta=1e4, legacy_theta="local_rope_theta")

    return facts_from_kinds(kinds, window, rope)


# ---------------------------------------------------------------- folding rules


def _gpt2_scale(c, layer):
    scale = head_dim(c) ** -0.5 if c.get("scale_attn_weights", True) else 1.0
    return scale / (layer + 1) if c.get("scale_attn_by_inverse_layer_idx", False) else scale


def _falcon_folding(c, layer):
    names = (f"h.{layer}.ln_attn.weight", f"h.{layer}.input_layernorm.weight")
    return FoldingFacts(
        names,
        LAYER,
        0.0,
        None,
        None,
        "head",
        0.0,
        head_dim(c) ** -0.5,
        ("alibi: additive position bias",) if c.get("alibi") else (),
    )


def _opt(c, layer):
    scale = head_dim(c) ** -0.5
    affine = c.get("layer_norm_elementwise_affine", True)
    if c.get("do_layer_norm_before", True):
        names = (f"decoder.layers.{layer}.self_attn_layer_norm.weight",) if affine else ()
        return FoldingFacts(names, LAYER, 0.0, None, None, "head", 0.0, scale)
    if layer == 0:  # post-norm OPT: layer 0 reads the (projected) embeddings, no norm
        return FoldingFacts((), None, 0.0, None, None, "head", 0.0, scale)
    names = (f"decoder.layers.{layer - 1}.final_layer_norm.weight",) if affine else ()
    return FoldingFacts(names, LAYER, 0.0, None, None, "head", 0.0, scale)


def _bert(c, layer):
    name = "embeddings.LayerNorm.weight" if layer == 0 else f"encoder.layer.{layer - 1}.output.LayerNorm.weight"
    return FoldingFacts((name,), LAYER, 0.0, None, None, "head", 0.0, head_dim(c) ** -0.5)


# ---------------------------------------------------------------- the records


_GPT_SHAPE = shape_reader(
    ("n_layer", "num_hidden_layers"), ("n_head", "num_attention_heads"), ("n_embd", "hidden_size"), (), ()
)
_PLAIN_SHAPE = shape_reader(("num_hidden_layers",), ("num_attention_heads",), ("hidden_size",), (), ())


def _fixed(layout: Layout):
    """A layout that does not depend on config.json."""
    return lambda config: layout


RECORDS = (
    ModelType(
        name="gptj",
        shape_fn=_GPT_SHAPE,
        layout_fn=_fixed(
            SeparateProjections(
                "h.{layer}.attn.q_proj.weight",
                "h.{layer}.attn.k_proj.weight",
                "h.{layer}.attn.v_proj.weight",
                "h.{layer}.attn.out_proj.weight",
            )
        ),
        facts_fn=_gptj_facts,
        folding=layer_norm_folding("h.{layer}.ln_1.weight"),
    ),
    ModelType(
        name="opt",
        shape_fn=_PLAIN_SHAPE,
        layout_fn=_fixed(
            SeparateProjections(
                "decoder.layers.{layer}.self_attn.q_proj.weight",
                "decoder.layers.{layer}.self_attn.k_proj.weight",
                "decoder.layers.{layer}.self_attn.v_proj.weight",
                "decoder.layers.{layer}.self_attn.out_proj.weight",
            )
        ),
        facts_fn=no_facts,
        folding=_opt,
    ),
    ModelType(
        name="bert",
        shape_fn=_PLAIN_SHAPE,
        layout_fn=_fixed(
            SeparateProjections(
                "encoder.layer.{layer}.attention.self.query.weight",
                "encoder.layer.{layer}.attention.self.key.weight",
                "encoder.layer.{layer}.attention.self.value.weight",
                "encoder.layer.{layer}.attention.output.dense.weight",
            )
        ),
        facts_fn=no_facts,
        folding=_bert,
    ),
    ModelType(
        name="gpt2",
        shape_fn=_GPT_SHAPE,
        layout_fn=_fixed(Conv1DFused("h.{layer}.attn.c_attn.weight", "h.{layer}.attn.c_proj.weight")),
        facts_fn=no_facts,
        folding=layer_norm_folding("h.{layer}.ln_1.weight", _gpt2_scale),
    ),
    ModelType(
        name="gpt_neox",
        shape_fn=_PLAIN_SHAPE,
        layout_fn=_fixed(
            FusedGroups("layers.{layer}.attention.query_key_value.weight", "layers.{layer}.attention.dense.weight")
        ),
        facts_fn=_gpt_neox_facts,
        folding=layer_norm_folding("layers.{layer}.input_layernorm.weight"),
    ),
    ModelType(
        name="bloom",
        shape_fn=shape_reader(
            ("n_layer", "num_hidden_layers"), ("n_head", "num_attention_heads"), ("hidden_size", "n_embed"), (), ()
        ),
        layout_fn=_fixed(
            FusedGroups("h.{layer}.self_attention.query_key_value.weight", "h.{layer}.self_attention.dense.weight")
        ),
        facts_fn=no_facts,
        folding=layer_norm_folding("h.{layer}.input_layernorm.weight"),
    ),
    ModelType(
        name="falcon", shape_fn=_falcon_shape, layout_fn=_falcon_layout, facts_fn=_falcon_facts, folding=_falcon_folding
    ),
    ModelType(
        name="modernbert",
        shape_fn=_PLAIN_SHAPE,
        layout_fn=_fixed(FusedSections("layers.{layer}.attn.Wqkv.weight", "layers.{layer}.attn.Wo.weight")),
        facts_fn=_modernbert_facts,
        folding=None,
    ),
)

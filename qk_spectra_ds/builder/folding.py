"""What the model does to the residual stream around W_Q and W_K, per model_type: the folded variant's facts.

The folded circuit of query head h and key head g (see :mod:`qk_spectra_ds.builder.variants`) is

    M_h = c * P D W_Q^h^T G_q^h G_k^g W_K^g D P

- D: the gain of the norm whose output the attention's Q/K projections read
  (``input_layernorm``, ``ln_1``, ...; post-norm models: the previous block's output
  LayerNorm, and the embedding LayerNorm for layer 0). Gemma-family RMSNorms scale by 1 + w.
- P = I - 1 1^T / d_model when that norm is a LayerNorm (it centres its input), else I.
- G_q, G_k: per-head q/k norm gains (Qwen3, Gemma3 with 1 + w, OLMo2's full-width
  q_norm/k_norm sliced per head), identity otherwise.
- c: what the attention module multiplies q.k by (the rotary attention factor a is added
  by the caller for rotary layers: a^2 in c when every dim of the head rotates, else a on
  the rotating dims next to G, :func:`..pipeline.rotary_factor_gains`).

Which tensor feeds each layer's attention was checked per class with forward hooks
(the norm's output is the q projection's input). Effects that are not a bilinear form
(biases, LayerNorm beta, tanh soft-capping, QKV clipping, ALiBi) stay outside M_h and
are listed in :attr:`FoldingFacts.outside`.

Latent attention (DeepSeek V2/V3, MLA): besides D (``input_layernorm``), the latent norms'
gains sit between the two composed maps: W_Q^h = Qb_h G_qa Qa (``q_a_layernorm``; none
without q_lora_rank) and W_K^h = [Kb_h G_kv KVa_latent ; KVa_rope] (``kv_a_layernorm``: the
shared rope key rows skip it). :class:`..architectures.LatentAttention` composes them before
its thin QR, so the kernel gets folded blocks and no gain of its own. c is the module's
``scaling``: qk_head_dim^-1/2, times yarn's mscale(factor, mscale_all_dim)^2 when the rope
type is not default and mscale_all_dim is set (transformers' ``yarn_apply_mscale``). The
latent RMS norms divide by per-token scalars that are NOT one scalar per logit: rms of the
q latent scales the whole query, but the kv latent's rms divides only the key's nope rows
(the rope rows are not divided by it), so the per-token balance between the nope and rope
parts of the logit stays outside M_h (recorded in :attr:`FoldingFacts.outside`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from ..errors import CheckpointError, UnsupportedArchitectureError

RMS, LAYER = "rms", "layer"


@dataclass(frozen=True)
class FoldingFacts:
    """One layer's folding: where D and G come from, and the attention scale c."""

    norm: tuple[str, ...]  # candidate tensor suffixes of D, first present wins; () = no stored gain
    kind: str | None  # RMS, LAYER or None (no norm feeds the attention: D = P = I)
    gain_offset: float  # 1.0 for Gemma's (1 + w)
    q_norm: str | None  # tensor suffix of the per-head q gain (None: G_q = I)
    k_norm: str | None
    qk_norm_width: str  # "head": (d_head,) shared by every head; "full": (H*d_head,) sliced per head
    qk_offset: float
    scale: float  # c_attn
    outside: tuple[str, ...] = field(default=())  # non-bilinear effects left out of M_h
    latent_norms: tuple[str | None, str] | None = None  # MLA: (q_a_layernorm or None, kv_a_layernorm) suffixes

    @property
    def centres(self) -> bool:
        return self.kind == LAYER


def text_settings(config: Mapping[str, Any]) -> Mapping[str, Any]:
    """The text model's settings (multimodal configs nest them under text_config)."""
    text = config.get("text_config")
    return text if isinstance(text, Mapping) else config


def _head_dim(c: Mapping[str, Any]) -> int:
    heads = c.get("num_attention_heads") or c.get("n_head")
    width = c.get("hidden_size") or c.get("n_embd") or c.get("n_embed")
    return int(c.get("head_dim") or width // heads)


def _number(c: Mapping[str, Any], name: str, default: float) -> float:
    value = c.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise CheckpointError(f"config.json: {name} is {value!r}, but must be a positive number")
    return float(value)


def _pre_rms(prefix: str = "layers.{layer}.", offset: float = 0.0):
    return ((prefix + "input_layernorm.weight",), RMS, offset)


def folding_facts(config: Mapping[str, Any], layer: int) -> FoldingFacts:
    """The folding facts of layer ``layer`` of a model, from config.json (one line for an unsupported type)."""
    model_type = config.get("model_type")
    c = text_settings(config)
    inner = c.get("model_type", model_type)
    rule = _RULES.get(inner) or _RULES.get(model_type)
    if rule is None:
        raise UnsupportedArchitectureError(
            f"the folded and null variants are not implemented for model_type {model_type!r} "
            f"(supported: {', '.join(sorted(_RULES))}): build with --variants raw"
        )
    return rule(c, layer)


def _llama_like(offset: float = 0.0, qk: str | None = None, qk_offset: float = 0.0, scale_fn=None, outside=()):
    def rule(c, layer):
        norm, kind, off = _pre_rms(offset=offset)
        scale = scale_fn(c, layer) if scale_fn else _head_dim(c) ** -0.5
        q = k = None
        if qk:
            q, k = f"layers.{layer}.self_attn.q_norm.weight", f"layers.{layer}.self_attn.k_norm.weight"
        return FoldingFacts(
            tuple(n.format(layer=layer) for n in norm), kind, off, q, k, qk or "head", qk_offset, scale,
            tuple(o for o in outside if _applies(o, c)),
        )

    return rule


def _applies(note: str, c: Mapping[str, Any]) -> bool:
    """Record an outside-M effect only when the config switches it on."""
    key = note.split(":", 1)[0]
    return bool(c.get(key)) if key in ("attn_logit_softcapping", "clip_qkv") else True


def _query_pre_attn(c, layer):
    return _number(c, "query_pre_attn_scalar", 256.0) ** -0.5


def _granite(c, layer):
    return _number(c, "attention_multiplier", 1.0)


def _olmo(c, layer):
    return FoldingFacts((), LAYER, 0.0, None, None, "head", 0.0, _head_dim(c) ** -0.5,
                        ("clip_qkv: clamp of q, k, v",) if c.get("clip_qkv") else ())


def _olmo2(c, layer):
    return FoldingFacts((), None, 0.0, f"layers.{layer}.self_attn.q_norm.weight",
                        f"layers.{layer}.self_attn.k_norm.weight", "full", 0.0, _head_dim(c) ** -0.5)


def _layer_norm(name: str, scale_fn=None):
    def rule(c, layer):
        scale = scale_fn(c, layer) if scale_fn else _head_dim(c) ** -0.5
        return FoldingFacts((name.format(layer=layer),), LAYER, 0.0, None, None, "head", 0.0, scale)

    return rule


def _gpt2_scale(c, layer):
    scale = _head_dim(c) ** -0.5 if c.get("scale_attn_weights", True) else 1.0
    return scale / (layer + 1) if c.get("scale_attn_by_inverse_layer_idx", False) else scale


def _falcon(c, layer):
    names = (f"h.{layer}.ln_attn.weight", f"h.{layer}.input_layernorm.weight")
    return FoldingFacts(names, LAYER, 0.0, None, None, "head", 0.0, _head_dim(c) ** -0.5,
                        ("alibi: additive position bias",) if c.get("alibi") else ())


def _opt(c, layer):
    scale = _head_dim(c) ** -0.5
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
    return FoldingFacts((name,), LAYER, 0.0, None, None, "head", 0.0, _head_dim(c) ** -0.5)


MLA_OUTSIDE = (
    "latent RMS norms: q_a_layernorm divides the whole query by its latent's RMS, but kv_a_layernorm divides "
    "only the key's nope rows by the kv latent's RMS (the shared rope rows are not): the per-token weight of the "
    "nope part against the rope part of the logit"
)


def _mla(c, layer):
    """DeepSeek V2/V3: RMS input_layernorm, the latent norms' gains inside the maps, c = the module's scaling."""
    base = f"layers.{layer}.self_attn."
    q_norm = base + "q_a_layernorm.weight" if c.get("q_lora_rank") is not None else None
    return FoldingFacts((f"layers.{layer}.input_layernorm.weight",), RMS, 0.0, None, None, "head", 0.0,
                        _mla_scale(c), (MLA_OUTSIDE,), (q_norm, base + "kv_a_layernorm.weight"))


def _mla_scale(c) -> float:
    """DeepseekV2/V3Attention.scaling: qk_head_dim^-1/2, times mscale^2 (yarn_apply_mscale) for scaled rope."""
    from .architectures import FULL, config_count, rope_parameters

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


_RULES = {
    **{t: _llama_like() for t in ("llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "phi3", "smollm3")},
    **{t: _llama_like(qk="head") for t in ("qwen3", "qwen3_moe")},
    "gemma": _llama_like(offset=1.0),
    "gemma2": _llama_like(offset=1.0, scale_fn=_query_pre_attn, outside=("attn_logit_softcapping: tanh soft-cap of the logits",)),
    "gemma3_text": _llama_like(offset=1.0, qk="head", qk_offset=1.0, scale_fn=_query_pre_attn),
    "granite": _llama_like(scale_fn=_granite),
    "olmo": _olmo,
    "olmo2": _olmo2,
    "olmo3": _olmo2,
    "gptj": _layer_norm("h.{layer}.ln_1.weight"),
    "gpt2": _layer_norm("h.{layer}.ln_1.weight", _gpt2_scale),
    "gpt_neox": _layer_norm("layers.{layer}.input_layernorm.weight"),
    "bloom": _layer_norm("h.{layer}.input_layernorm.weight"),
    "falcon": _falcon,
    "opt": _opt,
    "bert": _bert,
    "deepseek_v2": _mla,
    "deepseek_v3": _mla,
}


@dataclass(frozen=True)
class FoldingTensors:
    """One layer's folding read from the checkpoint (gains already offset: Gemma's 1 + w)."""

    gain: Any  # (d_model,) float64 or None (D = I)
    centre: bool
    q_gain: Any  # (H, d_head) or None
    k_gain: Any  # (H_kv, d_head) or None
    attention_scale: float  # c_attn, without the rotary attention factor
    tensors: tuple[str, ...]  # checkpoint names read
    latent_gains: tuple | None = None  # MLA: (q_a_layernorm gain (r_q,) or None, kv_a_layernorm gain (r_kv,))
    blocks: tuple | None = None  # MLA: (q, k) blocks with every gain composed in (then gain is None)

    def with_blocks(self, q, k) -> FoldingTensors:
        """This folding once a reader has composed its gains into the head blocks (q, k): D is then inside them."""
        return replace(self, gain=None, latent_gains=None, blocks=(q, k))


def nearest_tensor(ckpt, suffix: str, anchor: str):
    """The tensor ``*suffix`` closest to ``anchor`` (longest shared name prefix), or None if none matches."""
    import os

    matches = ckpt.matches(suffix)
    if not matches:
        return None
    return ckpt.tensors[max(sorted(matches), key=lambda m: len(os.path.commonprefix([m, anchor])))]


def gain_vector(ckpt, info, length: int, what: str):
    """The 1-D gain tensor ``info`` as float64; a CheckpointError naming ``what`` if its shape or values are wrong."""
    import numpy as np

    if tuple(info.shape) != (length,):
        raise CheckpointError(
            f"{ckpt.source.model_id}: {info.name} ({what}) has shape {list(info.shape)}, expected [{length}]: "
            "config and weights do not match"
        )
    array = np.asarray(ckpt.read_rows(info), dtype=np.float64)
    if not np.isfinite(array).all():
        raise CheckpointError(f"{ckpt.source.model_id}: NaN or Inf in {info.name} ({what})")
    return array


def read_folding(ckpt, config: Mapping[str, Any], layer: int, shape, anchor: str) -> FoldingTensors:
    """Read layer ``layer``'s norm gain and q/k norm gains through ``ckpt`` (so a local revision digests them).

    ``anchor`` is the full name of the layer's Q tensor: among several tensors that
    match a suffix (a multimodal checkpoint), the one beside it is taken.
    """
    import numpy as np

    facts = folding_facts(config, layer)
    read: list[str] = []
    gain = None
    if facts.norm:
        info = next((i for i in (nearest_tensor(ckpt, n, anchor) for n in facts.norm) if i is not None), None)
        if info is None:
            raise CheckpointError(
                f"{ckpt.source.model_id}: no tensor *{facts.norm[0]} (the norm feeding layer {layer}'s attention): "
                "is config.json's model_type right for these weights?"
            )
        gain = gain_vector(ckpt, info, shape.d_model, "norm gain") + facts.gain_offset
        read.append(info.name)
    q_gain = k_gain = None
    if facts.q_norm:
        heads = {"q": shape.n_heads, "k": shape.n_kv_heads}
        gains = {}
        for side, name in (("q", facts.q_norm), ("k", facts.k_norm)):
            info = nearest_tensor(ckpt, name, anchor)
            if info is None:
                raise CheckpointError(f"{ckpt.source.model_id}: no tensor *{name} ({side}_norm of layer {layer})")
            if facts.qk_norm_width == "head":
                g = np.tile(gain_vector(ckpt, info, shape.d_head, f"{side}_norm gain"), (heads[side], 1))
            else:
                g = gain_vector(ckpt, info, heads[side] * shape.d_head, f"{side}_norm gain").reshape(heads[side], shape.d_head)
            gains[side] = g + facts.qk_offset
            read.append(info.name)
        q_gain, k_gain = gains["q"], gains["k"]
    latent = None
    if facts.latent_norms:
        latent = tuple(_latent_gain(ckpt, config, name, anchor, read) for name in facts.latent_norms)
    return FoldingTensors(gain, facts.centres, q_gain, k_gain, facts.scale, tuple(read), latent)


def _latent_gain(ckpt, config: Mapping[str, Any], name: str | None, anchor: str, read: list[str]):
    """An MLA latent norm's gain (q_a_layernorm: q_lora_rank wide, kv_a_layernorm: kv_lora_rank), or None."""
    if name is None:
        return None
    info = nearest_tensor(ckpt, name, anchor)
    if info is None:
        raise CheckpointError(f"{ckpt.source.model_id}: no tensor *{name} (a latent norm of the attention)")
    width = text_settings(config).get("q_lora_rank" if "q_a_layernorm" in name else "kv_lora_rank")
    read.append(info.name)
    return gain_vector(ckpt, info, width, "latent norm gain")


def folding_problem(ckpt, config: Mapping[str, Any], layers) -> str | None:
    """Why the folded/null variants cannot be built for this checkpoint (headers only), or None.

    An unsupported model_type, or a norm / q/k-norm tensor that the layer's facts name
    and the checkpoint lacks (e.g. a checkpoint holding only Q/K weights).
    """
    try:
        for layer in layers:
            facts = folding_facts(config, layer)
            if facts.norm and not any(ckpt.matches(name) for name in facts.norm):
                return f"no tensor *{facts.norm[0]} (the norm feeding layer {layer}'s attention)"
            for name in (facts.q_norm, facts.k_norm, *(facts.latent_norms or ())):
                if name and not ckpt.matches(name):
                    return f"no tensor *{name}"
    except (UnsupportedArchitectureError, CheckpointError) as exc:
        return str(exc)
    return None

"""Reading the folded variant's gains: the norm feeding attention, q/k norms and the scale, as each record's rule says.

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
  the rotating dims next to G, :func:`.planning.rotary_factor_gains`).

Which tensor feeds each layer's attention was checked per class with forward hooks
(the norm's output is the q projection's input). Effects that are not a bilinear form
(biases, LayerNorm beta, tanh soft-capping, QKV clipping, ALiBi) stay outside M_h and
are listed in :attr:`FoldingFacts.outside`.

Latent attention (DeepSeek V2/V3, MLA): besides D (``input_layernorm``), the latent norms'
gains sit between the two composed maps: W_Q^h = Qb_h G_qa Qa (``q_a_layernorm``; none
without q_lora_rank) and W_K^h = [Kb_h G_kv KVa_latent ; KVa_rope] (``kv_a_layernorm``: the
shared rope key rows skip it). :class:`.latent_layout.LatentAttention` composes them before
its thin QR, so the kernel gets folded blocks and no gain of its own. c is the module's
``scaling``: qk_head_dim^-1/2, times yarn's mscale(factor, mscale_all_dim)^2 when the rope
type is not default and mscale_all_dim is set (transformers' ``yarn_apply_mscale``). The
latent RMS norms divide by per-token scalars that are NOT one scalar per logit: rms of the
q latent scales the whole query, but the kv latent's rms divides only the key's nope rows
(the rope rows are not divided by it), so the per-token balance between the nope and rope
parts of the logit stays outside M_h (recorded in :attr:`FoldingFacts.outside`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ..errors import CheckpointError, UnsupportedArchitectureError
from .architectures import FOLDABLE_MODEL_TYPES, folding_rule
from .model_types.folding_rules import FoldingFacts, text_settings


def folding_facts(config: Mapping[str, Any], layer: int) -> FoldingFacts:
    """The folding facts of layer ``layer`` of a model, from its record's rule (one line for a type without one).

    The text config's model_type is looked up first (multimodal configs nest it), then the config's own.
    """
    model_type = config.get("model_type")
    c = text_settings(config)
    inner = c.get("model_type", model_type)
    rule = folding_rule(inner) or folding_rule(model_type)
    if rule is None:
        raise UnsupportedArchitectureError(
            f"the folded and null variants are not implemented for model_type {model_type!r} "
            f"(supported: {', '.join(FOLDABLE_MODEL_TYPES)}): build with --variants raw"
        )
    return rule(c, layer)


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
    matches = ckpt.matches(suffix)
    if not matches:
        return None
    return ckpt.tensors[max(sorted(matches), key=lambda m: len(os.path.commonprefix([m, anchor])))]


def gain_vector(ckpt, info, length: int, what: str):
    """The 1-D gain tensor ``info`` as float64; a CheckpointError naming ``what`` if its shape or values are wrong."""
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
                g = gain_vector(ckpt, info, heads[side] * shape.d_head, f"{side}_norm gain").reshape(
                    heads[side], shape.d_head
                )
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

"""Where each architecture keeps V and O, and the OV circuit's raw and folded head blocks.

For layer l, query head h and its KV head g the OV circuit is W_O^h W_V^g (d_model x d_model,
rank <= d_head): W_V^g the d_head x d_model rows of the value projection for KV head g, W_O^h
the d_model x d_head columns of the output projection for head h. Written as A_h^T B_g with
A_h = (W_O^h)^T and B_g = W_V^g it has the same form as the QK circuit (W_Q^h)^T W_K^g, so the
kernel (:func:`.kernel.qk_layer_variants`) computes its spectra from the same small factors,
with the cross W_V^g W_O^h (d_head x d_head) giving its non-zero eigenvalues.

**Folded**: the value projection reads the normalised stream, so B_g = W_V^g D P with the D and
P of the folded QK (:mod:`.folding`); where the model normalises the attention output before
the residual add (Gemma 2/3 ``post_attention_layernorm`` with 1 + w, OLMo 2/3's
``post_attention_layernorm``), its gain G multiplies on the output side, A_h = (G W_O^h)^T. The
per-token RMS of either norm stays outside (a positive scalar per token), as do the V and O
biases, BERT's LayerNorm of the residual sum (it normalises attention and residual together)
and Qwen3-Next's sigmoid output gate (token-dependent). MLA (DeepSeek V2/V3): W_V^h =
Vb_h G_kv KVa_latent D, the value rows of ``kv_b_proj`` composed with the latent map (V shares
the latent with K); ``d_head`` of the OV rows is ``v_head_dim``.

The layouts are those of :mod:`.layouts` and :mod:`.latent_layout` (dispatch on the Q/K layout's
class; the layout in each model type's record names its V and O tensors beside Q and K); only V
and O bytes are read here, by range where they are contiguous (fused QKV tensors: the V rows
only; GPT-2's Conv1D ``c_attn`` is read whole, as for Q/K, because its V columns are not contiguous).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import CheckpointError
from .architectures import MODEL_TYPES
from .config_fields import config_count
from .folding import gain_vector, nearest_tensor
from .latent_layout import LatentAttention
from .layouts import AttentionShape, Conv1DFused, FusedGroups, FusedSections, SeparateProjections, expect_shape
from .model_types.folding_rules import text_settings
from .safetensors_io import TensorInfo

OV_OUTSIDE = "V and O biases; the per-token RMS of the norms on either side"


@dataclass
class LayerOV:
    """One layer's OV head blocks: ``o`` (H, d_v, d_model) = (W_O^h)^T per head (as read), ``v`` (H_kv, d_v, d_model) float64."""

    layer: int
    o: np.ndarray
    v: np.ndarray
    tensors: tuple[TensorInfo, ...]
    latent: tuple[np.ndarray, np.ndarray] | None = None  # MLA: (Vb (H, d_v, r_kv), KVa latent rows (r_kv, d_model))


def ov_problem(layout, ckpt, layers) -> str | None:
    """Why the ov circuit cannot be built from this checkpoint (headers only, nothing read), or None.

    A checkpoint holding only the Q/K weights (an extract, or a test's) lacks the value or output projection.
    """
    try:
        for layer in layers:
            if isinstance(layout, LatentAttention):
                base = layout.prefix.format(layer=layer)
                for name in ("kv_b_proj.weight", "o_proj.weight"):
                    ckpt.find(base + name)
            elif isinstance(layout, SeparateProjections):
                layout.tensor(ckpt, layout.v_name.format(layer=layer))
                layout.tensor(ckpt, layout.o_name.format(layer=layer))
            else:
                ckpt.find(layout.o_name.format(layer=layer))
    except CheckpointError as exc:
        return str(exc)
    return None


def ov_d_head(config: Mapping[str, Any], shape: AttentionShape) -> int:
    """The OV circuit's d_head: the config field the record names (MLA's ``v_head_dim``), else the attention's d_head."""
    record = MODEL_TYPES.get(config.get("model_type"))
    if record is not None and record.value_head_dim:
        return config_count(config, record.value_head_dim)
    return shape.d_head


def _output_rows(ckpt, info: TensorInfo, n_heads: int, d_v: int, d_model: int) -> np.ndarray:
    """(H, d_v, d_model) = (W_O^h)^T of a Linear output projection (d_model, H * d_v), read whole."""
    expect_shape(ckpt, info, (d_model, n_heads * d_v))
    o = ckpt.read_rows(info)
    return np.ascontiguousarray(o.reshape(d_model, n_heads, d_v).transpose(1, 2, 0))  # as read (float32): the
    # prefetch thread holds the next layer's blocks while a layer computes; the kernel's float64 copy is made once


def read_ov(layout, ckpt, layer: int, shape: AttentionShape, d_v: int | None = None) -> LayerOV:
    """The V and O head blocks of layer ``layer`` (raw), reading only V rows and the output projection."""
    h, hkv, dh, d = shape.n_heads, shape.n_kv_heads, shape.d_head, shape.d_model
    if isinstance(layout, LatentAttention):
        return _read_latent_ov(layout, ckpt, layer, shape, d_v or dh)
    if isinstance(layout, SeparateProjections):
        v_info = layout.tensor(ckpt, layout.v_name.format(layer=layer))
        o_info = layout.tensor(ckpt, layout.o_name.format(layer=layer))
        expect_shape(ckpt, v_info, (hkv * dh, d))
        v = ckpt.read_rows(v_info).astype(np.float64).reshape(hkv, dh, d)
        return LayerOV(layer, _output_rows(ckpt, o_info, h, dh, d), v, (v_info, o_info))
    info = ckpt.find(layout.name.format(layer=layer))
    o_info = ckpt.find(layout.o_name.format(layer=layer))
    if isinstance(layout, FusedSections):
        v = ckpt.read_rows(info, (h + hkv) * dh, (h + 2 * hkv) * dh).astype(np.float64).reshape(hkv, dh, d)
    elif isinstance(layout, FusedGroups):
        per_group = (shape.group_size + 2) * dh
        first = (shape.group_size + 1) * dh
        v = np.stack([ckpt.read_rows(info, g * per_group + first, (g + 1) * per_group) for g in range(hkv)]).astype(
            np.float64
        )
    elif isinstance(layout, Conv1DFused):
        w = ckpt.read_rows(info)  # (d, 3 h dh), Conv1D: columns [Q, K, V]
        v = np.ascontiguousarray(w[:, 2 * h * dh :].T, dtype=np.float64).reshape(h, dh, d)
        expect_shape(ckpt, o_info, (h * dh, d))  # Conv1D c_proj: (in, out), rows per head = (W_O^h)^T
        return LayerOV(layer, ckpt.read_rows(o_info).reshape(h, dh, d), v, (info, o_info))
    else:
        raise CheckpointError(f"no OV reader for the layout {type(layout).__name__}")
    return LayerOV(layer, _output_rows(ckpt, o_info, h, dh, d), v, (info, o_info))


def _read_latent_ov(layout: LatentAttention, ckpt, layer: int, shape: AttentionShape, d_v: int) -> LayerOV:
    """MLA: W_V^h = Vb_h KVa_latent (value rows of kv_b_proj after each head's k_nope rows), o_proj per head."""
    base = layout.prefix.format(layer=layer)
    h, d, rkv, dn = shape.n_heads, shape.d_model, layout.kv_rank, layout.d_nope
    kva_info = ckpt.find(base + "kv_a_proj_with_mqa.weight")
    kvb_info = ckpt.find(base + "kv_b_proj.weight")
    o_info = ckpt.find(base + "o_proj.weight")
    expect_shape(ckpt, kva_info, (rkv + layout.d_rope, d))
    expect_shape(ckpt, kvb_info, (h * (dn + d_v), rkv))
    latent = ckpt.read_rows(kva_info, 0, rkv).astype(np.float64)
    vb = ckpt.read_rows(kvb_info).astype(np.float64).reshape(h, dn + d_v, rkv)[:, dn:]
    vb = np.ascontiguousarray(vb)
    return LayerOV(
        layer, _output_rows(ckpt, o_info, h, d_v, d), vb @ latent, (kva_info, kvb_info, o_info), (vb, latent)
    )


def output_norm_gain(ckpt, config: Mapping[str, Any], layer: int, d_model: int, anchor: str) -> np.ndarray | None:
    """The gain of the norm on the attention output before the residual add (offset applied), or None.

    The record's ``post_attention_norm`` is that norm's gain offset (Gemma 2/3: 1 + w; OLMo 2/3: w);
    in Llama-like models the same tensor name is the MLP's input norm, and the record has none.
    """
    c = text_settings(config)
    record = MODEL_TYPES.get(c.get("model_type", config.get("model_type")))
    offset = None if record is None else record.post_attention_norm
    if offset is None:
        return None
    name = f"layers.{layer}.post_attention_layernorm.weight"
    info = nearest_tensor(ckpt, name, anchor)
    if info is None:
        raise CheckpointError(
            f"{ckpt.source.model_id}: no tensor *{name} (the norm on layer {layer}'s attention output)"
        )
    return gain_vector(ckpt, info, d_model, "post-attention norm gain") + offset


def fold_ov(ov: LayerOV, folding, out_gain: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """(A, B) folded: A = (G W_O^h)^T per head, B = W_V^g D P (MLA: Vb_h G_kv KVa_latent D); copies only what changes.

    ``folding`` is the layer's :class:`.folding.FoldingTensors` as read (gain D, centring, MLA latent gains).
    """
    from .variants import fold_rows

    o = ov.o if out_gain is None else ov.o * out_gain
    if ov.latent is not None:
        vb, latent = ov.latent
        kv_gain = folding.latent_gains[1] if folding.latent_gains else None
        vb = vb if kv_gain is None else vb * kv_gain
        latent = latent if folding.gain is None else latent * folding.gain
        return o, vb @ latent
    v = np.asarray(ov.v, dtype=np.float64)
    return o, fold_rows(v, folding.gain, folding.centre, np.empty_like(v))

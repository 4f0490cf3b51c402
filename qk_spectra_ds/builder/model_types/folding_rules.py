"""The vocabulary of the records' folding rules: :class:`FoldingFacts`, and the rules several families share.

A folding rule maps (text config, layer) to that layer's :class:`FoldingFacts`: which tensor
holds the gain D of the norm feeding the attention (and whether that norm centres: P), the
per-head q/k norm gains G, the attention scale c, and what stays outside the bilinear form.
:mod:`..folding` reads and applies them; the maths is in its docstring.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ...errors import CheckpointError

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


def head_dim(c: Mapping[str, Any]) -> int:
    """config.json's head_dim, else hidden_size / num_attention_heads (the d_head of the default scale)."""
    heads = c.get("num_attention_heads") or c.get("n_head")
    width = c.get("hidden_size") or c.get("n_embd") or c.get("n_embed")
    return int(c.get("head_dim") or width // heads)


def positive_number(c: Mapping[str, Any], name: str, default: float) -> float:
    """A positive number of config.json (a scale, a multiplier), or ``default`` when it is absent."""
    value = c.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise CheckpointError(f"config.json: {name} is {value!r}, but must be a positive number")
    return float(value)


def _pre_rms(prefix: str = "layers.{layer}.", offset: float = 0.0):
    return ((prefix + "input_layernorm.weight",), RMS, offset)


def llama_like_folding(offset: float = 0.0, qk: str | None = None, qk_offset: float = 0.0, scale_fn=None, outside=()):
    """Pre-norm RMS ``input_layernorm`` (Gemma: 1 + w), optional per-head q/k norms, c = ``scale_fn`` or d_head^-1/2."""

    def rule(c, layer):
        norm, kind, off = _pre_rms(offset=offset)
        scale = scale_fn(c, layer) if scale_fn else head_dim(c) ** -0.5
        q = k = None
        if qk:
            q, k = f"layers.{layer}.self_attn.q_norm.weight", f"layers.{layer}.self_attn.k_norm.weight"
        return FoldingFacts(
            tuple(n.format(layer=layer) for n in norm),
            kind,
            off,
            q,
            k,
            qk or "head",
            qk_offset,
            scale,
            tuple(o for o in outside if _applies(o, c)),
        )

    return rule


def _applies(note: str, c: Mapping[str, Any]) -> bool:
    """Record an outside-M effect only when the config switches it on."""
    key = note.split(":", 1)[0]
    return bool(c.get(key)) if key in ("attn_logit_softcapping", "clip_qkv") else True


def layer_norm_folding(name: str, scale_fn=None):
    """A LayerNorm named ``name`` feeds the attention (it centres: P), no q/k norms, c = ``scale_fn`` or d_head^-1/2."""

    def rule(c, layer):
        scale = scale_fn(c, layer) if scale_fn else head_dim(c) ** -0.5
        return FoldingFacts((name.format(layer=layer),), LAYER, 0.0, None, None, "head", 0.0, scale)

    return rule

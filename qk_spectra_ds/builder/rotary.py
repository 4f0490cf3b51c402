"""Rotary position embeddings as the model applies them, from config.json alone (no transformers).

transformers applies RoPE as ``q_embed = a * R(m) q`` with ``a`` the rotary
module's ``attention_scaling`` and R(m) orthogonal: for each rotated pair of
dimensions (i_k, j_k) with inverse frequency theta_k and angle phi = m theta_k,

    (R v)[i] = v[i] cos phi - v[j] sin phi ;  (R v)[j] = v[j] cos phi + v[i] sin phi

(identity on the dimensions past the rotary width r). Rotate-half models pair
(k, k + r/2), GPT-J-style models pair adjacent dimensions (2k, 2k + 1). A query
at p + delta and a key at p then see ``a^2 q^T R(delta)^T k``, independent of p.

The inverse frequencies are computed with the same float32 torch operations
transformers uses (default, linear, dynamic, llama3, yarn, longrope), so they are
bit-identical to the module's ``inv_freq`` buffer: at offsets ~1e5 one float32
ulp of theta moves the angle by ~6e-3 rad. Angles are then formed in float64.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import CheckpointError
from .config_checks import positions

ROPE_TYPES = ("default", "linear", "dynamic", "llama3", "yarn", "longrope")


@dataclass(frozen=True)
class Rotary:
    """One layer's rotary embedding: frequencies, attention factor, pairing."""

    inv_freq: np.ndarray  # (r/2,) float64 holding the model's float32 values
    attention_factor: float  # a: cos and sin are both scaled by it
    interleaved: bool  # pairs (2k, 2k+1) if True, else (k, k + r/2)
    rope_type: str
    start: int = 0  # first rotating dimension of the head (MLA: after the no-position dims)

    @property
    def rotary_dim(self) -> int:
        return 2 * len(self.inv_freq)

    def pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """The index arrays (i_k), (j_k) of the dimensions rotated together by frequency k."""
        k = np.arange(len(self.inv_freq))
        i, j = (2 * k, 2 * k + 1) if self.interleaved else (k, k + len(self.inv_freq))
        return i + self.start, j + self.start


def inverse_frequencies(
    theta: float,
    rotary_dim: int,
    scaling: Mapping[str, Any] | None,
    max_position_embeddings: int | None,
    original_max_position_embeddings: int | None = None,
) -> tuple[np.ndarray, float, str]:
    """(inv_freq as float64, attention factor, rope_type) exactly as transformers 5.x computes them.

    ``scaling`` is the layer's rope parameters (``rope_parameters`` / ``rope_scaling``
    dict, may be None for plain RoPE). For ``dynamic`` the frequencies are the base
    ones (transformers recomputes them only beyond ``max_position_embeddings``);
    for ``longrope`` the short factors (sequences up to the original length).
    """
    import torch

    rp = dict(scaling or {})
    kind = rp.get("rope_type", rp.get("type")) or "default"
    if kind not in ROPE_TYPES:
        raise CheckpointError(
            f"config.json: rope_type {kind!r} has no positional spectra here (supported: {', '.join(ROPE_TYPES)}): "
            "build without them, --offsets none"
        )
    dim = int(rotary_dim)
    base = float(theta)
    expo = torch.arange(0, dim, 2, dtype=torch.int64).to(torch.float) / dim
    inv = 1.0 / (base**expo)
    factor_a = 1.0
    original = rp.get("original_max_position_embeddings") or original_max_position_embeddings or max_position_embeddings
    if kind == "linear":
        inv = inv / rp["factor"]
    elif kind == "llama3":
        f, lo, hi = rp["factor"], rp["low_freq_factor"], rp["high_freq_factor"]
        wavelen = 2 * math.pi / inv
        out = torch.where(wavelen > original / lo, inv / f, inv)
        smooth = (original / wavelen - lo) / (hi - lo)
        smoothed = (1 - smooth) * out / f + smooth * out
        medium = ~(wavelen < original / hi) * ~(wavelen > original / lo)
        inv = torch.where(medium, smoothed, out)
    elif kind == "yarn":
        inv, factor_a = _yarn(rp, dim, base, original, max_position_embeddings)
    elif kind == "longrope":
        f = rp.get("factor") or (max_position_embeddings / original)
        factor_a = rp.get("attention_factor")
        if factor_a is None:
            factor_a = 1.0 if f <= 1.0 else math.sqrt(1 + math.log(f) / math.log(original))
        short = torch.tensor(rp["short_factor"], dtype=torch.float32)
        inv = 1.0 / (short * base**expo)
    inv = inv.double().numpy()
    if not (np.isfinite(inv).all() and (inv > 0).all() and math.isfinite(factor_a) and factor_a > 0):
        raise CheckpointError(  # a backstop: config_checks refuses the fields that lead here, by name
            f"config.json: rope_type {kind} with theta {base:g} gives non-finite or non-positive frequencies "
            f"or attention factor ({factor_a!r}): check the rope settings"
        )
    return inv, float(factor_a), kind


def _yarn(rp: Mapping[str, Any], dim: int, base: float, original: int, max_pos: int | None):
    """YaRN frequencies and attention factor (transformers' _compute_yarn_parameters)."""
    import torch

    f = rp.get("factor") or max_pos / original
    attention, mscale, mscale_all = rp.get("attention_factor"), rp.get("mscale"), rp.get("mscale_all_dim")

    def get_mscale(scale, m=1):
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    if attention is None:
        attention = (
            float(get_mscale(f, mscale) / get_mscale(f, mscale_all)) if (mscale and mscale_all) else get_mscale(f)
        )
    fast, slow = rp.get("beta_fast") or 32, rp.get("beta_slow") or 1

    def correction_dim(rotations):
        return (dim * math.log(original / (rotations * 2 * math.pi))) / (2 * math.log(base))

    low, high = correction_dim(fast), correction_dim(slow)
    if rp.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    ramp = torch.clamp((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low), 0, 1)
    pos = base ** (torch.arange(0, dim, 2).to(torch.float) / dim)
    extra = 1 - ramp
    return (1.0 / (f * pos)) * (1 - extra) + (1.0 / pos) * extra, attention


def rotary_from_spec(rope: Any, config: Mapping[str, Any]) -> Rotary | None:
    """The :class:`Rotary` of a layer from a :class:`.layer_facts.RopeSpec` (None: no rotary)."""
    if rope is None:
        return None
    original = config.get("original_max_position_embeddings")
    text = config.get("text_config")
    if original is None and isinstance(text, Mapping):
        original = text.get("original_max_position_embeddings")
    original = positions("original_max_position_embeddings", original)
    scaling = json.dumps(rope.scaling, sort_keys=True, default=repr)
    return _rotary(
        rope.theta,
        rope.rotary_dim,
        scaling,
        rope.max_position_embeddings,
        original,
        bool(rope.interleaved),
        int(getattr(rope, "rotary_start", 0) or 0),
    )


@functools.lru_cache(maxsize=64)
def _rotary(theta, rotary_dim, scaling: str, max_pos, original, interleaved: bool, start: int) -> Rotary:
    """One Rotary per distinct setting, shared by the layers that have it (read-only frequencies).

    The float32 torch computation costs ~0.4 ms: a 4096-layer config must not spend seconds on it.
    """
    inv, a, kind = inverse_frequencies(theta, rotary_dim, json.loads(scaling), max_pos, original)
    inv.flags.writeable = False
    return Rotary(inv, a, interleaved, kind, start)


def rotate_key_rows(y: np.ndarray, delta: int, rotary: Rotary, out: np.ndarray | None = None) -> np.ndarray:
    """R(delta)^T @ y without forming R: O(d_head * n) per matrix (y: (..., d_head, n)).

    Used on the key factor G_k L_k so that ``core(delta) = (L_q^T G_q) @ rotate_key_rows(G_k L_k)``.
    """
    i, j = rotary.pairs()
    angle = delta * rotary.inv_freq
    c, s = np.cos(angle)[:, None], np.sin(angle)[:, None]
    if out is None:
        out = y.copy()
    else:
        out[...] = y
    yi, yj = y[..., i, :], y[..., j, :]
    out[..., i, :] = c * yi + s * yj
    out[..., j, :] = c * yj - s * yi
    return out


def default_offsets(max_position_embeddings: int | None) -> list[int]:
    """0, 1, 2, 4, 8, ... up to (at most) the model's max_position_embeddings (2^20 when unknown)."""
    limit = int(max_position_embeddings or 2**20)
    offsets, delta = [0], 1
    while delta <= limit:
        offsets.append(delta)
        delta *= 2
    return offsets

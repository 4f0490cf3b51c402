"""DeepSeek V2/V3 multi-head latent attention (MLA): Q and K as compositions of small maps, read exactly.

A layout like those of :mod:`.layouts`, but each head's query and key maps are products of a
latent down-projection and a per-head up-projection; :class:`LatentAttention` composes them
into small exact factors (and, for the folded variant, composes the latent norms' gains in too).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .layouts import LayerQK, Layout, expect_shape
from .safetensors_io import TensorInfo


@dataclass
class LatentWeights:
    """One MLA layer's projections as read, float64: what the raw and the folded compositions share."""

    qa: np.ndarray | None  # (r_q, d_model) q_a_proj; None without q_lora_rank
    qb: np.ndarray  # (H, d_head, r_q) q_b_proj per head; without q_lora_rank (H, d_head, d_model) q_proj
    kva: np.ndarray  # (r_kv + d_r, d_model) kv_a_proj_with_mqa: [latent ; shared rope key]
    kvb: np.ndarray  # (H, d_nope, r_kv) the k_nope rows of kv_b_proj
    tensors: tuple[TensorInfo, ...]


@dataclass(frozen=True)
class LatentAttention(Layout):
    """DeepSeek V2/V3 multi-head latent attention (MLA), as small exact factors.

    Head h: W_Q^h = Qb_h Qa (or the rows of q_proj when q_lora_rank is null) and
    W_K^h = [[Kb_h, 0], [0, I_dr]] KVa, with Kb_h the k_nope rows of head h in
    kv_b_proj and KVa = kv_a_proj_with_mqa ([latent (r_kv) ; shared rope key (d_r)]).
    With q_lora_rank set, both maps factor through the span of [Qa^T, KVa^T]
    (m = r_q + r_kv + d_r columns, far below d_model): a thin QR U R of it gives
    W_Q^h = (Qb_h R_a^T) U^T and W_K^h = (P_h R_k^T) U^T, so W_Q^h^T W_K^h =
    U (q_h^T k_h) U^T has the singular values of the m-wide q_h^T k_h, and
    no d_model x d_model matrix (nor d_model-wide head block) is ever formed.
    Every head has its own key map: n_kv_heads = n_heads.

    Folded (:meth:`read_with_folding`): the model computes
    q_h = Qb_h G_qa rms_qa^-1 Qa D x / rms(x) and k_h = [Kb_h G_kv rms_kv^-1 KVa_lat ; KVa_rope] D x / rms(x),
    with D the input_layernorm gain and G_qa, G_kv the q_a_layernorm / kv_a_layernorm gains
    (the shared rope key rows skip kv_a_layernorm). The gains are composed into the maps
    BEFORE the thin QR (of D [Qa^T, KVa^T]), giving folded blocks in their own basis. The
    per-token RMS divisors stay outside: rms(x) and rms_qa scale a whole query or key, but
    rms_kv (of the key's kv latent) divides only the key's nope rows, not its rope rows.
    """

    prefix: str = "layers.{layer}.self_attn."
    q_lora: bool = True
    d_nope: int = 0
    d_rope: int = 0
    kv_rank: int = 0

    def query_tensor(self, layer):
        return self.prefix.format(layer=layer) + "kv_a_proj_with_mqa.weight"

    def read(self, ckpt, layer, shape):
        weights = self.read_weights(ckpt, layer, shape)
        q, k = self.compose(weights)
        return LayerQK(layer, q, k, weights.tensors)

    def read_with_folding(self, ckpt, layer, shape, read_folding):
        """(raw LayerQK, folding with its folded blocks) from one read of the projections.

        ``read_folding(anchor)`` returns the layer's folding (see :mod:`.folding`): its
        ``gain`` (D) and ``latent_gains`` (G_qa or None, G_kv) are composed here, and
        ``with_blocks(q, k)`` gives the folding the kernel uses (gain then None).
        """
        weights = self.read_weights(ckpt, layer, shape)
        q, k = self.compose(weights)
        folding = read_folding(weights.tensors[0].name)
        q_gain, kv_gain = folding.latent_gains
        folded = self.compose(weights, folding.gain, q_gain, kv_gain)
        return LayerQK(layer, q, k, weights.tensors), folding.with_blocks(*folded)

    def read_weights(self, ckpt, layer, shape) -> LatentWeights:
        """The layer's q_a/q_b (or q_proj), kv_a_proj_with_mqa and kv_b_proj k_nope rows, shapes checked."""
        base = self.prefix.format(layer=layer)
        h, dh, d = shape.n_heads, shape.d_head, shape.d_model
        dn, dr, rkv = self.d_nope, self.d_rope, self.kv_rank
        kva_info = ckpt.find(base + "kv_a_proj_with_mqa.weight")
        kvb_info = ckpt.find(base + "kv_b_proj.weight")
        expect_shape(ckpt, kva_info, (rkv + dr, d))
        if kvb_info.shape[1:] != (rkv,) or kvb_info.shape[0] % h or kvb_info.shape[0] // h <= dn:
            expect_shape(ckpt, kvb_info, (h * (dn + max(kvb_info.shape[0] // h - dn, 1)), rkv))
        per_head = kvb_info.shape[0] // h  # d_nope + v_head_dim
        kva = ckpt.read_rows(kva_info).astype(np.float64)
        kvb = ckpt.read_rows(kvb_info).astype(np.float64).reshape(h, per_head, rkv)[:, :dn]
        if self.q_lora:
            qa_info = ckpt.find(base + "q_a_proj.weight")
            qb_info = ckpt.find(base + "q_b_proj.weight")
            rq = qa_info.shape[0]
            expect_shape(ckpt, qa_info, (rq, d))
            expect_shape(ckpt, qb_info, (h * dh, rq))
            qa = ckpt.read_rows(qa_info).astype(np.float64)
            qb = ckpt.read_rows(qb_info).astype(np.float64).reshape(h, dh, rq)
            return LatentWeights(qa, qb, kva, kvb, (qa_info, qb_info, kva_info, kvb_info))
        q_info = ckpt.find(base + "q_proj.weight")
        expect_shape(ckpt, q_info, (h * dh, d))
        q = ckpt.read_rows(q_info).astype(np.float64).reshape(h, dh, d)
        return LatentWeights(None, q, kva, kvb, (q_info, kva_info, kvb_info))

    def compose(
        self,
        w: LatentWeights,
        gain: np.ndarray | None = None,
        q_gain: np.ndarray | None = None,
        kv_gain: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Per-head query and key blocks (H, d_head, m): raw without gains, folded with them.

        ``gain`` (d_model,) scales the d_model side of Qa, KVa (or q_proj) before the QR;
        ``q_gain`` (r_q,) sits between Qb and Qa; ``kv_gain`` (r_kv,) between Kb and the
        latent rows of KVa only (the rope rows skip kv_a_layernorm). A diagonal between
        two maps scales the rows of the right-hand one: Qb diag(g) R_a^T = Qb (g * R_a^T).
        """
        rkv = self.kv_rank
        kva = w.kva if gain is None else w.kva * gain
        h, dr = w.kvb.shape[0], kva.shape[0] - rkv
        if w.qa is not None:
            qa = w.qa if gain is None else w.qa * gain
            rq = qa.shape[0]
            basis_r = np.linalg.qr(np.concatenate([qa, kva]).T, mode="r")  # D [Qa^T, KVa^T] = U R
            r_a, r_k = basis_r[:, :rq], basis_r[:, rq:]
            q = w.qb @ _rows_scaled(r_a.T, q_gain)  # (h, dh, m)
            k_latent = w.kvb @ _rows_scaled(r_k[:, :rkv].T, kv_gain)  # (h, dn, m)
            k_rope = np.broadcast_to(r_k[:, rkv:].T, (h, dr, r_k.shape[0]))
        else:
            q = w.qb if gain is None else w.qb * gain
            k_latent = w.kvb @ _rows_scaled(kva[:rkv], kv_gain)  # (h, dn, d)
            k_rope = np.broadcast_to(kva[rkv:], (h, dr, kva.shape[1]))
        k = np.concatenate([k_latent, k_rope], axis=1)
        return np.ascontiguousarray(q), np.ascontiguousarray(k)


def _rows_scaled(m: np.ndarray, gain: np.ndarray | None) -> np.ndarray:
    """diag(gain) @ m (m itself when gain is None)."""
    return m if gain is None else gain[:, None] * m

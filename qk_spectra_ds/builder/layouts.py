"""How Q and K sit in a checkpoint, and how their rows split into heads (the layout classes).

HF ``Linear`` weights are (out_features, in_features). Reading a layer returns ``q`` of shape
(H, d_head, d_model) and ``k`` of shape (H_kv, d_head, d_model): the per-head row blocks W_Q^h
and W_K^g. Tensor names are matched on their suffix, so ``model.``, ``bert.``, ``transformer.``,
``gpt_neox.`` or no prefix all work. Which model type uses which layout is said by its record
(:mod:`.model_types`); MLA's latent layout is in :mod:`.latent_layout`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import CheckpointError
from .safetensors_io import Checkpoint, TensorInfo


@dataclass(frozen=True)
class AttentionShape:
    """The attention geometry of a model, as stored in the dataset's shape columns."""

    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_model: int
    d_head: int

    @property
    def group_size(self) -> int:
        """Query heads per key head (1 for MHA, H for MQA)."""
        return self.n_heads // self.n_kv_heads

    def kv_head(self, head: int) -> int:
        return head // self.group_size


@dataclass
class LayerQK:
    """One layer's query and key head blocks, straight from the checkpoint."""

    layer: int
    q: np.ndarray  # (H, d_head, d_model)
    k: np.ndarray  # (H_kv, d_head, d_model)
    tensors: tuple[TensorInfo, ...]


class Layout:
    """How one layer's Q and K sit in the checkpoint."""

    def read(self, ckpt: Checkpoint, layer: int, shape: AttentionShape) -> LayerQK:
        raise NotImplementedError

    def query_tensor(self, layer: int) -> str:
        """The name (suffix) of the tensor holding layer ``layer``'s queries (fused layouts: ``name``)."""
        return self.name.format(layer=layer)

    def has_layer(self, ckpt: Checkpoint, layer: int) -> bool:
        """Whether the checkpoint holds attention weights of layer ``layer`` (checks config's layer count)."""
        return bool(ckpt.matches(self.query_tensor(layer)))

    def read_with_folding(
        self, ckpt: Checkpoint, layer: int, shape: AttentionShape, read_folding: Callable[[str], Any]
    ):
        """(LayerQK, folding): the folded and null variants' inputs too; ``read_folding(anchor)`` reads the gains.

        ``anchor`` is the full name of the layer's first Q/K tensor. Layouts whose gains sit
        inside composed maps (:class:`LatentAttention`) fold them in while composing.
        """
        qk = self.read(ckpt, layer, shape)
        return qk, read_folding(qk.tensors[0].name)


def expect_shape(ckpt: Checkpoint, info: TensorInfo, expected: tuple[int, ...]) -> None:
    """A one-line CheckpointError unless tensor ``info`` has the ``expected`` shape (config and weights agree)."""
    if tuple(info.shape) != tuple(expected):
        raise CheckpointError(
            f"{ckpt.source.model_id}: {info.name} has shape {list(info.shape)}, config.json implies "
            f"{list(expected)}: config and weights do not match"
        )


@dataclass(frozen=True)
class SeparateProjections(Layout):
    """Separate q_proj / k_proj Linear weights, rows grouped per head; v_name / o_name: the OV circuit's V and O."""

    q_name: str
    k_name: str
    v_name: str
    o_name: str

    def query_tensor(self, layer):
        return self.q_name.format(layer=layer)

    def tensor(self, ckpt, name):
        """The header entry of tensor ``name`` (a subclass may look under other prefixes)."""
        return ckpt.find(name)

    def read(self, ckpt, layer, shape):
        q_info = self.tensor(ckpt, self.q_name.format(layer=layer))
        k_info = self.tensor(ckpt, self.k_name.format(layer=layer))
        expect_shape(ckpt, q_info, (shape.n_heads * shape.d_head, shape.d_model))
        expect_shape(ckpt, k_info, (shape.n_kv_heads * shape.d_head, shape.d_model))
        q = ckpt.read_rows(q_info).reshape(shape.n_heads, shape.d_head, shape.d_model)
        k = ckpt.read_rows(k_info).reshape(shape.n_kv_heads, shape.d_head, shape.d_model)
        return LayerQK(layer, q, k, (q_info, k_info))


@dataclass(frozen=True)
class FusedSections(Layout):
    """One fused weight with rows [Q (H*dh), K (H_kv*dh), V (H_kv*dh)]; reads only Q and K rows."""

    name: str
    o_name: str  # the output projection (V is read from ``name``)

    def read(self, ckpt, layer, shape):
        info = ckpt.find(self.name.format(layer=layer))
        h, hkv, dh, d = shape.n_heads, shape.n_kv_heads, shape.d_head, shape.d_model
        expect_shape(ckpt, info, ((h + 2 * hkv) * dh, d))
        rows = ckpt.read_rows(info, 0, (h + hkv) * dh)
        q = rows[: h * dh].reshape(h, dh, d)
        k = rows[h * dh :].reshape(hkv, dh, d)
        return LayerQK(layer, q, k, (info,))


@dataclass(frozen=True)
class FusedGroups(Layout):
    """One fused weight with rows per key group [q x (H/H_kv), k, v], each d_head rows.

    With H_kv = H this is the per-head interleaving [q, k, v] of GPT-NeoX, BLOOM
    and classic Falcon; with H_kv < H it is Falcon's new decoder architecture.
    Reads the contiguous rows from the first q to the last k.
    """

    name: str
    o_name: str  # the output projection (V is read from ``name``)

    def read(self, ckpt, layer, shape):
        info = ckpt.find(self.name.format(layer=layer))
        hkv, g, dh, d = shape.n_kv_heads, shape.group_size, shape.d_head, shape.d_model
        per_group = (g + 2) * dh
        expect_shape(ckpt, info, (hkv * per_group, d))
        rows = ckpt.read_rows(info, 0, (hkv - 1) * per_group + (g + 1) * dh)
        starts = range(0, hkv * per_group, per_group)
        q = np.stack([rows[s : s + g * dh] for s in starts]).reshape(hkv * g, dh, d)
        k = np.stack([rows[s + g * dh : s + (g + 1) * dh] for s in starts])
        return LayerQK(layer, q, k, (info,))


@dataclass(frozen=True)
class Conv1DFused(Layout):
    """GPT-2's Conv1D c_attn: weight (d, 3d), i.e. transposed, columns [Q, K, V].

    Q and K are column blocks, not contiguous in storage, so the whole tensor is read.
    """

    name: str
    o_name: str  # the output projection (V is read from ``name``)

    def read(self, ckpt, layer, shape):
        info = ckpt.find(self.name.format(layer=layer))
        h, dh, d = shape.n_heads, shape.d_head, shape.d_model
        expect_shape(ckpt, info, (d, 3 * h * dh))
        w = ckpt.read_rows(info).T  # (3d, d), Linear convention
        q = w[: h * dh].reshape(h, dh, d)
        k = w[h * dh : 2 * h * dh].reshape(h, dh, d)
        return LayerQK(layer, q, k, (info,))


TEXT_PREFIXES = ("language_model.model.", "model.language_model.")
"""Where multimodal checkpoints keep the text tower: the Hub layout (and what transformers 5.x saves),
and transformers 5.x's in-memory names. A bare suffix would also match vision towers (Llama 4's
``vision_model.model.layers.N.self_attn.q_proj``)."""


def find_prefixed(ckpt: Checkpoint, prefixes: tuple[str, ...], name: str) -> TensorInfo:
    """The tensor ``prefix + name`` for the first prefix with a match ("" = any prefix)."""
    for prefix in prefixes:
        if ckpt.matches(prefix + name):
            return ckpt.find(prefix + name)
    return ckpt.find(prefixes[0] + name)  # the one-line "no tensor named" error


@dataclass(frozen=True)
class PrefixedProjections(SeparateProjections):
    """q_proj / k_proj under one of several prefixes (multimodal text towers)."""

    prefixes: tuple[str, ...] = ("",)

    def query_tensor(self, layer):
        return self.prefixes[0] + self.q_name.format(layer=layer)

    def has_layer(self, ckpt, layer):
        return any(ckpt.matches(p + self.q_name.format(layer=layer)) for p in self.prefixes)

    def tensor(self, ckpt, name):
        return find_prefixed(ckpt, self.prefixes, name)


@dataclass(frozen=True)
class GatedQuery(SeparateProjections):
    """Qwen3-Next / Qwen3.5: q_proj rows per head h are [query (d_head) | output gate (d_head)].

    Only the query rows are read (one ranged read per head); the gate multiplies
    the attention output and is no part of the bilinear form.
    """

    def read(self, ckpt, layer, shape):
        q_info = ckpt.find(self.q_name.format(layer=layer))
        k_info = ckpt.find(self.k_name.format(layer=layer))
        h, dh, d = shape.n_heads, shape.d_head, shape.d_model
        expect_shape(ckpt, q_info, (2 * h * dh, d))
        expect_shape(ckpt, k_info, (shape.n_kv_heads * dh, d))
        q = np.stack([ckpt.read_rows(q_info, 2 * i * dh, (2 * i + 1) * dh) for i in range(h)])
        k = ckpt.read_rows(k_info).reshape(shape.n_kv_heads, dh, d)
        return LayerQK(layer, q, k, (q_info, k_info))

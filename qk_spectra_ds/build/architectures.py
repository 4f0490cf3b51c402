"""Where each architecture keeps Q and K, and how to split them into heads.

HF ``Linear`` weights are (out_features, in_features). For every supported
``model_type`` this module knows (a) how to read the attention shape from
config.json, with the defaults ``transformers`` would apply, and (b) which
tensor holds Q and K for a layer and how its rows split into heads. Reading a
layer returns ``q`` of shape (H, d_head, d_model) and ``k`` of shape
(H_kv, d_head, d_model): the per-head row blocks W_Q^h and W_K^g.

Tensor names are matched on their suffix, so ``model.``, ``bert.``,
``transformer.``, ``gpt_neox.`` or no prefix all work.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np

from ..errors import CheckpointError, UnsupportedArchitectureError
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


_MISSING = object()


def config_value(config: Mapping[str, Any], *names: str, default: Any = _MISSING) -> Any:
    """The first of ``names`` present (and not null) in config.json, else ``default``."""
    return _config_field(config, names, default)[1]


def _config_field(config: Mapping[str, Any], names: tuple[str, ...], default: Any = _MISSING) -> tuple[str, Any]:
    """(name, value) of the first of ``names`` present and not null in config.json, else (names[0], ``default``)."""
    for name in names:
        value = config.get(name)
        if value is not None:
            return name, value
    if default is _MISSING:
        raise CheckpointError(
            f"config.json of this {config.get('model_type')} model has none of {', '.join(names)}: is it complete?"
        )
    return names[0], default


def config_count(config: Mapping[str, Any], *names: str, default: Any = _MISSING) -> int:
    """A size from config.json (layers, heads, widths): a positive whole number, else a one-line error naming it.

    Strings, booleans, floats (even 8.0), zero and negative values are refused
    here, so that no later division or reshape turns them into a traceback or
    a silently wrong shape.
    """
    name, value = _config_field(config, names, default)
    if type(value) is not int or value <= 0:  # bool is an int subclass: refused too
        raise CheckpointError(f"config.json: {name} is {_shown(value)}, but must be a positive whole number")
    return value


def config_switch(config: Mapping[str, Any], name: str, default: bool) -> bool:
    """A true/false setting of config.json; anything but a JSON boolean is a one-line error naming it."""
    value = config.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise CheckpointError(f"config.json: {name} is {_shown(value)}, but must be true or false")
    return value


def _shown(value: Any, limit: int = 60) -> str:
    """A config value as JSON, cut short for a one-line message."""
    text = json.dumps(value, default=repr)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _head_width(config: Mapping[str, Any], width: tuple[str, ...], heads: tuple[str, ...], d_model: int, n_heads: int) -> int:
    """d_model / n_heads when config.json gives no head_dim; a one-line error if it does not divide."""
    if d_model % n_heads:
        raise CheckpointError(
            f"config.json: {_config_field(config, width)[0]} {d_model} is not a multiple of "
            f"{_config_field(config, heads)[0]} {n_heads}, and no head_dim is given"
        )
    return d_model // n_heads


# ---------------------------------------------------------------- layouts


class Layout:
    """How one layer's Q and K sit in the checkpoint."""

    def read(self, ckpt: Checkpoint, layer: int, shape: AttentionShape) -> LayerQK:
        raise NotImplementedError

    def query_tensor(self, layer: int) -> str:
        """The name (suffix) of the tensor holding layer ``layer``'s queries (fused layouts: ``name``)."""
        return self.name.format(layer=layer)


def _expect_shape(ckpt: Checkpoint, info: TensorInfo, expected: tuple[int, ...]) -> None:
    if tuple(info.shape) != tuple(expected):
        raise CheckpointError(
            f"{ckpt.source.model_id}: {info.name} has shape {list(info.shape)}, config.json implies "
            f"{list(expected)}: config and weights do not match"
        )


@dataclass(frozen=True)
class SeparateProjections(Layout):
    """Separate q_proj / k_proj Linear weights, rows grouped per head."""

    q_name: str
    k_name: str

    def query_tensor(self, layer):
        return self.q_name.format(layer=layer)

    def read(self, ckpt, layer, shape):
        q_info = ckpt.find(self.q_name.format(layer=layer))
        k_info = ckpt.find(self.k_name.format(layer=layer))
        _expect_shape(ckpt, q_info, (shape.n_heads * shape.d_head, shape.d_model))
        _expect_shape(ckpt, k_info, (shape.n_kv_heads * shape.d_head, shape.d_model))
        q = ckpt.read_rows(q_info).reshape(shape.n_heads, shape.d_head, shape.d_model)
        k = ckpt.read_rows(k_info).reshape(shape.n_kv_heads, shape.d_head, shape.d_model)
        return LayerQK(layer, q, k, (q_info, k_info))


@dataclass(frozen=True)
class FusedSections(Layout):
    """One fused weight with rows [Q (H*dh), K (H_kv*dh), V (H_kv*dh)]; reads only Q and K rows."""

    name: str

    def read(self, ckpt, layer, shape):
        info = ckpt.find(self.name.format(layer=layer))
        h, hkv, dh, d = shape.n_heads, shape.n_kv_heads, shape.d_head, shape.d_model
        _expect_shape(ckpt, info, ((h + 2 * hkv) * dh, d))
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

    def read(self, ckpt, layer, shape):
        info = ckpt.find(self.name.format(layer=layer))
        hkv, g, dh, d = shape.n_kv_heads, shape.group_size, shape.d_head, shape.d_model
        per_group = (g + 2) * dh
        _expect_shape(ckpt, info, (hkv * per_group, d))
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

    def read(self, ckpt, layer, shape):
        info = ckpt.find(self.name.format(layer=layer))
        h, dh, d = shape.n_heads, shape.d_head, shape.d_model
        _expect_shape(ckpt, info, (d, 3 * h * dh))
        w = ckpt.read_rows(info).T  # (3d, d), Linear convention
        q = w[: h * dh].reshape(h, dh, d)
        k = w[h * dh : 2 * h * dh].reshape(h, dh, d)
        return LayerQK(layer, q, k, (info,))


# ---------------------------------------------------------------- architectures


@dataclass(frozen=True)
class Architecture:
    """A model_type: its config fields and the layout of Q and K."""

    shape_fn: Callable[[Mapping[str, Any]], AttentionShape]
    layout_fn: Callable[[Mapping[str, Any]], Layout]

    def shape(self, config: Mapping[str, Any]) -> AttentionShape:
        shape = self.shape_fn(config)
        if shape.n_heads % shape.n_kv_heads:
            raise CheckpointError(
                f"config.json: {shape.n_heads} query heads are not a multiple of {shape.n_kv_heads} key/value heads"
            )
        return shape

    def layout(self, config: Mapping[str, Any]) -> Layout:
        return self.layout_fn(config)


def _shape(
    layers: tuple[str, ...],
    heads: tuple[str, ...],
    width: tuple[str, ...],
    kv_heads: tuple[str, ...] = ("num_key_value_heads",),
    head_dim: tuple[str, ...] = ("head_dim",),
) -> Callable[[Mapping[str, Any]], AttentionShape]:
    def shape(config: Mapping[str, Any]) -> AttentionShape:
        n_layers = config_count(config, *layers)
        n_heads = config_count(config, *heads)
        d_model = config_count(config, *width)
        n_kv_heads = config_count(config, *kv_heads, default=n_heads) if kv_heads else n_heads
        if n_heads % n_kv_heads:
            raise CheckpointError(
                f"config.json: {_config_field(config, heads)[0]} {n_heads} is not a multiple of "
                f"{_config_field(config, kv_heads)[0]} {n_kv_heads} (each key/value head serves a whole group of query heads)"
            )
        if head_dim and _has(config, head_dim):
            d_head = config_count(config, *head_dim)
        else:
            d_head = _head_width(config, width, heads, d_model, n_heads)
        return AttentionShape(n_layers, n_heads, n_kv_heads, d_model, d_head)

    return shape


_LLAMA_SHAPE = _shape(("num_hidden_layers",), ("num_attention_heads",), ("hidden_size",))
_LLAMA_LAYOUT = SeparateProjections("layers.{layer}.self_attn.q_proj.weight", "layers.{layer}.self_attn.k_proj.weight")


def _has(config: Mapping[str, Any], names: tuple[str, ...]) -> bool:
    return any(config.get(name) is not None for name in names)


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
    d_head = _head_width(config, ("hidden_size", "n_embed"), ("num_attention_heads", "n_head"), d_model, n_heads)
    return AttentionShape(n_layers, n_heads, n_kv, d_model, d_head)


def _falcon_layout(config: Mapping[str, Any]) -> Layout:
    name = "h.{layer}.self_attention.query_key_value.weight"
    if not config_switch(config, "new_decoder_architecture", False) and config_switch(config, "multi_query", True):
        return FusedSections(name)
    return FusedGroups(name)


ARCHITECTURES: dict[str, Architecture] = {
    **{
        t: Architecture(_LLAMA_SHAPE, lambda c: _LLAMA_LAYOUT)
        for t in ("llama", "mistral", "mixtral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "olmo", "olmo2")
    },
    "gptj": Architecture(
        _shape(("n_layer", "num_hidden_layers"), ("n_head", "num_attention_heads"), ("n_embd", "hidden_size"), (), ()),
        lambda c: SeparateProjections("h.{layer}.attn.q_proj.weight", "h.{layer}.attn.k_proj.weight"),
    ),
    "opt": Architecture(
        _shape(("num_hidden_layers",), ("num_attention_heads",), ("hidden_size",), (), ()),
        lambda c: SeparateProjections(
            "decoder.layers.{layer}.self_attn.q_proj.weight", "decoder.layers.{layer}.self_attn.k_proj.weight"
        ),
    ),
    "bert": Architecture(
        _shape(("num_hidden_layers",), ("num_attention_heads",), ("hidden_size",), (), ()),
        lambda c: SeparateProjections(
            "encoder.layer.{layer}.attention.self.query.weight", "encoder.layer.{layer}.attention.self.key.weight"
        ),
    ),
    "gpt2": Architecture(
        _shape(("n_layer", "num_hidden_layers"), ("n_head", "num_attention_heads"), ("n_embd", "hidden_size"), (), ()),
        lambda c: Conv1DFused("h.{layer}.attn.c_attn.weight"),
    ),
    "gpt_neox": Architecture(
        _shape(("num_hidden_layers",), ("num_attention_heads",), ("hidden_size",), (), ()),
        lambda c: FusedGroups("layers.{layer}.attention.query_key_value.weight"),
    ),
    "bloom": Architecture(
        _shape(("n_layer", "num_hidden_layers"), ("n_head", "num_attention_heads"), ("hidden_size", "n_embed"), (), ()),
        lambda c: FusedGroups("h.{layer}.self_attention.query_key_value.weight"),
    ),
    "falcon": Architecture(_falcon_shape, _falcon_layout),
    "phi3": Architecture(  # head_dim from config.json when present, as Phi3Attention does
        _LLAMA_SHAPE,
        lambda c: FusedSections("layers.{layer}.self_attn.qkv_proj.weight"),
    ),
}

SUPPORTED_MODEL_TYPES = tuple(sorted(ARCHITECTURES))


def architecture_for(config: Mapping[str, Any]) -> Architecture:
    """The architecture of a config.json, or a one-line error listing the supported ones."""
    if not isinstance(config, Mapping):
        raise CheckpointError(
            f"config.json holds a JSON {_json_kind(config)}, not an object of settings: is it a transformers config?"
        )
    model_type = config.get("model_type")
    if not isinstance(model_type, str) or model_type not in ARCHITECTURES:
        raise UnsupportedArchitectureError(
            f"unsupported model_type {model_type!r} in config.json; supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    return ARCHITECTURES[model_type]


def _json_kind(value: Any) -> str:
    """The JSON name of a parsed value's type (list -> array, str -> string, ...)."""
    kinds = {list: "array", str: "string", bool: "boolean", int: "number", float: "number", type(None): "null"}
    return kinds.get(type(value), type(value).__name__)

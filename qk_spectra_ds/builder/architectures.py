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
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import CheckpointError, UnsupportedArchitectureError
from . import config_checks
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
    a silently wrong shape; so are sizes past :data:`config_checks.SIZE_LIMITS`
    (num_hidden_layers 1e12 must not reach a loop over the layers).
    """
    name, value = _config_field(config, names, default)
    return config_checks.whole(name, value)


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

    def has_layer(self, ckpt: Checkpoint, layer: int) -> bool:
        """Whether the checkpoint holds attention weights of layer ``layer`` (checks config's layer count)."""
        return bool(ckpt.matches(self.query_tensor(layer)))

    def read_with_folding(self, ckpt: Checkpoint, layer: int, shape: AttentionShape, read_folding: Callable[[str], Any]):
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
    """Separate q_proj / k_proj Linear weights, rows grouped per head."""

    q_name: str
    k_name: str

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

    def read(self, ckpt, layer, shape):
        info = ckpt.find(self.name.format(layer=layer))
        h, dh, d = shape.n_heads, shape.d_head, shape.d_model
        expect_shape(ckpt, info, (d, 3 * h * dh))
        w = ckpt.read_rows(info).T  # (3d, d), Linear convention
        q = w[: h * dh].reshape(h, dh, d)
        k = w[h * dh : 2 * h * dh].reshape(h, dh, d)
        return LayerQK(layer, q, k, (info,))


# ---------------------------------------------------------------- per-layer facts


@dataclass(frozen=True)
class RopeSpec:
    """The rotary embedding of one layer, as config.json defines it (transformers 5.x semantics)."""

    theta: float  # base
    rotary_dim: int  # dims of each head that rotate (partial rotary: < d_head)
    interleaved: bool  # True: pairs (2i, 2i+1) (GPT-J style); False: rotate-half pairs (i, i + r/2)
    scaling: dict | None  # the rope_scaling / rope_parameters dict (rope_type, factor, ...); None for default
    max_position_embeddings: int | None
    rotary_start: int = 0  # first rotating dim within the head (MLA: qk_nope_head_dim; else 0)


@dataclass(frozen=True)
class LayerFacts:
    """What one softmax-attention layer does, from config.json."""

    layer: int  # true layer index in the model
    attention_type: str  # 'full', 'sliding' or 'chunked'
    sliding_window: int | None  # tokens each query sees (sliding layers only)
    rope: RopeSpec | None  # None: no rotary at this layer (NoPE, absolute positions, ALiBi)


FULL, SLIDING, CHUNKED = "full_attention", "sliding_attention", "chunked_attention"
SOFTMAX_KINDS = {FULL: "full", SLIDING: "sliding", CHUNKED: "chunked", "hybrid": "full"}
"""transformers' layer_types values that hold softmax attention, and the attention_type they give."""

_LEGACY_KINDS = {"attention": FULL, "mamba": "linear_attention"}  # transformers' _LEGACY_LAYER_TYPE_REMAP


def layer_kinds(config: Mapping[str, Any], n_layers: int, default: Callable[[int], str]) -> list[str]:
    """transformers' ``layer_types`` of every layer: config.json's list if given, else ``default(i)``.

    A kind the builder does not know is refused (as transformers refuses it), never skipped:
    skipping would drop that layer's rows while n_layers still counts it.
    """
    given = config.get("layer_types")
    if given is None:
        return [default(i) for i in range(n_layers)]
    if not isinstance(given, list) or len(given) != n_layers or not all(isinstance(k, str) for k in given):
        raise CheckpointError(f"config.json: layer_types is {_shown(given)}, not a list of {n_layers} layer kinds")
    return [config_checks.layer_kind(f"layer_types[{i}]", _LEGACY_KINDS.get(k, k), SOFTMAX_KINDS) for i, k in enumerate(given)]


def rope_parameters(config: Mapping[str, Any], kind: str, default_theta: float, legacy_theta: str = "rope_theta") -> tuple[float, dict | None, float | None]:
    """(theta, scaling, partial_rotary_factor) of layers of ``kind``, as transformers 5.x reads config.json.

    ``rope_parameters`` (flat, or nested per layer kind) wins; else the legacy
    keys: ``rope_scaling`` and ``legacy_theta`` (``rope_theta``; Gemma 3's local
    layers: ``rope_local_base_freq``), else the config class's default theta.
    """
    return _rope_parameters(config, kind, default_theta, legacy_theta)[:3]


def _rope_parameters(config: Mapping[str, Any], kind: str, default_theta: float, legacy_theta: str) -> tuple[float, dict | None, float | None, str]:
    """:func:`rope_parameters` and where its scaling sits in config.json (for messages); theta checked by name."""
    params, where = config.get("rope_parameters"), "rope_parameters"
    if params is not None and not isinstance(params, Mapping):
        config_checks.refuse(where, params, "an object of rope settings or null")
    if isinstance(params, Mapping) and any(isinstance(v, Mapping) for v in params.values()):
        key = kind if params.get(kind) else FULL
        params, where = params.get(key), f"rope_parameters.{key}"
        if params is not None and not isinstance(params, Mapping):
            config_checks.refuse(where, params, "an object of rope settings or null")
    if isinstance(params, Mapping):
        theta = config_checks.rope_theta(f"{where}.rope_theta", params.get("rope_theta", default_theta))
        scaling = params
    else:
        theta = config_checks.rope_theta(legacy_theta, config_value(config, legacy_theta, default=default_theta))
        scaling, where = config.get("rope_scaling"), "rope_scaling"
        if scaling is not None and not isinstance(scaling, Mapping):
            config_checks.refuse(where, scaling, "an object of rope settings or null")
    partial = (scaling or {}).get("partial_rotary_factor", config.get("partial_rotary_factor"))
    scaling = {("rope_type" if k == "type" else k): v for k, v in (scaling or {}).items() if k not in ("rope_theta", "partial_rotary_factor")}
    if scaling.get("rope_type", "default") == "default":
        scaling = None
    return theta, scaling, partial, where


def rope_spec(
    config: Mapping[str, Any],
    kind: str,
    d_rot: int,
    *,
    default_theta: float = 10000.0,
    interleaved: bool = False,
    default_partial: float = 1.0,
    legacy_theta: str = "rope_theta",
    rotary_start: int = 0,
) -> RopeSpec:
    """The rotary embedding of a layer of ``kind`` whose heads have ``d_rot`` dims open to rotation.

    Every rotary field is checked by name here (:func:`config_checks.rope_scaling`), before any work.
    """
    theta, scaling, partial, where = _rope_parameters(config, kind, default_theta, legacy_theta)
    partial = default_partial if partial is None else partial
    if isinstance(partial, bool) or not isinstance(partial, (int, float)) or not 0 < partial <= 1:
        raise CheckpointError(f"config.json: partial_rotary_factor is {_shown(partial)}, not in (0, 1]")
    max_pos = config_checks.positions("max_position_embeddings", config.get("max_position_embeddings"))
    original = config_checks.positions("original_max_position_embeddings", config.get("original_max_position_embeddings"))
    rotary_dim = int(d_rot * partial)
    if rotary_dim % 2 and rotary_dim == d_rot:  # transformers rounds an odd partial width up: a whole head cannot be
        raise CheckpointError(
            f"config.json: partial_rotary_factor is {_shown(partial)} on heads of {d_rot} rotary dims, but rotary "
            "embeddings rotate pairs of dims: an odd head cannot rotate whole (check head_dim, hidden_size / num_attention_heads)"
        )
    config_checks.rope_scaling(
        where, scaling, rotary_dim=rotary_dim, max_position_embeddings=max_pos, original_max_position_embeddings=original
    )
    return RopeSpec(theta, rotary_dim, interleaved, scaling, max_pos, rotary_start)


def window_of(config: Mapping[str, Any], default: int | None = None) -> int | None:
    """config.json's sliding_window (a positive whole number), or ``default``; 0 (Qwen2-MoE without a window): None."""
    if config.get("sliding_window") is None:
        return default
    if config.get("sliding_window") == 0 and type(config.get("sliding_window")) is int:
        return None
    return config_count(config, "sliding_window")


def facts_from_kinds(
    kinds: list[str], window: int | None, rope: Callable[[int, str], RopeSpec | None]
) -> list[LayerFacts]:
    """LayerFacts of the softmax layers among ``kinds``; ``rope(layer, kind)`` gives each one's rotary."""
    facts = []
    for layer, kind in enumerate(kinds):
        if kind not in SOFTMAX_KINDS:
            continue
        attention = SOFTMAX_KINDS[kind]
        facts.append(LayerFacts(layer, attention, window if attention == "sliding" else None, rope(layer, kind)))
    return facts


def llama_like_facts(
    *,
    default_kind: Callable[[Mapping[str, Any], int], str] = lambda c, i: FULL,
    default_window: int | None = None,
    default_theta: float = 10000.0,
    interleaved: bool = False,
    default_partial: float = 1.0,
    has_rope: Callable[[Mapping[str, Any], int, str], bool] = lambda c, i, kind: True,
) -> Callable[[Mapping[str, Any], AttentionShape], list[LayerFacts]]:
    """Facts of a decoder whose layers differ only by kind (full / sliding / ...) and by rope or NoPE."""

    def facts(config: Mapping[str, Any], shape: AttentionShape) -> list[LayerFacts]:
        kinds = layer_kinds(config, shape.n_layers, lambda i: default_kind(config, i))
        window = window_of(config, default_window)

        def rope(layer: int, kind: str) -> RopeSpec | None:
            if not has_rope(config, layer, kind):
                return None
            return rope_spec(
                config, kind, shape.d_head, default_theta=default_theta, interleaved=interleaved, default_partial=default_partial
            )

        return facts_from_kinds(kinds, window, rope)

    return facts


def _window_everywhere(config: Mapping[str, Any], i: int) -> str:
    """Mistral, Mixtral, Starcoder2, Phi-3: every layer slides when config.json sets a sliding_window."""
    return SLIDING if config.get("sliding_window") is not None else FULL


def _qwen2_kind(config: Mapping[str, Any], i: int) -> str:
    """Qwen2/Qwen3: layers from max_window_layers on slide when use_sliding_window is set."""
    slides = config_switch(config, "use_sliding_window", False) and config.get("sliding_window") is not None
    return SLIDING if slides and i >= _pattern(config, "max_window_layers", 28, minimum=0) else FULL


def _alternating(config: Mapping[str, Any], i: int) -> str:
    """Gemma 2: even layers slide, odd layers are global."""
    return SLIDING if (i + 1) % 2 else FULL


def _every_nth_full(pattern_key: str, default: int) -> Callable[[Mapping[str, Any], int], str]:
    """Layer i is global iff (i + 1) % pattern == 0, else sliding (Gemma 3, Cohere2, Exaone4 ...)."""

    def kind(config: Mapping[str, Any], i: int) -> str:
        pattern = config_value(config, pattern_key, default=default)
        if type(pattern) is not int or pattern <= 0:
            raise CheckpointError(f"config.json: {pattern_key} is {_shown(pattern)}, not a positive whole number")
        return FULL if (i + 1) % pattern == 0 else SLIDING

    return kind


def no_facts(config: Mapping[str, Any], shape: AttentionShape) -> list[LayerFacts]:
    """Absolute positions or ALiBi: every layer full attention, no rotary."""
    return [LayerFacts(layer, "full", None, None) for layer in range(shape.n_layers)]


def _gemma3_facts(config: Mapping[str, Any], shape: AttentionShape) -> list[LayerFacts]:
    """Gemma 3: sliding layers rotate with rope_local_base_freq (1e4), global ones with rope_theta (1e6)."""
    kinds = layer_kinds(config, shape.n_layers, lambda i: _every_nth_full("sliding_window_pattern", 6)(config, i))

    def rope(layer: int, kind: str) -> RopeSpec:
        if kind == SLIDING:
            local = {k: v for k, v in config.items() if k != "rope_scaling"}  # legacy rope_scaling: global layers only
            return rope_spec(local, kind, shape.d_head, default_theta=1e4, legacy_theta="rope_local_base_freq")
        return rope_spec(config, kind, shape.d_head, default_theta=1e6)

    return facts_from_kinds(kinds, window_of(config, 4096), rope)


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


# ---------------------------------------------------------------- architectures


@dataclass(frozen=True)
class Architecture:
    """A model_type: its config fields and the layout of Q and K."""

    shape_fn: Callable[[Mapping[str, Any]], AttentionShape]
    layout_fn: Callable[[Mapping[str, Any]], Layout]
    facts_fn: Callable[[Mapping[str, Any], AttentionShape], list[LayerFacts]] | None = None

    def shape(self, config: Mapping[str, Any]) -> AttentionShape:
        shape = self.shape_fn(config)
        if shape.n_heads % shape.n_kv_heads:
            raise CheckpointError(
                f"config.json: {shape.n_heads} query heads are not a multiple of {shape.n_kv_heads} key/value heads"
            )
        return shape

    def layout(self, config: Mapping[str, Any]) -> Layout:
        return self.layout_fn(config)

    def stored_layers(self, config: Mapping[str, Any]) -> int:
        """Layers the checkpoint holds: num_hidden_layers plus DeepSeek-V3's multi-token-prediction layers (never read)."""
        extra = config.get("num_nextn_predict_layers")
        extra = 0 if extra is None else config_checks.whole("num_nextn_predict_layers", extra, 0, config_checks.MAX_LAYERS)
        return self.shape(config).n_layers + extra

    def layer_facts(self, config: Mapping[str, Any]) -> list[LayerFacts]:
        """One LayerFacts per layer with softmax attention, in layer order (true layer indices)."""
        facts_fn = self.facts_fn or llama_like_facts()
        shape = self.shape(config)
        facts = facts_fn(config, shape)
        if not facts:  # e.g. every layer linear attention, or a full_attention_interval past the last layer
            raise CheckpointError(
                f"config.json: no layer has softmax attention (of {shape.n_layers} layers): nothing to build; "
                "check layer_types and the layer-pattern fields (full_attention_interval, ...)"
            )
        return facts


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


# ---------------------------------------------------------------- 2025-26 layouts


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


# ---------------------------------------------------------------- 2025-26 layer kinds and rotary


def _gpt_oss_kind(config: Mapping[str, Any], i: int) -> str:
    """gpt-oss: even layers slide (window 128), odd layers are global."""
    return SLIDING if i % 2 == 0 else FULL


def _qwen2_moe_kind(config: Mapping[str, Any], i: int) -> str:
    """Qwen2-MoE: even layers below max_window_layers slide when use_sliding_window is set."""
    slides = config_switch(config, "use_sliding_window", False)
    return SLIDING if slides and i % 2 == 0 and i < _pattern(config, "max_window_layers", 28, minimum=0) else FULL


def _qwen3_moe_kind(config: Mapping[str, Any], i: int) -> str:
    """Qwen3-MoE: every layer slides when use_sliding_window is set."""
    return SLIDING if config_switch(config, "use_sliding_window", False) and config.get("sliding_window") else FULL


def _rope_flags(config: Mapping[str, Any], n_layers: int) -> list[bool]:
    """Llama 4 / SmolLM3 ``no_rope_layers``: 1 = rotary, 0 = NoPE; default every no_rope_layer_interval-th is NoPE."""
    flags = config.get("no_rope_layers")
    if not flags:  # null or [] -> the config class's default
        interval = config_value(config, "no_rope_layer_interval", default=4)
        if type(interval) is not int or interval <= 0:
            raise CheckpointError(f"config.json: no_rope_layer_interval is {_shown(interval)}, not a positive whole number")
        return [(i + 1) % interval != 0 for i in range(n_layers)]
    if not isinstance(flags, list) or len(flags) < n_layers or any(f not in (0, 1) for f in flags):
        raise CheckpointError(f"config.json: no_rope_layers is {_shown(flags)}, not {n_layers} flags of 0 or 1")
    return [bool(f) for f in flags[:n_layers]]


def _llama4_facts(config: Mapping[str, Any], shape: AttentionShape) -> list[LayerFacts]:
    """Llama 4: rotary layers do chunked attention (attention_chunk_size), NoPE layers global attention."""
    ropes = _rope_flags(config, shape.n_layers)
    chunked = config.get("attention_chunk_size") is not None and bool(config_count(config, "attention_chunk_size"))
    kinds = layer_kinds(config, shape.n_layers, lambda i: CHUNKED if ropes[i] and chunked else FULL)
    return facts_from_kinds(
        kinds,
        None,
        lambda layer, kind: rope_spec(config, kind, shape.d_head, default_theta=5e5, interleaved=True) if ropes[layer] else None,
    )


def _smollm3_facts(config: Mapping[str, Any], shape: AttentionShape) -> list[LayerFacts]:
    """SmolLM3: NoPE every 4th layer; with use_sliding_window those NoPE layers slide."""
    ropes = _rope_flags(config, shape.n_layers)
    slides = config_switch(config, "use_sliding_window", False) and config.get("sliding_window") is not None
    kinds = layer_kinds(config, shape.n_layers, lambda i: SLIDING if slides and not ropes[i] else FULL)
    return facts_from_kinds(
        kinds,
        window_of(config),
        lambda layer, kind: rope_spec(config, kind, shape.d_head, default_theta=2e6) if ropes[layer] else None,
    )


def _olmo3_facts(config: Mapping[str, Any], shape: AttentionShape) -> list[LayerFacts]:
    """OLMo 3: global every 4th layer, else sliding (4096); a legacy rope_theta sets the global layers only."""
    kinds = layer_kinds(config, shape.n_layers, lambda i: FULL if (i + 1) % 4 == 0 else SLIDING)
    local = {k: v for k, v in config.items() if k != "rope_theta"}

    def rope(layer: int, kind: str) -> RopeSpec:
        return rope_spec(config if kind == FULL else local, kind, shape.d_head, default_theta=5e5)

    return facts_from_kinds(kinds, window_of(config, 4096), rope)


def _exaone4_facts(config: Mapping[str, Any], shape: AttentionShape) -> list[LayerFacts]:
    """EXAONE 4: with a sliding window, global every sliding_window_pattern-th layer and NoPE there."""
    windowed = config.get("sliding_window") is not None
    pattern = _every_nth_full("sliding_window_pattern", 4)
    kinds = layer_kinds(config, shape.n_layers, lambda i: pattern(config, i) if windowed else FULL)
    return facts_from_kinds(
        kinds,
        window_of(config),
        lambda layer, kind: rope_spec(config, kind, shape.d_head) if not windowed or kind == SLIDING else None,
    )


def _modernbert_facts(config: Mapping[str, Any], shape: AttentionShape) -> list[LayerFacts]:
    """ModernBERT: global every global_attn_every_n_layers-th layer (from 0), else local (local_attention / 2 each side)."""
    every = _pattern(config, "global_attn_every_n_layers", 3)
    kinds = layer_kinds(config, shape.n_layers, lambda i: FULL if i % every == 0 else SLIDING)
    local = config_value(config, "local_attention", default=128)
    window = window_of(config, config_checks.whole("local_attention", local, 2) // 2)  # tokens each side: at least 1

    def rope(layer: int, kind: str) -> RopeSpec:
        if kind == FULL:
            return rope_spec(config, kind, shape.d_head, default_theta=1.6e5, legacy_theta="global_rope_theta")
        return rope_spec(config, kind, shape.d_head, default_theta=1e4, legacy_theta="local_rope_theta")

    return facts_from_kinds(kinds, window, rope)


def _qwen3_next_kind(config: Mapping[str, Any], i: int) -> str:
    """Qwen3-Next / Qwen3.5: softmax attention every full_attention_interval-th layer, linear attention between."""
    interval = _pattern(config, "full_attention_interval", 4)
    return FULL if (i + 1) % interval == 0 else "linear_attention"


def _pattern(config: Mapping[str, Any], name: str, default: int, minimum: int = 1) -> int:
    """A layer-pattern count of config.json (an interval, a layer index): a whole number >= ``minimum``, by name."""
    return config_checks.whole(name, config_value(config, name, default=default), minimum, config_checks.MAX_POSITIONS)


# ---------------------------------------------------------------- multimodal configs


NESTED_TEXT = {"gemma3": "gemma3_text", "llama4": "llama4_text", "mistral3": "mistral"}
"""Multimodal model_types whose text tower is described by ``text_config``, and that config's default model_type."""

TEXT_CONFIG_DEFAULTS: dict[str, dict[str, Any]] = {
    "gemma3_text": dict(
        hidden_size=2304, num_hidden_layers=26, num_attention_heads=8, num_key_value_heads=4, head_dim=256,
        sliding_window=4096, sliding_window_pattern=6, max_position_embeddings=131072,
    ),
    "llama4_text": dict(
        hidden_size=5120, num_hidden_layers=48, num_attention_heads=40, num_key_value_heads=8, head_dim=128,
        attention_chunk_size=8192, no_rope_layer_interval=4, max_position_embeddings=131072,
    ),
    "mistral": dict(
        hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
        sliding_window=4096, max_position_embeddings=131072,
    ),
}  # fmt: skip
"""The transformers 5.x config-class defaults (Gemma3TextConfig, Llama4TextConfig, MistralConfig) of the
fields the spectra and the per-layer facts read, for text_configs that leave them out (Gemma 3's Hub
text_configs give only hidden_size, intermediate_size, num_hidden_layers, rope_scaling and sliding_window)."""


def text_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The text tower's config of a multimodal config.json, with its config class's defaults filled in.

    As transformers does, a text_config dict picks its class from its own
    model_type (default: the multimodal type's usual one); fields it leaves
    out (and explicit nulls of fields that are not nullable) get that class's defaults.
    """
    nested = config.get("text_config")
    if not isinstance(nested, Mapping):
        raise CheckpointError(
            f"config.json of this {config.get('model_type')} model has no text_config object: is it complete?"
        )
    text_type = nested.get("model_type") or NESTED_TEXT[config["model_type"]]
    if text_type not in TEXT_CONFIG_DEFAULTS:
        raise UnsupportedArchitectureError(
            f"unsupported text_config model_type {text_type!r} in config.json; supported: {', '.join(sorted(TEXT_CONFIG_DEFAULTS))}"
        )
    return {**TEXT_CONFIG_DEFAULTS[text_type], **{k: v for k, v in nested.items() if v is not None or k == "sliding_window"}, "model_type": text_type}


def _nested(text_arch: Callable[[], Mapping[str, Architecture]]) -> Architecture:
    """A multimodal model_type: the architecture of its text_config, reading the text tower's tensors only."""

    def inner(config: Mapping[str, Any]) -> tuple[Architecture, dict[str, Any]]:
        text = text_config(config)
        return text_arch()[text["model_type"]], text

    def layout(config: Mapping[str, Any]) -> Layout:
        arch, text = inner(config)
        base = arch.layout(text)
        return PrefixedProjections(base.q_name, base.k_name, prefixes=TEXT_PREFIXES)

    return Architecture(
        lambda c: inner(c)[0].shape(inner(c)[1]),
        layout,
        lambda c, shape: inner(c)[0].layer_facts(inner(c)[1]),
    )


_LLAMA_FACTS = {
    "llama": llama_like_facts(),
    "olmo": llama_like_facts(),
    "olmo2": llama_like_facts(),
    "gemma": llama_like_facts(),
    "mistral": llama_like_facts(default_kind=_window_everywhere, default_window=4096),
    "mixtral": llama_like_facts(default_kind=_window_everywhere, default_theta=1e6),
    "qwen2": llama_like_facts(default_kind=_qwen2_kind),
    "qwen3": llama_like_facts(default_kind=_qwen2_kind),
    "gemma2": llama_like_facts(default_kind=_alternating, default_window=4096),
    "gemma3_text": _gemma3_facts,
    # 2025-26 dense and MoE decoders (experts never read: only self_attn tensors are)
    "olmo3": _olmo3_facts,
    "qwen2_moe": llama_like_facts(default_kind=_qwen2_moe_kind),
    "qwen3_moe": llama_like_facts(default_kind=_qwen3_moe_kind),
    "gpt_oss": llama_like_facts(default_kind=_gpt_oss_kind, default_window=128, default_theta=1.5e5),
    "smollm3": _smollm3_facts,
    "cohere2": llama_like_facts(
        default_kind=_every_nth_full("sliding_window_pattern", 4), default_window=4096, interleaved=True,
        has_rope=lambda c, i, kind: kind == SLIDING,
    ),
    "glm4": llama_like_facts(interleaved=True, default_partial=0.5),
    "exaone4": _exaone4_facts,
    "granite": llama_like_facts(),
    "starcoder2": llama_like_facts(default_kind=_window_everywhere),
    "llama4_text": _llama4_facts,
    "falcon_h1": llama_like_facts(default_kind=lambda c, i: "hybrid"),
}

ARCHITECTURES: dict[str, Architecture] = {
    **{t: Architecture(_LLAMA_SHAPE, lambda c: _LLAMA_LAYOUT, facts) for t, facts in _LLAMA_FACTS.items()},
    "gptj": Architecture(
        _shape(("n_layer", "num_hidden_layers"), ("n_head", "num_attention_heads"), ("n_embd", "hidden_size"), (), ()),
        lambda c: SeparateProjections("h.{layer}.attn.q_proj.weight", "h.{layer}.attn.k_proj.weight"),
        _gptj_facts,
    ),
    "opt": Architecture(
        _shape(("num_hidden_layers",), ("num_attention_heads",), ("hidden_size",), (), ()),
        lambda c: SeparateProjections(
            "decoder.layers.{layer}.self_attn.q_proj.weight", "decoder.layers.{layer}.self_attn.k_proj.weight"
        ),
        no_facts,
    ),
    "bert": Architecture(
        _shape(("num_hidden_layers",), ("num_attention_heads",), ("hidden_size",), (), ()),
        lambda c: SeparateProjections(
            "encoder.layer.{layer}.attention.self.query.weight", "encoder.layer.{layer}.attention.self.key.weight"
        ),
        no_facts,
    ),
    "gpt2": Architecture(
        _shape(("n_layer", "num_hidden_layers"), ("n_head", "num_attention_heads"), ("n_embd", "hidden_size"), (), ()),
        lambda c: Conv1DFused("h.{layer}.attn.c_attn.weight"),
        no_facts,
    ),
    "gpt_neox": Architecture(
        _shape(("num_hidden_layers",), ("num_attention_heads",), ("hidden_size",), (), ()),
        lambda c: FusedGroups("layers.{layer}.attention.query_key_value.weight"),
        _gpt_neox_facts,
    ),
    "bloom": Architecture(
        _shape(("n_layer", "num_hidden_layers"), ("n_head", "num_attention_heads"), ("hidden_size", "n_embed"), (), ()),
        lambda c: FusedGroups("h.{layer}.self_attention.query_key_value.weight"),
        no_facts,
    ),
    "falcon": Architecture(_falcon_shape, _falcon_layout, _falcon_facts),
    "qwen3_next": Architecture(
        _LLAMA_SHAPE,
        lambda c: GatedQuery("layers.{layer}.self_attn.q_proj.weight", "layers.{layer}.self_attn.k_proj.weight"),
        llama_like_facts(default_kind=_qwen3_next_kind, default_partial=0.25),
    ),
    "modernbert": Architecture(
        _shape(("num_hidden_layers",), ("num_attention_heads",), ("hidden_size",), (), ()),
        lambda c: FusedSections("layers.{layer}.attn.Wqkv.weight"),
        _modernbert_facts,
    ),
    "deepseek_v2": Architecture(_mla_shape, _mla_layout, _mla_facts(False)),
    "deepseek_v3": Architecture(_mla_shape, _mla_layout, _mla_facts(True)),
    **{t: _nested(lambda: ARCHITECTURES) for t in NESTED_TEXT},
    "phi3": Architecture(  # head_dim from config.json when present, as Phi3Attention does
        _LLAMA_SHAPE,
        lambda c: FusedSections("layers.{layer}.self_attn.qkv_proj.weight"),
        llama_like_facts(default_kind=_window_everywhere),
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

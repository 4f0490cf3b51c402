"""The record of one model type: everything the builder knows about a config.json ``model_type``, in one place.

A :class:`ModelType` says how to read the attention shape from config.json, where Q and K
live and how they split into heads (the layout), what each layer does (kind, window,
rotary), what surrounds W_Q and W_K for the folded variant (the folding rule, or an
explicit None where that variant is not implemented), and the per-type facts of the OV
circuit. Every field without a default must be given, so a record cannot be registered
with a part missing (:mod:`..architectures` holds the one registry).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ...errors import CheckpointError
from .. import config_checks
from ..config_fields import config_count, config_field, has_any, head_width
from ..layer_facts import LayerFacts
from ..layouts import AttentionShape, Layout
from .folding_rules import FoldingFacts

ShapeReader = Callable[[Mapping[str, Any]], AttentionShape]
LayoutReader = Callable[[Mapping[str, Any]], Layout]
FactsReader = Callable[[Mapping[str, Any], AttentionShape], list[LayerFacts]]
FoldingRule = Callable[[Mapping[str, Any], int], FoldingFacts]
"""(text config, layer) -> that layer's :class:`FoldingFacts`."""


@dataclass(frozen=True, kw_only=True)
class ModelType:
    """One config.json ``model_type``: its config fields, Q/K layout, layer facts, folding rule and OV facts."""

    name: str
    shape_fn: ShapeReader
    layout_fn: LayoutReader
    facts_fn: FactsReader
    folding: FoldingRule | None  # None: the folded and null variants are not implemented (said, not forgotten)
    post_attention_norm: float | None = None  # gain offset of a post_attention_layernorm on the attention output
    value_head_dim: str | None = None  # config field of the OV circuit's head width (MLA: v_head_dim); None: d_head

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise TypeError(f"a model type needs a name, not {self.name!r}")
        for field in ("shape_fn", "layout_fn", "facts_fn"):
            if not callable(getattr(self, field)):
                raise TypeError(f"model type {self.name!r}: {field} must be callable")
        if self.folding is not None and not callable(self.folding):
            raise TypeError(f"model type {self.name!r}: folding must be a rule (callable) or None (not implemented)")

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
        extra = (
            0 if extra is None else config_checks.whole("num_nextn_predict_layers", extra, 0, config_checks.MAX_LAYERS)
        )
        return self.shape(config).n_layers + extra

    def layer_facts(self, config: Mapping[str, Any]) -> list[LayerFacts]:
        """One LayerFacts per layer with softmax attention, in layer order (true layer indices)."""
        shape = self.shape(config)
        facts = self.facts_fn(config, shape)
        if not facts:  # e.g. every layer linear attention, or a full_attention_interval past the last layer
            raise CheckpointError(
                f"config.json: no layer has softmax attention (of {shape.n_layers} layers): nothing to build; "
                "check layer_types and the layer-pattern fields (full_attention_interval, ...)"
            )
        return facts


def shape_reader(
    layers: tuple[str, ...],
    heads: tuple[str, ...],
    width: tuple[str, ...],
    kv_heads: tuple[str, ...] = ("num_key_value_heads",),
    head_dim: tuple[str, ...] = ("head_dim",),
) -> ShapeReader:
    """The attention shape from config.json fields, each given as its names (first present wins)."""

    def shape(config: Mapping[str, Any]) -> AttentionShape:
        n_layers = config_count(config, *layers)
        n_heads = config_count(config, *heads)
        d_model = config_count(config, *width)
        n_kv_heads = config_count(config, *kv_heads, default=n_heads) if kv_heads else n_heads
        if n_heads % n_kv_heads:
            raise CheckpointError(
                f"config.json: {config_field(config, heads)[0]} {n_heads} is not a multiple of "
                f"{config_field(config, kv_heads)[0]} {n_kv_heads} (each key/value head serves a whole group of query heads)"
            )
        if head_dim and has_any(config, head_dim):
            d_head = config_count(config, *head_dim)
        else:
            d_head = head_width(config, width, heads, d_model, n_heads)
        return AttentionShape(n_layers, n_heads, n_kv_heads, d_model, d_head)

    return shape

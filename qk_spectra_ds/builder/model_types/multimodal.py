"""Multimodal model types (Gemma 3, Llama 4, Mistral 3): the text tower of a nested ``text_config``.

Each is the record of its text_config's model_type (with that config class's defaults filled
in), reading the text tower's tensors only: the vision tower's q_proj / k_proj share the suffix,
so the layout looks under the text tower's prefixes. Their own records carry no folding rule:
the folded variant takes the rule of the text_config's model_type, where that has one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ...errors import CheckpointError, UnsupportedArchitectureError
from ..layouts import TEXT_PREFIXES, Layout, PrefixedProjections
from .record import ModelType

NESTED_TEXT = {"gemma3": "gemma3_text", "llama4": "llama4_text", "mistral3": "mistral"}
"""Multimodal model_types whose text tower is described by ``text_config``, and that config's default model_type."""

TEXT_CONFIG_DEFAULTS: dict[str, dict[str, Any]] = {
    "gemma3_text": dict(
        hidden_size=2304,
        num_hidden_layers=26,
        num_attention_heads=8,
        num_key_value_heads=4,
        head_dim=256,
        sliding_window=4096,
        sliding_window_pattern=6,
        max_position_embeddings=131072,
    ),
    "llama4_text": dict(
        hidden_size=5120,
        num_hidden_layers=48,
        num_attention_heads=40,
        num_key_value_heads=8,
        head_dim=128,
        attention_chunk_size=8192,
        no_rope_layer_interval=4,
        max_position_embeddings=131072,
    ),
    "mistral": dict(
        hidden_size=4096,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        sliding_window=4096,
        max_position_embeddings=131072,
    ),
}
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
    return {
        **TEXT_CONFIG_DEFAULTS[text_type],
        **{k: v for k, v in nested.items() if v is not None or k == "sliding_window"},
        "model_type": text_type,
    }


def _nested(name: str, lookup: Callable[[], Mapping[str, ModelType]]) -> ModelType:
    """A multimodal model_type: the record of its text_config (found through ``lookup``), text tower tensors only."""

    def inner(config: Mapping[str, Any]) -> tuple[ModelType, dict[str, Any]]:
        text = text_config(config)
        return lookup()[text["model_type"]], text

    def layout(config: Mapping[str, Any]) -> Layout:
        record, text = inner(config)
        base = record.layout(text)
        return PrefixedProjections(base.q_name, base.k_name, base.v_name, base.o_name, prefixes=TEXT_PREFIXES)

    return ModelType(
        name=name,
        shape_fn=lambda c: inner(c)[0].shape(inner(c)[1]),
        layout_fn=layout,
        facts_fn=lambda c, shape: inner(c)[0].layer_facts(inner(c)[1]),
        folding=None,
    )


def records(lookup: Callable[[], Mapping[str, ModelType]]) -> tuple[ModelType, ...]:
    """The multimodal records; ``lookup()`` is the registry their text towers are found in (at read time)."""
    return tuple(_nested(name, lookup) for name in NESTED_TEXT)

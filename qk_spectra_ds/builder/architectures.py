"""The one registry of model types: every record of :mod:`.model_types`, by config.json ``model_type``.

Each record (:class:`.model_types.record.ModelType`) holds everything the builder knows about
its model type: the attention shape's config fields, where Q and K live and how they split
into heads (:mod:`.layouts`, :mod:`.latent_layout`), each layer's kind and rotary
(:mod:`.layer_facts`), the folding rule of the folded and null variants (:mod:`.folding`
reads it) and the per-type OV facts (:mod:`.ov`). There is no second table to keep in step.

The records live in ``model_types/``, grouped by how the attention is laid out: llama_like
(separate q_proj / k_proj under ``layers.N.self_attn``), gpt_style (GPT-2, GPT-J, NeoX, BLOOM,
Falcon, OPT, BERT, ModernBERT), latent (MLA) and multimodal (a nested text_config); record
holds the :class:`ModelType` dataclass and folding_rules what a folding rule returns. Adding a
model type: one record in the family whose layout it shares, and its case in the tests' tiny models.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from ..errors import CheckpointError, UnsupportedArchitectureError
from .config_fields import json_kind
from .model_types import gpt_style, latent, llama_like, multimodal
from .model_types.record import FoldingRule, ModelType


def registry(records: Iterable[ModelType]) -> dict[str, ModelType]:
    """The records by name; a second record of one name, or anything but a ModelType, is refused."""
    table: dict[str, ModelType] = {}
    for record in records:
        if not isinstance(record, ModelType):
            raise TypeError(f"not a ModelType record: {record!r}")
        if record.name in table:
            raise ValueError(f"model type {record.name!r} is registered twice")
        table[record.name] = record
    return table


MODEL_TYPES: dict[str, ModelType] = registry(
    (*llama_like.RECORDS, *gpt_style.RECORDS, *latent.RECORDS, *multimodal.records(lambda: MODEL_TYPES))
)

SUPPORTED_MODEL_TYPES = tuple(sorted(MODEL_TYPES))
FOLDABLE_MODEL_TYPES = tuple(sorted(name for name, record in MODEL_TYPES.items() if record.folding is not None))
"""The model types whose records have a folding rule (the folded and null variants)."""


def model_type_for(config: Mapping[str, Any]) -> ModelType:
    """The record of a config.json's model_type, or a one-line error listing the supported ones."""
    if not isinstance(config, Mapping):
        raise CheckpointError(
            f"config.json holds a JSON {json_kind(config)}, not an object of settings: is it a transformers config?"
        )
    model_type = config.get("model_type")
    if not isinstance(model_type, str) or model_type not in MODEL_TYPES:
        raise UnsupportedArchitectureError(
            f"unsupported model_type {model_type!r} in config.json; supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    return MODEL_TYPES[model_type]


def folding_rule(model_type: Any) -> FoldingRule | None:
    """The folding rule of a model_type's record; None for a type without one or not registered."""
    record = MODEL_TYPES.get(model_type)
    return None if record is None else record.folding

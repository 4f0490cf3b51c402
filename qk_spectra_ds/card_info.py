"""The card's ``dataset_info`` block, as ``datasets`` writes it, without importing ``datasets``.

A build regenerates the card after every model. Importing ``datasets`` (and pandas with
it) for this block cost ~0.7 s, more than a 1B model's whole kernel; the block is plain
data: per config, the schema's features and the size of its ``train`` split.
``tests/dataset/test_card_info.py`` checks it against ``DatasetInfosDict.to_dataset_card_data``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from . import schema


def _type_yaml(kind: str) -> Any:
    """``list<list<float32>>`` -> ``{"list": {"list": "float32"}}``; a scalar type stays its name."""
    return {"list": _type_yaml(kind[len("list<") : -1])} if kind.startswith("list<") else kind


def features_yaml(version: int = schema.SCHEMA_VERSION) -> list[dict[str, Any]]:
    """The features list ``datasets`` writes in a card for :func:`schema.features`: ``{name, dtype}`` or ``{name, list}``."""
    out = []
    for name, kind in schema.column_types(version).items():
        value = _type_yaml(kind)
        out.append({"name": name, **(value if isinstance(value, dict) else {"dtype": value})})
    return out


def dataset_info(splits: Mapping[str, tuple[int, int]]) -> dict[str, Any] | list[dict[str, Any]]:
    """The ``dataset_info`` YAML value for configs -> (num_bytes, num_examples) of their train split.

    As ``DatasetInfosDict.to_dataset_card_data`` writes it: one mapping for a single config,
    else a list sorted by config name, ``config_name`` first.
    """
    infos = [  # a features list per config: one shared object would be written as YAML anchors and aliases
        {
            "config_name": name,
            "features": features_yaml(),
            "splits": [{"name": "train", "num_bytes": int(n_bytes), "num_examples": int(n_rows)}],
        }
        for name, (n_bytes, n_rows) in sorted(splits.items())
    ]
    if len(infos) == 1 and infos[0]["config_name"] == "default":
        infos[0].pop("config_name")
    return infos[0] if len(infos) == 1 else infos

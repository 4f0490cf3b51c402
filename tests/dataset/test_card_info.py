"""The card's dataset_info block without ``datasets`` equals what ``datasets`` writes (issue 24)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from datasets import DatasetInfo, SplitDict, SplitInfo
from datasets.info import DatasetInfosDict
from huggingface_hub import DatasetCardData

from qk_spectra_ds import card_info, card_metadata, dataset_card, schema

ROOT = Path(__file__).resolve().parents[2]


def datasets_block(splits: dict[str, tuple[int, int]]):
    infos = DatasetInfosDict()
    for name, (n_bytes, n_rows) in splits.items():
        split_dict = SplitDict()
        split_dict.add(SplitInfo("train", num_bytes=n_bytes, num_examples=n_rows))
        infos[name] = DatasetInfo(features=schema.features(), splits=split_dict)
    card = DatasetCardData()
    infos.to_dataset_card_data(card)
    return card.to_dict()["dataset_info"]


@pytest.mark.parametrize(
    "splits",
    [{"all": (10, 2)}, {"all": (300, 12), "Llama": (100, 4), "Qwen3": (200, 8)}, {"default": (5, 1)}],
    ids=["one-config", "families", "default"],
)
def test_dataset_info_is_what_datasets_writes(splits):
    assert card_info.dataset_info(splits) == datasets_block(splits)


@pytest.mark.slow
def test_card_yaml_has_no_aliases_and_building_a_card_does_not_import_datasets(tmp_path):
    summaries = [
        {"config": f, "path": f"data/{f}/m.parquet", "n_rows": 4, "n_bytes": 100, "model_id": "m", "variant": "raw"}
        for f in ("A", "B")
    ]
    text = dataset_card.render_card(summaries)
    assert "&id" not in text and "*id" not in text
    assert card_metadata.card_yaml(text)["dataset_info"] == datasets_block(
        {"all": (200, 8), "A": (100, 4), "B": (100, 4)}
    )
    probe = (
        "import sys; from qk_spectra_ds import dataset_card; "
        f"dataset_card.render_card({summaries!r}); print('datasets' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False", out.stderr[-2000:]

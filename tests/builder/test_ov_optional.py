"""A checkpoint without V and O (a Q/K-only extract) still builds its QK rows; asking for OV is one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from safetensors.numpy import save_file

from qk_spectra_ds.builder.pipeline import build_family
from qk_spectra_ds.errors import BuildError

CONFIG = {"model_type": "llama", "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
          "hidden_size": 32}  # fmt: skip


@pytest.fixture(scope="module")
def qk_only(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("qk-only") / "qk-only"
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps(CONFIG))
    rng = np.random.default_rng(0)
    tensors = {}
    for layer in range(2):
        tensors[f"model.layers.{layer}.self_attn.q_proj.weight"] = rng.standard_normal((32, 32), dtype=np.float32)
        tensors[f"model.layers.{layer}.self_attn.k_proj.weight"] = rng.standard_normal((16, 32), dtype=np.float32)
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    return directory


def test_default_circuits_build_the_qk_rows_with_a_warning(qk_only, tmp_path, caplog):
    out = tmp_path / "ds"
    (result,) = build_family("T", out, models=[str(qk_only)], variants=["raw"], offsets=["none"], progress=False)
    rows = pq.read_table(next((out / "data" / "T").glob("*.parquet"))).to_pandas()
    assert set(rows["circuit"]) == {"qk"} and len(rows) == 2 * 4
    assert result.circuits == ("qk",)
    assert any("qk rows only" in r.getMessage() and "v_proj" in r.getMessage() for r in caplog.records)


def test_asking_for_ov_without_v_and_o_is_one_line(qk_only, tmp_path):
    with pytest.raises(BuildError) as info:
        build_family("T", tmp_path / "ds", models=[str(qk_only)], variants=["raw"], circuits=["qk", "ov"], progress=False)
    message = str(info.value)
    assert "cannot build the ov circuit" in message and "v_proj" in message and "\n" not in message
    assert not list((tmp_path / "ds").glob("data/*/*.parquet"))

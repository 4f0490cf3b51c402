"""A checkpoint without V and O (a Q/K-only extract) still builds its QK rows; asking for OV is one line."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest
from helpers import write_qk_llama

from qk_spectra_ds.builder.pipeline import build_family
from qk_spectra_ds.errors import BuildError


@pytest.fixture(scope="module")
def qk_only(tmp_path_factory) -> Path:
    return write_qk_llama(tmp_path_factory.mktemp("qk-only") / "qk-only")


def test_default_circuits_build_the_qk_rows_with_a_warning(qk_only, tmp_path, caplog):
    out = tmp_path / "ds"
    (result,) = build_family("T", out, models=[str(qk_only)], variants=["raw"], offsets=["none"], progress=False)
    rows = pq.read_table(next((out / "data" / "T").glob("*.parquet"))).to_pandas()
    assert set(rows["circuit"]) == {"qk"} and len(rows) == 2 * 4
    assert result.circuits == ("qk",)
    assert any("qk rows only" in r.getMessage() and "v_proj" in r.getMessage() for r in caplog.records)


def test_asking_for_ov_without_v_and_o_is_one_line(qk_only, tmp_path):
    with pytest.raises(BuildError) as info:
        build_family(
            "T", tmp_path / "ds", models=[str(qk_only)], variants=["raw"], circuits=["qk", "ov"], progress=False
        )
    message = str(info.value)
    assert "cannot build the ov circuit" in message and "v_proj" in message and "\n" not in message
    assert not list((tmp_path / "ds").glob("data/*/*.parquet"))

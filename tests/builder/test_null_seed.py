"""``--null-seed``: the null variant's draws come from the chosen seed, each null row records it,
a model built with another seed is rebuilt (never skipped as up to date), and a bad seed is one line.

The reference null spectra are formed as in tests/builder/test_variants.py: the folded head blocks from the
in-memory model's own modules, and the Haar rotation from the card's recipe written out independently.
"""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
from helpers import assert_one_error, run_script
from tiny_models import save
from variant_cases import (
    CASES,
    RTOL,
    _haar,
    _layers,
    _rel,
    _svd,
    _unique_r,
    attention_scale,
    feeding_norms,
    norm_linear_part,
    qk_norm_gains,
    rows_of,
)

pytest.importorskip("transformers")
pytestmark = pytest.mark.slow  # every test here makes models with transformers and builds them


def _table(out):
    files = sorted(out.glob("data/fam/*.parquet"))
    assert len(files) == 1, files
    return pq.read_table(files[0], filters=[("circuit", "=", "qk")]).to_pandas()


def _null_reference(model, case, model_id: str, seed: int, layer: int) -> np.ndarray:
    """|c| s(R_a G_q O G_k R_b^T) for every query head of ``layer``, O from ``seed`` by the card's recipe."""
    model = model.double()
    blk, (wq, wk) = _layers(model)[layer], case.reference(model)[layer]
    y = norm_linear_part(feeding_norms(model)[layer], case.d_model)
    gq, gk = qk_norm_gains(blk, case.d_head)
    group = case.n_heads // case.n_kv_heads
    refs = []
    for h in range(case.n_heads):
        a = _unique_r(y @ wq[h].T) * gq[None, :]
        b = _unique_r(y @ wk[h // group].T) * gk[None, :]
        refs.append(
            abs(attention_scale(blk)) * _svd(a @ _haar(seed, model_id, layer, h, case.d_head) @ b.T, case.d_head)
        )
    return np.stack(refs)


def test_null_seed_is_used_recorded_and_a_change_rebuilds(tmp_path):
    case = CASES["qwen3"]
    model = case.make()
    directory = save(model, tmp_path / "m", case)
    out = tmp_path / "out"
    common = ("--family", "fam", "--models", str(directory), "--out", str(out), "--offsets", "0", "--quiet")

    proc = run_script(*common, "--null-seed", "7")
    assert proc.returncode == 0, proc.stderr
    table = _table(out)
    model_id = table["model_id"].iloc[0]
    null = table[table["variant"] == "null"]
    assert (null["null_seed"] == 7).all()
    assert table.loc[table["variant"] != "null", "null_seed"].isna().all()
    for layer in range(case.n_layers):
        ours = np.stack(rows_of(table, "null", layer)["singular_values"])
        ref = _null_reference(model, case, model_id, 7, layer)
        assert max(_rel(o, r) for o, r in zip(ours, ref)) <= RTOL
    assert "`null_seed`" in (out / "README.md").read_text()

    again = run_script(*common, "--null-seed", "7")
    assert again.returncode == 0 and "skipped" in again.stdout, again.stdout

    default = run_script(*common)  # seed 0: the seed-7 null rows are stale, so the model is rebuilt
    assert default.returncode == 0 and "skipped" not in default.stdout, default.stdout
    rebuilt = _table(out)
    assert (rebuilt.loc[rebuilt["variant"] == "null", "null_seed"] == 0).all()
    ref0 = _null_reference(model, case, model_id, 0, 0)
    ours0 = np.stack(rows_of(rebuilt, "null", 0)["singular_values"])
    assert max(_rel(o, r) for o, r in zip(ours0, ref0)) <= RTOL
    assert not np.allclose(ours0, np.stack(rows_of(table, "null", 0)["singular_values"]), rtol=1e-3)
    for variant in ("raw", "folded"):  # only the null rows depend on the seed
        assert np.array_equal(
            np.stack(rows_of(rebuilt, variant, 0)["singular_values"]),
            np.stack(rows_of(table, variant, 0)["singular_values"]),
        )

    raw_only = run_script(*common, "--variants", "raw", "--force")  # no null rows: no seed recorded, nothing stale
    assert raw_only.returncode == 0, raw_only.stderr
    assert _table(out)["null_seed"].isna().all()


@pytest.mark.parametrize("seed", ["-1", "1.5", "abc", str(2**63), ""])
def test_a_bad_null_seed_is_one_line_and_writes_nothing(tmp_path, seed):
    out = tmp_path / "out"
    proc = run_script("--family", "fam", "--models", str(tmp_path / "absent"), "--out", str(out), "--null-seed", seed)
    assert_one_error(proc.returncode, proc.stderr, "--null-seed")
    assert not list(out.rglob("*.parquet")) and not (out / "README.md").exists()


def test_schema_v2_files_without_null_seed_are_read_beside_v3_and_rebuilt(tmp_path):
    """A file from the builder before --null-seed (schema v2, method 3) loads next to current files and is rebuilt."""
    import pyarrow as pa

    from qk_spectra_ds import dataset_card, schema
    from qk_spectra_ds.analysis.loading import load_spectra
    from qk_spectra_ds.builder import pipeline

    case = CASES["llama"]
    old_dir, new_dir, out = tmp_path / "old", tmp_path / "new", tmp_path / "out"
    save(case.make(), old_dir, case)
    save(case.make(), new_dir, case)
    first = pipeline.build_model(str(old_dir), "fam", out, progress=False, offsets=(0, 4), circuits=["qk"])
    table = pq.read_table(first.path).select(list(schema.COLUMNS_BY_VERSION[2]))
    for name, value in (("schema_version", 2), ("method_version", 3)):
        i = table.column_names.index(name)
        table = table.set_column(i, table.schema.field(i), pa.array([value] * table.num_rows, pa.int32()))
    assert table.column_names == list(schema.COLUMNS_BY_VERSION[2])
    pq.write_table(table, first.path)
    pipeline.build_model(str(new_dir), "fam", out, progress=False, offsets=(0, 4))
    dataset_card.write_card(out)
    mixed = load_spectra(out, "fam", variant="null")
    assert sorted(set(mixed["schema_version"])) == [2, schema.SCHEMA_VERSION]
    rebuilt = pipeline.build_model(str(old_dir), "fam", out, progress=False, offsets=(0, 4))
    assert rebuilt.status == "built"
    assert set(pq.read_table(rebuilt.path)["schema_version"].to_pylist()) == {schema.SCHEMA_VERSION}

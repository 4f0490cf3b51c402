"""``--behaviour`` end to end: the build fills the qk rows, the skip key knows the probe, the report tests the scores."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from planted_models import PLANTED, planted_gpt2

from qk_spectra_ds import schema
from qk_spectra_ds.builder import behaviour as bb
from qk_spectra_ds.builder import probes as bp
from qk_spectra_ds.builder.cli import cli
from qk_spectra_ds.builder.weights import open_source

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(
    not set(schema.BEHAVIOUR_COLUMNS) <= set(schema.COLUMNS),
    reason=f"the builder writes schema v{schema.SCHEMA_VERSION}, which has no behaviour columns (v4 has them)",
)


@pytest.fixture(scope="module")
def planted_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("planted-build") / "planted-gpt2"
    planted_gpt2().save_pretrained(str(directory))
    return directory


def _rows(out: Path):
    (path,) = (out / "data" / "Planted").glob("*.parquet")
    return pq.read_table(path).to_pandas()


def _build(out, model, *flags):
    return cli(["--family", "Planted", "--models", str(model), "--out", str(out), "--quiet", *flags])


@pytest.mark.slow
def test_behaviour_build_fills_qk_rows_and_is_part_of_the_skip_key(planted_dir, tmp_path, capsys):
    out = tmp_path / "ds"
    flags = [
        "--variants",
        "raw,null",
        "--behaviour",
        "--probe-sequences",
        "4",
        "--probe-length",
        "8",
        "--probe-local-window",
        "2",
    ]
    assert _build(out, planted_dir, *flags) == 0
    rows = _rows(out)
    qk = rows[rows["circuit"] == schema.CIRCUIT_QK] if "circuit" in rows else rows
    assert len(qk) and qk["behaviour_previous_token"].notna().all() and qk["behaviour_next_token"].isna().all()
    assert set(map(tuple, qk[list(schema.PROBE_COLUMNS)].to_numpy().tolist())) == {(0, 4, 8, 2)}
    if "circuit" in rows:
        other = rows[rows["circuit"] != schema.CIRCUIT_QK]
        assert other[list(schema.BEHAVIOUR_COLUMNS + schema.PROBE_COLUMNS)].isna().all().all()
    source = open_source(str(planted_dir))
    direct = bb.model_behaviour(source, source.read_json("config.json"), bp.ProbeSpec(0, 4, 8, 2), "float32")
    for variant, part in qk.groupby("variant"):
        for name in ("previous_token", "induction", "first_token", "local", "entropy"):
            stored = part.pivot(index="layer", columns="head", values=f"behaviour_{name}").to_numpy()
            expected = np.stack([direct.scores[name][layer] for layer in sorted(direct.scores[name])])
            np.testing.assert_allclose(stored, expected, rtol=1e-12, err_msg=f"{variant} {name}")
        for name, (layer, head) in PLANTED.items():  # the planted heads, as stored
            top = part.loc[part[f"behaviour_{name}"].idxmax()]
            assert (top["layer"], top["head"]) == (layer, head) and top[f"behaviour_{name}"] > 0.95
    capsys.readouterr()
    assert _build(out, planted_dir, *flags) == 0
    assert "skipped" in capsys.readouterr().out
    assert _build(out, planted_dir, *flags, "--probe-seed", "5") == 0  # another probe: rebuilt
    assert "built" in capsys.readouterr().out and set(_rows(out)["probe_seed"].dropna()) == {5}
    assert (
        _build(out, planted_dir, "--variants", "raw,null") == 0
    )  # without --behaviour: rebuilt, no scores left behind
    assert "built" in capsys.readouterr().out
    assert _rows(out)[list(schema.BEHAVIOUR_COLUMNS + schema.PROBE_COLUMNS)].isna().all().all()


@pytest.mark.slow
def test_probe_flags_without_behaviour_and_bad_values_are_one_line(planted_dir, tmp_path, capsys):
    assert _build(tmp_path / "a", planted_dir, "--probe-seed", "3") != 0
    err = capsys.readouterr().err.strip()
    assert err == "error: --probe-seed only applies with --behaviour: add it, or leave them out"
    assert _build(tmp_path / "b", planted_dir, "--behaviour", "--probe-length", "1") != 0
    assert capsys.readouterr().err.strip() == "error: --probe-length 1: give a whole number from 2 to 4096"
    assert not (tmp_path / "a").exists() and not (tmp_path / "b" / "data").exists()


@pytest.mark.slow
def test_missing_weights_fail_the_model_with_one_line_and_write_nothing(planted_dir, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    model = tmp_path / "attention-only"
    model.mkdir()
    (model / "config.json").write_text((planted_dir / "config.json").read_text())
    tensors = load_file(str(planted_dir / "model.safetensors"))
    save_file(
        {k: v for k, v in tensors.items() if ".mlp." not in k},
        str(model / "model.safetensors"),
        metadata={"format": "pt"},
    )
    assert _build(tmp_path / "ds", model, "--variants", "raw") == 0  # the spectra need only Q and K
    capsys.readouterr()
    assert _build(tmp_path / "ds2", model, "--variants", "raw", "--behaviour", "--probe-length", "8") != 0
    err = capsys.readouterr().err
    assert (
        "needs the full weights, but the checkpoint lacks 8 tensor(s)" in err and "build it without --behaviour" in err
    )
    assert not list((tmp_path / "ds2").glob("data/*/*.parquet"))


@pytest.mark.slow
def test_a_plain_build_never_imports_transformers(planted_dir, tmp_path):
    code = (
        "import sys; from qk_spectra_ds.builder.cli import cli; "
        f"rc = cli(['--family', 'P', '--models', {str(planted_dir)!r}, '--out', {str(tmp_path / 'ds')!r}, '--quiet', '--variants', 'raw']); "
        "assert rc == 0, rc; assert 'transformers' not in sys.modules, 'transformers imported'"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.slow
def test_minilm_behaviour_build_and_report(tmp_path):
    """The real all-MiniLM-L6-v2: build with --behaviour, then the report writes the behaviour section."""
    from qk_spectra_ds.analysis.report import run_report

    assert (
        cli(["--family", "MiniLM", "--out", str(tmp_path / "ds"), "--quiet", "--behaviour", "--variants", "raw"]) == 0
    )
    outputs = run_report(str(tmp_path / "ds"), "MiniLM", out=str(tmp_path / "an"), progress=False)
    table = outputs.frames["behaviour"]
    assert set(table["score"]) == {"previous_token", "next_token", "first_token", "local", "entropy"}
    assert table["p_adjusted"].notna().any() and (table["n_heads"] == 72).all()
    index = (tmp_path / "an" / "MiniLM" / "index.md").read_text()
    assert "## Does the spectrum predict what heads do?" in index and "behaviour/previous_token.png" in index

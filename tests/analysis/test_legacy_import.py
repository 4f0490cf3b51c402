"""Importing the original study's pickles: the restricted unpickler and the schema-v1 conversion.

The fixtures in tests/data/legacy are real published data of the original study
(S. Darveshi 2025, github.com/SD-interp/qk-spectral-analysis, Apache-2.0; see NOTICE.md there).
"""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

from qk_spectra_ds import __version__, schema
from qk_spectra_ds.analysis.legacy import LegacyFormatError, UnsafePickleError, import_legacy
from qk_spectra_ds.analysis.legacy_format import legacy_columns, read_legacy
from qk_spectra_ds.analysis.legacy_pickle import safe_load
from qk_spectra_ds.statistics import spectrum_metrics

LEGACY_DIR = Path(__file__).resolve().parents[1] / "data" / "legacy"
QWEN = LEGACY_DIR / "Qwen3-0.6B.pkl"
LLAMA = LEGACY_DIR / "Llama-3.2-1B-Instruct.pkl"

CALLS: list[str] = []


def record_call(text: str) -> str:
    """What a malicious pickle would run; the tests check that it never does."""
    CALLS.append(text)
    return text


class Exploit:
    def __reduce__(self):
        return (record_call, ("pwned",))


@pytest.fixture(scope="module")
def legacy_dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("legacy-ds")
    written = import_legacy(LEGACY_DIR, "legacy", out)
    return out, written


# ---------------------------------------------------------------- the restricted unpickler


def test_malicious_pickle_is_refused_and_never_called():
    CALLS.clear()
    payload = pickle.dumps(Exploit())
    with pytest.raises(UnsafePickleError, match="record_call"):
        safe_load(payload)
    assert CALLS == []


def test_malicious_object_nested_in_a_legacy_dict_is_refused(tmp_path):
    CALLS.clear()
    data = pickle.loads(QWEN.read_bytes())  # the trusted fixture, to build a realistic payload
    data["eigen_values"][0] = Exploit()
    bad = tmp_path / "pickles" / "evil.pkl"
    bad.parent.mkdir()
    bad.write_bytes(pickle.dumps(data))
    out = tmp_path / "out"
    with pytest.raises(UnsafePickleError, match="evil.pkl"):
        import_legacy(bad.parent, "legacy", out)
    assert CALLS == []
    assert not out.exists() or not any(out.rglob("*.parquet"))


def test_os_system_pickle_is_refused_before_running(tmp_path):
    marker = tmp_path / "ran"
    # protocol-0 pickle: os.system("touch <marker>")
    payload = f"cos\nsystem\n(V touch {marker}\ntR.".encode()
    with pytest.raises(UnsafePickleError, match="os.system|posix.system"):
        safe_load(payload)
    assert not marker.exists()


def test_builtin_callables_are_refused():
    payload = pickle.dumps(eval)  # a global outside the allow-list
    with pytest.raises(UnsafePickleError):
        safe_load(payload)


def test_safe_load_matches_pickle_on_the_real_file():
    safe = safe_load(QWEN)
    trusted = pickle.loads(QWEN.read_bytes())
    assert list(safe["eigen_values"]) == list(trusted["eigen_values"])
    for layer, arr in trusted["eigen_values"].items():
        np.testing.assert_array_equal(safe["eigen_values"][layer], arr)
        assert safe["eigen_values"][layer].dtype == np.float32


def test_not_a_pickle_and_wrong_layout_are_clear_errors(tmp_path):
    junk = tmp_path / "junk.pkl"
    junk.write_bytes(b"not a pickle at all")
    with pytest.raises(LegacyFormatError, match="not a readable pickle"):
        read_legacy(junk)
    wrong = tmp_path / "wrong.pkl"
    wrong.write_bytes(pickle.dumps({"eigen_values": {0: np.ones((2, 3), np.float32)}}))
    with pytest.raises(LegacyFormatError, match="missing key"):
        read_legacy(wrong)
    with pytest.raises(LegacyFormatError, match="no pickle directory"):
        import_legacy(tmp_path / "nope", "legacy", tmp_path / "out")


# ---------------------------------------------------------------- the conversion


def test_import_writes_schema_v1_that_load_dataset_reads(legacy_dataset):
    from datasets import load_dataset

    out, written = legacy_dataset
    assert sorted(p.name for p in written) == ["Llama-3.2-1B-Instruct.parquet", "Qwen3-0.6B.parquet"]
    assert (out / "README.md").exists()
    ds = load_dataset(str(out), "legacy", split="train")
    assert ds.features == schema.features()
    assert len(ds) == 28 * 16 + 16 * 32
    assert set(ds.unique("variant")) == {schema.VARIANT_LEGACY}
    assert set(ds.unique("schema_version")) == {schema.SCHEMA_VERSION}
    assert set(ds.unique("builder_version")) == {__version__}
    for column in ("model_revision", "model_type", "kv_head", "n_kv_heads", "d_model", "weights_dtype", "positivity"):
        assert set(ds.unique(column)) == {None}, column


def test_import_copies_arrays_and_stats_unchanged(legacy_dataset):
    import pyarrow.parquet as pq

    out, _ = legacy_dataset
    table = pq.read_table(out / "data" / "legacy" / "Qwen3-0.6B.parquet").to_pandas()
    data = pickle.loads(QWEN.read_bytes())
    layers = list(data["eigen_values"])  # the pickle's own order (0, 1, 10, 11, ...)
    assert table["layer"].tolist() == np.repeat(layers, 16).tolist()
    assert table["head"].tolist() == list(range(16)) * 28
    assert set(table["n_layers"]) == {28} and set(table["n_heads"]) == {16} and set(table["d_head"]) == {128}
    ev = np.stack(table["eigenvalues"].to_numpy())
    sv = np.stack(table["singular_values"].to_numpy())
    np.testing.assert_array_equal(ev, np.concatenate([data["eigen_values"][k] for k in layers]))
    np.testing.assert_array_equal(sv, np.concatenate([data["singular_values"][k] for k in layers]))
    for i, stat in enumerate(schema.STATISTICS):
        expected = np.concatenate([data["eigen_values_stats"][k][i].reshape(-1) for k in layers])
        np.testing.assert_array_equal(table[f"ev_{stat}"].to_numpy(), expected.astype(np.float64))
        expected = np.concatenate([data["singular_values_stats"][k][i].reshape(-1) for k in layers])
        np.testing.assert_array_equal(table[f"sv_{stat}"].to_numpy(), expected.astype(np.float64))
    metrics = spectrum_metrics(sv)
    for name in ("frobenius", "spectral_norm", "stable_rank", "effective_rank", "log_det"):
        np.testing.assert_allclose(table[name].to_numpy(), metrics[name], rtol=1e-12)


def test_legacy_columns_model_id_from_file_name():
    columns = legacy_columns(read_legacy(LLAMA), LLAMA.stem, "Llama")
    assert set(columns["model_id"]) == {"Llama-3.2-1B-Instruct"}
    assert set(columns["family"]) == {"Llama"}
    assert set(columns["n_layers"]) == {16} and set(columns["d_head"]) == {64}


def test_import_legacy_cli(tmp_path, capsys, analyze_cli):
    pickles = tmp_path / "pickles"
    pickles.mkdir()
    shutil.copy(QWEN, pickles / QWEN.name)
    out = tmp_path / "ds"
    assert (
        analyze_cli(["import_legacy", "--pickles", str(pickles), "--family", "Qwen3", "--out", str(out), "--quiet"])
        == 0
    )
    assert (out / "data" / "Qwen3" / "Qwen3-0.6B.parquet").exists()
    (pickles / "evil.pkl").write_bytes(pickle.dumps(Exploit()))
    assert (
        analyze_cli(["import_legacy", "--pickles", str(pickles), "--family", "Qwen3", "--out", str(out), "--quiet"])
        == 1
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "refusing" in err[0]
    assert CALLS == []


def test_fixture_attribution_is_present():
    notice = (LEGACY_DIR / "NOTICE.md").read_text()
    assert "Darveshi" in notice and "Apache" in notice and "SD-interp/qk-spectral-analysis" in notice
    assert (LEGACY_DIR / "LICENSE").exists()
    assert os.path.getsize(QWEN) < 1_000_000 and os.path.getsize(LLAMA) < 1_000_000

"""Every supported architecture, end to end, against a dense float64 reference.

For each case in ``tiny_models.CASES`` a tiny random ``transformers`` model is saved as
safetensors, built with ``qk_spectra_ds.builder.pipeline.build_model``, and every stored number is compared
with a reference computed from the in-memory module's own parameters (split into heads the way
the model's modeling code splits them, see ``tiny_models``): a dense SVD of the d_model x d_model
W_QK = (W_Q^h)^T W_K^g in float64, numpy statistics, and the dense eigenvalues of W_QK.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import scipy.stats
import torch
from tiny_models import CASES, CASES_2026, ArchCase, dense_singular_values, save

import qk_spectra_ds
from qk_spectra_ds.builder.architectures import MODEL_TYPES
from qk_spectra_ds.builder.kernel import qk_layer_spectra
from qk_spectra_ds.builder.pipeline import ModelResult, build_model

FAMILY = "Tiny"
DEVICE = os.environ.get("QK_TEST_DEVICE", "cpu")  # QK_TEST_DEVICE=cuda runs the same checks on a GPU
RTOL = 1e-6  # DESIGN.md: max relative error per singular value against a float64 dense SVD


@dataclass
class Built:
    case: ArchCase
    model_dir: Path
    result: ModelResult
    rows: pd.DataFrame  # the model's parquet file, indexed by (layer, head)
    reference: list[tuple[np.ndarray, np.ndarray]]  # per layer: W_Q (H, dh, d), W_K (H_kv, dh, d), float64

    def head(self, layer: int, head: int) -> tuple[np.ndarray, np.ndarray]:
        """W_Q^h and W_K^g of one query head; g = h // (H / H_kv) as in transformers' repeat_kv."""
        wq, wk = self.reference[layer]
        group = wq.shape[0] // wk.shape[0]
        return wq[head], wk[head // group]

    def heads(self):
        for layer in range(self.case.n_layers):
            for head in range(self.case.n_heads):
                yield layer, head, self.rows.loc[(layer, head)]


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("dataset")


@pytest.fixture(scope="module", params=CASES, ids=lambda case: case.id)
def built(request, dataset_dir, tmp_path_factory) -> Built:
    case: ArchCase = request.param
    model = case.make()
    model_dir = save(model, tmp_path_factory.mktemp("models") / case.id, case)
    result = build_model(
        str(model_dir), FAMILY, dataset_dir, device=DEVICE, progress=False, variants=["raw"], circuits=["qk"]
    )
    rows = (
        pq.read_table(result.path, filters=[("variant", "=", "raw"), ("circuit", "=", "qk")])
        .to_pandas()
        .set_index(["layer", "head"], drop=False)
    )
    return Built(case, model_dir, result, rows, case.reference(model))


def max_relative_error(actual, expected) -> float:
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    return float(np.max(np.abs(actual - expected) / np.abs(expected)))


# ------------------------------------------------------------------ coverage of the table


def test_every_architecture_has_a_case():
    assert {case.model_type for case in CASES + CASES_2026} == set(MODEL_TYPES)  # 2025-26: test_architectures_2026


def test_falcon_layouts_gqa_mqa_and_head_dim_are_covered():
    falcon = [c for c in CASES if c.model_type == "falcon"]
    assert {(c.config.get("multi_query"), c.config.get("new_decoder_architecture")) for c in falcon} == {
        (True, False),
        (None, True),
        (False, False),
    }
    assert any(1 < c.n_kv_heads < c.n_heads for c in CASES), "GQA"
    assert any(c.n_kv_heads == 1 < c.n_heads for c in CASES), "MQA"
    assert any(c.n_heads * c.d_head != c.d_model for c in CASES if c.model_type == "gemma")
    assert any(c.dtype == torch.bfloat16 and c.max_shard_size for c in CASES), "sharded bf16"
    assert any(c.dtype == torch.float16 for c in CASES), "float16"


# ------------------------------------------------------------------ the spectra


@pytest.mark.slow
def test_reference_matches_the_case_geometry(built):
    """The module really has the heads the case claims (else the comparisons below prove little)."""
    case = built.case
    assert len(built.reference) == case.n_layers
    for wq, wk in built.reference:
        assert wq.shape == (case.n_heads, case.d_head, case.d_model)
        assert wk.shape == (case.n_kv_heads, case.d_head, case.d_model)
        # full rank, O(1) singular values: randomize() worked
        for w in (*wq, *wk):
            s = np.linalg.svd(w, compute_uv=False)
            assert s.min() > 0.05 * s.max()


@pytest.mark.slow
def test_stored_singular_values_match_dense_svd(built):
    worst = 0.0
    for layer, head, row in built.heads():
        stored = np.asarray(row["singular_values"])
        assert stored.dtype == np.float32
        assert stored.shape == (built.case.d_head,)
        assert np.all(np.diff(stored) <= 0), "descending"
        expected = dense_singular_values(*built.head(layer, head))
        worst = max(worst, max_relative_error(stored, expected))
    assert worst <= RTOL, f"max relative error {worst:.2e}"


@pytest.mark.slow
def test_kernel_in_float64_matches_dense_svd(built):
    """qk_layer_spectra itself, fed the module's float64 blocks: the factorization is exact to ~1e-12."""
    for layer, (wq, wk) in enumerate(built.reference):
        spectra = qk_layer_spectra(torch.from_numpy(wq), torch.from_numpy(wk))
        assert spectra.singular_values.dtype == np.float64
        for head in range(built.case.n_heads):
            expected = dense_singular_values(*built.head(layer, head))
            assert max_relative_error(spectra.singular_values[head], expected) <= 1e-9


def test_kernel_handles_rank_deficient_heads():
    """Singular Gram matrices (a dead head, linearly dependent rows) take the QR route, still exact."""
    rng = np.random.default_rng(3)
    d_model, d_head = 48, 12
    q = rng.standard_normal((4, d_head, d_model))
    k = rng.standard_normal((2, d_head, d_model))
    q[0, 9:] = rng.standard_normal((3, 9)) @ q[0, :9]  # rank 9
    q[1, 10:] = 0.0  # two zero rows
    k[1] = 0.0  # a dead key head: its query heads 2 and 3 have W_QK = 0
    spectra = qk_layer_spectra(torch.from_numpy(q), torch.from_numpy(k))
    for head, rank in ((0, 9), (1, 10), (2, 0), (3, 0)):
        expected = dense_singular_values(q[head], k[head // 2])
        got = spectra.singular_values[head]
        if rank:
            assert max_relative_error(got[:rank], expected[:rank]) <= RTOL
        assert np.all(np.abs(got[rank:]) <= 1e-9 * max(expected[0], 1.0))
    assert np.isfinite(spectra.positivity[:2]).all()
    assert np.isnan(spectra.positivity[2:]).all()  # W_QK = 0: positivity is undefined


@pytest.mark.slow
def test_eigenvalues_are_squared_singular_values(built):
    for layer, head, row in built.heads():
        s = np.asarray(row["singular_values"], np.float64)
        ev = np.asarray(row["eigenvalues"])
        assert ev.dtype == np.float32
        np.testing.assert_allclose(ev, s**2, rtol=3e-7)  # float32 rounding of s, s**2 and ev
        expected = dense_singular_values(*built.head(layer, head)) ** 2
        assert max_relative_error(ev, expected) <= RTOL


@pytest.mark.slow
def test_index_and_shape_columns(built):
    case, rows = built.case, built.rows
    assert len(rows) == built.result.n_rows == case.n_layers * case.n_heads
    assert sorted(zip(rows["layer"], rows["head"])) == [
        (layer, head) for layer in range(case.n_layers) for head in range(case.n_heads)
    ]
    group = case.n_heads // case.n_kv_heads
    assert list(rows["kv_head"]) == [h // group for h in rows["head"]]
    expected = {
        "n_layers": case.n_layers,
        "n_heads": case.n_heads,
        "n_kv_heads": case.n_kv_heads,
        "d_model": case.d_model,
        "d_head": case.d_head,
    }
    for column, value in expected.items():
        assert set(rows[column]) == {value}, column
    schema = pq.read_schema(built.result.path)
    for column in ("layer", "head", "kv_head", *expected, "method_version", "schema_version"):
        assert str(schema.field(column).type) == "int32", column


@pytest.mark.slow
def test_identity_and_provenance_columns(built):
    rows = built.rows
    config = json.loads((built.model_dir / "config.json").read_text())
    assert set(rows["model_type"]) == {config["model_type"]} == {built.case.model_type}
    assert set(rows["weights_dtype"]) == {built.case.weights_dtype}
    assert set(rows["schema_version"]) == {qk_spectra_ds.schema.SCHEMA_VERSION}
    assert set(rows["method_version"]) == {qk_spectra_ds.schema.METHOD_VERSION}
    assert set(rows["builder_version"]) == {qk_spectra_ds.__version__}
    assert set(rows["variant"]) == {"raw"}
    assert set(rows["family"]) == {FAMILY}
    assert set(rows["model_id"]) == {built.case.id}  # a local dir's name
    (revision,) = set(rows["model_revision"])
    assert revision == built.result.revision and revision.startswith("local:") and len(revision) == 46


# ------------------------------------------------------------------ statistics and metrics


def original_statistics(x: np.ndarray) -> dict[str, float]:
    """The original study's six statistics, written out: std with N-1, z with that std."""
    mean, std = x.mean(), x.std(ddof=1)
    z = (x - mean) / max(std, 1e-9)
    return {
        "min": x.min(),
        "max": x.max(),
        "mean": mean,
        "std": std,
        "skew": np.mean(z**3),
        "kurtosis": np.mean(z**4) - 3.0,
    }


def test_original_statistics_agree_with_scipy():
    """scipy's biased moments use the N std; ours the N-1 std, hence ((N-1)/N)^(3/2) and ^2."""
    x = np.random.default_rng(0).gamma(2.0, size=16)
    n = len(x)
    ours = original_statistics(x)
    assert ours["std"] == pytest.approx(np.sqrt(np.sum((x - x.mean()) ** 2) / (n - 1)), rel=1e-12)
    assert ours["skew"] == pytest.approx(scipy.stats.skew(x, bias=True) * ((n - 1) / n) ** 1.5, rel=1e-12)
    kurtosis = (scipy.stats.kurtosis(x, fisher=True, bias=True) + 3.0) * ((n - 1) / n) ** 2 - 3.0
    assert ours["kurtosis"] == pytest.approx(kurtosis, rel=1e-12)
    assert abs(ours["skew"] - scipy.stats.skew(x, bias=True)) > 1e-3  # the factor matters


@pytest.mark.slow
def test_statistics_columns(built):
    for layer, head, row in built.heads():
        s = dense_singular_values(*built.head(layer, head))
        n = len(s)
        for prefix, values in (("sv", s), ("ev", s**2)):
            expected = original_statistics(values)
            scale = np.abs(values).max()
            for name, value in expected.items():
                stat = row[f"{prefix}_{name}"]
                assert isinstance(stat, float), f"{prefix}_{name} is float64"
                assert stat == pytest.approx(value, rel=RTOL, abs=1e-9 * scale), f"{prefix}_{name} {layer}/{head}"
            # ... and scipy, rescaled from its N to the original's N-1 standard deviation
            assert row[f"{prefix}_skew"] == pytest.approx(
                scipy.stats.skew(values, bias=True) * ((n - 1) / n) ** 1.5, rel=RTOL, abs=1e-9
            )
            assert row[f"{prefix}_kurtosis"] == pytest.approx(
                (scipy.stats.kurtosis(values, fisher=True, bias=True) + 3) * ((n - 1) / n) ** 2 - 3, rel=RTOL, abs=1e-9
            )
            # the stored float32 array gives the same statistics to float32 accuracy
            stored = np.asarray(row["singular_values" if prefix == "sv" else "eigenvalues"], np.float64)
            for name, value in original_statistics(stored).items():
                assert row[f"{prefix}_{name}"] == pytest.approx(value, rel=1e-5, abs=1e-5 * scale)


@pytest.mark.slow
def test_metric_columns(built):
    for layer, head, row in built.heads():
        wq, wk = built.head(layer, head)
        w_qk = wq.T @ wk  # dense d_model x d_model
        s = dense_singular_values(wq, wk)
        frobenius = np.linalg.norm(w_qk, "fro")
        spectral = np.linalg.norm(w_qk, 2)
        p = s**2 / np.sum(s**2)
        # positivity from the module's own blocks: mu = eig(W_K^g W_Q^h^T) (d_head x d_head) ...
        mu = np.linalg.eigvals(wk @ wq.T)
        positivity = mu.real.sum() / np.abs(mu).sum()
        # ... which has the non-zero eigenvalues of the dense W_QK: sum Re = trace, sum |.| alike
        dense_mu = np.linalg.eigvals(w_qk)
        assert positivity == pytest.approx(np.trace(w_qk) / np.abs(dense_mu).sum(), rel=1e-6, abs=1e-9)
        expected = {
            "frobenius": frobenius,
            "spectral_norm": spectral,
            "stable_rank": frobenius**2 / spectral**2,
            "effective_rank": np.exp(-np.sum(p * np.log(p))),
            "log_det": np.sum(np.log(s)),
            "positivity": positivity,
        }
        for name, value in expected.items():
            assert row[name] == pytest.approx(value, rel=RTOL, abs=1e-9), f"{name} {layer}/{head}"
        assert 0 < row["effective_rank"] <= built.case.d_head
        assert 1 <= row["stable_rank"] <= built.case.d_head
        assert -1 <= row["positivity"] <= 1


# ------------------------------------------------------------------ the sharded bf16 checkpoint


@pytest.mark.slow
@pytest.mark.parametrize("built", [c for c in CASES if c.max_shard_size], ids=lambda c: c.id, indirect=True)
def test_sharded_bf16_layout(built):
    index = json.loads((built.model_dir / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) >= 3 and all((built.model_dir / f).is_file() for f in shards)
    assert not (built.model_dir / "model.safetensors").exists()
    qk_shards = {f for name, f in index["weight_map"].items() if name.endswith(("q_proj.weight", "k_proj.weight"))}
    assert len(qk_shards) >= 2, "Q and K tensors should span several shards"
    # only the Q and K rows were fetched, not the whole checkpoint
    assert 0 < built.result.bytes_fetched < 0.5 * built.result.checkpoint_bytes
    assert set(built.rows["weights_dtype"]) == {"bfloat16"}


def test_cpu_gram_and_per_core_chunks_match_direct_products():
    """The syrk Gram path equals W W^T (also for a strided view), and uneven per-core chunks stay exact."""
    import torch

    from qk_spectra_ds.builder import kernel, spectra

    gen = torch.Generator().manual_seed(0)
    dh = 24
    q = torch.randn(7, dh, 3 * dh, dtype=torch.float64, generator=gen)
    k = torch.randn(7, dh, 3 * dh, dtype=torch.float64, generator=gen)
    assert torch.allclose(spectra.gram_matrices(q), q @ q.mT, rtol=1e-13, atol=1e-12)
    strided = q[1::2, :, ::2]
    assert torch.allclose(spectra.gram_matrices(strided), strided @ strided.mT, rtol=1e-13, atol=1e-12)
    got = kernel.qk_layer_spectra(q, k)  # 7 heads over the cores: uneven chunks
    for h in range(7):
        ref = spectra.dense_qk_singular_values(q[h].numpy(), k[h].numpy())
        assert np.max(np.abs(got.singular_values[h] - ref) / ref) <= 1e-9
        mu = np.linalg.eigvals(k[h].numpy() @ q[h].numpy().T)
        assert got.positivity[h] == pytest.approx(mu.real.sum() / np.abs(mu).sum(), rel=1e-9)

"""Numbers the dataset can trust: range checks, ill-conditioned heads, degenerate heads (issue 9, items 6-8).

- Weights whose spectra do not fit the float32 columns (overflow, or underflow to zero) or that
  float64 LAPACK cannot take safely (1e200, NaN, Inf) fail with one line naming model, layer and
  head, never a crash, and never take the other models of the build down.
- Head blocks with condition numbers up to 1e8 keep every singular value above 1e-12 x s_max
  within 1e-6 relative of a 60-digit mpmath reference (dense SVD of W_QK).
- All-zero heads: undefined metrics are NaN, log_det is -inf, and the analysis leaves such heads
  out with a warning instead of refusing the dataset.

References are computed here from the arrays written to the checkpoint, not by the project's reader.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.numpy import load_file, save_file
from tiny_models import CASES_BY_ID, dense_singular_values, make_saved

from qk_spectra_ds import dataset_repo
from qk_spectra_ds.builder.kernel import qk_layer_spectra
from qk_spectra_ds.builder.pipeline import build_family, build_model
from qk_spectra_ds.errors import CheckpointError
from qk_spectra_ds.statistics import STD_FLOOR, positivity_from_eigenvalues, spectrum_metrics, spectrum_statistics

ROOT = Path(__file__).resolve().parents[2]
CASE = CASES_BY_ID["llama-gqa"]  # 2 layers, 4 query heads, 2 key heads, d_model 32, d_head 8, float32
WEIGHTS = "model.safetensors"


def q_name(layer: int) -> str:
    return f"model.layers.{layer}.self_attn.q_proj.weight"


def k_name(layer: int) -> str:
    return f"model.layers.{layer}.self_attn.k_proj.weight"


def rows_of(head: int) -> slice:
    return slice(head * CASE.d_head, (head + 1) * CASE.d_head)


@pytest.fixture(scope="module")
def base_model(tmp_path_factory) -> Path:
    _, directory = make_saved(CASE.id, tmp_path_factory.mktemp("base") / "base")
    return directory


def variant_of(base: Path, directory: Path, change, dtype=None) -> Path:
    """A copy of the base model whose tensors ``change`` edits in place (optionally cast to ``dtype`` first)."""
    shutil.copytree(base, directory)
    tensors = load_file(str(directory / WEIGHTS))
    if dtype is not None:
        tensors = {name: array.astype(dtype) for name, array in tensors.items()}
    change(tensors)
    save_file(tensors, str(directory / WEIGHTS), metadata={"format": "pt"})
    return directory


def scale(*names: str, factor: float, head: int | None = None):
    def change(tensors):
        for name in names:
            rows = slice(None) if head is None else rows_of(head)
            tensors[name][rows] = (tensors[name][rows].astype(np.float64) * factor).astype(tensors[name].dtype)

    return change


def reference_layer(directory: Path, layer: int) -> np.ndarray:
    """(H, d_head) singular values of each head's W_QK, dense float64 SVD of the saved arrays."""
    tensors = load_file(str(directory / WEIGHTS))
    q = tensors[q_name(layer)].astype(np.float64).reshape(CASE.n_heads, CASE.d_head, CASE.d_model)
    k = tensors[k_name(layer)].astype(np.float64).reshape(CASE.n_kv_heads, CASE.d_head, CASE.d_model)
    group = CASE.n_heads // CASE.n_kv_heads
    return np.stack([dense_singular_values(q[h], k[h // group]) for h in range(CASE.n_heads)])


def read_rows(out: Path, family: str, model_id: str) -> dict:
    return pq.read_table(
        dataset_repo.model_path(out, family, model_id), filters=[("variant", "=", "raw"), ("circuit", "=", "qk")]
    ).to_pydict()


def assert_one_line(message: str, *words: str) -> None:
    assert "\n" not in message and "Traceback" not in message, message
    for word in words:
        assert word in message, (word, message)


# ------------------------------------------------------------------ item 6: overflow and underflow


@pytest.mark.slow
@pytest.mark.parametrize(
    ("label", "change", "words"),
    [
        ("x1e15", scale(q_name(1), k_name(1), factor=1e15), ("layer 1", "head 0", "does not fit")),
        ("x1e30", scale(q_name(1), k_name(1), factor=1e30), ("layer 1", "head 0", "does not fit")),
        ("x1e-25", scale(q_name(1), k_name(1), factor=1e-25), ("layer 1", "head 0", "underflows")),
        ("q2-x1e20", scale(q_name(1), factor=1e20, head=2), ("layer 1", "head 2", "does not fit")),
        ("q3-x1e-20", scale(q_name(0), factor=1e-20, head=3), ("layer 0", "head 3", "underflows")),
    ],
)
def test_spectra_outside_float32_fail_naming_model_layer_and_head(base_model, tmp_path, label, change, words):
    model = variant_of(base_model, tmp_path / f"scaled-{label}", change)
    out = tmp_path / "out"
    with pytest.raises(CheckpointError) as info:
        build_model(str(model), "Trust", out, device="cpu", progress=False)
    assert_one_line(str(info.value), model.name, *words)
    assert not dataset_repo.model_path(out, "Trust", model.name).exists()


@pytest.mark.slow
def test_large_but_storable_spectra_build_exactly(base_model, tmp_path):
    """The bounds are not too strict: s ~ 1e15 (l ~ 1e30) and s ~ 1e-9 (l ~ 1e-18) fit float32 and are kept."""

    def change(tensors):
        scale(q_name(1), factor=1e15, head=2)(tensors)
        scale(k_name(0), factor=1e-9, head=0)(tensors)

    model = variant_of(base_model, tmp_path / "wide-range", change)
    out = tmp_path / "out"
    build_model(str(model), "Trust", out, device="cpu", progress=False)
    rows = read_rows(out, "Trust", model.name)
    stored = np.array(rows["singular_values"], dtype=np.float64).reshape(2, CASE.n_heads, CASE.d_head)
    for layer in range(2):
        ref = reference_layer(model, layer)
        assert np.max(np.abs(stored[layer] - ref) / ref) < 1e-6
    assert stored[1, 2, 0] > 1e14 and stored[0, 0, 0] < 1e-7


@pytest.mark.slow
def test_huge_f64_weights_and_overflow_fail_in_one_line_and_the_good_model_is_written(base_model, tmp_path):
    """The CLI in a subprocess: 1e200 float64 weights once crashed MKL (exit 139) and lost the family."""
    huge = variant_of(base_model, tmp_path / "f64-1e200", scale(q_name(1), k_name(1), factor=1e200), np.float64)
    overflow = variant_of(base_model, tmp_path / "f32-1e30", scale(q_name(1), k_name(1), factor=1e30))
    good = tmp_path / "good"
    shutil.copytree(base_model, good)
    out = tmp_path / "out"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "build_dataset.py"),
            "--family",
            "Trust",
            "--models",
            f"{huge},{overflow},{good}",
            "--out",
            str(out),
            "--quiet",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ),
    )
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    for words in (("f64-1e200", "layer 1", "head 0"), ("f32-1e30", "layer 1", "head 0")):
        assert_one_line(errors[0], *words)
    assert dataset_repo.model_path(out, "Trust", "good").is_file()
    assert not dataset_repo.model_path(out, "Trust", "f64-1e200").exists()
    assert "good" in (out / dataset_repo.CARD_NAME).read_text()
    stored = np.array(read_rows(out, "Trust", "good")["singular_values"], dtype=np.float64)
    ref = np.concatenate([reference_layer(good, layer) for layer in range(2)])
    assert np.max(np.abs(stored - ref) / ref) < 1e-6


KERNEL_PROBE = textwrap.dedent(
    """
    import torch
    from qk_spectra_ds.builder.spectra import WeightRangeError
    from qk_spectra_ds.builder.kernel import qk_layer_spectra

    gen = torch.Generator().manual_seed(0)
    q = torch.randn(4, 8, 32, dtype=torch.float64, generator=gen)
    k = torch.randn(2, 8, 32, dtype=torch.float64, generator=gen)
    nan_q, inf_k, tiny_k = q.clone(), k.clone(), k.clone()
    nan_q[3, 0, 5] = float("nan")
    inf_k[1, 2, 7] = float("inf")
    tiny_k[1] *= 1e-160
    for label, qq, kk in [("huge", q * 1e200, k * 1e200), ("nan", nan_q, k), ("inf", q, inf_k), ("tiny", q, tiny_k)]:
        try:
            qk_layer_spectra(qq, kk)
            print(label, "NO ERROR")
        except WeightRangeError as exc:
            print(label, "|", exc)
    zero_q = q.clone()
    zero_q[1] = 0
    print("zero", "|", float(abs(qk_layer_spectra(zero_q, k).singular_values[1]).max()))
    """
)


@pytest.mark.slow
def test_kernel_refuses_unsafe_blocks_before_lapack():
    """NaN, Inf, 1e200 and 1e-160 blocks: a WeightRangeError naming the head, not a crash (run apart from pytest)."""
    proc = subprocess.run([sys.executable, "-c", KERNEL_PROBE], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
    lines = dict(line.split(" | ", 1) for line in proc.stdout.splitlines() if " | " in line)
    assert set(lines) == {"huge", "nan", "inf", "tiny", "zero"}, proc.stdout
    assert "key head 0 (query heads 0-1)" in lines["huge"] and "e+200 in absolute value" in lines["huge"]
    assert "head 3" in lines["nan"] and "NaN or Inf" in lines["nan"]
    assert "key head 1 (query heads 2-3)" in lines["inf"] and "NaN or Inf" in lines["inf"]
    assert "key head 1 (query heads 2-3)" in lines["tiny"]
    assert float(lines["zero"]) == 0.0  # an all-zero block is exact, not an error


# ------------------------------------------------------------------ item 7: ill-conditioned heads


def conditioned_blocks(kappas, d_head: int, d_model: int, rng) -> np.ndarray:
    """(n, d_head, d_model) blocks U diag(s) V^T with s log-spaced from 1 down to 1/kappa."""
    blocks = []
    for kappa in kappas:
        u, _ = np.linalg.qr(rng.standard_normal((d_head, d_head)))
        v, _ = np.linalg.qr(rng.standard_normal((d_model, d_head)))
        blocks.append((u * np.logspace(0, -np.log10(kappa), d_head)) @ v.T)
    return np.stack(blocks)


def mp_singular_values(wq: np.ndarray, wk: np.ndarray, digits: int = 60) -> np.ndarray:
    """Leading d_head singular values of W_QK = W_Q^T W_K: dense SVD in mpmath at ``digits`` digits."""
    mpmath = pytest.importorskip("mpmath")
    with mpmath.workdps(digits):
        w_qk = mpmath.matrix(wq.T.tolist()) * mpmath.matrix(wk.tolist())
        s = mpmath.svd_r(w_qk, compute_uv=False)
        return np.array([float(s[i]) for i in range(wq.shape[0])])


@pytest.mark.slow
@pytest.mark.parametrize(
    ("q_kappas", "k_kappas"),
    [((1e4, 1e6, 1e7, 1e8), (10.0, 10.0)), ((1.0, 3e4, 1e6, 1e8), (1e8, 1e6))],
    ids=["ill-conditioned-queries", "ill-conditioned-keys"],
)
def test_ill_conditioned_heads_match_a_60_digit_reference(q_kappas, k_kappas):
    rng = np.random.default_rng(7)
    d_head, d_model = 8, 48
    q = conditioned_blocks(q_kappas, d_head, d_model, rng)
    k = conditioned_blocks(k_kappas, d_head, d_model, rng)
    ours = qk_layer_spectra(torch.from_numpy(q), torch.from_numpy(k)).singular_values
    group = len(q_kappas) // len(k_kappas)
    for h in range(len(q_kappas)):
        ref = mp_singular_values(q[h], k[h // group])
        kept = ref > 1e-12 * ref[0]
        for values in (ours[h], ours[h].astype(np.float32).astype(np.float64)):  # as computed, and as stored
            error = np.max(np.abs(values[kept] - ref[kept]) / ref[kept])
            assert error <= 1e-6, (h, q_kappas[h], k_kappas[h // group], error)


def test_qr_fallback_only_for_the_heads_that_need_it():
    from qk_spectra_ds.builder.spectra import CHOLESKY_KAPPA_MAX, qr_fallback

    rng = np.random.default_rng(3)
    kappas = (10.0, 1e3, CHOLESKY_KAPPA_MAX / 20, 1e6, 1e8)
    w = torch.from_numpy(conditioned_blocks(kappas, 8, 48, rng))
    w = torch.cat([w, torch.zeros(1, 8, 48, dtype=torch.float64)])  # singular: the Cholesky fails
    gram = w @ w.transpose(-1, -2)
    lower, info = torch.linalg.cholesky_ex(gram)
    assert qr_fallback(gram, lower, info).tolist() == [False, False, False, True, True, True]


# ------------------------------------------------------------------ item 8: degenerate heads


def original_statistics(x: np.ndarray) -> dict[str, np.ndarray]:
    """The original study's six statistics, written out again (the reference for non-degenerate spectra)."""
    mean = x.mean(axis=-1)
    std = x.std(axis=-1, ddof=1)
    z = (x - mean[..., None]) / np.maximum(std, 1e-9)[..., None]
    return {
        "min": x.min(-1),
        "max": x.max(-1),
        "mean": mean,
        "std": std,
        "skew": (z**3).mean(-1),
        "kurtosis": (z**4).mean(-1) - 3.0,
    }


def test_non_degenerate_statistics_are_the_original_bit_for_bit():
    rng = np.random.default_rng(11)
    spectra = np.concatenate(
        [
            np.sort(rng.gamma(2.0, 1.0, (50, 16)), axis=-1)[:, ::-1] ** 2,
            1.0 + 1e-13 * rng.standard_normal((5, 16)),  # std > 0 but below the 1e-9 floor
            np.tile([3.0, 1.0, 0.0, 0.0], (2, 4)),  # singular, not constant
        ]
    )
    assert (spectra.std(-1, ddof=1)[50:55] < STD_FLOOR).all()
    ours, theirs = spectrum_statistics(spectra), original_statistics(spectra)
    for name in theirs:
        np.testing.assert_array_equal(ours[name], theirs[name], err_msg=name)


def test_constant_spectra_have_nan_skew_and_kurtosis():
    spectra = np.array([[0.0] * 8, [2.5] * 8, [3.0, 2.0, 1.0, 1.0, 0.5, 0.5, 0.1, 0.0]])
    stats = spectrum_statistics(spectra)
    assert np.isnan(stats["skew"][:2]).all() and np.isnan(stats["kurtosis"][:2]).all()
    assert np.isfinite(stats["skew"][2]) and np.isfinite(stats["kurtosis"][2])
    np.testing.assert_array_equal(stats["min"][:2], [0.0, 2.5])
    np.testing.assert_array_equal(stats["max"][:2], [0.0, 2.5])
    np.testing.assert_array_equal(stats["std"][:2], [0.0, 0.0])


def test_zero_and_singular_heads_metrics():
    s = np.array([[0.0] * 4, [3.0, 2.0, 1.0, 0.0], [4.0, 2.0, 1.0, 0.5]])
    metrics = spectrum_metrics(s, positivity_from_eigenvalues(np.zeros((3, 4), complex)))
    for name in ("stable_rank", "effective_rank", "positivity"):
        assert np.isnan(metrics[name][0]), name
    assert metrics["frobenius"][0] == 0.0 and metrics["spectral_norm"][0] == 0.0
    assert metrics["log_det"][0] == -np.inf and metrics["log_det"][1] == -np.inf
    assert np.isfinite(metrics["log_det"][2])
    p = s[1] ** 2 / (s[1] ** 2).sum()
    p = p[p > 0]
    assert metrics["effective_rank"][1] == pytest.approx(np.exp(-(p * np.log(p)).sum()), rel=1e-12)
    assert metrics["stable_rank"][1] == pytest.approx(14.0 / 9.0, rel=1e-12)
    assert positivity_from_eigenvalues(np.array([[1.0 + 1j, 1.0 - 1j, 0.0]]))[0] == pytest.approx(2 / (2 * np.sqrt(2)))


@pytest.fixture(scope="module")
def zero_heads_dataset(base_model, tmp_path_factory):
    """A model with query head 1 of layer 0 and key head 1 of layer 1 (query heads 2, 3) all zero, built."""
    root = tmp_path_factory.mktemp("zero")

    def change(tensors):
        tensors[q_name(0)][rows_of(1)] = 0
        tensors[k_name(1)][rows_of(1)] = 0

    model = variant_of(base_model, root / "zero-heads", change)
    out = root / "out"
    build_family("Trust", out, [str(model)], device="cpu", progress=False)
    return model, out


@pytest.mark.slow
def test_zero_heads_build_with_nan_metrics_and_minus_inf_log_det(zero_heads_dataset):
    model, out = zero_heads_dataset
    rows = read_rows(out, "Trust", model.name)
    zero = {(0, 1), (1, 2), (1, 3)}
    refs = {layer: reference_layer(model, layer) for layer in range(2)}
    for i, (layer, head) in enumerate(zip(rows["layer"], rows["head"])):
        if (layer, head) in zero:
            assert rows["singular_values"][i] == [0.0] * CASE.d_head
            for name in (
                "effective_rank",
                "stable_rank",
                "positivity",
                "sv_skew",
                "sv_kurtosis",
                "ev_skew",
                "ev_kurtosis",
            ):
                assert np.isnan(rows[name][i]), (layer, head, name)
            assert rows["log_det"][i] == -np.inf
            assert rows["ev_max"][i] == 0.0 and rows["frobenius"][i] == 0.0
        else:
            ref = refs[layer][head]
            assert np.max(np.abs(np.array(rows["singular_values"][i]) - ref) / ref) < 1e-6
            for name in ("effective_rank", "stable_rank", "positivity", "ev_skew", "ev_kurtosis", "log_det"):
                assert np.isfinite(rows[name][i]), (layer, head, name)


@pytest.mark.slow
def test_analysis_leaves_zero_heads_out_with_a_warning(zero_heads_dataset):
    from qk_spectra_ds.analysis.layer_boxplots import layer_stats
    from qk_spectra_ds.analysis.loading import load_spectra

    model, out = zero_heads_dataset
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        frame = load_spectra(str(out), "Trust")
    assert len(frame) == 2 * CASE.n_heads - 3
    assert any("constant spectrum" in str(w.message) and "3 head(s)" in str(w.message) for w in caught)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # two layers: BDS is NaN with a warning
        results = layer_stats(frame, skip_layers_below=0, model_id=model.name)
    for result in results:
        assert np.isfinite(result.medians).all() and np.isfinite(result.means).all(), result.stat

"""The kernel's routes (issue 24): numpy alone for raw CPU builds, the device path with the CPU standing in.

- A CPU build of raw rows without positional spectra never imports torch, and its rows equal
  the raw rows of a build that goes through the torch kernel (positional spectra, folded).
- The GPU path (factors as one batch on the device, the small problems on CPU LAPACK threads)
  gives the numpy route's numbers, run here on CPU tensors.
- A local model built for the first time (or with --force) reads its Q/K bytes once: the
  revision digest is taken from the build's own reads, and equals the pre-pass digest a rerun takes.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from tiny_models import make_saved

from qk_spectra_ds.builder import kernel, raw_numpy
from qk_spectra_ds.builder.pipeline import build_model
from qk_spectra_ds.builder.spectra import dense_qk_singular_values
from qk_spectra_ds.builder.weights import LocalSource
from qk_spectra_ds.errors import BuildError

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory) -> Path:
    _, directory = make_saved("llama-gqa", tmp_path_factory.mktemp("route") / "tiny-llama")
    return directory


def blocks(seed: int, n_heads=6, n_kv=2, d_head=16, d_model=40):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(n_heads, d_head, d_model, dtype=torch.float64, generator=gen)
    k = torch.randn(n_kv, d_head, d_model, dtype=torch.float64, generator=gen)
    k[1, -1] = k[1, 0]  # a singular Gram matrix: the QR fallback on every route
    return q, k


def test_device_batch_path_matches_the_numpy_route():
    """The GPU code path (device batch, then small problems on CPU threads), run on CPU tensors."""
    q, k = blocks(1)
    for with_positivity in (True, False):
        ours = raw_numpy.raw_layer_spectra(q.numpy(), k.numpy(), with_positivity)
        parts = kernel._device_batch(q, k, 3, with_positivity)
        sv = np.concatenate([p[0] for p in parts])
        np.testing.assert_allclose(sv, ours.singular_values, rtol=1e-10, atol=1e-12)
        if with_positivity:
            mu = np.concatenate([p[1] for p in parts])
            np.testing.assert_allclose(np.sort_complex(mu), np.sort_complex(ours.eigenvalues), rtol=1e-9, atol=1e-9)
        else:
            assert all(p[1] is None for p in parts) and np.isnan(ours.positivity).all()
    for h in range(q.shape[0]):  # and both are the dense float64 reference
        ref = dense_qk_singular_values(q[h].numpy(), k[h // 3].numpy())
        assert np.max(np.abs(ours.singular_values[h] - ref) / ref[0]) <= 1e-12


def plan_with_offsets(d_head: int):
    """Raw rows with positional spectra at offsets 0, 1, 4 (default RoPE): the torch kernel's route."""
    from qk_spectra_ds.builder.rotary import Rotary, inverse_frequencies
    from qk_spectra_ds.builder.variants import LayerPlan

    inv, a, kind = inverse_frequencies(10000.0, d_head, None, 2048)
    return LayerPlan(("raw",), None, Rotary(inv, a, False, kind), (0, 1, 4))


def test_device_path_with_the_small_problems_on_the_device(monkeypatch):
    """QK_SPECTRA_SMALL_PROBLEMS=device: torch solves the cores and crosses where the factors are (CPU standing in)."""
    q, k = blocks(3)
    ours = raw_numpy.raw_layer_spectra(q.numpy(), k.numpy())
    monkeypatch.setenv(kernel.SMALL_PROBLEMS_ENV, "device")
    parts = kernel._device_batch(q, k, 3, True)
    np.testing.assert_allclose(np.concatenate([p[0] for p in parts]), ours.singular_values, rtol=1e-10, atol=1e-12)
    mu = np.concatenate([p[1] for p in parts])
    np.testing.assert_allclose(np.sort_complex(mu), np.sort_complex(ours.eigenvalues), rtol=1e-9, atol=1e-9)
    monkeypatch.setenv(kernel.SMALL_PROBLEMS_ENV, "gpu")
    with pytest.raises(BuildError, match="QK_SPECTRA_SMALL_PROBLEMS='gpu': set it to cpu or device"):
        kernel._device_batch(q, k, 3, True)


def test_torch_kernel_raw_rows_are_the_numpy_routes_bit_for_bit():
    q, k = blocks(2, n_heads=8, n_kv=2, d_head=8, d_model=48)
    ours = raw_numpy.raw_layer_spectra(q.numpy(), k.numpy())
    via_torch = kernel.qk_layer_spectra(q, k)
    assert np.array_equal(via_torch.singular_values, ours.singular_values)
    assert np.array_equal(via_torch.positivity, ours.positivity, equal_nan=True)
    out = kernel.qk_layer_variants(q, k, plan_with_offsets(8))
    assert np.array_equal(out["raw"].singular_values, ours.singular_values)
    assert np.array_equal(out["raw"].positivity, ours.positivity, equal_nan=True)
    assert out["raw"].positional is not None  # the torch route did run (positional spectra)


NO_TORCH_BUILD = textwrap.dedent(
    """
    import json, sys

    class Hide:  # torch as if not installed (find_spec None: libraries that probe for it carry on)
        def __init__(self, inner):
            self._inner = inner

        def find_spec(self, fullname, path=None, target=None):
            if fullname.split(".")[0] == "torch":
                return None
            find = getattr(self._inner, "find_spec", None)
            return None if find is None else find(fullname, path, target)

        def __getattr__(self, name):
            return getattr(self._inner, name)

    sys.meta_path[:] = [Hide(finder) for finder in sys.meta_path]
    from qk_spectra_ds.builder import route
    route.GPU_DEVICE_NODES = ("/nonexistent/qk-spectra-gpu",)  # as on a machine without a GPU
    from qk_spectra_ds.builder.cli import cli
    code = cli(["--family", "Route", "--models", sys.argv[1], "--out", sys.argv[2], "--variants", "raw",
                "--offsets", "none", "--quiet"])
    print("RESULT " + json.dumps({"code": code, "torch": "torch" in sys.modules}))
    """
)


@pytest.mark.slow
def test_raw_cpu_build_never_imports_torch_and_writes_the_torch_routes_raw_rows(llama_dir, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-c", NO_TORCH_BUILD, str(llama_dir), str(tmp_path / "numpy")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert json.loads(lines[-1][len("RESULT ") :]) == {"code": 0, "torch": False}, proc.stderr[-2000:]

    build_model(str(llama_dir), "Route", tmp_path / "torch", device="cpu", progress=False, variants=["raw", "folded"])
    numpy_rows = pq.read_table(next((tmp_path / "numpy").glob("data/Route/*.parquet"))).to_pydict()
    torch_rows = pq.read_table(next((tmp_path / "torch").glob("data/Route/*.parquet"))).to_pydict()
    raw = [i for i, v in enumerate(torch_rows["variant"]) if v == "raw"]
    assert torch_rows["positional_singular_values"][raw[0]] is not None  # the torch route ran
    assert [torch_rows["singular_values"][i] for i in raw] == numpy_rows["singular_values"]
    assert [torch_rows["positivity"][i] for i in raw] == numpy_rows["positivity"]


def test_default_device_without_gpu_device_files_does_not_import_torch():
    probe = (
        "import sys; from qk_spectra_ds.builder import route; route.GPU_DEVICE_NODES = ('/nonexistent/gpu',); "
        "print(route.default_device(), 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    expected = "cpu False" if sys.platform.startswith("linux") else "cpu True"
    assert out.stdout.strip() == expected, out.stderr[-2000:]


def test_first_build_reads_qk_once_and_its_digest_is_the_prepass_digest(llama_dir, tmp_path):
    fresh = LocalSource(llama_dir)
    built = build_model(fresh, "Route", tmp_path, device="cpu", progress=False, variants=["raw"], offsets=[])
    assert built.status == "built"
    rerun = LocalSource(llama_dir)
    skipped = build_model(rerun, "Route", tmp_path, device="cpu", progress=False, variants=["raw"], offsets=[])
    assert skipped.status == "skipped"  # the pre-pass digest of the rerun equals the build's own
    assert skipped.revision == built.revision
    # the rerun's pre-pass reads config, index, headers and Q/K once: so did the first build
    assert fresh.fetched.total == rerun.fetched.total

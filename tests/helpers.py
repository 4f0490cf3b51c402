"""Helpers shared by several test files (issue 19: no test file imports another).

Synthetic schema rows and datasets, the original study's SVD pairing, and the CLI runner and its one-line
error check. Moved here unchanged from the test files that defined them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from qk_spectra_ds import __version__, schema
from qk_spectra_ds.statistics import spectrum_metrics, spectrum_statistics

ROOT = Path(__file__).resolve().parents[1]


def synthetic_columns(
    model_id: str,
    family: str,
    n_layers: int = 4,
    n_heads: int = 8,
    d_head: int = 16,
    seed: int = 0,
    variant: str = "raw",
    d_model: int | None = None,
) -> dict:
    """Plausible schema-v1 rows: spectra of random d_head x d_head products with head-dependent decay.

    ``d_model`` defaults to ``4 * d_head``; columns the rows do not model are null.
    """
    rng = np.random.default_rng(seed)
    n = n_layers * n_heads
    decay = rng.uniform(0.0, 3.0, size=n)
    base = np.abs(rng.standard_normal((n, d_head))) + 0.05
    s = np.sort(base * np.exp(-decay[:, None] * np.linspace(0, 1, d_head)), axis=1)[:, ::-1].astype(np.float32)
    ev = (s.astype(np.float64) ** 2).astype(np.float32)
    columns = {
        "model_id": [model_id] * n,
        "model_revision": ["local:" + "0" * 16] * n,
        "family": [family] * n,
        "model_type": ["llama"] * n,
        "variant": [variant] * n,
        "layer": np.repeat(np.arange(n_layers), n_heads).tolist(),
        "head": np.tile(np.arange(n_heads), n_layers).tolist(),
        "kv_head": (np.tile(np.arange(n_heads), n_layers) // 2).tolist(),
        "n_layers": [n_layers] * n,
        "n_heads": [n_heads] * n,
        "n_kv_heads": [n_heads // 2] * n,
        "d_model": [d_model or 4 * d_head] * n,
        "d_head": [d_head] * n,
        "singular_values": list(s),
        "eigenvalues": list(ev),
        "attention_type": ["full"] * n,  # the per-layer facts of schema v2 (a full-attention rotary layer)
        "sliding_window": [None] * n,
        "rope_theta": [10000.0] * n,
        "weights_dtype": ["float32"] * n,
        "builder_version": [__version__] * n,
        "method_version": [schema.METHOD_VERSION] * n,
        "schema_version": [schema.SCHEMA_VERSION] * n,
    }
    return _with_statistics(columns, s, ev, rng)


def depth_columns(
    model_id: str, family: str, n_layers: int, n_heads: int, d_head: int, seed: int, variant: str = "raw"
) -> dict:
    """Schema rows of random spectra whose decay grows with depth (stable rank falls with the layer); MHA heads."""
    rng = np.random.default_rng(seed)
    n = n_layers * n_heads
    layer = np.repeat(np.arange(n_layers), n_heads)
    decay = 0.5 + 3.0 * layer / max(n_layers - 1, 1) + rng.uniform(0, 0.5, n)
    s = np.abs(rng.standard_normal((n, d_head))) * 0.1 + np.exp(-decay[:, None] * np.linspace(0, 1, d_head))
    s = np.sort(s, axis=1)[:, ::-1].astype(np.float32)
    ev = (s.astype(np.float64) ** 2).astype(np.float32)
    columns = {
        "model_id": [model_id] * n,
        "model_revision": ["local:" + "0" * 16] * n,
        "family": [family] * n,
        "model_type": ["llama"] * n,
        "variant": [variant] * n,
        "layer": layer.tolist(),
        "head": np.tile(np.arange(n_heads), n_layers).tolist(),
        "kv_head": np.tile(np.arange(n_heads), n_layers).tolist(),
        "n_layers": [n_layers] * n,
        "n_heads": [n_heads] * n,
        "n_kv_heads": [n_heads] * n,
        "d_model": [4 * d_head] * n,
        "d_head": [d_head] * n,
        "singular_values": list(s),
        "eigenvalues": list(ev),
        "weights_dtype": ["float32"] * n,
        "builder_version": [__version__] * n,
        "method_version": [schema.METHOD_VERSION] * n,
        "schema_version": [schema.SCHEMA_VERSION] * n,
    }
    return _with_statistics(columns, s, ev, rng)


def _with_statistics(columns: dict, s: np.ndarray, ev: np.ndarray, rng: np.random.Generator) -> dict:
    """Add the per-head statistics and metrics of ``s`` and ``ev`` (positivity drawn from ``rng``); the rest null."""
    n = len(s)
    for prefix, values in (("sv", s), ("ev", ev)):
        for name, stat in spectrum_statistics(values).items():
            columns[f"{prefix}_{name}"] = stat.tolist()
    for name, value in spectrum_metrics(s, positivity=rng.uniform(-1, 1, n)).items():
        columns[name] = value.tolist()
    for name in schema.COLUMNS:
        columns.setdefault(name, [None] * n)  # positional spectra, null rows, circuit metrics, behaviour: null
    return columns


def make_dataset(
    out: Path, family: str = "syn", models=(("org/tiny-a", 0), ("org/tiny-b", 1)), columns=synthetic_columns, **kwargs
) -> Path:
    """A dataset of synthetic rows and its card: the tests' one dataset maker.

    ``models``: ``(model_id, seed)`` or ``(model_id, seed, {per-model arguments})``; ``columns`` makes each model's
    rows from ``(model_id, family, seed=..., **kwargs)`` (:func:`synthetic_columns` or :func:`depth_columns`).
    """
    from qk_spectra_ds import dataset_card, dataset_repo

    for model_id, seed, *own in models:
        dataset_repo.write_model_table(
            out, family, model_id, columns(model_id, family, seed=seed, **kwargs, **dict(*own))
        )
    dataset_card.write_card(out)
    return out


SIZES = {"org/m-0.6B": (4, 8, 64), "org/m-14B": (6, 10, 256), "org/m-4B": (5, 8, 160)}
"""model -> (n_layers, n_heads, d_model): named so that alphabetical order (0.6B, 14B, 4B) is not size order."""


def sized_dataset(out: Path, models=tuple(SIZES)) -> Path:
    """A dataset of ``models`` of :data:`SIZES` (d_head 16): the test suite's synthetic rows, other columns null."""
    sizes = [
        (model, seed, dict(zip(("n_layers", "n_heads", "d_model"), SIZES[model]))) for seed, model in enumerate(models)
    ]
    return make_dataset(out, "syn", sizes, d_head=16)


SIZE_ORDER = sorted(SIZES, key=lambda m: SIZES[m][0] * SIZES[m][1] * SIZES[m][2])


QK_LLAMA = {
    "model_type": "llama",
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "hidden_size": 32,
}
"""The smallest llama config the builder reads: 2 layers, 4 query heads over 2 key heads, d_model 32, d_head 8."""


def write_qk_llama(
    directory: Path,
    config=QK_LLAMA,
    *,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    d_model: int = 32,
    d_head: int = 8,
    projections: str = "qk",
    norms: bool = False,
) -> Path:
    """A llama checkpoint written straight with safetensors (no torch, no transformers): ``config.json`` as given
    (any JSON value, so tests can write broken configs) and seeded float32 weights of the given shape.

    ``projections``: which of q, k, v, o to write, drawn per layer in that order from one ``default_rng(0)``;
    ``norms``: also each layer's ``input_layernorm`` gain (ones).
    """
    from safetensors.numpy import save_file  # here: a test dependency the analysis tests do not need

    directory.mkdir(parents=True)
    (directory / "config.json").write_text(json.dumps(config))
    rows = {"q": heads * d_head, "k": kv_heads * d_head, "v": kv_heads * d_head}
    rng = np.random.default_rng(0)
    tensors = {}
    for layer in range(layers):
        for name in projections:
            shape = (d_model, heads * d_head) if name == "o" else (rows[name], d_model)
            tensors[f"model.layers.{layer}.self_attn.{name}_proj.weight"] = rng.standard_normal(shape, dtype=np.float32)
        if norms:
            tensors[f"model.layers.{layer}.input_layernorm.weight"] = np.ones(d_model, np.float32)
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    return directory


def original_pairing(wq_head: np.ndarray, wk_head: np.ndarray, correct: bool = False) -> np.ndarray:
    """Singular values via the original study's two thin SVDs (S. Darveshi 2025, Apache-2.0).

    With W_Q^T = U_A S_A Vh_A and W_K^T = U_B S_B Vh_B (d_model x d_head, reduced SVDs),
    W_Q = Vh_A^T S_A U_A^T and W_K = Vh_B^T S_B U_B^T, so

        W_QK = W_Q^T W_K = U_A (S_A Vh_A Vh_B^T S_B) U_B^T

    and, U_A, U_B having orthonormal columns, s(W_QK) = s(S_A Vh_A Vh_B^T S_B). The original
    used S_A Vh_A^T Vh_B S_B instead (``correct=False``): a different matrix with the same
    |det| = prod(S_A) prod(S_B), hence the same product of singular values and nothing else.
    """
    import torch  # here, not at the top: the analysis tests that use this module run without torch

    _, s_a, vh_a = torch.linalg.svd(torch.from_numpy(wq_head.T), full_matrices=False)
    _, s_b, vh_b = torch.linalg.svd(torch.from_numpy(wk_head.T), full_matrices=False)
    middle = vh_a @ vh_b.T if correct else vh_a.T @ vh_b
    core = torch.diag(s_a) @ middle @ torch.diag(s_b)
    return torch.linalg.svdvals(core).numpy()


def one_line(error, *words: str) -> str:
    """``str(error)`` (an exception or a message) is one line, no traceback, containing ``words``; returns it."""
    message = str(error)
    assert message and "\n" not in message and "Traceback" not in message, repr(message)
    for word in words:
        assert word in message, (word, message)
    return message


def assert_bad_config_is_one_line(model: Path, out: Path, words) -> None:
    """Building ``model`` fails with one CheckpointError line naming config.json and ``words``; nothing is written."""
    import pytest

    from qk_spectra_ds.builder.pipeline import build_model
    from qk_spectra_ds.errors import CheckpointError

    with pytest.raises(CheckpointError) as info:
        build_model(str(model), "Bad", out, device="cpu", progress=False)
    message = str(info.value)
    assert "\n" not in message and "config.json" in message, message
    for word in words:
        assert word in message, (word, message)
    assert not out.exists()


def record_builds(monkeypatch) -> list:
    """Every model spec the builder starts on from now (each still built as usual): to show that no work began."""
    from qk_spectra_ds.builder import pipeline

    started = []
    real = pipeline.build_model

    def recording(spec, *args, **kwargs):
        started.append(spec)
        return real(spec, *args, **kwargs)

    monkeypatch.setattr(pipeline, "build_model", recording)
    return started


def assert_one_error(rc: int, stderr: str, *words: str) -> str:
    """Exit status 1 and stderr exactly one ``error: ...`` line containing ``words``."""
    lines = stderr.strip().splitlines()
    assert rc == 1 and len(lines) == 1 and lines[0].startswith("error: "), (rc, stderr)
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


def run_script(
    *args: str, env: dict | None = None, code: str | None = None, timeout: float = 120
) -> subprocess.CompletedProcess:
    """``python build_dataset.py ARGS`` (or ``python -c CODE ARGS``) in a fresh interpreter: the tests' one CLI runner."""
    command = [sys.executable, "-c", code, *args] if code else [sys.executable, str(ROOT / "build_dataset.py"), *args]
    return subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}
    )

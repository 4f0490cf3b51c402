"""Folded, positional (RoPE) and null variants (issue 12) against references formed from the in-memory model.

The reference never uses the builder's tables: the norm feeding each layer's attention is found
with forward hooks (its output *is* the Q projection's input), its linear part is probed by calling
the module (eps set to 0: RMSNorm on sqrt(d) e_i, LayerNorm on e_i minus its bias, which also shows
whether it centres and Gemma's 1 + w), the q/k norm gains by calling q_norm/k_norm on ones, the
scale is the attention module's own attribute, and positions are applied with the model's own
rotary module and ``apply_rotary_pos_emb`` (module level: its float32 cos/sin at p = 0; exact
level: float64 cos/sin from its ``inv_freq`` buffer and ``attention_scaling`` at p = 12345).
"""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from tiny_models import save
from variant_cases import (
    CASES,
    OFFSETS,
    RTOL,
    SMALL,
    _haar,
    _layers,
    _rel,
    _svd,
    _unique_r,
    attention_scale,
    build,
    feeding_norms,
    norm_linear_part,
    qk_norm_gains,
    references,
    rows_of,
)

from qk_spectra_ds import schema
from qk_spectra_ds.builder import catalog, pipeline

transformers = pytest.importorskip("transformers")


# ------------------------------------------------------------------ reference from the modules


# ------------------------------------------------------------------ building


ROTARY = ["llama", "llama-yarn", "qwen3", "gemma2", "gemma3", "gpt_neox", "phi3", "gptj"]


@pytest.mark.slow
@pytest.mark.parametrize("case_id", ROTARY + ["bert"])
def test_folded_and_positional_match_the_modules(case_id, tmp_path):
    """Folded and positional (raw and folded) spectra: <= 1e-6 vs the module-level reference, 1e-8 exact level."""
    case = CASES[case_id]
    model, table = build(case, tmp_path)
    assert set(table["variant"]) == {"raw", "folded", "null"}
    module_ref = references(model, case, exact=False)
    exact_ref = references(model, case, exact=True) if case_id != "bert" else None
    for layer, ref in enumerate(module_ref):
        raw, folded = rows_of(table, "raw", layer), rows_of(table, "folded", layer)
        assert _rel(np.stack(raw["singular_values"]), np.stack(ref["raw"])) <= RTOL
        assert _rel(np.stack(folded["singular_values"]), np.stack(ref["folded"])) <= RTOL
        if case_id == "bert":
            assert folded["positional_singular_values"].isna().all() and folded["offsets"].isna().all()
            continue
        assert list(folded["offsets"].iloc[0]) == list(OFFSETS)
        pos_f = np.stack([np.stack(list(v)) for v in folded["positional_singular_values"]])  # (H, n_off, dh)
        pos_r = np.stack([np.stack(list(v)) for v in raw["positional_singular_values"]])
        assert np.array_equal(pos_f[:, 0], np.stack(folded["singular_values"]))  # offset 0 = non-positional
        for i, delta in enumerate(OFFSETS):
            if delta in SMALL:
                assert _rel(pos_f[:, i], np.stack(ref["positional"][delta])) <= RTOL, delta
                assert _rel(pos_r[:, i], np.stack(ref["raw_positional"][delta])) <= RTOL, delta
            assert _rel(pos_f[:, i], np.stack(exact_ref[layer]["positional"][delta])) <= RTOL, delta
            assert _rel(pos_r[:, i], np.stack(exact_ref[layer]["raw_positional"][delta])) <= RTOL, delta
        # the positions matter: some offset moves the spectrum
        assert not np.allclose(pos_f[:, -1], pos_f[:, 0], rtol=1e-3)
        ratio = pos_f[:, 1:, 0] / pos_f[:, :1, 0]
        np.testing.assert_allclose(folded["positional_norm_ratio_max"], ratio.max(axis=1), rtol=1e-6)
        np.testing.assert_allclose(folded["positional_norm_ratio_min"], ratio.min(axis=1), rtol=1e-6)
    assert not np.allclose(
        np.stack(table[table.variant == "raw"]["singular_values"]),
        np.stack(table[table.variant == "folded"]["singular_values"]),
        rtol=1e-3,
    )


def test_gemma3_local_and_global_layers_rotate_differently(tmp_path):
    """Gemma 3: the sliding layer uses the local base, the full layer the global one (the reference's own buffers)."""
    case = CASES["gemma3"]
    model = case.make()
    rot = model.model.rotary_emb
    assert not torch.equal(rot.sliding_attention_inv_freq, rot.full_attention_inv_freq)


@pytest.mark.slow
def test_null_variant(tmp_path):
    """Null: |c| s(R_q G_q O G_k R_k^T) with O Haar from the recorded seed; same factor norms, other spectrum."""
    case = CASES["qwen3"]
    model, table = build(case, tmp_path)
    model = model.double()
    norms = feeding_norms(model)
    group = case.n_heads // case.n_kv_heads
    model_id = table["model_id"].iloc[0]
    for layer, (blk, (wq, wk)) in enumerate(zip(_layers(model), case.reference(model))):
        y = norm_linear_part(norms[layer], case.d_model)
        gq, gk = qk_norm_gains(blk, case.d_head)
        c = attention_scale(blk)
        null = np.stack(rows_of(table, "null", layer)["singular_values"])
        folded = np.stack(rows_of(table, "folded", layer)["singular_values"])
        for h in range(case.n_heads):
            # R factors with a positive diagonal (unique) from numpy's QR of the folded blocks
            ra = _unique_r(y @ wq[h].T)  # X_q^T = Q R_a
            rb = _unique_r(y @ wk[h // group].T)
            a, b = ra * gq[None, :], rb * gk[None, :]  # R_a G_q, R_b G_k
            assert np.isclose(np.linalg.norm(a), np.linalg.norm((y @ wq[h].T) * gq))  # factor keeps its norm
            o = _haar(schema.NULL_SEED, model_id, layer, h, case.d_head)
            ref = abs(c) * _svd(a @ o @ b.T, case.d_head)
            assert _rel(null[h], ref) <= RTOL
            assert not np.allclose(null[h], folded[h], rtol=1e-3)
            assert np.isclose(np.sum(null[h] ** 2) > 0, True)
    # reproducible from the seed, different with another one
    again = pipeline.build_model(str(tmp_path / case.id), "fam2", tmp_path / "out2", progress=False, offsets=OFFSETS)
    table2 = pq.read_table(again.path, filters=[("circuit", "=", "qk")]).to_pandas()
    assert np.array_equal(
        np.stack(table2[table2.variant == "null"]["singular_values"]),
        np.stack(table[table.variant == "null"]["singular_values"]),
    )
    other = pipeline.build_model(
        str(tmp_path / case.id), "fam3", tmp_path / "out3", progress=False, offsets=(0,), null_seed=7
    )
    table3 = pq.read_table(other.path, filters=[("circuit", "=", "qk")]).to_pandas()
    assert not np.allclose(
        np.stack(table3[table3.variant == "null"]["singular_values"]),
        np.stack(table[table.variant == "null"]["singular_values"]),
        rtol=1e-3,
    )


def test_variants_flag_and_offsets(tmp_path):
    """--variants raw builds raw rows only; --offsets none gives null positional columns; a bad variant is one line."""
    case = CASES["llama"]
    model = case.make()
    directory = save(model, tmp_path / "m", case)
    result = pipeline.build_model(str(directory), "fam", tmp_path / "out", progress=False, variants=["raw"], offsets=())
    table = pq.read_table(result.path, filters=[("circuit", "=", "qk")]).to_pandas()
    assert set(table["variant"]) == {"raw"} and table["offsets"].isna().all()
    with pytest.raises(Exception, match="choose among raw, folded, null"):
        pipeline.build_model(str(directory), "fam", tmp_path / "out", progress=False, variants=["fold"])
    # the default offsets: 0, 1, 2, 4, ... up to max_position_embeddings
    result = pipeline.build_model(str(directory), "fam4", tmp_path / "out4", progress=False, variants=["folded"])
    offsets = list(pq.read_table(result.path, filters=[("circuit", "=", "qk")]).to_pandas()["offsets"].iloc[0])
    assert offsets == [0] + [2**i for i in range(12)]


@pytest.mark.slow
def test_minilm_folded_differs_from_raw_and_matches_its_reference(tmp_path):
    """The real all-MiniLM-L6-v2 checkpoint (post-norm BERT): folded != raw, folded matches the module reference."""
    directory = catalog.packaged_model_dir("sentence-transformers/all-MiniLM-L6-v2")
    if directory is None:
        pytest.skip("the packaged MiniLM checkpoint is not installed")
    result = pipeline.build_model(
        str(directory), "MiniLM", tmp_path / "out", progress=False, variants=["raw", "folded"]
    )
    table = pq.read_table(result.path, filters=[("circuit", "=", "qk")]).to_pandas()
    model = transformers.BertModel.from_pretrained(str(directory)).eval().double()
    n_heads, d_model = model.config.num_attention_heads, model.config.hidden_size
    d_head = d_model // n_heads
    norms = feeding_norms(model)
    for layer in (0, 3, 5):
        attn = model.encoder.layer[layer].attention.self
        wq = attn.query.weight.detach().numpy().reshape(n_heads, d_head, d_model)
        wk = attn.key.weight.detach().numpy().reshape(n_heads, d_head, d_model)
        y = norm_linear_part(norms[layer], d_model)
        c = attention_scale(model.encoder.layer[layer])
        folded = np.stack(rows_of(table, "folded", layer)["singular_values"])
        raw = np.stack(rows_of(table, "raw", layer)["singular_values"])
        ref = np.stack([_svd(c * (y @ wq[h].T) @ (y @ wk[h].T).T, d_head) for h in range(n_heads)])
        assert _rel(folded, ref) <= RTOL
        assert not np.allclose(folded / folded.max(), raw / raw.max(), rtol=1e-2)


@pytest.mark.slow
def test_checkpoint_without_norms_builds_raw_by_default_and_refuses_folded_when_asked(tmp_path):
    """Only Q/K in the checkpoint: the default builds raw rows (and says so); --variants folded is one line."""
    from safetensors.numpy import load_file, save_file

    case = CASES["llama"]
    directory = save(case.make(), tmp_path / "m", case)
    tensors = load_file(str(directory / "model.safetensors"))
    save_file(
        {n: t for n, t in tensors.items() if "layernorm" not in n},
        str(directory / "model.safetensors"),
        metadata={"format": "pt"},
    )
    result = pipeline.build_model(str(directory), "fam", tmp_path / "out", progress=False)
    assert set(pq.read_table(result.path).column("variant").to_pylist()) == {"raw"}
    with pytest.raises(Exception, match="cannot build the folded/null variants: no tensor .*input_layernorm") as info:
        pipeline.build_model(str(directory), "fam", tmp_path / "out2", progress=False, variants=["folded"])
    assert "\n" not in str(info.value)

"""Architectures of 2025-26 (issue 11): multimodal text towers, MoE, MLA, sinks and biases, hybrids, NoPE, FP8.

Every case of ``tiny_models.CASES_2026`` is a random ``transformers`` model saved with
``save_pretrained``; all of them are built in one ``build_family`` call and each head's stored
spectrum is compared with a dense float64 SVD of W_Q^T W_K formed from the in-memory module's own
parameters (MLA: composed from its q_a/q_b/kv_a/kv_b projections). The per-layer facts are checked
against the transformers config objects, and each config quirk has its own test.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from tiny_models import CASES_2026, CASES_2026_BY_ID, dense_singular_values, save

from qk_spectra_ds.builder import architectures as arch
from qk_spectra_ds.builder import pipeline
from qk_spectra_ds.builder.safetensors_io import E4M3_VALUES, Checkpoint
from qk_spectra_ds.builder.weights import open_source
from qk_spectra_ds.errors import CheckpointError, UnsupportedArchitectureError

FAMILY = "Arch2026"
RTOL = 1e-6


def raw_only() -> dict:
    """Build the raw spectra only (this file checks them), whatever other variants the builder offers."""
    return {
        "variants": ["raw"],
        "circuits": ["qk"],
    }  # QK rows: the OV circuit of every case is tests/builder/test_ov_circuit.py


@dataclass
class Built:
    model: torch.nn.Module
    model_dir: Path
    result: pipeline.ModelResult
    rows: object  # pandas DataFrame of the model's parquet file


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Built]:
    """Every 2025-26 case, saved, and built in one build_family call."""
    root = tmp_path_factory.mktemp("models2026")
    models = {case.id: case.make() for case in CASES_2026}
    dirs = {case.id: save(models[case.id], root / case.id, case) for case in CASES_2026}
    out = tmp_path_factory.mktemp("dataset2026")
    results = pipeline.build_family(
        FAMILY, out, models=[str(d) for d in dirs.values()], device="cpu", progress=False, **raw_only()
    )
    by_id = {r.model_id: r for r in results}
    return {
        cid: Built(
            models[cid],
            dirs[cid],
            by_id[cid],
            pq.read_table(by_id[cid].path, filters=[("circuit", "=", "qk")]).to_pandas(),
        )
        for cid in dirs
    }


def max_relative_error(actual, expected) -> float:
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    return float(np.max(np.abs(actual - expected) / np.abs(expected)))


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES_2026, ids=lambda c: c.id)
def test_spectra_match_dense_reference_on_every_head(built, case):
    b = built[case.id]
    reference = case.reference(b.model)  # {true layer index: (W_Q (H, dh, d), W_K (H_kv, dh, d))}
    rows = b.rows
    assert sorted(set(rows["layer"])) == sorted(reference), "rows only, and exactly, for the softmax-attention layers"
    assert len(rows) == len(reference) * case.n_heads
    assert set(rows["n_layers"]) == {case.n_layers} and set(rows["model_type"]) == {case.model_type}
    assert set(rows["n_heads"]) == {case.n_heads} and set(rows["d_head"]) == {case.d_head}
    assert set(rows["d_model"]) == {case.d_model}
    worst = 0.0
    for layer, head, values in zip(rows["layer"], rows["head"], rows["singular_values"]):
        wq, wk = reference[layer]
        group = wq.shape[0] // wk.shape[0]
        worst = max(worst, max_relative_error(values, dense_singular_values(wq[head], wk[head // group])))
    assert worst <= RTOL, f"{case.id}: max relative error {worst:.2e}"


@pytest.mark.slow
def test_the_family_loads_with_datasets(built):
    from datasets import load_dataset

    out = next(iter(built.values())).result.path.parents[2]
    ds = load_dataset(str(out), FAMILY, split="train")
    assert ds.num_rows == sum(len(b.rows) for b in built.values())
    assert {"attention_type", "sliding_window", "rope_theta"} <= set(ds.column_names)
    card = (out / "README.md").read_text()
    assert "attention_type" in card and "rope_theta" in card and "sliding_window" in card


# ------------------------------------------------------------------ per-layer facts against transformers


def _text_config(config):
    return getattr(config, "text_config", None) or config


def _expected_facts(model, case) -> dict[int, tuple[str, int | None, float | None]]:
    """(attention_type, sliding_window, rope_theta) per softmax layer, from the transformers config and modules."""
    config = _text_config(model.config)
    n = config.num_hidden_layers
    kinds = list(getattr(config, "layer_types", None) or ["full_attention"] * n)
    if case.model_type in ("llama4", "llama4_text", "smollm3"):
        nope = [flag == 0 for flag in config.no_rope_layers]
    elif case.model_type == "cohere2":
        nope = [k != "sliding_attention" for k in kinds]  # Cohere2Attention rotates only with a window
    elif case.model_type == "exaone4":
        nope = [config.sliding_window is not None and k != "sliding_attention" for k in kinds]
    else:
        nope = [False] * n
    if case.model_type in ("mistral3", "mixtral", "starcoder2", "phi3") and config.sliding_window is not None:
        kinds = ["sliding_attention"] * n  # these attend within sliding_window on every layer
    params = config.rope_parameters
    out = {}
    for i, kind in enumerate(kinds):
        if kind not in ("full_attention", "sliding_attention", "chunked_attention", "hybrid"):
            continue
        theta = (params.get(kind, params) if kind in params else params)["rope_theta"]
        attention = {"full_attention": "full", "sliding_attention": "sliding", "chunked_attention": "chunked"}.get(
            kind, "full"
        )
        window = config.sliding_window if attention == "sliding" else None
        out[i] = (attention, window, None if nope[i] else float(theta))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES_2026, ids=lambda c: c.id)
def test_layer_facts_match_the_transformers_config(built, case):
    b = built[case.id]
    config = json.loads((b.model_dir / "config.json").read_text())
    facts = arch.model_type_for(config).layer_facts(config)
    got = {f.layer: (f.attention_type, f.sliding_window, None if f.rope is None else f.rope.theta) for f in facts}
    assert got == _expected_facts(b.model, case)
    rows = b.rows.drop_duplicates("layer").set_index("layer")
    for f in facts:  # the rows carry the same facts
        assert rows.loc[f.layer, "attention_type"] == f.attention_type
        assert (f.sliding_window is None) == np.isnan(rows.loc[f.layer, "sliding_window"])
        assert (f.rope is None) == np.isnan(rows.loc[f.layer, "rope_theta"])


@pytest.mark.slow
def test_rotary_dims_pairing_and_offsets():
    """Partial rotary (glm4 0.5, Phi-4-mini 0.75, Qwen3-Next 0.25), interleaved pairs, MLA's rope block at the end."""
    expected = {
        "glm4-partial": (8, True, 0),
        "phi3-partial": (12, False, 0),
        "qwen3_next-gated": (4, False, 0),
        "deepseek_v3-qlora": (8, True, 16),
        "deepseek_v2-lite": (8, True, 16),
        "cohere2": (16, True, 0),
        "llama4-mm": (16, True, 0),
        "gemma3-mm": (24, False, 0),
    }
    for cid, (rotary_dim, interleaved, start) in expected.items():
        case = CASES_2026_BY_ID[cid]
        import transformers

        config = getattr(transformers, case.config_cls)(**case.config).to_dict()
        ropes = [f.rope for f in arch.model_type_for(config).layer_facts(config) if f.rope is not None]
        assert ropes and {(r.rotary_dim, r.interleaved, r.rotary_start) for r in ropes} == {
            (rotary_dim, interleaved, start)
        }, cid


# ------------------------------------------------------------------ config quirks


GEMMA3_4B_TEXT_CONFIG = {  # google/gemma-3-4b-it's text_config on the Hub: everything else is a class default
    "hidden_size": 2560,
    "intermediate_size": 10240,
    "model_type": "gemma3_text",
    "num_hidden_layers": 34,
    "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
    "sliding_window": 1024,
}


def test_sparse_nested_text_config_takes_the_config_class_defaults():
    from transformers import Gemma3Config, Mistral3Config

    config = {"model_type": "gemma3", "text_config": GEMMA3_4B_TEXT_CONFIG, "vision_config": {}}
    reference = Gemma3Config(text_config=dict(GEMMA3_4B_TEXT_CONFIG)).text_config
    a = arch.model_type_for(config)
    shape = a.shape(config)
    assert (shape.n_layers, shape.n_heads, shape.n_kv_heads, shape.d_model, shape.d_head) == (
        reference.num_hidden_layers,
        reference.num_attention_heads,
        reference.num_key_value_heads,
        reference.hidden_size,
        reference.head_dim,
    )
    facts = a.layer_facts(config)
    assert [f.attention_type + "_attention" for f in facts] == reference.layer_types
    for f in facts:
        params = reference.rope_parameters[f.attention_type + "_attention"]
        assert f.rope.theta == params["rope_theta"] and f.sliding_window == (
            1024 if f.attention_type == "sliding" else None
        )
        assert (f.rope.scaling or {}).get("factor") == (
            params.get("factor") if params["rope_type"] != "default" else None
        )

    mistral = {"model_type": "mistral3", "text_config": {"hidden_size": 5120}}
    ref = Mistral3Config(text_config={"hidden_size": 5120}).text_config
    shape = arch.model_type_for(mistral).shape(mistral)
    assert (shape.n_heads, shape.n_kv_heads, shape.d_head, shape.n_layers) == (
        ref.num_attention_heads,
        ref.num_key_value_heads,
        ref.head_dim or 5120 // ref.num_attention_heads,
        ref.num_hidden_layers,
    )
    assert {f.sliding_window for f in arch.model_type_for(mistral).layer_facts(mistral)} == {ref.sliding_window}


@pytest.mark.slow
def test_multimodal_text_tower_under_either_prefix_and_never_the_vision_tower(built, tmp_path):
    """transformers 5.x saves language_model.model.*; in-memory names (model.language_model.*) read the same."""
    from safetensors.torch import load_file, save_file

    b = built["gemma3-mm"]
    tensors = load_file(str(b.model_dir / "model.safetensors"))
    assert any(n.startswith("language_model.model.layers.") for n in tensors)
    assert any("vision_tower" in n and n.endswith("self_attn.q_proj.weight") for n in tensors)
    renamed = tmp_path / "gemma3-renamed"
    renamed.mkdir()
    save_file(
        {n.replace("language_model.model.", "model.language_model.", 1): t for n, t in tensors.items()},
        str(renamed / "model.safetensors"),
        metadata={"format": "pt"},
    )
    (renamed / "config.json").write_text((b.model_dir / "config.json").read_text())
    [result] = pipeline.build_family(
        FAMILY, tmp_path / "out", models=[str(renamed)], device="cpu", progress=False, **raw_only()
    )
    rows = pq.read_table(result.path, filters=[("circuit", "=", "qk")]).to_pandas()
    assert np.array_equal(np.stack(rows["singular_values"]), np.stack(b.rows["singular_values"]))


@pytest.mark.slow
def test_gated_query_rows_only(built):
    """Qwen3-Next's q_proj is per head [query | gate]: the stored spectra are the query's, not a plain row split's."""
    b = built["qwen3_next-gated"]
    attn = b.model.model.layers[1].self_attn
    dh = attn.head_dim
    w = attn.q_proj.weight.detach().to(torch.float64).numpy()
    naive_q = w[: 4 * dh].reshape(4, dh, -1)  # what reading the first H * d_head rows would give
    wk = attn.k_proj.weight.detach().to(torch.float64).numpy().reshape(2, dh, -1)
    stored = np.asarray(b.rows[(b.rows["layer"] == 1) & (b.rows["head"] == 1)]["singular_values"].iloc[0], np.float64)
    assert max_relative_error(stored, dense_singular_values(naive_q[1], wk[0])) > 1e-2


@pytest.mark.slow
def test_hybrid_rows_keep_true_layer_indices(built):
    rows = built["qwen3_next-gated"].rows
    config = built["qwen3_next-gated"].model.config
    attention = [i for i, k in enumerate(config.layer_types) if k == "full_attention"]
    assert attention == [1, 3] and sorted(set(rows["layer"])) == attention
    assert set(rows["n_layers"]) == {4}
    assert sorted(set(built["falcon_h1"].rows["layer"])) == [0, 1]  # every Falcon-H1 layer has attention beside mamba


@pytest.mark.slow
def test_biases_and_sinks_are_outside_the_raw_form(built, tmp_path):
    """gpt-oss (sinks, q/k biases) and Qwen2-MoE (q/k biases): changing them leaves the raw rows bit for bit."""
    from safetensors.torch import load_file, save_file

    for cid, extra in (
        ("gpt_oss-sinks-bias", ("self_attn.sinks", "q_proj.bias", "k_proj.bias")),
        ("qwen2_moe-bias", ("q_proj.bias", "k_proj.bias")),
    ):
        b = built[cid]
        tensors = load_file(str(b.model_dir / "model.safetensors"))
        changed = {n: (t * 3 + 1 if n.endswith(extra) else t) for n, t in tensors.items()}
        assert sum(n.endswith(extra) for n in tensors) >= len(extra), f"{cid} has its biases/sinks"
        other = tmp_path / cid
        other.mkdir()
        save_file(changed, str(other / "model.safetensors"), metadata={"format": "pt"})
        (other / "config.json").write_text((b.model_dir / "config.json").read_text())
        [result] = pipeline.build_family(
            FAMILY, tmp_path / "out", models=[str(other)], device="cpu", progress=False, **raw_only()
        )
        rows = pq.read_table(result.path, filters=[("circuit", "=", "qk")]).to_pandas()
        assert np.array_equal(np.stack(rows["singular_values"]), np.stack(b.rows["singular_values"]))


@pytest.mark.slow
def test_mla_works_on_small_factors(built):
    """With q_lora_rank the layer is read as m = r_q + r_kv + d_r wide factors, below d_model (no d_model x d_model)."""
    b = built["deepseek_v3-qlora"]
    config = json.loads((b.model_dir / "config.json").read_text())
    a = arch.model_type_for(config)
    shape = a.shape(config)
    qk = a.layout(config).read(Checkpoint(open_source(str(b.model_dir))), 0, shape)
    m = config["q_lora_rank"] + config["kv_lora_rank"] + config["qk_rope_head_dim"]
    assert qk.q.shape == (4, 24, m) and qk.k.shape == (4, 24, m) and m < shape.d_model


def test_unknown_model_type_lists_the_supported_ones():
    with pytest.raises(UnsupportedArchitectureError) as err:
        arch.model_type_for({"model_type": "mamba2"})
    message = str(err.value)
    assert "\n" not in message and all(t in message for t in ("deepseek_v3", "gemma3", "qwen3_next", "gpt_oss"))


# ------------------------------------------------------------------ FP8 (DeepSeek-V3 block scales)


def quantize_fp8(w: torch.Tensor, block: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """DeepSeek-style block FP8: per 128x128 block s = amax / 448, q = (w / s) in e4m3; returns (q, s = weight_scale_inv)."""
    rows, cols = w.shape
    scale = torch.empty((-(-rows // block), -(-cols // block)), dtype=torch.float32)
    q = torch.empty_like(w, dtype=torch.float8_e4m3fn)
    for i in range(scale.shape[0]):
        for j in range(scale.shape[1]):
            tile = w[i * block : (i + 1) * block, j * block : (j + 1) * block].float()
            s = tile.abs().max().clamp(min=1e-12) / 448.0
            scale[i, j] = s
            q[i * block : (i + 1) * block, j * block : (j + 1) * block] = (tile / s).to(torch.float8_e4m3fn)
    return q, scale


def reference_dequant(q: torch.Tensor, scale: torch.Tensor, block: int = 128) -> np.ndarray:
    """Independent dequantization with torch: fp8 -> float64, times the block's scale (repeat_interleave)."""
    rows, cols = q.shape
    full = scale.double().repeat_interleave(block, 0)[:rows].repeat_interleave(block, 1)[:, :cols]
    return (q.to(torch.float64) * full).numpy()


def test_e4m3_codes_decode_like_torch():
    torch_values = torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fn).to(torch.float64).numpy()
    assert np.array_equal(E4M3_VALUES, torch_values, equal_nan=True)


def test_fp8_block_scales_dequantize_exactly(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    w = torch.randn(300, 200) * torch.logspace(-2, 2, 300)[:, None]  # blocks of very different scales
    q, scale = quantize_fp8(w)
    save_file({"m.weight": q, "m.weight_scale_inv": scale}, str(tmp_path / "model.safetensors"))
    ckpt = Checkpoint(open_source(str(tmp_path)))
    info = ckpt.tensors["m.weight"]
    assert info.dtype == "F8_E4M3" and tuple(scale.shape) == (3, 2)  # partial last blocks in both directions
    expected = reference_dequant(q, scale)
    assert np.array_equal(ckpt.read_rows(info), expected)
    assert np.array_equal(ckpt.read_rows(info, 100, 290), expected[100:290])  # a range starting mid-block


def test_fp8_without_its_scales_is_one_line(tmp_path):
    from safetensors.torch import save_file

    q, _ = quantize_fp8(torch.randn(8, 8))
    save_file({"m.weight": q}, str(tmp_path / "model.safetensors"))
    ckpt = Checkpoint(open_source(str(tmp_path)))
    with pytest.raises(CheckpointError, match="weight_scale_inv") as err:
        ckpt.read_rows(ckpt.tensors["m.weight"])
    assert "\n" not in str(err.value)


@pytest.mark.slow
def test_fp8_deepseek_v3_builds_from_dequantized_weights(built, tmp_path):
    """A DeepSeek-V3 checkpoint with FP8 attention projections (+ scales), and a multi-token-prediction layer."""
    from safetensors.torch import load_file, save_file

    b = built["deepseek_v3-qlora"]
    tensors = load_file(str(b.model_dir / "model.safetensors"))
    fp8 = ("q_a_proj.weight", "q_b_proj.weight", "kv_a_proj_with_mqa.weight", "kv_b_proj.weight")
    out, dequantized = {}, {}
    for name, t in tensors.items():
        if name.endswith(fp8):
            q, s = quantize_fp8(t)
            out[name], out[name + "_scale_inv"] = q, s
            dequantized[name] = reference_dequant(q, s)
        else:
            out[name] = t
    for name in [n for n in out if n.startswith("model.layers.2.")]:  # layer 3 = the MTP layer, never read
        out[name.replace("model.layers.2.", "model.layers.3.", 1)] = out[name].clone()
    model_dir = tmp_path / "deepseek-v3-fp8"
    model_dir.mkdir()
    save_file(out, str(model_dir / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((b.model_dir / "config.json").read_text())
    config["num_nextn_predict_layers"] = 1
    config["quantization_config"] = {
        "activation_scheme": "dynamic",
        "fmt": "e4m3",
        "quant_method": "fp8",
        "weight_block_size": [128, 128],
    }
    (model_dir / "config.json").write_text(json.dumps(config))
    [result] = pipeline.build_family(
        FAMILY, tmp_path / "out", models=[str(model_dir)], device="cpu", progress=False, **raw_only()
    )
    rows = pq.read_table(result.path, filters=[("circuit", "=", "qk")]).to_pandas()
    assert sorted(set(rows["layer"])) == [0, 1, 2] and "float8_e4m3fn" in rows["weights_dtype"].iloc[0]
    h, dn, dr, dv, rkv = 4, 16, 8, 16, 16
    worst = 0.0
    for layer, head, values in zip(rows["layer"], rows["head"], rows["singular_values"]):
        p = f"model.layers.{layer}.self_attn."
        wq = (dequantized[p + "q_b_proj.weight"].reshape(h, dn + dr, -1) @ dequantized[p + "q_a_proj.weight"])[head]
        kva = dequantized[p + "kv_a_proj_with_mqa.weight"]
        kb = dequantized[p + "kv_b_proj.weight"].reshape(h, dn + dv, rkv)[head, :dn]
        wk = np.concatenate([kb @ kva[:rkv], kva[rkv:]])
        worst = max(worst, max_relative_error(values, dense_singular_values(wq, wk)))
    assert worst <= RTOL


# ------------------------------------------------------------------ bytes read from the Hub


@pytest.mark.slow
def test_moe_hub_build_reads_only_qk_bytes(hub_server, built, unique_repo_name, tmp_path):
    """Qwen3-MoE on the Hub test server: config + headers + at most 1.1 x the Q/K bytes (experts never read)."""
    b = built["qwen3_moe"]
    repo_id = unique_repo_name("tiny-qwen3-moe")
    hub_server.seed_repo(repo_id, b.model_dir)
    hub_server.reset_counters()
    [result] = pipeline.build_family(
        FAMILY, tmp_path / "out", models=[repo_id], device="cpu", progress=False, **raw_only()
    )
    raw = (b.model_dir / "model.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    qk = sum(
        e["data_offsets"][1] - e["data_offsets"][0]
        for k, e in header.items()
        if k.endswith(("q_proj.weight", "k_proj.weight"))
    )
    overhead = (b.model_dir / "config.json").stat().st_size + 8 + n
    served = hub_server.bytes_served(repo_id=repo_id)
    assert served <= 1.1 * qk + overhead and result.bytes_fetched == served
    assert qk + overhead < 0.5 * len(raw)  # the experts (and embeddings) are most of the file
    rows = pq.read_table(result.path, filters=[("circuit", "=", "qk")]).to_pandas()
    assert np.array_equal(np.stack(rows["singular_values"]), np.stack(b.rows["singular_values"]))

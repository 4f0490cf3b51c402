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

import importlib
import math

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from tiny_models import ArchCase, TOKENS, _llama_style, ref_bert, ref_gpt_neox, ref_gptj, ref_llama_like, ref_phi3, save

from qk_spectra_ds import schema
from qk_spectra_ds.build import catalog, pipeline

transformers = pytest.importorskip("transformers")

OFFSETS = (0, 1, 2, 4, 8, 1000)
SMALL = (0, 1, 2, 4, 8)  # module level: float32 cos/sin of the module are accurate to ~5e-8 here
BIG_P = 12345
RTOL = 1e-6


def _case(id, model_type, cfg_cls, model_cls, config, ref, H, H_kv, d, dh):
    return ArchCase(id, model_type, cfg_cls, model_cls, config, ref, H, H_kv, d, dh, seed=3)


CASES = {
    "llama": _case("llama", "llama", "LlamaConfig", "LlamaForCausalLM",
                   _llama_style(kv=2, max_position_embeddings=2048), ref_llama_like, 4, 2, 32, 8),
    "llama-yarn": _case("llama-yarn", "llama", "LlamaConfig", "LlamaForCausalLM",
                        _llama_style(kv=2, max_position_embeddings=8192, rope_scaling=dict(
                            rope_type="yarn", factor=4.0, original_max_position_embeddings=2048)),
                        ref_llama_like, 4, 2, 32, 8),
    "qwen3": _case("qwen3", "qwen3", "Qwen3Config", "Qwen3ForCausalLM",
                   _llama_style(kv=2, head_dim=12, max_position_embeddings=2048), ref_llama_like, 4, 2, 32, 12),
    "gemma2": _case("gemma2", "gemma2", "Gemma2Config", "Gemma2ForCausalLM",
                    _llama_style(d=48, kv=2, head_dim=16, query_pre_attn_scalar=24, max_position_embeddings=2048),
                    ref_llama_like, 4, 2, 48, 16),
    "gemma3": _case("gemma3", "gemma3_text", "Gemma3TextConfig", "Gemma3ForCausalLM",
                    _llama_style(kv=2, head_dim=16, query_pre_attn_scalar=20, max_position_embeddings=2048,
                                 layer_types=["sliding_attention", "full_attention"], sliding_window=16),
                    ref_llama_like, 4, 2, 32, 16),
    "gpt_neox": _case("gpt_neox", "gpt_neox", "GPTNeoXConfig", "GPTNeoXForCausalLM",
                      dict(TOKENS, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                           max_position_embeddings=2048), ref_gpt_neox, 4, 4, 64, 16),
    "phi3": _case("phi3", "phi3", "Phi3Config", "Phi3ForCausalLM",
                  _llama_style(kv=2, head_dim=16, partial_rotary_factor=0.5, max_position_embeddings=2048),
                  ref_phi3, 4, 2, 32, 16),
    "gptj": _case("gptj", "gptj", "GPTJConfig", "GPTJForCausalLM",
                  dict(TOKENS, n_positions=2048, n_embd=64, n_layer=2, n_head=4, rotary_dim=8), ref_gptj, 4, 4, 64, 16),
    "bert": _case("bert", "bert", "BertConfig", "BertForMaskedLM",
                  dict(TOKENS, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                       max_position_embeddings=32), ref_bert, 4, 4, 32, 8),
}


# ------------------------------------------------------------------ reference from the modules


def _layers(model):
    for path in ("model.layers", "transformer.h", "gpt_neox.layers", "bert.encoder.layer", "encoder.layer"):
        obj = model
        try:
            for part in path.split("."):
                obj = getattr(obj, part)
            return list(obj)
        except AttributeError:
            continue
    raise AssertionError("no layers")


def _query_module(layer):
    for path in ("self_attn.q_proj", "self_attn.qkv_proj", "attn.q_proj", "attention.query_key_value", "attention.self.query"):
        obj = layer
        try:
            for part in path.split("."):
                obj = getattr(obj, part)
            return obj
        except AttributeError:
            continue
    raise AssertionError("no query projection")


def feeding_norms(model) -> list[torch.nn.Module]:
    """Per layer, the norm module whose output is exactly the Q projection's input (forward hooks)."""
    seen_inputs, outputs, hooks = {}, [], []
    for index, layer in enumerate(_layers(model)):
        hooks.append(_query_module(layer).register_forward_pre_hook(
            lambda mod, args, index=index: seen_inputs.setdefault(index, args[0].detach().clone())))
    for module in model.modules():
        if "norm" in type(module).__name__.lower() and module is not model:
            hooks.append(module.register_forward_hook(lambda mod, args, out: outputs.append((mod, out.detach().clone()))))
    with torch.no_grad():
        model(input_ids=torch.tensor([[3, 5, 7, 11, 13]]))
    for hook in hooks:
        hook.remove()
    found = []
    for index in range(len(seen_inputs)):
        hits = [mod for mod, out in outputs if out.shape == seen_inputs[index].shape and torch.equal(out, seen_inputs[index])]
        assert hits, f"layer {index}: no norm output equals the Q projection input"
        found.append(hits[0])
    return found


def _no_eps(module):
    """Set a norm's epsilon to 0 (restored by the caller): the probe then sees its exact linear part."""
    saved = {}
    for name in ("eps", "variance_epsilon", "variance_eps"):
        if isinstance(getattr(module, name, None), float):
            saved[name] = getattr(module, name)
            setattr(module, name, 0.0)
    return saved


def norm_linear_part(norm, d: int) -> np.ndarray:
    """Y (d x d) with row i the norm's linear image of input direction i: D for RMSNorm, P D for LayerNorm."""
    with torch.no_grad():  # a LayerNorm maps a constant input to its bias (eps still set: no 0/0)
        bias = norm.bias.detach().double() if getattr(norm, "bias", None) is not None else 0.0
        constant = norm(torch.full((1, d), 3.0, dtype=torch.float64)) - bias
        centres = bool(torch.allclose(constant, torch.zeros_like(constant), atol=1e-6))
    saved = _no_eps(norm)
    try:
        with torch.no_grad():
            if centres:
                sigma = math.sqrt(1.0 / d - 1.0 / d**2)  # population std of e_i
                y = (norm(torch.eye(d, dtype=torch.float64)) - bias) * sigma
            else:
                y = norm(math.sqrt(d) * torch.eye(d, dtype=torch.float64)) / math.sqrt(d)
    finally:
        for name, value in saved.items():
            setattr(norm, name, value)
    return y.double().numpy()


def qk_norm_gains(layer, dh: int):
    """(g_q, g_k) of a layer's per-head q/k norms by calling them on ones (eps 0), or (1, 1)."""
    attn = layer.self_attn
    if getattr(attn, "q_norm", None) is None:
        return np.ones(dh), np.ones(dh)
    out = []
    for norm in (attn.q_norm, attn.k_norm):
        saved = _no_eps(norm)
        with torch.no_grad():
            out.append(norm(torch.ones(1, dh, dtype=torch.float64)).double().numpy()[0])
        for name, value in saved.items():
            setattr(norm, name, value)
    return tuple(out)


def attention_scale(layer) -> float:
    for path in ("self_attn.scaling", "attn.scaling", "attention.scaling", "attention.self.scaling"):
        obj = layer
        try:
            for part in path.split("."):
                obj = getattr(obj, part)
            return float(obj)
        except AttributeError:
            continue
    raise AssertionError("no scaling")


class Rope:
    """The model's own rotary functions, at module level (float32 cos/sin) and exact level (float64)."""

    def __init__(self, model, case_id: str, layer_type: str | None):
        self.kind = "gptj" if case_id == "gptj" else "half"
        self.mod = importlib.import_module(type(model).__module__)
        inner = model.transformer if case_id == "gptj" else getattr(model, "model", None) or model.gpt_neox
        self.rot = inner.rotary_emb
        self.layer_type = layer_type
        if self.kind == "gptj":
            dim = model.config.rotary_dim
            self.inv = (1.0 / (10000 ** (torch.arange(0, dim, 2, dtype=torch.int64) / dim))).double()
            self.a = 1.0
        else:
            suffix = f"{layer_type}_" if layer_type else ""
            self.inv = getattr(self.rot, f"{suffix}inv_freq").double()
            self.a = float(getattr(self.rot, f"{suffix}attention_scaling"))

    def module_cos_sin(self, pos: int, n: int, dh: int):
        x = torch.zeros(1, n, dh, dtype=torch.float64)
        ids = torch.full((1, n), pos, dtype=torch.long)
        return self.rot(x, ids, self.layer_type) if self.layer_type else self.rot(x, ids)

    def exact_cos_sin(self, pos: int, n: int):
        f = pos * self.inv
        if self.kind == "gptj":
            return f.sin().expand(1, n, -1), f.cos().expand(1, n, -1)  # (sin, cos), as GPT-J's module returns
        emb = torch.cat([f, f])
        return (emb.cos() * self.a).expand(1, n, -1), (emb.sin() * self.a).expand(1, n, -1)

    def apply(self, v: np.ndarray, cs) -> np.ndarray:
        """The model's apply_rotary_pos_emb on vectors v (n, dh), all at the position cs encodes."""
        t = torch.from_numpy(v)
        if self.kind == "gptj":
            sin, cos = cs
            r = sin.shape[-1] * 2
            x = t[None, :, None, :]  # [batch, seq, heads, dim]
            rotated = self.mod.apply_rotary_pos_emb(x[..., :r], sin.double(), cos.double())
            return torch.cat([rotated, x[..., r:]], dim=-1)[0, :, 0].numpy()
        cos, sin = (c.double() for c in cs)
        x = t[None, None]
        return self.mod.apply_rotary_pos_emb(x, x, cos, sin)[0][0, 0].numpy()


def layer_types(model) -> list[str | None]:
    types = getattr(model.config, "layer_types", None)
    if getattr(model.config, "model_type", "") == "gemma3_text":
        return list(types)
    return [None] * model.config.num_hidden_layers if hasattr(model.config, "num_hidden_layers") else [None] * 2


def references(model, case: ArchCase, exact: bool):
    """Per layer: dict(raw, folded: (H, dh); positional: {delta: (H, dh)}, raw_positional) from the modules."""
    model = model.double()
    blocks = case.reference(model)
    norms = feeding_norms(model)
    out = []
    for index, (layer, (wq, wk)) in enumerate(zip(_layers(model), blocks)):
        y = norm_linear_part(norms[index], case.d_model)
        gq, gk = qk_norm_gains(layer, case.d_head) if hasattr(layer, "self_attn") else (np.ones(case.d_head), np.ones(case.d_head))
        c = attention_scale(layer)
        group = case.n_heads // case.n_kv_heads
        rope = None if case.model_type == "bert" else Rope(model, case.id, layer_types(model)[index])
        rows = {"raw": [], "folded": [], "positional": {d: [] for d in OFFSETS}, "raw_positional": {d: [] for d in OFFSETS}}
        p = BIG_P if exact else 0
        deltas = OFFSETS if exact else SMALL
        cos_sin = {}
        if rope is not None:
            for pos in {p} | {p + delta for delta in deltas}:
                cos_sin[pos] = rope.exact_cos_sin(pos, case.d_model) if exact else rope.module_cos_sin(pos, case.d_model, case.d_head)
        for h in range(case.n_heads):
            qv = (y @ wq[h].T) * gq  # (d, dh): the query of each input direction
            kv = (y @ wk[h // group].T) * gk
            rows["raw"].append(_svd(wq[h].T @ wk[h // group], case.d_head))
            a2 = 1.0 if rope is None else rope.a**2
            rows["folded"].append(_svd(c * a2 * qv @ kv.T, case.d_head))
            if rope is None:
                continue
            for delta in deltas:
                for name, (qq, kk, scale) in (("positional", (qv, kv, c)), ("raw_positional", (wq[h].T, wk[h // group].T, 1.0))):
                    m = scale * rope.apply(qq, cos_sin[p + delta]) @ rope.apply(kk, cos_sin[p]).T
                    if name == "raw_positional":
                        m = m / a2  # raw rows leave the attention factor out
                    rows[name][delta].append(_svd(m, case.d_head))
        out.append(rows)
    return out


def _svd(m: np.ndarray, k: int) -> np.ndarray:
    return np.linalg.svd(m, compute_uv=False)[:k]


def _rel(ours, ref) -> float:
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    return float(np.max(np.abs(ours - ref) / np.abs(ref)))


# ------------------------------------------------------------------ building


def build(case: ArchCase, tmp_path, **kw):
    model = case.make()
    directory = save(model, tmp_path / case.id, case)
    result = pipeline.build_model(str(directory), "fam", tmp_path / "out", progress=False, offsets=OFFSETS, **kw)
    assert result.status == "built", result
    return model, pq.read_table(result.path, filters=[("circuit", "=", "qk")]).to_pandas()


def rows_of(table, variant: str, layer: int):
    sub = table[(table["variant"] == variant) & (table["layer"] == layer)].sort_values("head")
    return sub


ROTARY = ["llama", "llama-yarn", "qwen3", "gemma2", "gemma3", "gpt_neox", "phi3", "gptj"]


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
    assert not np.allclose(np.stack(table[table.variant == "raw"]["singular_values"]),
                           np.stack(table[table.variant == "folded"]["singular_values"]), rtol=1e-3)


def test_gemma3_local_and_global_layers_rotate_differently(tmp_path):
    """Gemma 3: the sliding layer uses the local base, the full layer the global one (the reference's own buffers)."""
    case = CASES["gemma3"]
    model = case.make()
    rot = model.model.rotary_emb
    assert not torch.equal(rot.sliding_attention_inv_freq, rot.full_attention_inv_freq)


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
    assert np.array_equal(np.stack(table2[table2.variant == "null"]["singular_values"]),
                          np.stack(table[table.variant == "null"]["singular_values"]))
    other = pipeline.build_model(str(tmp_path / case.id), "fam3", tmp_path / "out3", progress=False, offsets=(0,), null_seed=7)
    table3 = pq.read_table(other.path, filters=[("circuit", "=", "qk")]).to_pandas()
    assert not np.allclose(np.stack(table3[table3.variant == "null"]["singular_values"]),
                           np.stack(table[table.variant == "null"]["singular_values"]), rtol=1e-3)


def _unique_r(xt: np.ndarray) -> np.ndarray:
    """Upper R of x^T = Q R with a positive diagonal (the same R as a Cholesky factor)."""
    r = np.linalg.qr(xt, mode="r")
    return r * np.sign(np.diag(r))[:, None]


def _haar(seed: int, model_id: str, layer: int, head: int, n: int) -> np.ndarray:
    """The card's recipe, written out independently: PCG64 SeedSequence(seed, spawn_key=(sha256 key, layer, head))."""
    import hashlib

    key = int.from_bytes(hashlib.sha256(model_id.encode()).digest()[:8], "little")
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=(key, layer, head))))
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    return q * np.sign(np.diag(r))


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


def test_minilm_folded_differs_from_raw_and_matches_its_reference(tmp_path):
    """The real all-MiniLM-L6-v2 checkpoint (post-norm BERT): folded != raw, folded matches the module reference."""
    directory = catalog.packaged_model_dir("sentence-transformers/all-MiniLM-L6-v2")
    if directory is None:
        pytest.skip("the packaged MiniLM checkpoint is not installed")
    result = pipeline.build_model(str(directory), "MiniLM", tmp_path / "out", progress=False, variants=["raw", "folded"])
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


def test_checkpoint_without_norms_builds_raw_by_default_and_refuses_folded_when_asked(tmp_path):
    """Only Q/K in the checkpoint: the default builds raw rows (and says so); --variants folded is one line."""
    from safetensors.numpy import load_file, save_file

    case = CASES["llama"]
    directory = save(case.make(), tmp_path / "m", case)
    tensors = load_file(str(directory / "model.safetensors"))
    save_file({n: t for n, t in tensors.items() if "layernorm" not in n}, str(directory / "model.safetensors"),
              metadata={"format": "pt"})  # fmt: skip
    result = pipeline.build_model(str(directory), "fam", tmp_path / "out", progress=False)
    assert set(pq.read_table(result.path).column("variant").to_pylist()) == {"raw"}
    with pytest.raises(Exception, match="cannot build the folded/null variants: no tensor .*input_layernorm") as info:
        pipeline.build_model(str(directory), "fam", tmp_path / "out2", progress=False, variants=["folded"])
    assert "\n" not in str(info.value)

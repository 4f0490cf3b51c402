"""The architectures, references and helpers of the variant tests (shared by test_variants, test_null_seed and
test_variants_mla; moved here unchanged from test_variants.py).

Folded, positional (RoPE) and null variants (issue 12) against references formed from the in-memory model.
"""

from __future__ import annotations

import importlib
import math

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from tiny_models import TOKENS, ArchCase, _llama_style, ref_bert, ref_gpt_neox, ref_gptj, ref_llama_like, ref_phi3, save

from qk_spectra_ds.builder import pipeline

transformers = pytest.importorskip("transformers")

OFFSETS = (0, 1, 2, 4, 8, 1000)


SMALL = (0, 1, 2, 4, 8)  # module level: float32 cos/sin of the module are accurate to ~5e-8 here


BIG_P = 12345


RTOL = 1e-6


def _case(id, model_type, cfg_cls, model_cls, config, ref, H, H_kv, d, dh):
    return ArchCase(id, model_type, cfg_cls, model_cls, config, ref, H, H_kv, d, dh, seed=3)


CASES = {
    "llama": _case(
        "llama",
        "llama",
        "LlamaConfig",
        "LlamaForCausalLM",
        _llama_style(kv=2, max_position_embeddings=2048),
        ref_llama_like,
        4,
        2,
        32,
        8,
    ),
    "llama-yarn": _case(
        "llama-yarn",
        "llama",
        "LlamaConfig",
        "LlamaForCausalLM",
        _llama_style(
            kv=2,
            max_position_embeddings=8192,
            rope_scaling=dict(rope_type="yarn", factor=4.0, original_max_position_embeddings=2048),
        ),
        ref_llama_like,
        4,
        2,
        32,
        8,
    ),
    "qwen3": _case(
        "qwen3",
        "qwen3",
        "Qwen3Config",
        "Qwen3ForCausalLM",
        _llama_style(kv=2, head_dim=12, max_position_embeddings=2048),
        ref_llama_like,
        4,
        2,
        32,
        12,
    ),
    "gemma2": _case(
        "gemma2",
        "gemma2",
        "Gemma2Config",
        "Gemma2ForCausalLM",
        _llama_style(d=48, kv=2, head_dim=16, query_pre_attn_scalar=24, max_position_embeddings=2048),
        ref_llama_like,
        4,
        2,
        48,
        16,
    ),
    "gemma3": _case(
        "gemma3",
        "gemma3_text",
        "Gemma3TextConfig",
        "Gemma3ForCausalLM",
        _llama_style(
            kv=2,
            head_dim=16,
            query_pre_attn_scalar=20,
            max_position_embeddings=2048,
            layer_types=["sliding_attention", "full_attention"],
            sliding_window=16,
        ),
        ref_llama_like,
        4,
        2,
        32,
        16,
    ),
    "gpt_neox": _case(
        "gpt_neox",
        "gpt_neox",
        "GPTNeoXConfig",
        "GPTNeoXForCausalLM",
        dict(
            TOKENS,
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            max_position_embeddings=2048,
        ),
        ref_gpt_neox,
        4,
        4,
        64,
        16,
    ),
    "phi3": _case(
        "phi3",
        "phi3",
        "Phi3Config",
        "Phi3ForCausalLM",
        _llama_style(kv=2, head_dim=16, partial_rotary_factor=0.5, max_position_embeddings=2048),
        ref_phi3,
        4,
        2,
        32,
        16,
    ),
    "gptj": _case(
        "gptj",
        "gptj",
        "GPTJConfig",
        "GPTJForCausalLM",
        dict(TOKENS, n_positions=2048, n_embd=64, n_layer=2, n_head=4, rotary_dim=8),
        ref_gptj,
        4,
        4,
        64,
        16,
    ),
    "bert": _case(
        "bert",
        "bert",
        "BertConfig",
        "BertForMaskedLM",
        dict(
            TOKENS,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            max_position_embeddings=32,
        ),
        ref_bert,
        4,
        4,
        32,
        8,
    ),
}


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
    for path in (
        "self_attn.q_proj",
        "self_attn.qkv_proj",
        "attn.q_proj",
        "attention.query_key_value",
        "attention.self.query",
    ):
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
        hooks.append(
            _query_module(layer).register_forward_pre_hook(
                lambda mod, args, index=index: seen_inputs.setdefault(index, args[0].detach().clone())
            )
        )
    for module in model.modules():
        if "norm" in type(module).__name__.lower() and module is not model:
            hooks.append(
                module.register_forward_hook(lambda mod, args, out: outputs.append((mod, out.detach().clone())))
            )
    with torch.no_grad():
        model(input_ids=torch.tensor([[3, 5, 7, 11, 13]]))
    for hook in hooks:
        hook.remove()
    found = []
    for index in range(len(seen_inputs)):
        hits = [
            mod
            for mod, out in outputs
            if out.shape == seen_inputs[index].shape and torch.equal(out, seen_inputs[index])
        ]
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
        gq, gk = (
            qk_norm_gains(layer, case.d_head)
            if hasattr(layer, "self_attn")
            else (np.ones(case.d_head), np.ones(case.d_head))
        )
        c = attention_scale(layer)
        group = case.n_heads // case.n_kv_heads
        rope = None if case.model_type == "bert" else Rope(model, case.id, layer_types(model)[index])
        rows = {
            "raw": [],
            "folded": [],
            "positional": {d: [] for d in OFFSETS},
            "raw_positional": {d: [] for d in OFFSETS},
        }
        p = BIG_P if exact else 0
        deltas = OFFSETS if exact else SMALL
        cos_sin = {}
        if rope is not None:
            for pos in {p} | {p + delta for delta in deltas}:
                cos_sin[pos] = (
                    rope.exact_cos_sin(pos, case.d_model)
                    if exact
                    else rope.module_cos_sin(pos, case.d_model, case.d_head)
                )
        for h in range(case.n_heads):
            qv = (y @ wq[h].T) * gq  # (d, dh): the query of each input direction
            kv = (y @ wk[h // group].T) * gk
            rows["raw"].append(_svd(wq[h].T @ wk[h // group], case.d_head))
            a2 = 1.0 if rope is None else rope.a**2
            rows["folded"].append(_svd(c * a2 * qv @ kv.T, case.d_head))
            if rope is None:
                continue
            for delta in deltas:
                for name, (qq, kk, scale) in (
                    ("positional", (qv, kv, c)),
                    ("raw_positional", (wq[h].T, wk[h // group].T, 1.0)),
                ):
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


def build(case: ArchCase, tmp_path, **kw):
    model = case.make()
    directory = save(model, tmp_path / case.id, case)
    result = pipeline.build_model(str(directory), "fam", tmp_path / "out", progress=False, offsets=OFFSETS, **kw)
    assert result.status == "built", result
    return model, pq.read_table(result.path, filters=[("circuit", "=", "qk")]).to_pandas()


def rows_of(table, variant: str, layer: int):
    sub = table[(table["variant"] == variant) & (table["layer"] == layer)].sort_values("head")
    return sub


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

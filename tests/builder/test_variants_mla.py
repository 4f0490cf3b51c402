"""Folded, positional (RoPE) and null variants of DeepSeek V2/V3 latent attention (MLA), issue 12.

The reference never uses the builder: from the in-memory float64 model, forward hooks show which
module feeds which map (input_layernorm -> q_a_proj / q_proj and kv_a_proj_with_mqa,
q_a_layernorm -> q_b_proj, kv_a_layernorm -> kv_b_proj); the norms' linear parts are probed by
calling them with eps 0; queries and keys of every input direction are formed by calling the
attention module's own Linear maps with those gains in between (the shared rope key rows taken
straight from kv_a_proj_with_mqa, no kv_a_layernorm); c is the module's own ``scaling`` (yarn's
mscale^2 included); positions are applied with the model's rotary module and its
``apply_rotary_pos_emb`` / ``apply_rotary_pos_emb_interleave`` (V3) or ``apply_rotary_emb`` (V2),
at p = 0 (module level, float32 cos/sin) and, with float64 cos/sin from the module's
``inv_freq`` and ``attention_scaling`` laid out as its forward does, at p = 12345 (exact level).
Then a dense float64 SVD of each d_model x d_model logit matrix.
"""

from __future__ import annotations

import importlib
import math

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from tiny_models import _MLA, randomize
from variant_cases import _haar, _unique_r

from qk_spectra_ds import schema
from qk_spectra_ds.builder import pipeline

transformers = pytest.importorskip("transformers")

OFFSETS = (0, 1, 2, 4, 8, 1000)
SMALL = (0, 1, 2, 4, 8)  # module level: float32 cos/sin (V2 also rotates in float32), measured <= 2.3e-7
BIG_P = 12345
RTOL = 1e-6  # the stored float32 values are within 6e-8 of the float64 ones

_BASE = dict(
    _MLA, num_hidden_layers=2, first_k_dense_replace=2, max_position_embeddings=2048
)  # dense MLPs: float64 runs
_YARN = dict(rope_type="yarn", factor=4.0, original_max_position_embeddings=512, mscale=1.0, mscale_all_dim=0.8)
CASES = {
    "v3-qlora": ("DeepseekV3Config", "DeepseekV3ForCausalLM", dict(_BASE, q_lora_rank=32)),
    "v3-noqlora-yarn": ("DeepseekV3Config", "DeepseekV3ForCausalLM", dict(_BASE, q_lora_rank=None, rope_scaling=_YARN)),
    "v3-qlora-half": ("DeepseekV3Config", "DeepseekV3ForCausalLM", dict(_BASE, q_lora_rank=32, rope_interleave=False)),
    "v2-qlora-yarn": ("DeepseekV2Config", "DeepseekV2ForCausalLM", dict(_BASE, q_lora_rank=32, rope_scaling=_YARN)),
}


def make(case_id: str, seed: int = 5):
    """A random tiny MLA model whose input, q_a and kv_a norm weights are N(1, 0.5^2)."""
    config_cls, model_cls, kwargs = CASES[case_id]
    config = getattr(transformers, config_cls)(**kwargs)
    torch.manual_seed(seed)
    model = randomize(getattr(transformers, model_cls)(config), seed)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for layer in model.model.layers:
            for norm in (layer.input_layernorm, layer.self_attn.q_a_layernorm, layer.self_attn.kv_a_layernorm):
                if norm is not None:
                    norm.weight.copy_(1.0 + 0.5 * torch.randn(norm.weight.shape, generator=generator))
    return model


def build(case_id: str, tmp_path, **kw):
    model = make(case_id)
    directory = tmp_path / case_id
    model.save_pretrained(str(directory))
    result = pipeline.build_model(
        str(directory), "fam", tmp_path / f"out-{case_id}", progress=False, offsets=OFFSETS, **kw
    )
    assert result.status == "built", result
    return model, directory, pq.read_table(result.path, filters=[("circuit", "=", "qk")]).to_pandas()


# ------------------------------------------------------------------ reference from the modules


def _feeds(model) -> dict:
    """Per layer, which norm module's output is exactly each map's input (forward hooks on one forward pass)."""
    inputs, outputs, hooks = {}, [], []
    for index, layer in enumerate(model.model.layers):
        attn = layer.self_attn
        for name in ("q_proj", "q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj"):
            if getattr(attn, name, None) is not None:
                hooks.append(
                    getattr(attn, name).register_forward_pre_hook(
                        lambda mod, args, key=(index, name): inputs.setdefault(key, args[0].detach().clone())
                    )
                )
    for module in model.modules():
        if "norm" in type(module).__name__.lower():
            hooks.append(
                module.register_forward_hook(lambda mod, args, out: outputs.append((mod, out.detach().clone())))
            )
    with torch.no_grad():
        model(input_ids=torch.tensor([[3, 5, 7, 11, 13]]))
    for hook in hooks:
        hook.remove()
    found = {}
    for key, seen in inputs.items():
        hits = [
            mod for mod, out in outputs if out.numel() == seen.numel() and torch.equal(out.flatten(), seen.flatten())
        ]
        found[key] = hits[0] if hits else None
    return found


def _gain(norm, width: int) -> np.ndarray:
    """An RMSNorm's linear part (a diagonal): called with eps 0 on sqrt(n) e_i, it returns gain_i e_i."""
    saved = norm.variance_epsilon
    norm.variance_epsilon = 0.0
    try:
        with torch.no_grad():
            y = norm(math.sqrt(width) * torch.eye(width, dtype=torch.float64)) / math.sqrt(width)
    finally:
        norm.variance_epsilon = saved
    y = y.numpy()
    assert np.allclose(y, np.diag(np.diag(y)), atol=1e-15)
    return np.diag(y).copy()


def query_key_vectors(attn, d: int, folded: bool, feeds: dict, index: int):
    """(q, k), each (d, H, d_head): the query and key of every input direction e_i, through the module's maps."""
    cfg = attn.config
    h, dn, dr, rkv = cfg.num_attention_heads, cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.kv_lora_rank
    q_lora = cfg.q_lora_rank is not None
    first = attn.q_a_proj if q_lora else attn.q_proj
    x = torch.eye(d, dtype=torch.float64)
    if folded:
        norm = feeds[(index, "kv_a_proj_with_mqa")]
        assert norm is not None and feeds[(index, "q_a_proj" if q_lora else "q_proj")] is norm
        x = x * torch.from_numpy(_gain(norm, d))
    with torch.no_grad():
        if q_lora:
            latent = first(x)
            if folded:
                assert feeds[(index, "q_b_proj")] is attn.q_a_layernorm
                latent = latent * torch.from_numpy(_gain(attn.q_a_layernorm, cfg.q_lora_rank))
            q = attn.q_b_proj(latent)
        else:
            q = first(x)
        compressed = attn.kv_a_proj_with_mqa(x)
        kv_latent, k_rope = compressed[:, :rkv], compressed[:, rkv:]
        if folded:
            assert feeds[(index, "kv_b_proj")] is attn.kv_a_layernorm
            kv_latent = kv_latent * torch.from_numpy(_gain(attn.kv_a_layernorm, rkv))
        k_nope = attn.kv_b_proj(kv_latent).view(d, h, -1)[..., :dn]
    k = torch.cat([k_nope, k_rope[:, None, :].expand(d, h, dr)], dim=-1)
    return q.view(d, h, dn + dr).numpy(), k.numpy()


class Rope:
    """The model's own rotary module and apply function, on the last qk_rope_head_dim dims of a head."""

    def __init__(self, model):
        self.cfg = model.config
        self.v2 = self.cfg.model_type == "deepseek_v2"
        self.mod = importlib.import_module(type(model).__module__)
        self.rot = model.model.rotary_emb
        self.inv = self.rot.inv_freq.double()
        self.a = float(self.rot.attention_scaling)
        self.dn = self.cfg.qk_nope_head_dim

    def cos_sin(self, pos: int, n: int, exact: bool, factor: bool = True):
        """The module's cos/sin (V2: complex freqs_cis) at ``pos``; without its attention factor a if not ``factor``."""
        if not exact:  # the module's forward
            out = self.rot(torch.zeros(1, n, self.cfg.qk_rope_head_dim, dtype=torch.float64), torch.full((1, n), pos))
            return out if factor else (out / self.a if self.v2 else tuple(t / self.a for t in out))
        a = self.a if factor else 1.0
        f = pos * self.inv
        if self.v2:  # torch.polar(1, freqs) * attention_scaling, in complex128
            return (torch.polar(torch.ones_like(f), f) * a).expand(1, n, -1)
        emb = torch.cat([f, f])
        return (emb.cos() * a).expand(1, n, -1), (emb.sin() * a).expand(1, n, -1)

    def apply(self, v: np.ndarray, cs, exact: bool) -> np.ndarray:
        """v (n, d_head): the nope dims as they are, the rope dims through the model's apply function."""
        nope, rope = torch.from_numpy(v[:, : self.dn]), torch.from_numpy(v[:, self.dn :])[None, None]
        if self.v2:
            if exact:  # apply_rotary_emb's layout (adjacent pairs as complex numbers), without its float32 cast
                z = torch.view_as_complex(rope.reshape(*rope.shape[:-1], -1, 2).contiguous()) * cs.unsqueeze(1)
                out = torch.view_as_real(z).flatten(3)
            else:
                out = self.mod.apply_rotary_emb(rope, rope, cs)[0]
        else:
            fn = self.mod.apply_rotary_pos_emb_interleave if self.cfg.rope_interleave else self.mod.apply_rotary_pos_emb
            cos, sin = (c.double() for c in cs)
            out = fn(rope, rope, cos, sin)[0]
        return torch.cat([nope, out[0, 0].double()], dim=-1).numpy()


def references(model, exact: bool):
    """Per layer: raw, folded (H, d_head); positional and raw_positional {delta: (H, d_head)}; c; folded q/k per head.

    The folded vectors are those of position 0 (the rotary module's a on the rope dims, nothing else).
    """
    model = model.double()
    d = model.config.hidden_size
    feeds = _feeds(model)
    rope = Rope(model)
    p, deltas = (BIG_P, OFFSETS) if exact else (0, SMALL)
    positions = {p} | {p + delta for delta in deltas}
    cs = {pos: rope.cos_sin(pos, d, exact) for pos in positions}
    cs_raw = {pos: rope.cos_sin(pos, d, exact, factor=False) for pos in positions}  # raw rows leave a out
    zero = rope.cos_sin(0, d, exact=True)  # delta = 0 as the module computes it: a on the rope dims only
    out = []
    for index, layer in enumerate(model.model.layers):
        attn = layer.self_attn
        c = float(attn.scaling)
        qr, kr = query_key_vectors(attn, d, False, feeds, index)
        qf, kf = query_key_vectors(attn, d, True, feeds, index)
        rows = {
            "raw": [],
            "folded": [],
            "positional": {t: [] for t in deltas},
            "raw_positional": {t: [] for t in deltas},
            "scale": c,
            "qf": [],
            "kf": [],
        }
        for h in range(qr.shape[1]):
            qa, ka = rope.apply(qf[:, h], zero, True), rope.apply(kf[:, h], zero, True)  # position 0 (V3 reorders dims)
            rope_dims = np.r_[np.ones(rope.dn), np.full(qf.shape[-1] - rope.dn, rope.a)]  # a, as the folded check shows
            rows["qf"].append(
                qf[:, h] * rope_dims
            )  # the folded factors in the head's own dim order (null's O acts there)
            rows["kf"].append(kf[:, h] * rope_dims)
            rows["raw"].append(_svd(qr[:, h] @ kr[:, h].T))
            rows["folded"].append(_svd(c * qa @ ka.T))
            for delta in deltas:
                for name, (qq, kk, scale, table) in (
                    ("positional", (qf, kf, c, cs)),
                    ("raw_positional", (qr, kr, 1.0, cs_raw)),
                ):
                    m = scale * rope.apply(qq[:, h], table[p + delta], exact) @ rope.apply(kk[:, h], table[p], exact).T
                    rows[name][delta].append(_svd(m))
        out.append(rows)
    return out


def _svd(m: np.ndarray, k: int = 24) -> np.ndarray:
    return np.linalg.svd(m, compute_uv=False)[:k]


def _rel(ours, ref) -> float:
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    return float(np.max(np.abs(ours - ref) / np.abs(ref)))


def _rows(table, variant: str, layer: int):
    return table[(table["variant"] == variant) & (table["layer"] == layer)].sort_values("head")


def _stack(column) -> np.ndarray:
    return np.stack([np.stack(list(v)) for v in column])


# ------------------------------------------------------------------ tests


@pytest.mark.slow
@pytest.mark.parametrize("case_id", list(CASES))
def test_mla_folded_and_positional_match_the_modules(case_id, tmp_path):
    """Folded and positional (raw and folded) MLA spectra vs the modules: module level at p = 0, exact at p = 12345."""
    model, _, table = build(case_id, tmp_path)
    assert set(table["variant"]) == {"raw", "folded", "null"}  # no fallback to raw any more
    module_ref, exact_ref = references(model, exact=False), references(model, exact=True)
    for layer, (ref, exact) in enumerate(zip(module_ref, exact_ref)):
        raw, folded = _rows(table, "raw", layer), _rows(table, "folded", layer)
        assert _rel(np.stack(raw["singular_values"]), np.stack(ref["raw"])) <= RTOL
        assert _rel(np.stack(folded["singular_values"]), np.stack(ref["folded"])) <= RTOL
        assert list(folded["offsets"].iloc[0]) == list(OFFSETS) and list(raw["offsets"].iloc[0]) == list(OFFSETS)
        pos_f, pos_r = _stack(folded["positional_singular_values"]), _stack(raw["positional_singular_values"])
        assert np.array_equal(pos_f[:, 0], np.stack(folded["singular_values"]))
        for i, delta in enumerate(OFFSETS):
            if delta in SMALL:
                assert _rel(pos_f[:, i], np.stack(ref["positional"][delta])) <= RTOL, delta
                assert _rel(pos_r[:, i], np.stack(ref["raw_positional"][delta])) <= RTOL, delta
            assert _rel(pos_f[:, i], np.stack(exact["positional"][delta])) <= RTOL, delta
            assert _rel(pos_r[:, i], np.stack(exact["raw_positional"][delta])) <= RTOL, delta
        assert not np.allclose(pos_f[:, -1], pos_f[:, 0], rtol=1e-3)  # the positions matter
        assert not np.allclose(np.stack(folded["singular_values"]), np.stack(raw["singular_values"]), rtol=1e-2)


@pytest.mark.slow
@pytest.mark.parametrize("case_id", ["v3-qlora", "v2-qlora-yarn"])
def test_mla_null_pairs_the_folded_factors_through_the_recorded_rotation(case_id, tmp_path):
    """Null: |c| s(R_q O R_k^T), R_q, R_k the folded factors (same Frobenius norms), O Haar from the card's seed."""
    model, _, table = build(case_id, tmp_path)
    model_id = table["model_id"].iloc[0]
    for layer, ref in enumerate(references(model, exact=True)):
        null, folded = (
            np.stack(_rows(table, "null", layer)["singular_values"]),
            np.stack(_rows(table, "folded", layer)["singular_values"]),
        )
        for h in range(null.shape[0]):
            ra, rb = _unique_r(ref["qf"][h]), _unique_r(ref["kf"][h])
            assert np.isclose(np.linalg.norm(ra), np.linalg.norm(ref["qf"][h]))  # the factor keeps the block's norm
            assert _rel(folded[h], abs(ref["scale"]) * _svd(ra @ rb.T)) <= RTOL
            o = _haar(schema.NULL_SEED, model_id, layer, h, ra.shape[0])
            assert _rel(null[h], abs(ref["scale"]) * _svd(ra @ o @ rb.T)) <= RTOL
            assert not np.allclose(null[h], folded[h], rtol=1e-3)


@pytest.mark.slow
def test_mla_latent_norms_are_in_the_local_revision_and_required_for_folded(tmp_path):
    """A changed kv_a_layernorm changes the revision and the folded rows; without it: raw by default, one line if asked."""
    from safetensors.torch import load_file, save_file

    model, directory, table = build("v3-qlora", tmp_path, variants=["raw", "folded"])
    raw_only = pipeline.build_model(str(directory), "fam", tmp_path / "raw-before", progress=False, variants=["raw"])
    path = directory / "model.safetensors"
    tensors = load_file(str(path))
    name = next(n for n in tensors if n.endswith("layers.1.self_attn.kv_a_layernorm.weight"))
    tensors[name] = tensors[name] * 1.5
    save_file(tensors, str(path), metadata={"format": "pt"})
    again = pipeline.build_model(
        str(directory), "fam", tmp_path / "out-v3-qlora", progress=False, offsets=(0,), variants=["raw", "folded"]
    )
    changed = pq.read_table(again.path, filters=[("circuit", "=", "qk")]).to_pandas()
    assert again.status == "built" and changed["model_revision"].iloc[0] != table["model_revision"].iloc[0]
    raw_after = pipeline.build_model(str(directory), "fam", tmp_path / "raw-after", progress=False, variants=["raw"])
    assert raw_after.revision == raw_only.revision  # the raw rows never read the norm: only the folding's read did
    assert np.array_equal(
        np.stack(_rows(changed, "raw", 1)["singular_values"]), np.stack(_rows(table, "raw", 1)["singular_values"])
    )
    assert not np.allclose(
        np.stack(_rows(changed, "folded", 1)["singular_values"]),
        np.stack(_rows(table, "folded", 1)["singular_values"]),
        rtol=1e-3,
    )
    save_file({n: t for n, t in tensors.items() if "kv_a_layernorm" not in n}, str(path), metadata={"format": "pt"})
    result = pipeline.build_model(str(directory), "fam2", tmp_path / "out2", progress=False, offsets=(0,))
    assert set(pq.read_table(result.path).column("variant").to_pylist()) == {"raw"}
    with pytest.raises(Exception, match="cannot build the folded/null variants: no tensor .*kv_a_layernorm") as info:
        pipeline.build_model(str(directory), "fam3", tmp_path / "out3", progress=False, variants=["folded"])
    assert "\n" not in str(info.value)


@pytest.mark.slow
def test_attention_factor_scales_only_the_rotating_dims_of_partial_rotary(tmp_path):
    """Phi-3 partial rotary (0.5) with LongRoPE (a = 1.105): a multiplies the rotated dims only, not the pass dims.

    The same fact as MLA's nope dims: cos and sin carry a, the pass-through dims do not, so c a^2
    over the whole head would be wrong. Reference: the model's own rotary module and
    ``apply_rotary_pos_emb`` (tests/builder/test_variants.py's, which includes the pass dims as the model does).
    """
    import variant_cases as tv

    rope_scaling = dict(
        rope_type="longrope",
        short_factor=[1.0, 1.3, 1.7, 2.5],
        long_factor=[1.0, 2.0, 3.0, 5.0],
        original_max_position_embeddings=512,
    )
    case = tv._case(
        "phi3-longrope",
        "phi3",
        "Phi3Config",
        "Phi3ForCausalLM",
        tv._llama_style(
            d=64,
            kv=2,
            partial_rotary_factor=0.5,
            max_position_embeddings=2048,
            original_max_position_embeddings=512,
            rope_scaling=rope_scaling,
        ),
        tv.ref_phi3,
        4,
        2,
        64,
        16,
    )
    model, table = tv.build(case, tmp_path, variants=["raw", "folded"])
    assert abs(float(model.model.rotary_emb.attention_scaling) - 1.0) > 0.05
    module_ref, exact_ref = tv.references(model, case, exact=False), tv.references(model, case, exact=True)
    for layer in range(2):
        folded = _rows(table, "folded", layer)
        pos_f = _stack(folded["positional_singular_values"])
        assert np.array_equal(pos_f[:, 0], np.stack(folded["singular_values"]))  # offset 0 is the folded row
        for i, delta in enumerate(OFFSETS):
            if delta in tv.SMALL:
                assert _rel(pos_f[:, i], np.stack(module_ref[layer]["positional"][delta])) <= RTOL, delta
            assert _rel(pos_f[:, i], np.stack(exact_ref[layer]["positional"][delta])) <= RTOL, delta


@pytest.mark.parametrize("model_type", ["deepseek_v2", "deepseek_v3"])
@pytest.mark.parametrize(
    "rope",
    [
        None,
        dict(
            type="yarn",
            factor=40,
            mscale=1.0,
            mscale_all_dim=1.0,
            original_max_position_embeddings=4096,
            beta_fast=32,
            beta_slow=1,
        ),
        dict(type="yarn", factor=40, mscale=0.707, mscale_all_dim=0.707, original_max_position_embeddings=4096),
        dict(rope_type="yarn", factor=4.0, mscale=1.0, original_max_position_embeddings=4096),
    ],
)
def test_mla_scale_and_rotary_from_config_json_match_the_modules(model_type, rope):
    """The published DeepSeek rope configs (legacy ``type`` key): c = the attention module's scaling, and the
    rotary frequencies and attention factor = the rotary module's, from config.json alone."""
    from qk_spectra_ds.builder import architectures, folding, rotary

    name = "DeepseekV3" if model_type == "deepseek_v3" else "DeepseekV2"
    kwargs = dict(_BASE, q_lora_rank=32, max_position_embeddings=163840)
    if rope is not None:
        kwargs["rope_scaling"] = dict(rope)
    config = getattr(transformers, f"{name}Config")(**kwargs)
    modeling = importlib.import_module(f"transformers.models.{model_type}.modeling_{model_type}")
    attn = getattr(modeling, f"{name}Attention")(config, 0)
    rot = getattr(modeling, f"{name}RotaryEmbedding")(config)
    as_json = config.to_dict()
    assert folding.folding_facts(as_json, 0).scale == pytest.approx(attn.scaling, rel=1e-15)
    [facts, *_] = architectures.model_type_for(as_json).layer_facts(as_json)
    ours = rotary.rotary_from_spec(facts.rope, as_json)
    assert np.array_equal(ours.inv_freq, rot.inv_freq.double().numpy())
    assert ours.attention_factor == pytest.approx(float(rot.attention_scaling), rel=1e-15)
    assert ours.start == config.qk_nope_head_dim and ours.interleaved

"""The OV circuit of every supported family, checked against the model's own attention modules.

For each tiny model (tests/tiny_models.py, the builder's family set) the dense d_model x d_model
map W_O^h W_V^g is measured from the model itself: with a sequence of one token every head puts
attention weight 1 on it, so feeding the probes x = e_i into a layer's attention module (a
forward pre-hook replaces its hidden states) and keeping only head h at the output projection
(a pre-hook zeroes the other heads' slices) gives column i of head h's OV map; biases are zeroed.
Against it: the reader's blocks reproduce the map, and the builder's stored OV singular values,
symmetry and copying score equal the dense float64 SVD and definitions.
"""

from __future__ import annotations

import re

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from tiny_models import CASES, CASES_2026, save

pytest.importorskip("transformers")

_ATTN = re.compile(r"(?:^|\.)(?:layers|h|layer)\.(\d+)\.(self_attn|attn|self_attention|attention)$")
_OUT_NAMES = ("o_proj", "out_proj", "dense", "c_proj", "Wo")


class _Stop(Exception):
    pass


def _sites(model) -> dict[int, tuple[torch.nn.Module, torch.nn.Module, bool]]:
    """layer -> (module fed the hidden states, output projection, output applied by hand (BERT))."""
    sites = {}
    for name, module in model.named_modules():
        match = _ATTN.search(name)
        if not match or "vision" in name or "visual" in name:
            continue
        layer = int(match.group(1))
        if hasattr(module, "self") and hasattr(module, "output"):  # BertAttention: self-attention, then output.dense
            sites[layer] = (module.self, module.output.dense, True)
            continue
        out = next(
            (getattr(module, n) for n in _OUT_NAMES if isinstance(getattr(module, n, None), torch.nn.Module)), None
        )
        if out is not None:
            sites[layer] = (module, out, False)
    return sites


def _prepare(model) -> float:
    """float64, biases zeroed, attention sinks off (weight 1 on the one token), MLA's kv latent norm the identity.

    Returns the factor the model's output carries beside the OV map: Qwen3-Next's output gate sigmoid(g) is
    token-dependent, outside the map; its gate rows are zeroed here, so it multiplies by sigmoid(0) = 1/2.
    """
    factor = 1.0
    model.to(torch.float64).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias"):
                param.zero_()
            if name.endswith("sinks"):
                param.fill_(-1e30)
    for module in model.modules():
        if type(module).__name__.endswith(
            "Experts"
        ):  # grouped GEMMs take no float64; no layer before the probe matters
            module.forward = lambda hidden_states, *args, **kwargs: torch.zeros_like(hidden_states)
        if hasattr(module, "kv_a_layernorm"):
            module.kv_a_layernorm.forward = lambda x: x  # raw OV: the latent's RMS norm is outside the linear map
        if type(module).__name__ == "Qwen3NextAttention":
            dh = module.head_dim
            with torch.no_grad():
                module.q_proj.weight.view(-1, 2 * dh, module.q_proj.weight.shape[1])[:, dh:] = 0
            factor = 0.5
    return factor


def dense_ov(model, layer: int, head: int, d_v: int, d_model: int, vocab: int) -> np.ndarray:
    """(d_model, d_model) W_O^h W_V^g measured from the model's modules (see the module docstring)."""
    attn, out, by_hand = _sites(model)[layer]
    probes = torch.eye(d_model, dtype=torch.float64)[:, None, :]
    captured = {}

    def feed(module, args, kwargs):
        if args:
            return (probes,) + tuple(args[1:]), kwargs
        return args, {**kwargs, "hidden_states": probes}

    def keep_head(z: torch.Tensor) -> torch.Tensor:
        mask = torch.zeros(z.shape[-1], dtype=z.dtype)
        mask[head * d_v : (head + 1) * d_v] = 1
        return z * mask

    def isolate(module, args):
        return (keep_head(args[0]),) + tuple(args[1:])

    def grab(module, args, output):
        captured["y"] = output[0] if isinstance(output, tuple) else output
        raise _Stop

    hooks = [attn.register_forward_pre_hook(feed, with_kwargs=True)]
    if by_hand:
        hooks.append(attn.register_forward_hook(grab))
    else:
        hooks += [out.register_forward_pre_hook(isolate), out.register_forward_hook(grab)]
    try:
        with torch.no_grad():
            model(input_ids=torch.full((d_model, 1), 3 % vocab, dtype=torch.long))
    except _Stop:
        pass
    finally:
        for hook in hooks:
            hook.remove()
    y = captured["y"]
    if by_hand:
        with torch.no_grad():
            y = out(keep_head(y))
    return y.reshape(d_model, d_model).T.numpy()  # column i: the head's output for the probe e_i


def _dims(case) -> tuple[int, int]:
    cfg = case.config.get("text_config", case.config)
    return int(cfg.get("v_head_dim", case.d_head)), int(cfg.get("vocab_size", 64))


OV_CASES = [c for c in CASES + CASES_2026]


@pytest.mark.slow
@pytest.mark.parametrize("case", OV_CASES, ids=[c.id for c in OV_CASES])
def test_ov_spectra_equal_the_model_modules(case, tmp_path):
    from qk_spectra_ds.builder.architectures import model_type_for
    from qk_spectra_ds.builder.circuits import copying_score
    from qk_spectra_ds.builder.ov import read_ov
    from qk_spectra_ds.builder.pipeline import build_model
    from qk_spectra_ds.builder.safetensors_io import Checkpoint
    from qk_spectra_ds.builder.weights import open_source

    model = case.make()
    directory = save(model, tmp_path / "m", case)
    result = build_model(str(directory), "T", tmp_path / "out", variants=["raw"], circuits=["ov"], progress=False)
    rows = pq.read_table(result.path).to_pandas()
    assert set(rows["circuit"]) == {"ov"}
    factor = _prepare(model)
    d_v, vocab = _dims(case)
    source = open_source(str(directory))
    config = source.read_json("config.json")
    arch = model_type_for(config)
    shape, layout = arch.shape(config), arch.layout(config)
    checkpoint = Checkpoint(source)
    sites = _sites(model)
    layers = sorted(set(rows["layer"]))
    assert layers == sorted(sites), (layers, sorted(sites))
    for layer in layers:
        ov = read_ov(layout, checkpoint, layer, shape, d_v)
        for head in range(case.n_heads):
            dense = dense_ov(model, layer, head, d_v, case.d_model, vocab) / factor
            g = head // (case.n_heads // (ov.v.shape[0]))
            mine = ov.o[head].T.astype(np.float64) @ ov.v[g].astype(np.float64)
            scale = np.abs(dense).max()
            assert np.abs(mine - dense).max() <= 1e-9 * scale, (layer, head)  # the map reproduces the module's output
            row = rows[(rows["layer"] == layer) & (rows["head"] == head)].iloc[0]
            expected = np.linalg.svd(dense, compute_uv=False)[:d_v]
            np.testing.assert_allclose(row["singular_values"], expected, rtol=1e-6, atol=1e-6 * expected[0])
            sym = np.square((dense + dense.T) / 2).sum() / np.square(dense).sum()
            assert abs(row["symmetry"] - sym) <= 1e-6
            copy = copying_score(np.linalg.eigvals(dense)[None])[0]
            assert abs(row["copying_score"] - copy) <= 1e-6
            assert row["positivity"] == row["copying_score"]


def _decoder_layers(model):
    base = getattr(model, "model", None) or getattr(model, "transformer", None) or model
    return base.layers if hasattr(base, "layers") else base.h


FOLDED_NORMS = {  # case -> layer -> (the norm feeding the attention or None, the norm on its output or None)
    "llama-gqa": lambda m, i: (_decoder_layers(m)[i].input_layernorm, None),
    "gemma2-headdim": lambda m, i: (
        _decoder_layers(m)[i].input_layernorm,
        _decoder_layers(m)[i].post_attention_layernorm,
    ),
    "olmo2-gqa": lambda m, i: (None, _decoder_layers(m)[i].post_attention_layernorm),
    "gpt2-conv1d": lambda m, i: (_decoder_layers(m)[i].ln_1, None),
    "bert-prefixed": lambda m, i: (
        m.bert.embeddings.LayerNorm if i == 0 else m.bert.encoder.layer[i - 1].output.LayerNorm,
        None,
    ),
    "deepseek_v2-qlora": lambda m, i: (_decoder_layers(m)[i].input_layernorm, None),
}


def norm_matrix(norm, d_model: int) -> np.ndarray:
    """The norm's linear part measured on t e_i (same RMS/std for every i, t >> eps): D (RMSNorm) or D P (LayerNorm)."""
    t = 1e4
    with torch.no_grad():
        out = norm(t * torch.eye(d_model, dtype=torch.float64)).numpy().T  # column i: norm(t e_i)
    centred = isinstance(norm, torch.nn.LayerNorm)
    per_token = np.sqrt(t * t * (1 / d_model - 1 / d_model**2)) if centred else np.sqrt(t * t / d_model)
    return out * per_token / t  # the per-token 1/RMS (1/std) is outside the folded map


@pytest.mark.slow
@pytest.mark.parametrize("case_id", sorted(FOLDED_NORMS))
def test_folded_ov_spectra_equal_the_model_modules(case_id, tmp_path):
    """Folded OV = G_post W_O W_V D P, each factor measured from the model's own norm and attention modules."""
    from qk_spectra_ds.builder.pipeline import build_model

    case = {c.id: c for c in OV_CASES}[case_id]
    model = case.make()
    directory = save(model, tmp_path / "m", case)
    result = build_model(str(directory), "T", tmp_path / "out", variants=["folded"], circuits=["ov"], progress=False)
    rows = pq.read_table(result.path).to_pandas()
    factor = _prepare(model)
    for module in model.modules():  # MLA folded: the kv latent norm's gain stays, its per-token RMS is outside
        if hasattr(module, "kv_a_layernorm"):
            norm = module.kv_a_layernorm
            module.kv_a_layernorm.forward = lambda x, norm=norm: x * norm.weight
    d_v, vocab = _dims(case)
    for layer in sorted(set(rows["layer"])):
        before, after = FOLDED_NORMS[case_id](model, layer)
        for head in range(case.n_heads):
            dense = dense_ov(model, layer, head, d_v, case.d_model, vocab) / factor
            if before is not None:
                dense = dense @ norm_matrix(before, case.d_model)
            if after is not None:
                dense = norm_matrix(after, case.d_model) @ dense
            row = rows[(rows["layer"] == layer) & (rows["head"] == head)].iloc[0]
            expected = np.linalg.svd(dense, compute_uv=False)[:d_v]
            np.testing.assert_allclose(row["singular_values"], expected, rtol=1e-6, atol=1e-6 * expected[0])
            sym = np.square((dense + dense.T) / 2).sum() / np.square(dense).sum()
            assert abs(row["symmetry"] - sym) <= 1e-6


@pytest.mark.slow
def test_circuits_qk_rows_do_not_depend_on_the_ov_circuit(tmp_path):
    """--circuits qk writes exactly the qk rows a qk,ov build writes (same numbers, same columns); ov rows follow."""
    from qk_spectra_ds import schema
    from qk_spectra_ds.builder.pipeline import build_model

    case = {c.id: c for c in OV_CASES}["llama-gqa"]
    directory = save(case.make(), tmp_path / "m", case)
    alone = build_model(str(directory), "A", tmp_path / "a", offsets=(0, 3), circuits=["qk"], progress=False)
    both = build_model(str(directory), "B", tmp_path / "b", offsets=(0, 3), progress=False)
    assert (alone.n_rows, both.n_rows, both.circuits) == (24, 48, ("qk", "ov"))
    qk_alone = pq.read_table(alone.path)
    table = pq.read_table(both.path)
    assert table.column_names == list(schema.COLUMNS) and set(table["schema_version"].to_pylist()) == {4}
    assert table["circuit"].to_pylist() == ["qk"] * 24 + ["ov"] * 24
    differ = [c for c in table.column_names if table.slice(0, 24)[c].to_pylist() != qk_alone[c].to_pylist()]
    assert differ == ["model_revision", "family"]  # a local folder's revision digests the bytes read: V and O too

    from qk_spectra_ds import load_spectra
    from qk_spectra_ds.analysis.loading import LoadError
    from qk_spectra_ds.errors import BuildError

    ov = load_spectra(tmp_path / "b", "B", variant="raw", circuit="ov")
    assert len(ov) == 8 and set(ov["circuit"]) == {"ov"}
    assert set(load_spectra(tmp_path / "b", "B", variant="raw")["circuit"]) == {"qk"}  # the default: qk rows
    with pytest.raises(LoadError, match="no ov rows"):
        load_spectra(tmp_path / "a", "A", variant="raw", circuit="ov")
    with pytest.raises(BuildError, match="--circuits 'qk,vo': choose among qk, ov"):
        build_model(str(directory), "A", tmp_path / "a", circuits=["qk", "vo"], progress=False)

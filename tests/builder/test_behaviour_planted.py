"""Behaviour scores on models whose heads are planted by hand, and against an independent computation.

The model is planted_models.planted_gpt2 (its docstring says which head does what): previous-token,
first-token and induction heads, and one head of all zeros.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from planted_models import PLANTED, D, T, V, planted_gpt2

from qk_spectra_ds.builder import behaviour
from qk_spectra_ds.builder import probes as bp
from qk_spectra_ds.builder.weights import open_source

THRESHOLD = 0.5


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    directory = tmp_path_factory.mktemp("planted")
    model = planted_gpt2()
    model.save_pretrained(str(directory))
    model.set_attn_implementation("eager")  # attention weights to compare with, as the builder loads it
    return model, directory


def _attentions(model, probes):
    with torch.no_grad():
        out = model(input_ids=torch.from_numpy(probes), output_attentions=True)
    assert len(out.attentions) == model.config.n_layer
    return [a.double().numpy() for a in out.attentions]


@pytest.mark.slow
def test_planted_heads_are_exactly_the_heads_above_threshold(planted):
    _, directory = planted
    source = open_source(str(directory))
    config = source.read_json("config.json")
    spec = bp.ProbeSpec(seed=3, sequences=6, length=T, local_window=2)
    result = behaviour.model_behaviour(source, config, spec, "float32")
    assert result.causal and result.seconds > 0 and result.peak_memory_mb > 0
    for name, (layer, head) in PLANTED.items():
        above = {(ly, h) for ly, values in result.scores[name].items() for h in np.flatnonzero(values >= THRESHOLD)}
        assert above == {(layer, head)}, (name, above)
        assert result.scores[name][layer][head] > 0.95
    assert "next_token" not in result.scores  # a causal model: no next-token score
    uniform = result.scores["entropy"][1][1]  # the all-zero head attends uniformly: normalised entropy 1
    assert uniform == pytest.approx(1.0, abs=1e-5)
    assert result.scores["entropy"][0][0] < 0.1


@pytest.mark.slow
def test_scores_equal_a_loop_over_the_models_own_attention(planted):
    """The vectorised scores against plain loops over the attention weights transformers returns."""
    model, directory = planted
    config = open_source(str(directory)).read_json("config.json")
    spec = bp.ProbeSpec(seed=5, sequences=3, length=T, local_window=3)
    pool, first = bp.probe_vocabulary(config)
    probes = bp.make_probes(pool, first, spec)
    n, w = spec.n_positions, spec.local_window
    for attn in _attentions(model, probes):
        got = bp.attention_scores(attn, T, w, causal=True)
        for h in range(attn.shape[1]):
            prev = first_tok = ind = local = ent = 0.0
            for b in range(attn.shape[0]):
                a = attn[b, h]
                prev += sum(a[t, t - 1] for t in range(1, n)) / (n - 1)
                first_tok += sum(a[t, 0] for t in range(1, n)) / (n - 1)
                ind += sum(a[t, t - T + 1] for t in range(T + 1, 2 * T + 1)) / T
                local += sum(sum(a[t, j] for j in range(t - w, t)) for t in range(w + 1, n)) / (n - w - 1)
                ent += sum(
                    -sum(p * math.log(p) for p in a[t, : t + 1] if p > 0) / math.log(t + 1) for t in range(1, n)
                ) / (n - 1)
            B = attn.shape[0]
            expected = {
                "previous_token": prev / B,
                "first_token": first_tok / B,
                "induction": ind / B,
                "local": local / B,
                "entropy": ent / B,
            }
            for name, value in expected.items():
                assert got[name][h] == pytest.approx(value, rel=1e-9, abs=1e-12), (name, h)


@pytest.mark.slow
def test_layer0_attention_is_the_weights_softmax(planted):
    """The attention transformers reports equals softmax(LN(x) W_Q . LN(x) W_K / sqrt(dh)) computed here from the state dict."""
    model, _ = planted
    spec = bp.ProbeSpec(seed=1, sequences=2, length=T)
    probes = bp.make_probes(np.arange(3, V), 1, spec)
    sd = {k: v.double().numpy() for k, v in model.state_dict().items()}
    x = sd["transformer.wte.weight"][probes] + sd["transformer.wpe.weight"][np.arange(probes.shape[1])]
    mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    x = (x - mu) / np.sqrt(var + model.config.layer_norm_epsilon) * sd["transformer.h.0.ln_1.weight"] + sd[
        "transformer.h.0.ln_1.bias"
    ]
    qkv = x @ sd["transformer.h.0.attn.c_attn.weight"] + sd["transformer.h.0.attn.c_attn.bias"]
    d, dh = 2 * D, D
    n = probes.shape[1]
    mask = np.tril(np.ones((n, n), bool))
    reported = _attentions(model, probes)[0]
    for h in range(2):
        q, k = qkv[..., h * dh : (h + 1) * dh], qkv[..., d + h * dh : d + (h + 1) * dh]
        logits = np.where(mask, q @ np.swapaxes(k, -1, -2) / math.sqrt(dh), -np.inf)
        mine = np.exp(logits - logits.max(-1, keepdims=True))
        mine /= mine.sum(-1, keepdims=True)
        np.testing.assert_allclose(reported[:, h], mine, atol=2e-5)

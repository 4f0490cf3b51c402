"""The behaviour step of a build: probes, encoder scores, columns, and its one-line refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest

from qk_spectra_ds import schema
from qk_spectra_ds.builder import behaviour as bb
from qk_spectra_ds.builder import probes as bp
from qk_spectra_ds.errors import QKSpectraError


def test_probe_vocabulary_excludes_special_and_unused_tokens():
    config = {"vocab_size": 12, "bos_token_id": 1, "eos_token_id": [2, 3], "pad_token_id": 0}
    pool, first = bp.probe_vocabulary(config)
    assert first == 1 and pool.tolist() == list(range(4, 12))
    tokenizer = {
        "model": {"vocab": {"[PAD]": 0, "[unused0]": 1, "a": 2, "b": 3, "c": 4, "[CLS]": 5}},
        "added_tokens": [{"id": 5, "content": "[CLS]", "special": True}, {"id": 6, "content": "<x>", "special": False}],
    }
    pool, first = bp.probe_vocabulary({"vocab_size": 9, "pad_token_id": 0}, tokenizer)
    assert first == 5  # no bos/cls id in the config: the tokenizer's [CLS]
    assert pool.tolist() == [2, 3, 4, 6]  # 7, 8: beyond the tokenizer's vocabulary; 1: [unused0]


def test_probes_are_seeded_repeats_of_distinct_tokens():
    spec = bp.ProbeSpec(seed=7, sequences=5, length=6)
    pool = np.arange(3, 40)
    probes = bp.make_probes(pool, 1, spec)
    assert probes.shape == (5, 13) and (probes[:, 0] == 1).all()
    assert (probes[:, 1:7] == probes[:, 7:]).all()
    assert all(len(set(row[1:7])) == 6 and set(row[1:7]) <= set(pool) for row in probes)
    assert (bp.make_probes(pool, 1, spec) == probes).all()
    assert not (bp.make_probes(pool, 1, bp.ProbeSpec(seed=8, sequences=5, length=6)) == probes).all()
    with pytest.raises(bb.BehaviourError, match="fewer than --probe-length"):
        bp.make_probes(np.arange(3, 7), 1, spec)


def test_encoder_scores_equal_loops_on_random_attention():
    rng = np.random.default_rng(0)
    T, w = 5, 2
    n = 1 + 2 * T
    attn = rng.random((3, 2, n, n)) ** 4
    attn /= attn.sum(-1, keepdims=True)
    got = bp.attention_scores(attn, T, w, causal=False)
    assert set(got) == {"previous_token", "next_token", "first_token", "local", "entropy"}
    for h in range(2):
        a = attn[:, h]
        assert got["next_token"][h] == pytest.approx(np.mean([a[:, t, t + 1] for t in range(1, n - 1)]))
        assert got["previous_token"][h] == pytest.approx(np.mean([a[:, t, t - 1] for t in range(1, n)]))
        assert got["first_token"][h] == pytest.approx(np.mean([a[:, t, 0] for t in range(1, n)]))
        local = [a[:, t, [j for j in range(t - w, t + w + 1) if j != t]].sum(-1) for t in range(w + 1, n - w)]
        assert got["local"][h] == pytest.approx(np.mean(local))
        entropy = [-(a[:, t] * np.log(a[:, t])).sum(-1) / np.log(n) for t in range(n)]
        assert got["entropy"][h] == pytest.approx(np.mean(entropy))


def test_columns_fill_qk_rows_only_and_record_the_probe():
    spec = bp.ProbeSpec(seed=3, sequences=2, length=4, local_window=2)
    scores = {
        "previous_token": {0: np.array([0.1, 0.2]), 2: np.array([0.3, 0.4])},
        "entropy": {0: np.array([0.5, 0.6])},
    }
    result = bb.BehaviourResult(spec, True, scores)
    layers, heads = [0, 0, 2, 2, 0], [0, 1, 0, 1, 1]
    columns = bb.behaviour_columns(layers, heads, result, measured=[True, True, True, True, False])
    assert columns["behaviour_previous_token"] == [0.1, 0.2, 0.3, 0.4, None]
    assert columns["behaviour_entropy"] == [0.5, 0.6, None, None, None]
    assert columns["behaviour_induction"] == [None] * 5
    assert columns["probe_seed"] == [3, 3, 3, 3, None] and columns["probe_local_window"] == [2, 2, 2, 2, None]
    empty = bb.behaviour_columns(layers, heads, None)
    assert set(empty) == set(schema.BEHAVIOUR_COLUMNS + schema.PROBE_COLUMNS)
    assert all(v is None for col in empty.values() for v in col)


@pytest.mark.parametrize("value", ["x", "-1", "1.5", True])
def test_probe_flags_are_checked(value):
    with pytest.raises(QKSpectraError, match="--probe-length"):
        bp.check_probe(length=value)
    assert bp.check_probe(seed="12").key() == (12, bp.PROBE_SEQUENCES, bp.PROBE_LENGTH, bp.PROBE_LOCAL_WINDOW)


@pytest.mark.slow
def test_refusals_are_one_line(tmp_path):
    import torch
    from safetensors.torch import load_file, save_file
    from tiny_models import make_saved

    from qk_spectra_ds.builder.weights import open_source

    with pytest.raises(bb.BehaviourError, match="no causal-LM or encoder class for model_type 't5'"):
        bb.check_model_class({"model_type": "t5"}, "m")
    with pytest.raises(bb.BehaviourError, match="no causal-LM or encoder class"):
        bb.check_model_class({"model_type": "no_such_type"}, "m")
    _, directory = make_saved("llama-gqa", tmp_path / "llama")
    source = open_source(str(directory))
    config = json.loads((directory / "config.json").read_text())
    with pytest.raises(bb.BehaviourError, match="float8_e4m3fn is not one of"):
        bb.load_model(source, config, "float8_e4m3fn", "cpu")
    path = next(directory.glob("*.safetensors"))
    tensors = load_file(str(path))
    save_file({k: v for k, v in tensors.items() if "mlp" not in k}, str(path), metadata={"format": "pt"})
    with pytest.raises(bb.BehaviourError) as caught:
        bb.load_model(source, config, "float32", "cpu")
    message = str(caught.value)
    assert "needs the full weights, but the checkpoint lacks 6 tensor(s)" in message and "\n" not in message
    assert torch.is_tensor(next(iter(tensors.values())))


@pytest.mark.slow
def test_gqa_llama_scores_are_per_query_head(tmp_path):
    """A random GQA model (4 query heads over 2 key heads): one score per query head, from the model's attention."""
    import torch
    from tiny_models import make_saved

    from qk_spectra_ds.builder.weights import open_source

    model, directory = make_saved("llama-gqa", tmp_path / "llama")
    source = open_source(str(directory))
    config = json.loads((directory / "config.json").read_text())
    spec = bp.ProbeSpec(seed=2, sequences=3, length=8, local_window=2)
    result = bb.model_behaviour(source, config, spec, "float32", batch=2)
    model.set_attn_implementation("eager")
    probes = bp.make_probes(*bp.probe_vocabulary(config), spec)
    with torch.no_grad():
        attentions = model(input_ids=torch.from_numpy(probes), output_attentions=True).attentions
    assert len(attentions) == 2 and attentions[0].shape[1] == 4
    for layer, attn in enumerate(attentions):
        expected = bp.attention_scores(attn.double().numpy(), 8, 2, causal=True)
        for name, values in expected.items():
            np.testing.assert_allclose(result.scores[name][layer], values, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_minilm_encoder_scores():
    """The real all-MiniLM-L6-v2 (bert): encoder scores, CLS as the first token, no induction."""
    from qk_spectra_ds.builder.pipeline import resolve_source

    source = resolve_source("sentence-transformers/all-MiniLM-L6-v2")
    config = source.read_json("config.json")
    pool, first = bp.probe_vocabulary(config, bb._tokenizer_json(source))
    assert (
        first == 101 and 100 not in pool and 102 not in pool and 1 not in pool
    )  # [CLS]; [UNK], [SEP], [unused0] excluded
    result = bb.model_behaviour(source, config, bp.ProbeSpec(sequences=2, length=8), "float32")
    assert not result.causal and set(result.scores) == set(bp.score_names(False))
    for per_layer in result.scores.values():
        assert sorted(per_layer) == list(range(6))
        values = np.stack(list(per_layer.values()))
        assert (
            values.shape == (6, 12) and np.isfinite(values).all() and (values >= 0).all() and (values <= 1 + 1e-6).all()
        )


def test_probes_longer_than_the_positions_are_refused():
    spec = bp.ProbeSpec(length=32)  # 65 tokens
    bb.check_positions({"max_position_embeddings": 65}, spec, "m")
    with pytest.raises(bb.BehaviourError, match="more than the model's 64 positions: use --probe-length 31 or less"):
        bb.check_positions({"n_positions": 64}, spec, "m")

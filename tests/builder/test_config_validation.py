"""Config fields the builder reads are validated by name (issue 18, items 4, 8 and 9).

Every rotary and layer-pattern field of config.json, and every size, is checked before any work:
a bad value is one ``CheckpointError`` line naming the field and the value (never a KeyError,
TypeError, ZeroDivisionError, "math domain error", LinAlgError or ArrowInvalid later on, and
never silently accepted). A layer kind the builder does not know is refused instead of dropping
the layer. Sizes are checked against sane limits and against the checkpoint's own tensors, so an
absurd ``num_hidden_layers`` fails within a second. Published rotary configs stay accepted.
"""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
from helpers import assert_bad_config_is_one_line, write_qk_llama

from qk_spectra_ds.builder.architectures import model_type_for
from qk_spectra_ds.builder.config_checks import MAX_LAYERS
from qk_spectra_ds.builder.pipeline import build_model
from qk_spectra_ds.builder.rotary import rotary_from_spec
from qk_spectra_ds.errors import CheckpointError

LLAMA = {
    "model_type": "llama",
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "hidden_size": 32,
    "max_position_embeddings": 64,
}
"""A tiny llama: d_head 8, so 4 rotary frequencies."""


def _llama3(**changes):
    return {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 16,
        **changes,
    }


def _longrope(**changes):
    return {
        "rope_type": "longrope",
        "short_factor": [1.0, 1.2, 1.5, 2.0],
        "long_factor": [1.0, 2.0, 3.0, 4.0],
        "original_max_position_embeddings": 16,
        **changes,
    }


def _without(d: dict, key: str) -> dict:
    return {k: v for k, v in d.items() if k != key}


NAN, INF = float("nan"), float("inf")

# id -> (config.json changes on LLAMA, words the one-line message must hold: the field and its value)
LLAMA_CASES = {
    # item 9: rotary fields
    "linear-factor-zero": ({"rope_scaling": {"rope_type": "linear", "factor": 0}}, ["rope_scaling.factor is 0"]),
    "linear-factor-nan": ({"rope_scaling": {"rope_type": "linear", "factor": NAN}}, ["rope_scaling.factor is NaN"]),
    "linear-factor-negative": (
        {"rope_scaling": {"rope_type": "linear", "factor": -2.0}},
        ["rope_scaling.factor is -2.0"],
    ),
    "linear-factor-inf": (
        {"rope_scaling": {"rope_type": "linear", "factor": INF}},
        ["rope_scaling.factor is Infinity"],
    ),
    "linear-factor-string": ({"rope_scaling": {"rope_type": "linear", "factor": "2"}}, ['rope_scaling.factor is "2"']),
    "linear-factor-missing": ({"rope_scaling": {"rope_type": "linear"}}, ["rope_scaling.factor is missing", "linear"]),
    "legacy-type-key-factor-zero": (
        {"rope_scaling": {"type": "dynamic", "factor": 0.0}},
        ["rope_scaling.factor is 0.0"],
    ),
    "llama3-factor-zero": ({"rope_scaling": _llama3(factor=0)}, ["rope_scaling.factor is 0"]),
    "llama3-factor-missing": ({"rope_scaling": _without(_llama3(), "factor")}, ["rope_scaling.factor is missing"]),
    "llama3-low-freq-missing": (
        {"rope_scaling": _without(_llama3(), "low_freq_factor")},
        ["rope_scaling.low_freq_factor is missing"],
    ),
    "llama3-high-freq-missing": (
        {"rope_scaling": _without(_llama3(), "high_freq_factor")},
        ["rope_scaling.high_freq_factor is missing"],
    ),
    "llama3-low-freq-zero": ({"rope_scaling": _llama3(low_freq_factor=0)}, ["rope_scaling.low_freq_factor is 0"]),
    "longrope-short-missing": (
        {"rope_scaling": _without(_longrope(), "short_factor")},
        ["rope_scaling.short_factor is missing"],
    ),
    "longrope-short-zeros": (
        {"rope_scaling": _longrope(short_factor=[0, 0, 0, 0])},
        ["rope_scaling.short_factor is [0, 0, 0, 0]"],
    ),
    "longrope-short-length": (
        {"rope_scaling": _longrope(short_factor=[1.0, 1.0])},
        ["rope_scaling.short_factor is [1.0, 1.0]", "4"],
    ),
    "longrope-long-nan": (
        {"rope_scaling": _longrope(long_factor=[1.0, NAN, 1.0, 1.0])},
        ["rope_scaling.long_factor is [1.0, NaN"],
    ),
    "longrope-attention-factor-negative": (
        {"rope_scaling": _longrope(attention_factor=-1.0)},
        ["rope_scaling.attention_factor is -1.0"],
    ),
    "theta-tiny": ({"rope_theta": 1e-300}, ["rope_theta is 1e-300"]),
    "theta-infinite": ({"rope_theta": INF}, ["rope_theta is Infinity"]),
    "theta-zero": ({"rope_theta": 0}, ["rope_theta is 0"]),
    "theta-string": ({"rope_theta": "10000"}, ['rope_theta is "10000"']),
    "rope-parameters-theta-nan": (
        {"rope_parameters": {"rope_type": "default", "rope_theta": NAN}},
        ["rope_parameters.rope_theta is NaN"],
    ),
    "rope-parameters-nested-factor": (
        {"rope_parameters": {"full_attention": {"rope_type": "linear", "rope_theta": 1e4, "factor": -1}}},
        ["rope_parameters.full_attention.factor is -1"],
    ),
    "rope-parameters-string": ({"rope_parameters": "yarn"}, ['rope_parameters is "yarn"']),
    "rope-scaling-string": ({"rope_scaling": "linear"}, ['rope_scaling is "linear"']),
    "rope-type-number": ({"rope_scaling": {"rope_type": 3, "factor": 2.0}}, ["rope_scaling.rope_type is 3"]),
    "yarn-original-negative": (
        {"rope_scaling": {"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": -32}},
        ["rope_scaling.original_max_position_embeddings is -32"],
    ),
    "yarn-beta-slow-negative": (
        {"rope_scaling": {"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 32, "beta_slow": -1}},
        ["rope_scaling.beta_slow is -1"],
    ),
    "yarn-mscale-negative": (
        {
            "rope_scaling": {
                "rope_type": "yarn",
                "factor": 4.0,
                "original_max_position_embeddings": 16,
                "mscale": -20.0,
                "mscale_all_dim": 1.0,
            }
        },
        ["rope_scaling.mscale is -20.0"],
    ),
    "yarn-attention-factor-zero": (
        {
            "rope_scaling": {
                "rope_type": "yarn",
                "factor": 2.0,
                "original_max_position_embeddings": 32,
                "attention_factor": 0,
            }
        },
        ["rope_scaling.attention_factor is 0"],
    ),
    "yarn-truncate-string": (
        {
            "rope_scaling": {
                "rope_type": "yarn",
                "factor": 2.0,
                "original_max_position_embeddings": 32,
                "truncate": "no",
            }
        },
        ['rope_scaling.truncate is "no"'],
    ),
    "original-max-position-top-level-zero": (
        {"original_max_position_embeddings": 0, "rope_scaling": {"rope_type": "yarn", "factor": 2.0}},
        ["original_max_position_embeddings is 0"],
    ),
    "max-position-zero": ({"max_position_embeddings": 0}, ["max_position_embeddings is 0"]),
    "max-position-negative": ({"max_position_embeddings": -64}, ["max_position_embeddings is -64"]),
    "max-position-huge": ({"max_position_embeddings": 10**400}, ["max_position_embeddings is 1000000000"]),
    "max-position-past-int32": ({"max_position_embeddings": 2**31 + 5}, ["max_position_embeddings is 2147483653"]),
    "max-position-string": ({"max_position_embeddings": "64"}, ['max_position_embeddings is "64"']),
    # item 4 and item 9: layer patterns
    "layer-kind-unknown": ({"layer_types": ["foo_attention", "full_attention"]}, ['layer_types[0] is "foo_attention"']),
    "layer-kind-not-ours": (
        {"layer_types": ["full_attention", "window_attention"]},
        ['layer_types[1] is "window_attention"'],
    ),
    "all-layers-linear": (
        {"layer_types": ["linear_attention", "mamba"]},
        ["no layer", "softmax attention", "layer_types"],
    ),
}


@pytest.mark.parametrize("case", sorted(LLAMA_CASES))
def test_bad_rotary_or_layer_field_is_one_line_naming_it(case, tmp_path):
    changes, words = LLAMA_CASES[case]
    model = write_qk_llama(tmp_path / case, {**LLAMA, **changes})
    assert_bad_config_is_one_line(model, tmp_path / "out", words)


def _qwen3_next(**changes):
    return {
        "model_type": "qwen3_next",
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "hidden_size": 32,
        "head_dim": 8,
        **changes,
    }


def _modernbert(**changes):
    return {"model_type": "modernbert", "num_hidden_layers": 3, "num_attention_heads": 4, "hidden_size": 32, **changes}


def _llama4(**changes):
    return {
        "model_type": "llama4_text",
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "hidden_size": 32,
        "head_dim": 8,
        **changes,
    }


# id -> (config.json, words): the other architectures' layer-pattern fields, through ModelType.layer_facts
PATTERN_CASES = {
    "full-attention-interval-zero": (_qwen3_next(full_attention_interval=0), ["full_attention_interval is 0"]),
    "full-attention-interval-negative": (_qwen3_next(full_attention_interval=-4), ["full_attention_interval is -4"]),
    "full-attention-interval-string": (_qwen3_next(full_attention_interval="4"), ['full_attention_interval is "4"']),
    "global-attn-every-zero": (_modernbert(global_attn_every_n_layers=0), ["global_attn_every_n_layers is 0"]),
    "local-attention-negative": (_modernbert(local_attention=-128), ["local_attention is -128"]),
    "chunk-size-negative": (_llama4(attention_chunk_size=-8192), ["attention_chunk_size is -8192"]),
    "chunk-size-zero": (_llama4(attention_chunk_size=0), ["attention_chunk_size is 0"]),
    "max-window-layers-string": (
        {**LLAMA, "model_type": "qwen2", "use_sliding_window": True, "sliding_window": 16, "max_window_layers": "1"},
        ['max_window_layers is "1"'],
    ),
    "max-window-layers-negative": (
        {**LLAMA, "model_type": "qwen2", "use_sliding_window": True, "sliding_window": 16, "max_window_layers": -1},
        ["max_window_layers is -1"],
    ),
    "gptj-n-positions-zero": (
        {"model_type": "gptj", "n_layer": 2, "n_head": 4, "n_embd": 32, "n_positions": 0},
        ["n_positions is 0"],
    ),
    "gptj-max-position-negative": (
        {"model_type": "gptj", "n_layer": 2, "n_head": 4, "n_embd": 32, "max_position_embeddings": -1},
        ["max_position_embeddings is -1"],
    ),
    "odd-head-fully-rotated": (
        {**LLAMA, "hidden_size": 36},
        ["partial_rotary_factor is 1.0 on heads of 9 rotary dims"],
    ),
    "next-predict-layers-negative": (
        {
            "model_type": "deepseek_v3",
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "hidden_size": 32,
            "qk_nope_head_dim": 8,
            "qk_rope_head_dim": 4,
            "kv_lora_rank": 16,
            "num_nextn_predict_layers": -1,
        },
        ["num_nextn_predict_layers is -1"],
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(PATTERN_CASES))
def test_bad_layer_pattern_field_is_one_line_naming_it(case):
    config, words = PATTERN_CASES[case]
    arch = model_type_for(config)
    with pytest.raises(CheckpointError) as info:
        arch.layer_facts(config)
        arch.stored_layers(config)
    message = str(info.value)
    assert "\n" not in message and message.startswith("config.json: "), message
    for word in words:
        assert word in message, (word, message)


# ------------------------------------------------------------------ item 8: absurd sizes


SIZE_CASES = {
    "layers-1e6": ({"num_hidden_layers": 10**6}, ["num_hidden_layers is 1000000"]),
    "layers-1e8": ({"num_hidden_layers": 10**8}, ["num_hidden_layers is 100000000"]),
    "layers-1e12": ({"num_hidden_layers": 10**12}, ["num_hidden_layers is 1000000000000"]),
    "layers-more-than-the-weights": (
        {"num_hidden_layers": 300},
        ["num_hidden_layers is 300", "layers.299.self_attn.q_proj"],
    ),
    "layers-at-the-limit": (
        {"num_hidden_layers": MAX_LAYERS},
        [f"num_hidden_layers is {MAX_LAYERS}", "weights have no"],
    ),
    "layers-past-the-limit": (
        {"num_hidden_layers": MAX_LAYERS + 1},
        [f"num_hidden_layers is {MAX_LAYERS + 1}", "above"],
    ),
    "width-1e9": ({"hidden_size": 10**9}, ["hidden_size is 1000000000"]),
    "heads-1e7": (
        {"num_attention_heads": 10**7, "num_key_value_heads": 10**7, "head_dim": 8},
        ["num_attention_heads is 10000000"],
    ),
    "head-dim-1e9": ({"head_dim": 10**9}, ["head_dim is 1000000000"]),
    "kv-heads-1e12": ({"num_attention_heads": 10**12, "num_key_value_heads": 10**12}, ["is 1000000000000"]),
}


@pytest.fixture(scope="module")
def torch_imported():
    """The builder's one-off import of torch (seconds, whatever the config) is not what the time limit measures."""
    pytest.importorskip("torch")


@pytest.mark.parametrize("case", sorted(SIZE_CASES))
def test_absurd_size_is_one_line_within_a_second(case, tmp_path, torch_imported):
    changes, words = SIZE_CASES[case]
    model = write_qk_llama(tmp_path / case, {**LLAMA, **changes})
    started = time.process_time()  # CPU time, not wall: a loaded CI machine must not fail it
    with pytest.raises(CheckpointError) as info:
        build_model(str(model), "Bad", tmp_path / "out", device="cpu", progress=False)
    elapsed = time.process_time() - started
    message = str(info.value)
    assert "\n" not in message and "config.json" in message, message
    for word in words:
        assert word in message, (word, message)
    assert elapsed < 3.0, f"{case}: {elapsed:.2f} s of CPU before the error"  # was 48 s (1e6 layers) to OOM (1e12)
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------ published configs stay accepted

_PHI3_SHORT = [1.0, 1.01, 1.02, 1.05, 1.1, 1.2, 1.5, 2.0]
PUBLISHED = {
    # Llama 3.1 / 3.2: llama3 rope
    "llama-3.1": {
        "model_type": "llama",
        "rope_theta": 500000.0,
        "max_position_embeddings": 131072,
        "rope_scaling": {
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
            "rope_type": "llama3",
        },
    },
    # Llama 4 Scout: llama3 rope with low_freq_factor == high_freq_factor (no smooth band)
    "llama-4-scout": {
        "model_type": "llama4_text",
        "rope_theta": 500000.0,
        "max_position_embeddings": 10485760,
        "attention_chunk_size": 8192,
        "no_rope_layers": [1, 1, 1, 0],
        "rope_scaling": {
            "factor": 16.0,
            "high_freq_factor": 1.0,
            "low_freq_factor": 1.0,
            "original_max_position_embeddings": 8192,
            "rope_type": "llama3",
        },
    },
    # Qwen2.5 / Qwen3: yarn with the legacy "type" key, max_position_embeddings = original
    "qwen2.5-yarn": {
        "model_type": "qwen2",
        "rope_theta": 1000000.0,
        "max_position_embeddings": 32768,
        "max_window_layers": 28,
        "use_sliding_window": False,
        "sliding_window": 131072,
        "rope_scaling": {"factor": 4.0, "original_max_position_embeddings": 32768, "type": "yarn"},
    },
    # gpt-oss: yarn without truncation, float betas
    "gpt-oss": {
        "model_type": "gpt_oss",
        "rope_theta": 150000,
        "max_position_embeddings": 131072,
        "sliding_window": 128,
        "rope_scaling": {
            "beta_fast": 32.0,
            "beta_slow": 1.0,
            "factor": 32.0,
            "original_max_position_embeddings": 4096,
            "rope_type": "yarn",
            "truncate": False,
        },
    },
    # Phi-3 / Phi-3.5 128k: longrope, original_max_position_embeddings at the top level
    "phi-3-longrope": {
        "model_type": "phi3",
        "rope_theta": 10000.0,
        "max_position_embeddings": 131072,
        "original_max_position_embeddings": 4096,
        "sliding_window": 262144,
        "rope_scaling": {"type": "longrope", "short_factor": _PHI3_SHORT, "long_factor": [x * 4 for x in _PHI3_SHORT]},
    },
    # DeepSeek-V3 yarn with mscale (and V2-Lite's 0.707)
    "deepseek-v3": {
        "model_type": "deepseek_v3",
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "hidden_size": 32,
        "qk_nope_head_dim": 8,
        "qk_rope_head_dim": 16,
        "kv_lora_rank": 16,
        "q_lora_rank": 24,
        "rope_theta": 10000,
        "max_position_embeddings": 163840,
        "num_nextn_predict_layers": 1,
        "rope_scaling": {
            "beta_fast": 32,
            "beta_slow": 1,
            "factor": 40,
            "mscale": 1.0,
            "mscale_all_dim": 1.0,
            "original_max_position_embeddings": 4096,
            "type": "yarn",
        },
    },
    "deepseek-v2-lite": {
        "model_type": "deepseek_v2",
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "hidden_size": 32,
        "qk_nope_head_dim": 8,
        "qk_rope_head_dim": 16,
        "kv_lora_rank": 16,
        "q_lora_rank": None,
        "rope_theta": 10000,
        "max_position_embeddings": 163840,
        "rope_scaling": {
            "beta_fast": 32,
            "beta_slow": 1,
            "factor": 40,
            "mscale": 0.707,
            "mscale_all_dim": 0.707,
            "original_max_position_embeddings": 4096,
            "type": "yarn",
        },
    },
    # Gemma 3: linear factor 8 on the global layers (a text_config giving only some fields)
    "gemma-3": {
        "model_type": "gemma3",
        "text_config": {
            "hidden_size": 64,
            "num_hidden_layers": 6,
            "head_dim": 16,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
            "sliding_window": 1024,
        },
    },
    # Llama 2-era dynamic NTK scaling
    "dynamic": {
        "model_type": "llama",
        "rope_scaling": {"type": "dynamic", "factor": 2.0},
        "max_position_embeddings": 4096,
    },
    # Qwen3-Next / Qwen3.5: softmax every 4th layer, partial rotary 0.25
    "qwen3-next": _qwen3_next(
        full_attention_interval=4,
        rope_theta=10000000,
        partial_rotary_factor=0.25,
        max_position_embeddings=262144,
        head_dim=32,
    ),
}
_SHAPE = {"num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2, "hidden_size": 64, "head_dim": 16}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_rotary_configs_are_accepted(name):
    config = {**_SHAPE, **PUBLISHED[name]} if "text_config" not in PUBLISHED[name] else PUBLISHED[name]
    arch = model_type_for(config)
    facts = arch.layer_facts(config)
    rotaries = [rotary_from_spec(f.rope, config) for f in facts if f.rope is not None]
    assert rotaries, name
    for rotary in rotaries:
        assert np.isfinite(rotary.inv_freq).all() and (rotary.inv_freq > 0).all(), name
        assert math.isfinite(rotary.attention_factor) and rotary.attention_factor > 0, name

"""Tiny random ``transformers`` models of every supported architecture, and their QK reference.

Test-only helpers (``transformers`` is a test dependency, never a builder one). Each
:class:`ArchCase` makes a small random model from a config, and knows how to pull the per-head
query and key blocks straight out of the in-memory module's parameters, the way the model's own
``modeling_<arch>.py`` splits them at run time. That reference is written independently of
``qk_spectra_ds.architectures``, which reads the same weights from the saved safetensors.

    case = CASES_BY_ID["llama-gqa"]
    model = case.make()                  # random, full-rank Q and K
    save(model, directory, case)         # safetensors (sharded if the case says so)
    for wq, wk in case.reference(model): # per layer: (H, d_head, d_model), (H_kv, d_head, d_model)
        ...
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

# Keep the vocabulary tiny and every special token inside it (some configs default to ids > 50000).
TOKENS = dict(vocab_size=64, pad_token_id=0, bos_token_id=1, eos_token_id=2)


# ------------------------------------------------------------------ making models


def randomize(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Overwrite every parameter with seeded Gaussian noise.

    Default inits are not good enough for a spectral test: some zero the biases, norms start
    at exactly 1 (or 0 for Gemma's 1 + w), and std 0.02 makes every singular value tiny. Here
    2-D weights get N(0, 1/fan_in) (so Q and K are full-rank with O(1) singular values) and
    1-D parameters N(1, 0.3^2) (norm gains and biases that differ from their defaults).
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            noise = torch.randn(param.shape, generator=generator, dtype=torch.float32)
            if param.ndim >= 2:
                noise /= math.sqrt(param.shape[-1])
            else:
                noise = 1.0 + 0.3 * noise
            param.copy_(noise.to(param.dtype))
    return model.eval()


def save(model: torch.nn.Module, directory: str | Path, case: ArchCase) -> Path:
    """``save_pretrained`` as safetensors; sharded (index + several files) if the case asks."""
    directory = Path(directory)
    kwargs = {"max_shard_size": case.max_shard_size} if case.max_shard_size else {}
    model.save_pretrained(str(directory), **kwargs)
    assert (directory / "config.json").is_file()
    return directory


# ------------------------------------------------------------------ references from the module


def _heads(weight: torch.Tensor, head_dim: int) -> np.ndarray:
    """Linear weight (n * head_dim, d_model) -> (n, head_dim, d_model) float64 (``view(..., -1, head_dim)``)."""
    w = weight.detach().to(torch.float64)
    return w.reshape(-1, head_dim, w.shape[-1]).numpy()


def _separate(layers, attn: str, q: str, k: str, head_dim: Callable) -> list[tuple[np.ndarray, np.ndarray]]:
    out = []
    for layer in layers:
        module = getattr(layer, attn)
        dh = head_dim(module)
        out.append((_heads(getattr(module, q).weight, dh), _heads(getattr(module, k).weight, dh)))
    return out


def ref_llama_like(model):
    """llama, mistral, mixtral, qwen2/3, gemma/2/3, olmo/2: q_proj/k_proj rows, ``view(..., -1, head_dim)``."""
    return _separate(model.model.layers, "self_attn", "q_proj", "k_proj", lambda a: a.head_dim)


def ref_gptj(model):
    return _separate(model.transformer.h, "attn", "q_proj", "k_proj", lambda a: a.head_dim)


def ref_opt(model):
    return _separate(model.model.decoder.layers, "self_attn", "q_proj", "k_proj", lambda a: a.head_dim)


def ref_bert(model):
    return _separate(
        [layer.attention for layer in model.bert.encoder.layer], "self", "query", "key", lambda a: a.attention_head_size
    )


def ref_gpt2(model):
    """Conv1D: ``c_attn(x) = x @ W``, W (d, 3d); ``.split(split_size, dim=2)`` -> Q, K, V columns."""
    out = []
    for block in model.transformer.h:
        attn = block.attn
        w_q, w_k, _ = attn.c_attn.weight.split(attn.split_size, dim=1)  # (d, d) each, input x output
        out.append((_heads(w_q.T, attn.head_dim), _heads(w_k.T, attn.head_dim)))
    return out


def ref_gpt_neox(model):
    """``qkv.view(..., -1, 3 * head_size).chunk(3, dim=-1)``: per head [q, k, v] rows."""
    out = []
    for layer in model.gpt_neox.layers:
        attn = layer.attention
        w = attn.query_key_value.weight.detach().to(torch.float64)
        per_head = w.reshape(-1, 3 * attn.head_size, w.shape[-1])
        q, k, _ = per_head.chunk(3, dim=1)
        out.append((q.numpy(), k.numpy()))
    return out


def ref_bloom(model):
    """``fused_qkv.view(b, s, num_heads, 3, head_dim)``: per head [q, k, v]."""
    out = []
    for block in model.transformer.h:
        attn = block.self_attention
        w = attn.query_key_value.weight.detach().to(torch.float64)
        w = w.reshape(attn.num_heads, 3, attn.head_dim, w.shape[-1])
        out.append((w[:, 0].numpy(), w[:, 1].numpy()))
    return out


def ref_falcon(model):
    """FalconAttention._split_heads, all three layouts."""
    out = []
    for block in model.transformer.h:
        attn = block.self_attention
        w = attn.query_key_value.weight.detach().to(torch.float64)
        d, dh, n = w.shape[-1], attn.head_dim, attn.num_heads
        if attn.new_decoder_architecture:  # view(b, s, -1, H/H_kv + 2, dh): per KV group [q..., k, v]
            groups = w.reshape(attn.num_kv_heads, n // attn.num_kv_heads + 2, dh, d)
            q, k = groups[:, :-2].reshape(n, dh, d), groups[:, -2]
        elif not attn.multi_query:  # view(b, s, H, 3, dh)
            per_head = w.reshape(n, 3, dh, d)
            q, k = per_head[:, 0], per_head[:, 1]
        else:  # view(b, s, H + 2, dh): [q x H, k, v]
            rows = w.reshape(n + 2, dh, d)
            q, k = rows[:-2], rows[-2:-1]
        out.append((q.numpy(), k.numpy()))
    return out


def ref_phi3(model):
    """``qkv[..., :query_pos]``, ``qkv[..., query_pos : query_pos + H_kv * head_dim]``."""
    out = []
    for layer in model.model.layers:
        attn = layer.self_attn
        w = attn.qkv_proj.weight
        query_pos = model.config.num_attention_heads * attn.head_dim
        kv_rows = attn.num_key_value_heads * attn.head_dim
        out.append((_heads(w[:query_pos], attn.head_dim), _heads(w[query_pos : query_pos + kv_rows], attn.head_dim)))
    return out


# ------------------------------------------------------------------ the cases


@dataclass(frozen=True)
class ArchCase:
    """One tiny model: how to make it, save it and read its reference Q/K blocks."""

    id: str
    model_type: str
    config_cls: str  # transformers class names, resolved lazily (importing transformers is slow)
    model_cls: str
    config: dict
    reference: Callable  # model -> [(W_Q (H, dh, d), W_K (H_kv, dh, d)) per layer], float64
    n_heads: int
    n_kv_heads: int
    d_model: int
    d_head: int
    n_layers: int = 2
    dtype: torch.dtype = torch.float32
    max_shard_size: int | str | None = None
    seed: int = 0

    @property
    def weights_dtype(self) -> str:
        return str(self.dtype).removeprefix("torch.")

    def make(self):
        """A random model of this case, in ``self.dtype``."""
        import transformers

        config = getattr(transformers, self.config_cls)(**self.config)
        torch.manual_seed(self.seed)
        model = getattr(transformers, self.model_cls)(config)
        randomize(model, self.seed)
        return model.to(self.dtype)


def _llama_style(layers=2, d=32, heads=4, kv=None, head_dim=None, **extra) -> dict:
    config = dict(TOKENS, num_hidden_layers=layers, hidden_size=d, num_attention_heads=heads, intermediate_size=2 * d)
    if kv is not None:
        config["num_key_value_heads"] = kv
    if head_dim is not None:
        config["head_dim"] = head_dim
    config.update(extra)
    return config


def _falcon(**layout) -> dict:
    return dict(TOKENS, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, **layout)


def _case(id, model_type, config_cls, model_cls, config, reference, H, H_kv, d, dh, **kw) -> ArchCase:
    return ArchCase(id, model_type, config_cls, model_cls, config, reference, H, H_kv, d, dh, **kw)


CASES: list[ArchCase] = [
    # llama family: GQA, MQA, head_dim * H != d_model, biases, q/k norms (ignored by the raw spectrum)
    _case("llama-gqa", "llama", "LlamaConfig", "LlamaForCausalLM", _llama_style(kv=2), ref_llama_like, 4, 2, 32, 8),
    _case(
        "llama-bf16-sharded",
        "llama",
        "LlamaConfig",
        "LlamaForCausalLM",
        _llama_style(layers=3, d=64, kv=2),
        ref_llama_like,
        4,
        2,
        64,
        16,
        n_layers=3,
        dtype=torch.bfloat16,
        max_shard_size="12KB",
        seed=1,
    ),
    _case(
        "mistral-mqa", "mistral", "MistralConfig", "MistralForCausalLM", _llama_style(kv=1), ref_llama_like, 4, 1, 32, 8
    ),
    _case(
        "mixtral-gqa",
        "mixtral",
        "MixtralConfig",
        "MixtralForCausalLM",
        _llama_style(kv=2, num_local_experts=2, num_experts_per_tok=1),
        ref_llama_like,
        4,
        2,
        32,
        8,
    ),
    _case(
        "qwen2-gqa-bias", "qwen2", "Qwen2Config", "Qwen2ForCausalLM", _llama_style(kv=2), ref_llama_like, 4, 2, 32, 8
    ),
    _case(
        "qwen3-headdim",
        "qwen3",
        "Qwen3Config",
        "Qwen3ForCausalLM",
        _llama_style(kv=2, head_dim=12),
        ref_llama_like,
        4,
        2,
        32,
        12,
    ),
    _case(
        "gemma-mqa-headdim",
        "gemma",
        "GemmaConfig",
        "GemmaForCausalLM",
        _llama_style(kv=1, head_dim=16),
        ref_llama_like,
        4,
        1,
        32,
        16,
    ),
    _case(
        "gemma2-headdim",
        "gemma2",
        "Gemma2Config",
        "Gemma2ForCausalLM",
        _llama_style(d=48, kv=2, head_dim=16),
        ref_llama_like,
        4,
        2,
        48,
        16,
    ),
    _case(
        "gemma3_text-headdim",
        "gemma3_text",
        "Gemma3TextConfig",
        "Gemma3ForCausalLM",
        _llama_style(kv=2, head_dim=16),
        ref_llama_like,
        4,
        2,
        32,
        16,
    ),
    _case(
        "olmo-mha-f16",
        "olmo",
        "OlmoConfig",
        "OlmoForCausalLM",
        _llama_style(),
        ref_llama_like,
        4,
        4,
        32,
        8,
        dtype=torch.float16,
    ),
    _case("olmo2-gqa", "olmo2", "Olmo2Config", "Olmo2ForCausalLM", _llama_style(kv=2), ref_llama_like, 4, 2, 32, 8),
    _case(
        "gptj",
        "gptj",
        "GPTJConfig",
        "GPTJForCausalLM",
        dict(TOKENS, n_positions=32, n_embd=32, n_layer=2, n_head=4, rotary_dim=4),
        ref_gptj,
        4,
        4,
        32,
        8,
    ),
    _case(
        "opt",
        "opt",
        "OPTConfig",
        "OPTForCausalLM",
        dict(
            TOKENS,
            hidden_size=32,
            num_hidden_layers=2,
            ffn_dim=64,
            num_attention_heads=4,
            max_position_embeddings=32,
            word_embed_proj_dim=32,
        ),
        ref_opt,
        4,
        4,
        32,
        8,
    ),
    _case(
        "gpt2-conv1d",
        "gpt2",
        "GPT2Config",
        "GPT2LMHeadModel",
        dict(TOKENS, n_positions=32, n_embd=32, n_layer=2, n_head=4),
        ref_gpt2,
        4,
        4,
        32,
        8,
    ),
    _case(
        "gpt_neox-interleaved",
        "gpt_neox",
        "GPTNeoXConfig",
        "GPTNeoXForCausalLM",
        dict(TOKENS, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64),
        ref_gpt_neox,
        4,
        4,
        32,
        8,
    ),
    _case(
        "bloom-interleaved",
        "bloom",
        "BloomConfig",
        "BloomForCausalLM",
        dict(TOKENS, hidden_size=32, n_layer=2, n_head=4),
        ref_bloom,
        4,
        4,
        32,
        8,
    ),
    _case(
        "falcon-multi_query",
        "falcon",
        "FalconConfig",
        "FalconForCausalLM",
        _falcon(multi_query=True, new_decoder_architecture=False),
        ref_falcon,
        4,
        1,
        32,
        8,
    ),
    _case(
        "falcon-new_decoder-gqa",
        "falcon",
        "FalconConfig",
        "FalconForCausalLM",
        _falcon(new_decoder_architecture=True, num_kv_heads=2),
        ref_falcon,
        4,
        2,
        32,
        8,
    ),
    _case(
        "falcon-classic",
        "falcon",
        "FalconConfig",
        "FalconForCausalLM",
        _falcon(multi_query=False, new_decoder_architecture=False),
        ref_falcon,
        4,
        4,
        32,
        8,
    ),
    _case(
        "phi3-gqa-headdim",
        "phi3",
        "Phi3Config",
        "Phi3ForCausalLM",
        _llama_style(kv=2, head_dim=16),
        ref_phi3,
        4,
        2,
        32,
        16,
    ),
    _case(
        "bert-prefixed",
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
]

CASES_BY_ID = {case.id: case for case in CASES}


# ------------------------------------------------------------------ shared small helpers


def llama_case(
    id: str = "tiny-llama",
    *,
    layers: int = 2,
    d: int = 32,
    heads: int = 4,
    kv: int = 2,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    shard: str | None = None,
    **config,
) -> ArchCase:
    """A random Llama of any size (the tests' one tiny-Llama factory): ``make_saved(llama_case(...), directory)``.

    ``config``: further LlamaConfig fields (``head_dim``, ``max_position_embeddings``...); ``shard``: save sharded.
    """
    d_head = config.get("head_dim") or d // heads
    return ArchCase(
        id,
        "llama",
        "LlamaConfig",
        "LlamaForCausalLM",
        _llama_style(layers=layers, d=d, heads=heads, kv=kv, **config),
        ref_llama_like,
        heads,
        kv,
        d,
        d_head,
        n_layers=layers,
        dtype=dtype,
        max_shard_size=shard,
        seed=seed,
    )


def make_saved(case: str | ArchCase, directory: str | Path):
    """Make the case's model (a case id of :data:`CASES` or an :class:`ArchCase`) and save it; returns (model, directory)."""
    case = CASES_BY_ID[case] if isinstance(case, str) else case
    model = case.make()
    return model, save(model, directory, case)


def dense_singular_values(wq_head: np.ndarray, wk_head: np.ndarray) -> np.ndarray:
    """Independent reference: dense float64 SVD of the d_model x d_model W_QK = W_Q^T W_K."""
    w_qk = np.asarray(wq_head, np.float64).T @ np.asarray(wk_head, np.float64)
    return np.linalg.svd(w_qk, compute_uv=False)[: wq_head.shape[0]]


def read_config(directory: str | Path) -> dict:
    return json.loads((Path(directory) / "config.json").read_text())


# ------------------------------------------------------------------ 2025-26 architectures (issue 11)
#
# References map each softmax-attention layer's true index to its (W_Q (H, dh, d), W_K (H_kv, dh, d)),
# float64, pulled from the in-memory module the way its modeling code uses them.

SMALL = dict(TOKENS, intermediate_size=64, max_position_embeddings=256)
"""Common sizes of the 2025-26 cases: 4 query heads over 2 key heads unless a case says otherwise."""


def _attn_refs(layers, attn: str = "self_attn", keep=lambda i, layer: True) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """q_proj / k_proj rows split per head (``view(..., -1, head_dim)``), for the layers ``keep`` selects."""
    out = {}
    for i, layer in enumerate(layers):
        module = getattr(layer, attn, None)
        if module is None or not keep(i, layer):
            continue
        dh = module.head_dim
        out[i] = (_heads(module.q_proj.weight, dh), _heads(module.k_proj.weight, dh))
    return out


def ref2_causal(model):
    """Decoder-only ``model.model.layers[i].self_attn`` (MoE, dense, falcon_h1)."""
    return _attn_refs(model.model.layers)


def ref2_gemma3_mm(model):
    """Gemma3ForConditionalGeneration / Mistral3ForConditionalGeneration: ``model.model.language_model.layers``."""
    return _attn_refs(model.model.language_model.layers)


def ref2_llama4_mm(model):
    """Llama4ForConditionalGeneration: ``model.language_model.model.layers`` (the vision tower is left out)."""
    return _attn_refs(model.language_model.model.layers)


def ref2_gated(model):
    """Qwen3-Next: ``q_proj(x).view(..., -1, 2 * head_dim)`` then ``chunk(2)``: per head [query | gate]; queries only."""
    out = {}
    for i, layer in enumerate(model.model.layers):
        attn = getattr(layer, "self_attn", None)
        if attn is None:
            continue
        dh = attn.head_dim
        w = attn.q_proj.weight.detach().to(torch.float64)
        query = w.reshape(-1, 2 * dh, w.shape[-1])[:, :dh]
        out[i] = (query.numpy(), _heads(attn.k_proj.weight, dh))
    return out


def ref2_modernbert(model):
    """ModernBERT ``Wqkv(x).view(bs, -1, 3, H, dh)``: sections [Q | K | V], rows per head inside."""
    out = {}
    for i, layer in enumerate(model.model.layers):
        attn = layer.attn
        dh = attn.head_dim
        w = attn.Wqkv.weight.detach().to(torch.float64)
        d = w.shape[-1]
        q, k, _ = w.reshape(3, -1, dh, d)
        out[i] = (q.numpy(), k.numpy())
    return out


def ref2_mla(model):
    """DeepSeek MLA from the module's own q_a_proj/q_b_proj (or q_proj), kv_a_proj_with_mqa and kv_b_proj.

    W_Q^h = Qb_h Qa (or the rows of q_proj), per head [nope | rope] rows; W_K^h = [Kb_h KVa_latent ; KVa_rope]
    with Kb_h the first qk_nope_head_dim rows of head h in kv_b_proj. Dense, float64, d_model wide.
    """
    cfg = model.config
    h, dn, dr, dv, rkv = (
        cfg.num_attention_heads,
        cfg.qk_nope_head_dim,
        cfg.qk_rope_head_dim,
        cfg.v_head_dim,
        cfg.kv_lora_rank,
    )
    f64 = lambda t: t.weight.detach().to(torch.float64).numpy()  # noqa: E731
    out = {}
    for i, layer in enumerate(model.model.layers):
        attn = layer.self_attn
        if cfg.q_lora_rank is None:
            wq = f64(attn.q_proj).reshape(h, dn + dr, -1)
        else:
            wq = f64(attn.q_b_proj).reshape(h, dn + dr, -1) @ f64(attn.q_a_proj)
        kva = f64(attn.kv_a_proj_with_mqa)
        kb = f64(attn.kv_b_proj).reshape(h, dn + dv, rkv)[:, :dn]
        wk = np.concatenate([kb @ kva[:rkv], np.broadcast_to(kva[rkv:], (h, dr, kva.shape[1]))], axis=1)
        out[i] = (wq, wk)
    return out


_D = dict(SMALL, hidden_size=64, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2)
_MLA = dict(
    SMALL,
    hidden_size=64,
    num_hidden_layers=3,
    num_attention_heads=4,
    kv_lora_rank=16,
    qk_nope_head_dim=16,
    qk_rope_head_dim=8,
    v_head_dim=16,
    n_routed_experts=4,
    num_experts_per_tok=2,
    moe_intermediate_size=32,
    n_shared_experts=1,
    first_k_dense_replace=1,
    n_group=1,
    topk_group=1,
)
_GEMMA3_TEXT = dict(
    SMALL,
    model_type="gemma3_text",
    hidden_size=64,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=24,
    sliding_window=16,
    sliding_window_pattern=2,
)
_LLAMA4_TEXT = dict(
    SMALL,
    model_type="llama4_text",
    intermediate_size_mlp=96,
    hidden_size=64,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    num_local_experts=2,
    interleave_moe_layer_step=2,
    attention_chunk_size=16,
)
_VISION = dict(
    hidden_size=32, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=28, patch_size=14
)


def _case2(id, model_type, config_cls, model_cls, config, reference, H, H_kv, d, dh, layers, **kw) -> ArchCase:
    return ArchCase(id, model_type, config_cls, model_cls, config, reference, H, H_kv, d, dh, n_layers=layers, **kw)


CASES_2026: list[ArchCase] = [
    # multimodal: nested text_config, vision towers with their own q_proj/k_proj left out
    _case2(
        "gemma3-mm",
        "gemma3",
        "Gemma3Config",
        "Gemma3ForConditionalGeneration",
        dict(
            text_config=_GEMMA3_TEXT,
            vision_config=dict(_VISION, model_type="siglip_vision_model"),
            mm_tokens_per_image=4,
            **{k: TOKENS[k] for k in ("pad_token_id", "bos_token_id", "eos_token_id")},
        ),
        ref2_gemma3_mm,
        4,
        2,
        64,
        24,
        4,
    ),
    _case2(
        "llama4-mm",
        "llama4",
        "Llama4Config",
        "Llama4ForConditionalGeneration",
        dict(
            text_config=_LLAMA4_TEXT,
            vision_config=dict(_VISION, vision_output_dim=32, projector_input_dim=32, projector_output_dim=64),
        ),
        ref2_llama4_mm,
        4,
        2,
        64,
        16,
        4,
    ),
    _case2(
        "mistral3-mm",
        "mistral3",
        "Mistral3Config",
        "Mistral3ForConditionalGeneration",
        dict(
            text_config=dict(
                SMALL,
                model_type="mistral",
                hidden_size=64,
                num_hidden_layers=2,
                num_attention_heads=4,
                num_key_value_heads=2,
                head_dim=24,
            ),
            vision_config=dict(_VISION, model_type="pixtral", head_dim=16),
        ),
        ref2_gemma3_mm,
        4,
        2,
        64,
        24,
        2,
    ),
    _case2(
        "llama4_text-nope-chunked",
        "llama4_text",
        "Llama4TextConfig",
        "Llama4ForCausalLM",
        {k: v for k, v in _LLAMA4_TEXT.items() if k != "model_type"},
        ref2_causal,
        4,
        2,
        64,
        16,
        4,
    ),
    # MoE (experts never read)
    _case2(
        "qwen3_moe",
        "qwen3_moe",
        "Qwen3MoeConfig",
        "Qwen3MoeForCausalLM",
        dict(
            _D,
            num_hidden_layers=3,
            head_dim=24,
            num_experts=4,
            num_experts_per_tok=2,
            moe_intermediate_size=32,
            mlp_only_layers=[1],
        ),
        ref2_causal,
        4,
        2,
        64,
        24,
        3,
    ),
    _case2(
        "qwen2_moe-bias",
        "qwen2_moe",
        "Qwen2MoeConfig",
        "Qwen2MoeForCausalLM",
        dict(
            _D,
            num_hidden_layers=3,
            num_experts=4,
            num_experts_per_tok=2,
            moe_intermediate_size=32,
            shared_expert_intermediate_size=32,
        ),
        ref2_causal,
        4,
        2,
        64,
        16,
        3,
    ),
    _case2(
        "gpt_oss-sinks-bias",
        "gpt_oss",
        "GptOssConfig",
        "GptOssForCausalLM",
        dict(_D, head_dim=24, num_local_experts=4, num_experts_per_tok=2, sliding_window=16),
        ref2_causal,
        4,
        2,
        64,
        24,
        4,
    ),
    # dense
    _case2(
        "olmo3", "olmo3", "Olmo3Config", "Olmo3ForCausalLM", dict(_D, sliding_window=16), ref2_causal, 4, 2, 64, 16, 4
    ),
    _case2(
        "smollm3-nope",
        "smollm3",
        "SmolLM3Config",
        "SmolLM3ForCausalLM",
        dict(_D, no_rope_layer_interval=2),
        ref2_causal,
        4,
        2,
        64,
        16,
        4,
    ),
    _case2(
        "cohere2",
        "cohere2",
        "Cohere2Config",
        "Cohere2ForCausalLM",
        dict(_D, sliding_window=16),
        ref2_causal,
        4,
        2,
        64,
        16,
        4,
    ),
    _case2(
        "glm4-partial", "glm4", "Glm4Config", "Glm4ForCausalLM", dict(_D, head_dim=16), ref2_causal, 4, 2, 64, 16, 4
    ),
    _case2(
        "exaone4",
        "exaone4",
        "Exaone4Config",
        "Exaone4ForCausalLM",
        dict(_D, sliding_window=16),
        ref2_causal,
        4,
        2,
        64,
        16,
        4,
    ),
    _case2(
        "granite",
        "granite",
        "GraniteConfig",
        "GraniteForCausalLM",
        dict(_D, attention_multiplier=0.03),
        ref2_causal,
        4,
        2,
        64,
        16,
        4,
    ),
    _case2(
        "starcoder2-bias",
        "starcoder2",
        "Starcoder2Config",
        "Starcoder2ForCausalLM",
        dict(_D),
        ref2_causal,
        4,
        2,
        64,
        16,
        4,
    ),
    _case2(
        "phi3-partial",
        "phi3",
        "Phi3Config",
        "Phi3ForCausalLM",
        dict(_D, partial_rotary_factor=0.75),
        ref_phi3_dict := (lambda model: dict(enumerate(ref_phi3(model)))),
        4,
        2,
        64,
        16,
        4,
    ),
    _case2(
        "modernbert-wqkv",
        "modernbert",
        "ModernBertConfig",
        "ModernBertForMaskedLM",
        dict(
            SMALL,
            hidden_size=64,
            num_hidden_layers=4,
            num_attention_heads=4,
            local_attention=16,
            cls_token_id=1,
            sep_token_id=2,
        ),
        ref2_modernbert,
        4,
        4,
        64,
        16,
        4,
    ),
    # hybrids: rows only for the softmax-attention layers
    _case2(
        "qwen3_next-gated",
        "qwen3_next",
        "Qwen3NextConfig",
        "Qwen3NextForCausalLM",
        dict(
            _D,
            head_dim=16,
            linear_key_head_dim=16,
            linear_value_head_dim=16,
            linear_num_key_heads=2,
            linear_num_value_heads=4,
            num_experts=4,
            num_experts_per_tok=2,
            moe_intermediate_size=32,
            shared_expert_intermediate_size=32,
            full_attention_interval=2,
        ),
        ref2_gated,
        4,
        2,
        64,
        16,
        4,
    ),
    _case2(
        "falcon_h1",
        "falcon_h1",
        "FalconH1Config",
        "FalconH1ForCausalLM",
        dict(
            _D,
            num_hidden_layers=2,
            head_dim=16,
            mamba_d_ssm=64,
            mamba_n_heads=4,
            mamba_d_head=16,
            mamba_n_groups=1,
            mamba_d_state=8,
            mamba_chunk_size=16,
            key_multiplier=0.5,
            attention_in_multiplier=2.0,
        ),
        ref2_causal,
        4,
        2,
        64,
        16,
        2,
    ),
    # latent attention (MLA), with and without q_lora_rank
    _case2(
        "deepseek_v2-lite",
        "deepseek_v2",
        "DeepseekV2Config",
        "DeepseekV2ForCausalLM",
        dict(_MLA, q_lora_rank=None),
        ref2_mla,
        4,
        4,
        64,
        24,
        3,
    ),
    _case2(
        "deepseek_v2-qlora",
        "deepseek_v2",
        "DeepseekV2Config",
        "DeepseekV2ForCausalLM",
        dict(_MLA, q_lora_rank=32),
        ref2_mla,
        4,
        4,
        64,
        24,
        3,
    ),
    _case2(
        "deepseek_v3-qlora",
        "deepseek_v3",
        "DeepseekV3Config",
        "DeepseekV3ForCausalLM",
        dict(_MLA, q_lora_rank=32),
        ref2_mla,
        4,
        4,
        64,
        24,
        3,
    ),
    _case2(
        "deepseek_v3-noqlora",
        "deepseek_v3",
        "DeepseekV3Config",
        "DeepseekV3ForCausalLM",
        dict(_MLA, q_lora_rank=None),
        ref2_mla,
        4,
        4,
        64,
        24,
        3,
    ),
]

CASES_2026_BY_ID = {case.id: case for case in CASES_2026}

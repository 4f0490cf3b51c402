"""Behaviour scores of every attention head from running the model on seeded probes (``--behaviour``).

What a head *does*, beside what its QK spectrum *is*: the model is loaded whole with
``transformers`` (eager attention, so the attention weights are the model's exact
softmax; the checkpoint's dtype; the build's device), run on repeated random-token
sequences, and each query head's attention pattern reduced to a few standard scores.
Only this path imports ``transformers``, lazily: a plain build never does.

Probes (:func:`make_probes`): ``sequences`` rows of ``1 + 2 * length`` tokens: a fixed
first token, then ``length`` distinct random tokens from the model's own vocabulary
(special and ``[unused]`` tokens excluded), then the same ``length`` tokens again.

Scores per query head (:func:`attention_scores`), means over sequences and the query
positions named (positions 0 .. N-1, N = 1 + 2T, A[t, j] the attention of query t on key j):

- ``previous_token``: A[t, t-1], t = 1 .. N-1;
- ``next_token`` (encoders only): A[t, t+1], t = 1 .. N-2;
- ``induction`` (causal only): A[t, t-T+1], t = T+1 .. 2T (the second repeat; key t-T+1 is
  the token after the earlier occurrence of token t);
- ``first_token`` (sink, or CLS for encoders): A[t, 0], t = 1 .. N-1;
- ``local``: the mass on keys 1 <= j within ``local_window`` positions behind the query,
  t-w <= j <= t-1 (encoders: on either side, 0 < |j - t| <= w), over the queries whose
  window is whole (t = w+1 .. N-1; encoders t = w+1 .. N-1-w); the first token is not local;
- ``entropy``: -sum_j A[t, j] ln A[t, j] / ln(context), context t+1 (causal, t = 1 .. N-1)
  or N (encoders, t = 0 .. N-1): 1 for uniform attention, 0 for attention on one key.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import schema
from ..errors import BehaviourError

log = logging.getLogger(__name__)

PROBE_SEED = 0
PROBE_SEQUENCES = 16
PROBE_LENGTH = 32
PROBE_LOCAL_WINDOW = 3

ENCODER_TYPES = frozenset({"bert", "modernbert", "roberta", "xlm-roberta", "distilbert", "electra"})
"""Bidirectional model types: scored with previous, next, first (CLS), local and entropy, no induction."""

CAUSAL_ONLY = ("induction",)
ENCODER_ONLY = ("next_token",)

LOADABLE_DTYPES = ("float32", "float16", "bfloat16", "float64")

_UNUSED = re.compile(r"^(\[unused\d+\]|<unused\d+>)$")
_FIRST_TOKEN_NAMES = ("[CLS]", "<s>", "<|begin_of_text|>", "<bos>", "<|endoftext|>", "<|startoftext|>")


@dataclass(frozen=True)
class ProbeSpec:
    """The probe behind the scores; recorded in every scored row's probe_* columns and part of the skip key."""

    seed: int = PROBE_SEED
    sequences: int = PROBE_SEQUENCES
    length: int = PROBE_LENGTH
    local_window: int = PROBE_LOCAL_WINDOW

    def __post_init__(self) -> None:
        for name, low, high in (("seed", 0, 2**63 - 1), ("sequences", 1, 4096), ("length", 2, 4096), ("local_window", 1, 64)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not low <= value <= high:
                raise BehaviourError(f"--probe-{name.replace('_', '-')} {value!r}: give a whole number from {low} to {high}")
        if self.local_window + 1 > 2 * self.length:
            raise BehaviourError(f"--probe-local-window {self.local_window} is too long for --probe-length {self.length}")

    @property
    def n_positions(self) -> int:
        return 1 + 2 * self.length

    def key(self) -> tuple[int, int, int, int]:
        """(seed, sequences, length, local_window), as the probe_* columns hold them."""
        return (int(self.seed), int(self.sequences), int(self.length), int(self.local_window))


def check_probe(seed=None, sequences=None, length=None, local_window=None) -> ProbeSpec:
    """A :class:`ProbeSpec` from flag values (None: the default); one line for a value that is not a whole number."""
    if not set(schema.BEHAVIOUR_COLUMNS + schema.PROBE_COLUMNS) <= set(schema.COLUMNS):
        raise BehaviourError(f"--behaviour: this builder writes schema v{schema.SCHEMA_VERSION}, which has no behaviour columns")
    values = {}
    for name, value, default in (("seed", seed, PROBE_SEED), ("sequences", sequences, PROBE_SEQUENCES),
                                 ("length", length, PROBE_LENGTH), ("local_window", local_window, PROBE_LOCAL_WINDOW)):
        text = str(default if value is None else value).strip()
        if isinstance(value, bool) or not text.isdigit():
            raise BehaviourError(f"--probe-{name.replace('_', '-')} {value!r}: give a whole number")
        values[name] = int(text)
    return ProbeSpec(**values)


# ---------------------------------------------------------------- probes (pure)


def probe_vocabulary(config: Mapping[str, Any], tokenizer: Mapping[str, Any] | None = None) -> tuple[np.ndarray, int]:
    """(the ids random tokens are drawn from, the fixed first token) of a model.

    Ids are 0 .. vocab_size-1 (and, with a ``tokenizer.json``, only ids its vocabulary or
    added tokens name) without the special tokens: the config's bos/eos/pad/cls/sep/mask/unk
    ids, the tokenizer's special added tokens, ``[unusedN]``/``<unusedN>``. The first token is
    the config's bos (else cls) id, else the tokenizer's [CLS]/<s>/BOS-like token, else the
    smallest drawable id (then no longer drawn).
    """
    vocab_size = config.get("vocab_size")
    if not isinstance(vocab_size, int) or vocab_size < 1:
        raise BehaviourError(f"config.json has no usable vocab_size ({vocab_size!r}): cannot draw probe tokens")
    special: set[int] = set()
    for name in ("bos_token_id", "eos_token_id", "pad_token_id", "cls_token_id", "sep_token_id", "mask_token_id",
                 "unk_token_id", "decoder_start_token_id"):
        value = config.get(name)
        for v in value if isinstance(value, list) else [value]:
            if isinstance(v, int) and not isinstance(v, bool):
                special.add(v)
    allowed = np.ones(vocab_size, bool)
    by_name: dict[str, int] = {}
    if tokenizer:
        model_vocab = (tokenizer.get("model") or {}).get("vocab")
        known = np.zeros(vocab_size, bool)
        if isinstance(model_vocab, dict):
            for text, i in model_vocab.items():
                if isinstance(i, int) and 0 <= i < vocab_size:
                    known[i] = True
                    if _UNUSED.match(str(text)):
                        special.add(i)
                    by_name.setdefault(str(text), i)
        elif isinstance(model_vocab, list):  # Unigram: [(piece, score), ...]
            known[: min(len(model_vocab), vocab_size)] = True
        for token in tokenizer.get("added_tokens") or []:
            i = token.get("id")
            if isinstance(i, int) and 0 <= i < vocab_size:
                known[i] = True
                by_name[str(token.get("content"))] = i
                if token.get("special") or _UNUSED.match(str(token.get("content"))):
                    special.add(i)
        if known.any():
            allowed &= known
    for i in special:
        if 0 <= i < vocab_size:
            allowed[i] = False
    first = next((config[n] for n in ("bos_token_id", "cls_token_id")
                  if isinstance(config.get(n), int) and 0 <= config[n] < vocab_size), None)  # fmt: skip
    if first is None:
        first = next((by_name[n] for n in _FIRST_TOKEN_NAMES if n in by_name), None)
    pool = np.flatnonzero(allowed)
    if first is None and len(pool):
        first, pool = int(pool[0]), pool[1:]
    pool = pool[pool != first]
    return pool.astype(np.int64), int(first)


def make_probes(pool: np.ndarray, first_token: int, spec: ProbeSpec) -> np.ndarray:
    """(sequences, 1 + 2 * length) int64: the first token, ``length`` distinct draws from ``pool``, the same again.

    Draws: ``numpy.random.default_rng(seed).choice(pool, length, replace=False)`` per sequence, in order.
    """
    if len(pool) < spec.length:
        raise BehaviourError(
            f"the vocabulary has {len(pool)} drawable tokens, fewer than --probe-length {spec.length}: use a shorter probe"
        )
    rng = np.random.default_rng(spec.seed)
    out = np.empty((spec.sequences, spec.n_positions), np.int64)
    out[:, 0] = first_token
    for b in range(spec.sequences):
        draw = rng.choice(pool, spec.length, replace=False)
        out[b, 1 : 1 + spec.length] = draw
        out[b, 1 + spec.length :] = draw
    return out


# ---------------------------------------------------------------- scores (pure)


def score_names(causal: bool) -> tuple[str, ...]:
    """The scores measured for a causal model or an encoder (the others stay null)."""
    skip = ENCODER_ONLY if causal else CAUSAL_ONLY
    return tuple(s for s in schema.BEHAVIOUR_SCORES if s not in skip)


def attention_scores(attention: np.ndarray, length: int, local_window: int, causal: bool) -> dict[str, np.ndarray]:
    """Per query head, each score (module docstring) from one layer's attention (B, H, N, N), N = 1 + 2 * length.

    Returns name -> (H,) float64 means over the sequences and the score's query positions.
    """
    a = np.asarray(attention, dtype=np.float64)
    n = a.shape[-1]
    if n != 1 + 2 * length or a.shape[-2] != n:
        raise ValueError(f"attention of shape {a.shape} is not (B, H, {1 + 2 * length}, {1 + 2 * length})")
    t = np.arange(n)
    w = local_window
    out: dict[str, np.ndarray] = {}
    q = t[1:]
    out["previous_token"] = a[:, :, q, q - 1].mean(axis=(0, 2))
    out["first_token"] = a[:, :, q, 0].mean(axis=(0, 2))
    offsets = np.arange(1, w + 1)
    if causal:
        q = np.arange(length + 1, 2 * length + 1)
        out["induction"] = a[:, :, q, q - length + 1].mean(axis=(0, 2))
        q = np.arange(w + 1, n)
        keys = q[:, None] - offsets[None, :]
    else:
        q = np.arange(1, n - 1)
        out["next_token"] = a[:, :, q, q + 1].mean(axis=(0, 2))
        q = np.arange(w + 1, n - w)
        keys = np.concatenate([q[:, None] - offsets[None, :], q[:, None] + offsets[None, :]], axis=1)
    out["local"] = a[:, :, q[:, None], keys].sum(axis=-1).mean(axis=(0, 2))
    with np.errstate(divide="ignore", invalid="ignore"):
        plogp = np.where(a > 0, a * np.log(np.where(a > 0, a, 1.0)), 0.0)
    if causal:
        q = t[1:]
        entropy = -plogp[:, :, q, :].sum(axis=-1) / np.log(q + 1)
    else:
        entropy = -plogp.sum(axis=-1) / np.log(n)
    out["entropy"] = entropy.mean(axis=(0, 2))
    return {name: out[name] for name in score_names(causal)}


# ---------------------------------------------------------------- running the model


@dataclass
class BehaviourResult:
    """A model's scores: name -> {layer index: (H,) float64}, with what it cost."""

    spec: ProbeSpec
    causal: bool
    scores: dict[str, dict[int, np.ndarray]]
    seconds: float = 0.0
    peak_memory_mb: float = float("nan")
    memory_kind: str = ""
    notes: list[str] = field(default_factory=list)


def is_encoder(config: Mapping[str, Any]) -> bool:
    return str(config.get("model_type")) in ENCODER_TYPES


def check_model_class(config: Mapping[str, Any], model_id: str) -> None:
    """One line unless transformers has a causal-LM class for the model type or it is a known encoder."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_MAPPING_NAMES,
    )

    model_type = str(config.get("model_type"))
    if model_type not in MODEL_MAPPING_NAMES or not (is_encoder(config) or model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES):
        raise BehaviourError(
            f"{model_id}: --behaviour runs the model, and transformers has no causal-LM or encoder class for "
            f"model_type {model_type!r}: build it without --behaviour"
        )


def check_positions(config: Mapping[str, Any], spec: ProbeSpec, model_id: str) -> None:
    """One line when a probe is longer than the model's positions (learned absolute positions end there)."""
    limit = next((config[n] for n in ("max_position_embeddings", "n_positions")
                  if isinstance(config.get(n), int) and not isinstance(config.get(n), bool)), None)  # fmt: skip
    if limit is not None and spec.n_positions > limit:
        raise BehaviourError(
            f"{model_id}: --probe-length {spec.length} makes probes of {spec.n_positions} tokens, more than the model's "
            f"{limit} positions: use --probe-length {max((limit - 1) // 2, 1)} or less"
        )


def _tokenizer_json(source) -> dict | None:
    """The model's tokenizer.json as data, or None (a tiny model has none; the config's ids then suffice)."""
    try:
        root = getattr(source, "root", None)
        if root is not None:
            path = Path(root) / "tokenizer.json"
            return json.loads(path.read_text("utf-8")) if path.is_file() else None
        from huggingface_hub import hf_hub_download

        path = hf_hub_download(source.model_id, "tokenizer.json", revision=source.revision, token=getattr(source, "token", None))
        return json.loads(Path(path).read_text("utf-8"))
    except Exception as exc:  # no tokenizer.json: fall back to the config's special ids
        log.debug("%s: no tokenizer.json (%s)", source.model_id, exc)
        return None


def load_model(source, config: Mapping[str, Any], weights_dtype: str, device: str):
    """The model (base class, no head) with eager attention, in the checkpoint's dtype on ``device``; one line if it cannot be."""
    import torch
    from transformers import AutoModel

    check_model_class(config, source.model_id)
    dtypes = weights_dtype.split(",")
    if len(dtypes) != 1 or dtypes[0] not in LOADABLE_DTYPES:
        raise BehaviourError(
            f"{source.model_id}: --behaviour loads the model in the checkpoint's dtype, and {weights_dtype} is not one of "
            f"{', '.join(LOADABLE_DTYPES)}: build it without --behaviour"
        )
    root = getattr(source, "root", None)
    where = str(root) if root is not None else source.model_id
    kwargs = {} if root is not None else {"revision": source.revision, "token": getattr(source, "token", None)}
    try:
        model, info = AutoModel.from_pretrained(
            where, attn_implementation="eager", dtype=getattr(torch, dtypes[0]), output_loading_info=True, **kwargs
        )
    except Exception as exc:
        text = " ".join(str(exc).split())[:200]
        raise BehaviourError(
            f"{source.model_id}: --behaviour needs the full weights, which transformers cannot load ({type(exc).__name__}: "
            f"{text}): build it without --behaviour"
        ) from None
    missing = [k for k in info.get("missing_keys") or [] if not k.startswith("pooler.")]
    if missing:
        raise BehaviourError(
            f"{source.model_id}: --behaviour needs the full weights, but the checkpoint lacks {len(missing)} tensor(s) "
            f"({', '.join(sorted(missing)[:3])}{', ...' if len(missing) > 3 else ''}): build it without --behaviour"
        )
    return model.to(device).eval()


def _peak_memory(device: str, torch) -> tuple[float, str]:
    import resource

    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated(device) / 2**20, "GPU peak allocated"
    scale = 1.0 if sys.platform == "darwin" else 1024.0  # ru_maxrss: bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20, "process peak RSS"


def model_behaviour(
    source, config: Mapping[str, Any], spec: ProbeSpec, weights_dtype: str, device: str = "cpu", batch: int = 4
) -> BehaviourResult:
    """Load the model, run the probes in batches, and average each layer's scores per head."""
    import torch

    started = time.perf_counter()
    causal = not is_encoder(config)
    check_positions(config, spec, source.model_id)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(device)
    model = load_model(source, config, weights_dtype, device)
    try:
        pool, first = probe_vocabulary(config, _tokenizer_json(source))
        probes = make_probes(pool, first, spec)
        sums: dict[str, dict[int, np.ndarray]] = {name: {} for name in score_names(causal)}
        with torch.no_grad():
            for start in range(0, len(probes), batch):
                ids = torch.from_numpy(probes[start : start + batch]).to(device)
                out = model(input_ids=ids, attention_mask=torch.ones_like(ids), output_attentions=True)
                attentions = getattr(out, "attentions", None)
                if not attentions:
                    raise BehaviourError(f"{source.model_id}: the model returned no attention weights: build it without --behaviour")
                for layer, attn in enumerate(attentions):
                    if attn is None:  # a layer without softmax attention (hybrid models)
                        continue
                    scores = attention_scores(attn.float().cpu().numpy(), spec.length, spec.local_window, causal)
                    for name, values in scores.items():
                        sums[name][layer] = sums[name].get(layer, 0.0) + values * len(ids)
        means = {name: {layer: v / len(probes) for layer, v in per.items()} for name, per in sums.items()}
        peak, kind = _peak_memory(device, torch)
    finally:
        del model
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    return BehaviourResult(spec, causal, means, time.perf_counter() - started, peak, kind)


# ---------------------------------------------------------------- columns


def behaviour_columns(layers: Sequence[int], heads: Sequence[int], result: BehaviourResult | None,
                      measured: Sequence[bool] | None = None) -> dict[str, list]:  # fmt: skip
    """schema.BEHAVIOUR_COLUMNS + PROBE_COLUMNS for rows (layer, head): null without a result, on rows not
    ``measured`` (ov rows), for scores that do not apply (induction of encoders, next-token of causal
    models) and for layers the model reported no attention for."""
    n = len(layers)
    measured = [True] * n if measured is None else list(measured)
    columns: dict[str, list] = {c: [None] * n for c in schema.BEHAVIOUR_COLUMNS + schema.PROBE_COLUMNS}
    if result is None:
        return columns
    for i, (layer, head) in enumerate(zip(layers, heads)):
        if not measured[i]:
            continue
        any_score = False
        for name in schema.BEHAVIOUR_SCORES:
            values = result.scores.get(name, {}).get(int(layer))
            if values is not None:
                columns[f"behaviour_{name}"][i] = float(values[int(head)])
                any_score = True
        if any_score:
            for column, value in zip(schema.PROBE_COLUMNS, result.spec.key()):
                columns[column][i] = value
    return columns


def checkpoint_dtype(checkpoint, names: Mapping[str, str]) -> str:
    """The checkpoint's dtype: the one most of its bytes are stored in (norms kept in float32 beside bf16 weights do not count)."""
    size: dict[str, int] = {}
    for info in checkpoint.tensors.values():
        size[info.dtype] = size.get(info.dtype, 0) + info.end - info.start
    dtype = max(size, key=size.get) if size else "F32"
    return names.get(dtype, dtype)


def add_behaviour_columns(columns: dict[str, Any], result: BehaviourResult) -> dict[str, Any]:
    """Fill a model's behaviour and probe columns in place: qk rows only (every variant of a head), null elsewhere."""
    circuits = columns.get("circuit")
    measured = None if circuits is None else [c == schema.CIRCUIT_QK for c in circuits]
    columns.update(behaviour_columns(list(columns["layer"]), list(columns["head"]), result, measured))
    log.info("%s: behaviour scores in %.1f s, %s %.0f MB", columns["model_id"][0] if len(columns["model_id"]) else "?",
             result.seconds, result.memory_kind, result.peak_memory_mb)
    return columns


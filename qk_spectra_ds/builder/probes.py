"""The probes of ``--behaviour`` and the scores of an attention pattern: pure numpy, no model.

:mod:`.behaviour` runs the model on these probes and reduces each query head's attention
weights with :func:`attention_scores`.

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

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import schema
from ..errors import BehaviourError

PROBE_SEED = 0
PROBE_SEQUENCES = 16
PROBE_LENGTH = 32
PROBE_LOCAL_WINDOW = 3

CAUSAL_ONLY = ("induction",)
ENCODER_ONLY = ("next_token",)

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
        for name, low, high in (
            ("seed", 0, 2**63 - 1),
            ("sequences", 1, 4096),
            ("length", 2, 4096),
            ("local_window", 1, 64),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not low <= value <= high:
                raise BehaviourError(
                    f"--probe-{name.replace('_', '-')} {value!r}: give a whole number from {low} to {high}"
                )
        if self.local_window + 1 > 2 * self.length:
            raise BehaviourError(
                f"--probe-local-window {self.local_window} is too long for --probe-length {self.length}"
            )

    @property
    def n_positions(self) -> int:
        return 1 + 2 * self.length

    def key(self) -> tuple[int, int, int, int]:
        """(seed, sequences, length, local_window), as the probe_* columns hold them."""
        return (int(self.seed), int(self.sequences), int(self.length), int(self.local_window))


def check_probe(seed=None, sequences=None, length=None, local_window=None) -> ProbeSpec:
    """A :class:`ProbeSpec` from flag values (None: the default); one line for a value that is not a whole number."""
    if not set(schema.BEHAVIOUR_COLUMNS + schema.PROBE_COLUMNS) <= set(schema.COLUMNS):
        raise BehaviourError(
            f"--behaviour: this builder writes schema v{schema.SCHEMA_VERSION}, which has no behaviour columns"
        )
    values = {}
    for name, value, default in (
        ("seed", seed, PROBE_SEED),
        ("sequences", sequences, PROBE_SEQUENCES),
        ("length", length, PROBE_LENGTH),
        ("local_window", local_window, PROBE_LOCAL_WINDOW),
    ):
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
    for name in (
        "bos_token_id",
        "eos_token_id",
        "pad_token_id",
        "cls_token_id",
        "sep_token_id",
        "mask_token_id",
        "unk_token_id",
        "decoder_start_token_id",
    ):
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
    first = next(
        (
            config[n]
            for n in ("bos_token_id", "cls_token_id")
            if isinstance(config.get(n), int) and 0 <= config[n] < vocab_size
        ),
        None,
    )
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

"""Behaviour scores of every attention head from running the model on seeded probes (``--behaviour``).

What a head *does*, beside what its QK spectrum *is*: the model is loaded whole with
``transformers`` (eager attention, so the attention weights are the model's exact
softmax; the checkpoint's dtype; the build's device), run on the repeated random-token
sequences of :mod:`.probes`, and each query head's attention pattern reduced to the
scores defined there (:func:`.probes.attention_scores`). Only this path imports
``transformers`` and torch, lazily: a plain build never does.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import schema
from ..errors import BehaviourError
from .probes import ProbeSpec, attention_scores, make_probes, probe_vocabulary, score_names

log = logging.getLogger(__name__)

ENCODER_TYPES = frozenset({"bert", "modernbert", "roberta", "xlm-roberta", "distilbert", "electra"})
"""Bidirectional model types: scored with previous, next, first (CLS), local and entropy, no induction."""

LOADABLE_DTYPES = ("float32", "float16", "bfloat16", "float64")


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
    from transformers.models.auto.modeling_auto import (  # deliberately lazy: only --behaviour needs transformers
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_MAPPING_NAMES,
    )

    model_type = str(config.get("model_type"))
    if model_type not in MODEL_MAPPING_NAMES or not (
        is_encoder(config) or model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    ):
        raise BehaviourError(
            f"{model_id}: --behaviour runs the model, and transformers has no causal-LM or encoder class for "
            f"model_type {model_type!r}: build it without --behaviour"
        )


def check_positions(config: Mapping[str, Any], spec: ProbeSpec, model_id: str) -> None:
    """One line when a probe is longer than the model's positions (learned absolute positions end there)."""
    limit = next(
        (
            config[n]
            for n in ("max_position_embeddings", "n_positions")
            if isinstance(config.get(n), int) and not isinstance(config.get(n), bool)
        ),
        None,
    )
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
        from huggingface_hub import hf_hub_download  # deliberately lazy: a local model never needs it

        path = hf_hub_download(
            source.model_id, "tokenizer.json", revision=source.revision, token=getattr(source, "token", None)
        )
        return json.loads(Path(path).read_text("utf-8"))
    except Exception as exc:  # no tokenizer.json: fall back to the config's special ids
        log.debug("%s: no tokenizer.json (%s)", source.model_id, exc)
        return None


def load_model(source, config: Mapping[str, Any], weights_dtype: str, device: str):
    """The model (base class, no head) with eager attention, in the checkpoint's dtype on ``device``; one line if it cannot be."""
    import torch  # deliberately lazy, like every transformers import here
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
    import resource  # deliberately lazy: POSIX only, and only once a model has run

    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated(device) / 2**20, "GPU peak allocated"
    scale = 1.0 if sys.platform == "darwin" else 1024.0  # ru_maxrss: bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20, "process peak RSS"


def model_behaviour(
    source, config: Mapping[str, Any], spec: ProbeSpec, weights_dtype: str, device: str = "cpu", batch: int = 4
) -> BehaviourResult:
    """Load the model, run the probes in batches, and average each layer's scores per head."""
    import torch  # deliberately lazy: only --behaviour runs the model

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
                    raise BehaviourError(
                        f"{source.model_id}: the model returned no attention weights: build it without --behaviour"
                    )
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


def behaviour_columns(
    layers: Sequence[int], heads: Sequence[int], result: BehaviourResult | None, measured: Sequence[bool] | None = None
) -> dict[str, list]:
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
    log.info(
        "%s: behaviour scores in %.1f s, %s %.0f MB",
        columns["model_id"][0] if len(columns["model_id"]) else "?",
        result.seconds,
        result.memory_kind,
        result.peak_memory_mb,
    )
    return columns

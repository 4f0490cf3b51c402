"""What a build computes, decided before any weight is read: the model's plan, then each layer's.

:func:`plan_model` reads config.json's architecture and the safetensors headers: which layers
have softmax attention, which variants and circuits the checkpoint allows (a default build
drops the ones it cannot give, with a warning; asked-for ones are an error), the rotary of
each layer and the offsets of the positional spectra. :func:`layer_plan` turns a layer's
folding gains, rotary and null draws into the kernel's :class:`.variants.LayerPlan`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import schema
from ..errors import CheckpointError
from . import route
from .architectures import model_type_for
from .build_options import BuildOptions, check_circuits, check_variants, require_build_extra
from .config_checks import check_layers_present
from .folding import folding_problem
from .layer_facts import LayerFacts
from .layouts import AttentionShape
from .ov import ov_d_head, ov_problem
from .rotary import default_offsets, rotary_from_spec
from .safetensors_io import Checkpoint
from .weights import ModelSource

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelPlan:
    """One model's build, as decided from its config and headers: the rows it gets and where they are read from."""

    source: ModelSource
    config: Mapping[str, Any]
    layout: Any  # the architecture's Q/K layout (reads a layer's blocks)
    shape: AttentionShape
    facts: list[LayerFacts]  # the softmax-attention layers, with their true indices
    checkpoint: Checkpoint
    variants: tuple[str, ...]
    circuits: tuple[str, ...]
    offsets: tuple[int, ...]  # () : no positional spectra
    rotaries: dict  # layer -> Rotary, for the rotary layers when offsets are computed
    d_v: int  # the OV circuit's head width (d_head when ov is not built)

    @property
    def model_id(self) -> str:
        return self.source.model_id

    @property
    def layers(self) -> list[int]:
        return [f.layer for f in self.facts]

    @property
    def want_folding(self) -> bool:
        return any(v in self.variants for v in (schema.VARIANT_FOLDED, schema.VARIANT_NULL))

    @property
    def want_ov(self) -> bool:
        return schema.CIRCUIT_OV in self.circuits


def plan_model(source: ModelSource, config: Mapping[str, Any], options: BuildOptions) -> ModelPlan:
    """The plan of one model from config.json and the safetensors headers (no weight is read)."""
    arch = model_type_for(config)
    shape = arch.shape(config)
    layout = arch.layout(config)
    facts = arch.layer_facts(config)
    layers = [f.layer for f in facts]
    variants = check_variants(options.variants)
    circuits = check_circuits(options.circuits)
    offsets = options.offsets
    if not route.numpy_route(variants, offsets, options.device or route.default_device()):
        require_build_extra()  # one line if torch is missing (rotary frequencies, folded/null, GPU)
    if route.numpy_route(variants, offsets, "cpu"):
        rotaries, offsets = {}, ()  # raw rows without positional spectra need no rotary (nor torch)
    else:
        rotaries, offsets = layer_rotaries(arch, config, offsets, source.model_id)
    checkpoint = Checkpoint(source)
    variants = usable_variants(checkpoint, config, layers, variants, options.variants is not None, source.model_id)
    check_stored_layers(source.model_id, arch, layout, config, checkpoint, shape, layers)
    circuits = usable_circuits(layout, checkpoint, layers, circuits, options.circuits is not None, source.model_id)
    d_v = ov_d_head(config, shape) if schema.CIRCUIT_OV in circuits else shape.d_head
    return ModelPlan(source, config, layout, shape, facts, checkpoint, variants, circuits, offsets, rotaries, d_v)


def usable_variants(
    checkpoint, config, layers, variants: tuple[str, ...], asked: bool, model_id: str
) -> tuple[str, ...]:
    """``variants``, or raw alone when the checkpoint cannot give the folded/null ones and they were not asked for."""
    if any(v in variants for v in (schema.VARIANT_FOLDED, schema.VARIANT_NULL)):
        problem = folding_problem(checkpoint, config, layers)
        if problem and asked:
            raise CheckpointError(f"{model_id}: cannot build the folded/null variants: {problem}")
        if problem:  # the default asks for every variant the checkpoint allows
            log.warning("%s: raw rows only (%s)", model_id, problem)
            return (schema.VARIANT_RAW,)
    return variants


def check_stored_layers(model_id: str, arch, layout, config, checkpoint, shape: AttentionShape, layers) -> None:
    """One line when the weights hold more layers than config.json says, or lack one it names (headers only)."""
    stored = arch.stored_layers(config)
    if layout.has_layer(checkpoint, stored):
        raise CheckpointError(
            f"{model_id}: the weights have a layer {stored} ({layout.query_tensor(stored)}) but "
            f"config.json says {shape.n_layers} layers: config and weights do not match"
        )
    check_layers_present(model_id, config, layout, checkpoint, shape.n_layers, layers)


def usable_circuits(
    layout, checkpoint, layers, circuits: tuple[str, ...], asked: bool, model_id: str
) -> tuple[str, ...]:
    """``circuits``, or qk alone when the checkpoint has no V/O (e.g. a Q/K-only extract) and ov was not asked for."""
    if schema.CIRCUIT_OV in circuits:
        problem = ov_problem(layout, checkpoint, layers)
        if problem and asked:
            raise CheckpointError(f"{model_id}: cannot build the ov circuit: {problem}")
        if problem:  # the default asks for every circuit the checkpoint allows
            log.warning("%s: qk rows only (%s)", model_id, problem)
            return (schema.CIRCUIT_QK,)
    return circuits


def layer_rotaries(
    arch, config: Mapping[str, Any], offsets: Sequence[int] | None, model_id: str = ""
) -> tuple[dict, tuple[int, ...]]:
    """(layer -> Rotary of every rotary layer, the model's offsets); offsets () when no layer rotates.

    With the default offsets (``offsets`` None), a rotary this builder cannot reproduce
    exactly (an unknown rope_type) gives no positional spectra and a warning; asked-for
    offsets make it an error. MLA's decoupled rope dims (the last qk_rope_head_dim of each
    head, ``Rotary.start``) are rotated where they sit.
    """
    rotaries = {}
    try:
        for facts in arch.layer_facts(config):
            rotary = rotary_from_spec(facts.rope, config)
            if rotary is not None:
                rotaries[facts.layer] = (rotary, facts.rope.max_position_embeddings)
    except CheckpointError as exc:
        if offsets is not None:
            raise CheckpointError(f"{model_id}: no positional spectra: {exc}") from None
        log.warning("%s: no positional spectra (%s)", model_id, exc)
        return {}, ()
    if not rotaries:
        return {}, ()
    if offsets is None:
        longest = (
            max((m or 0) for _, m in rotaries.values())
            or config.get("n_positions")
            or config.get("max_position_embeddings")
        )
        offsets = default_offsets(longest)
    return {layer: r for layer, (r, _) in rotaries.items()}, tuple(int(o) for o in offsets)


def layer_plan(
    variants,
    folding,
    rotary,
    offsets,
    model_id: str,
    layer: int,
    shape: AttentionShape,
    null_seed: int,
    device: str = "cpu",
):
    """The kernel's plan for one layer: variants, numeric folding, offsets, null draws.

    The rotary attention factor a enters c as a^2 when every dim of the head rotates, else
    as a on the rotating dims of the q/k gains (:func:`rotary_factor_gains`).

    A folding whose reader composed the gains into the head blocks (MLA) passes those
    blocks on (as float64 tensors on ``device``), with no gain left for the kernel.
    """
    from .variants import LayerFolding, LayerPlan, haar_rotations  # deliberately lazy: variants imports torch

    layer_folding = rotations = blocks = None
    if folding is not None:
        a = 1.0 if rotary is None else rotary.attention_factor
        q_gain, k_gain, scale = folding.q_gain, folding.k_gain, folding.attention_scale * a * a
        if a != 1.0 and rotary.rotary_dim < shape.d_head:  # a scales the rotating dims only: a diagonal, not a^2 in c
            q_gain = rotary_factor_gains(q_gain, rotary, shape.n_heads, shape.d_head)
            k_gain = rotary_factor_gains(k_gain, rotary, shape.n_kv_heads, shape.d_head)
            scale = folding.attention_scale
        layer_folding = LayerFolding(folding.gain, folding.centre, q_gain, k_gain, scale)
        if getattr(folding, "blocks", None) is not None:
            import torch  # deliberately lazy: only the torch route plans a layer

            blocks = tuple(torch.from_numpy(b).to(device=device, dtype=torch.float64) for b in folding.blocks)
    if schema.VARIANT_NULL in variants:
        rotations = haar_rotations(null_seed, model_id, layer, shape.n_heads, shape.d_head)
    return LayerPlan(
        tuple(variants), layer_folding, rotary if offsets else None, tuple(offsets), rotations, folded_blocks=blocks
    )


def rotary_factor_gains(gains, rotary, n_heads: int, d_head: int) -> np.ndarray:
    """(n_heads, d_head) per-head gains times A = diag(a on the rotating dims, 1 elsewhere).

    The rotary module scales cos and sin by its attention factor a, so a query or key is
    multiplied by a on the dims it rotates and left alone on the others (partial rotary's
    pass dims, MLA's nope dims): with some dims not rotating, a^2 is no factor of c but the
    diagonal A next to the q/k gains, where the rotation also sits (A commutes with R(delta)).
    """
    factor = np.ones(d_head)
    for dims in rotary.pairs():
        factor[dims] = rotary.attention_factor
    return factor * (np.ones((n_heads, d_head)) if gains is None else gains)

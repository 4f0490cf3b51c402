"""Per-layer computation: read a layer's blocks, run the kernel on each circuit and variant, the next layer prefetched.

:func:`compute_layers` reads layer l+1 in a background thread while layer l's kernel runs
(:func:`read_layer` is also what a local model's revision pre-pass reads through, so the
digest covers every byte the rows depend on). Raw rows on the CPU without positional
spectra go through numpy alone (:mod:`.route`); everything else through the torch kernel.
Every failure is one line naming the model, the layer and (where it applies) the head,
variant and circuit.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from .. import schema
from ..errors import CheckpointError, WeightRangeError
from ..progress import progress_bar
from .folding import read_folding
from .layouts import AttentionShape, LayerQK
from .ov import fold_ov, output_norm_gain, read_ov
from .planning import ModelPlan, layer_plan
from .route import layer_spectra, numpy_route
from .spectra import float32_storage_problem


def read_layer(plan: ModelPlan, layer: int) -> tuple[tuple[LayerQK, Any, Any], float]:
    """Everything the rows of one layer are computed from, and the seconds the read took.

    Q/K, and for the folded and null variants the norm and q/k-norm gains; with the ov
    circuit V and O (and the output-side norm gain), :func:`.ov.read_ov`. The local
    revision's pre-pass reads through it too.
    """
    checkpoint, config, shape = plan.checkpoint, plan.config, plan.shape
    t0 = time.perf_counter()
    if plan.want_folding:  # MLA composes the latent norms' gains into its maps as it reads them
        qk, folding = plan.layout.read_with_folding(
            checkpoint, layer, shape, lambda anchor: read_folding(checkpoint, config, layer, shape, anchor)
        )
    else:
        qk, folding = plan.layout.read(checkpoint, layer, shape), None
    for info, array in zip(("q", "k"), (qk.q, qk.k)):
        if not np.isfinite(array).all():
            names = ", ".join(t.name for t in qk.tensors)
            raise CheckpointError(
                f"{plan.model_id}: NaN or Inf in the {info.upper()} weights of layer {layer} ({names})"
            )
    ov_blocks = (
        read_ov_layer(plan.layout, checkpoint, config, layer, shape, plan.d_v, plan.want_folding, folding)
        if plan.want_ov
        else None
    )
    return (qk, folding, ov_blocks), time.perf_counter() - t0


def compute_layers(
    plan: ModelPlan, read, device: str, null_seed: int, timings: dict[str, float], progress: bool = True
) -> tuple[dict[tuple[str, str], list], list[str]]:
    """((circuit, variant) -> per-layer spectra, the names of the tensors read): every layer, the next one prefetched.

    ``read(layer)`` is :func:`read_layer` bound to the plan. ``timings``: ``read_io`` (the prefetch
    thread's reads), ``read`` (the time the kernel waited for them) and ``kernel`` are added to.
    """
    layers, model_id, variants, offsets = plan.layers, plan.model_id, plan.variants, plan.offsets
    numpy_only = numpy_route(variants, offsets, device)  # None plans: raw rows through numpy alone
    spectra_by_variant: dict[tuple[str, str], list] = {(c, v): [] for c in plan.circuits for v in variants}
    tensor_names: list[str] = []
    bar = progress_bar(range(len(layers)), progress, desc=f"{model_id} layers", leave=False)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="qk-prefetch") as pool:
        pending = pool.submit(read, layers[0]) if layers else None
        for row, layer in zip(bar, layers):
            wait0 = time.perf_counter()
            (qk, folding, ov_blocks), read_seconds = pending.result()
            timings["read"] += time.perf_counter() - wait0
            timings["read_io"] += read_seconds
            if row + 1 < len(layers):
                pending = pool.submit(read, layers[row + 1])
            else:
                pending = None  # the last layer's arrays are freed as soon as the locals below let go of them
            tensor_names.extend(t.name for t in qk.tensors)
            kernel_plan = (
                None
                if numpy_only
                else layer_plan(
                    variants, folding, plan.rotaries.get(layer), offsets, model_id, layer, plan.shape, null_seed, device
                )
            )
            t0 = time.perf_counter()
            if (
                ov_blocks is not None
            ):  # OV first (no positional work), its blocks freed before the larger QK kernel runs
                tensor_names.extend(t.name for t in ov_blocks[0].tensors)
                ov_spectra = ov_layer_variants(ov_blocks, variants, model_id, layer, null_seed, device, numpy_only)
                ov_blocks = None
                for name, spectra in ov_spectra.items():
                    spectra_by_variant[(schema.CIRCUIT_OV, name)].append(spectra)
            if schema.CIRCUIT_QK in plan.circuits:
                for name, spectra in layer_variants_or_error(qk.q, qk.k, kernel_plan, model_id, layer, device).items():
                    spectra_by_variant[(schema.CIRCUIT_QK, name)].append(spectra)
            qk = folding = kernel_plan = None
            timings["kernel"] += time.perf_counter() - t0
    return spectra_by_variant, tensor_names


def layer_variants_or_error(
    q, k, plan, model_id: str, layer: int, device: str = "cpu", circuit: str = schema.CIRCUIT_QK
) -> dict:
    """Every variant's spectra of a layer (numpy Q, K blocks; plan None: raw through numpy alone, see :mod:`.route`),
    or a one-line CheckpointError naming model, layer, head (and variant)."""
    try:
        spectra = layer_spectra(q, k, plan, device)
    except WeightRangeError as exc:
        where = "" if circuit == schema.CIRCUIT_QK else " (OV circuit: query = output, key = value)"
        raise CheckpointError(f"{model_id}: layer {layer} {exc}{where}") from None
    for name, values in spectra.items():
        problem = float32_storage_problem(values.singular_values)
        if problem is not None:
            suffix = "" if name == schema.VARIANT_RAW else f" ({name} variant)"
            suffix += "" if circuit == schema.CIRCUIT_QK else " (OV circuit)"
            raise CheckpointError(f"{model_id}: layer {layer} {problem}{suffix}")
    return spectra


def read_ov_layer(
    layout, checkpoint, config, layer: int, shape: AttentionShape, d_v: int, folded: bool, qk_folding=None
):
    """(raw LayerOV, folded (A, B) blocks or None) of one layer: V and O, and for folded/null the gains.

    ``qk_folding``: the gains the QK read already holds (read once); MLA's, composed into its Q/K blocks, are read again.
    """
    ov = read_ov(layout, checkpoint, layer, shape, d_v)
    for name, array in (("V", ov.v), ("O", ov.o)):
        if not np.isfinite(array).all():
            raise CheckpointError(
                f"{checkpoint.source.model_id}: NaN or Inf in the {name} weights of layer {layer} "
                f"({', '.join(t.name for t in ov.tensors)})"
            )
    if not folded:
        return ov, None
    anchor = ov.tensors[0].name
    folding = qk_folding
    if folding is None or getattr(folding, "blocks", None) is not None:
        folding = read_folding(checkpoint, config, layer, shape, anchor)
    return ov, fold_ov(ov, folding, output_norm_gain(checkpoint, config, layer, shape.d_model, anchor))


def ov_layer_variants(
    ov_blocks, variants, model_id: str, layer: int, null_seed: int, device: str, numpy_only: bool
) -> dict:
    """Every variant's OV spectra of a layer: the QK kernel on A = (W_O^h)^T and B = W_V^g blocks (:mod:`.ov`).

    The null rotations are drawn as for QK from the key ``model_id + "#ov"``: independent of the QK null's.
    ``numpy_only``: raw rows through numpy alone (:func:`.route.numpy_route`).
    """
    ov, folded = ov_blocks
    a = np.asarray(ov.o, dtype=np.float64)  # one float64 copy, shared by the raw and (no output norm) folded blocks
    if folded is not None and folded[0] is ov.o:
        folded = (a, folded[1])
    ov.o = None  # the blocks as read (float32) are not needed any more: peak memory
    if numpy_only:
        return layer_variants_or_error(a, ov.v, None, model_id, layer, device, circuit=schema.CIRCUIT_OV)
    import torch  # deliberately lazy, with variants (which imports torch): the numpy route never needs them

    from .variants import LayerFolding, LayerPlan, haar_rotations

    n_heads, d_v = a.shape[0], a.shape[1]
    folding = blocks = rotations = None
    if folded is not None:
        folding = LayerFolding(None, False, None, None, 1.0)
        blocks = tuple(torch.from_numpy(np.asarray(x, dtype=np.float64)).to(device=device) for x in folded)
    if schema.VARIANT_NULL in variants:
        rotations = haar_rotations(null_seed, model_id + "#ov", layer, n_heads, d_v)
    plan = LayerPlan(tuple(variants), folding, None, (), rotations, folded_blocks=blocks)
    return layer_variants_or_error(a, ov.v, plan, model_id, layer, device, circuit=schema.CIRCUIT_OV)

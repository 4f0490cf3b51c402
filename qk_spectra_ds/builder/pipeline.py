"""Orchestration: a model spec -> per-head rows -> one parquet file in the dataset repo.

Per model: read config.json, pick the architecture, read the safetensors
headers, then for each layer fetch only Q and K (the next layer's read runs in
a background thread while the current layer's kernel runs), compute the
spectra, and finally the statistics for all heads at once. The model's file is
written atomically and the card regenerated, so an interrupted or partly
failing build keeps every finished model, and a rerun skips them.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__, dataset_repo, schema
from ..atomic import sweep_stale_temporaries
from ..errors import BuildError, CheckpointError, ModelSourceError, QKSpectraError
from ..paths import check_output_dir
from ..statistics import spectrum_metrics, spectrum_statistics
from . import catalog, skip_key
from .architectures import model_type_for
from .circuit_rows import circuit_metric_columns, eigvals_per_core
from .config_checks import check_layers_present
from .folding import folding_problem, read_folding
from .layer_facts import LayerFacts
from .layouts import AttentionShape, LayerQK
from .ov import ov_d_head, ov_problem
from .safetensors_io import Checkpoint
from .weights import ModelSource, missing_directory, open_source

log = logging.getLogger(__name__)

DTYPE_NAMES = {"BF16": "bfloat16", "F16": "float16", "F32": "float32", "F64": "float64", "F8_E4M3": "float8_e4m3fn"}


@dataclass
class ModelResult:
    """What happened to one model of a build."""

    model_id: str
    status: str  # "built", "skipped" or "failed"
    path: Path | None = None
    error: str | None = None
    revision: str | None = None
    n_rows: int = 0
    bytes_fetched: int = 0  # distinct bytes of the checkpoint read, each byte once
    checkpoint_bytes: int = 0
    bytes_transferred: int = 0  # every read counted (a local model's revision pre-pass reads its Q/K a second time)
    timings: dict[str, float] = field(default_factory=dict)
    variants: tuple[str, ...] = (schema.VARIANT_RAW,)
    circuits: tuple[str, ...] = (schema.CIRCUIT_QK,)

    @property
    def fetched_share(self) -> float:
        return self.bytes_fetched / self.checkpoint_bytes if self.checkpoint_bytes else float("nan")


def resolve_source(spec: str, token: str | bool | None = None) -> ModelSource:
    """A model spec -> its source; catalogued Hub ids with an installed offline copy read that copy."""
    spec = str(spec).strip()
    packaged = catalog.packaged_model_dir(spec)
    if packaged is not None:
        return open_source(str(packaged), model_id=spec)
    return open_source(spec, token=token)


def build_model(
    spec: str | ModelSource,
    family: str,
    out_dir: str | Path,
    *,
    device: str | None = None,
    force: bool = False,
    progress: bool = True,
    token: str | bool | None = None,
    taken_ids: Mapping[str, str] | None = None,
    variants: Sequence[str] | None = None,
    offsets: Sequence[int] | None = None,
    null_seed: int = schema.NULL_SEED,
    circuits: Sequence[str] | None = None,
    behaviour: Any = None,
) -> ModelResult:
    """Build one model, or skip it if its file holds the same revision and method version.

    The skip key is exact: ``model_revision`` (a Hub commit, or for a local
    folder the digest of every byte its rows depend on, see
    :func:`local_revision_prepass`) and ``method_version``
    (:data:`schema.METHOD_VERSION`), and every option that changes rows
    (:data:`skip_key.ROW_OPTIONS`: variants, offsets, the null variant's seed) as
    the file holds it; the package version plays no part.

    ``taken_ids`` maps the model ids already built in this run to their specs: a
    second model with the same id (two local folders of one name, one Hub id at
    two revisions) is refused instead of overwriting the first one's table.

    ``variants`` (default raw, folded, null) and ``offsets`` (default 0, 1, 2, 4, ...
    up to max_position_embeddings; ``[]``: no positional spectra) choose the rows:
    one per (layer, head, variant), see :mod:`.variants`. ``circuits`` (default qk, ov)
    multiplies them by circuit: QK and OV (:mod:`.ov`), each with its symmetry and
    matched-null z-scores (:mod:`.circuit_rows`). ``behaviour`` (a :class:`.behaviour.ProbeSpec`,
    ``--behaviour``) also runs the model on seeded probes and fills the qk rows' behaviour columns.
    """
    from . import route
    from .memory import fix_mmap_threshold

    fix_mmap_threshold()  # freed per-layer buffers go back to the OS: flat memory over the layers

    # read_io: time spent reading Q/K (in the prefetch thread); read: time the kernel waited for it.
    timings = {"read_io": 0.0, "read": 0.0, "kernel": 0.0, "statistics": 0.0, "write": 0.0}
    started = time.perf_counter()
    source = spec if isinstance(spec, ModelSource) else resolve_source(spec, token=token)
    if taken_ids and source.model_id in taken_ids:
        raise ModelSourceError(
            f"{spec} has the model id {source.model_id!r} of {taken_ids[source.model_id]}, built earlier in this run: "
            "a family keeps one table per model id; rename the folder or build it into another family"
        )
    try:
        config = source.read_json("config.json")
    except ModelSourceError as exc:
        if "no config.json" in str(exc) or "no file config.json" in str(exc):
            raise ModelSourceError(f"{source.model_id}: no config.json: is this a transformers model?") from None
        raise
    arch = model_type_for(config)
    shape = arch.shape(config)
    layout = arch.layout(config)
    facts = arch.layer_facts(config)  # the softmax-attention layers, with their true indices
    layers = [f.layer for f in facts]
    asked = variants is not None
    variants = check_variants(variants)
    circuits_asked = circuits is not None
    circuits = check_circuits(circuits)
    if not route.numpy_route(variants, offsets, device or route.default_device()):
        require_build_extra()  # one line if torch is missing (rotary frequencies, folded/null, GPU)
    if route.numpy_route(variants, offsets, "cpu"):
        rotaries, offsets = {}, ()  # raw rows without positional spectra need no rotary (nor torch)
    else:
        rotaries, offsets = layer_rotaries(arch, config, offsets, source.model_id)
    checkpoint = Checkpoint(source)
    if any(v in variants for v in (schema.VARIANT_FOLDED, schema.VARIANT_NULL)):
        problem = folding_problem(checkpoint, config, layers)
        if problem and asked:
            raise CheckpointError(f"{source.model_id}: cannot build the folded/null variants: {problem}")
        if problem:  # the default asks for every variant the checkpoint allows
            log.warning("%s: raw rows only (%s)", source.model_id, problem)
            variants = (schema.VARIANT_RAW,)
    want_folding = any(v in variants for v in (schema.VARIANT_FOLDED, schema.VARIANT_NULL))
    stored = arch.stored_layers(config)
    if layout.has_layer(checkpoint, stored):
        raise CheckpointError(
            f"{source.model_id}: the weights have a layer {stored} ({layout.query_tensor(stored)}) but "
            f"config.json says {shape.n_layers} layers: config and weights do not match"
        )
    check_layers_present(source.model_id, config, layout, checkpoint, shape.n_layers, layers)  # headers only, no read

    if schema.CIRCUIT_OV in circuits:
        problem = ov_problem(layout, checkpoint, layers)
        if problem and circuits_asked:
            raise CheckpointError(f"{source.model_id}: cannot build the ov circuit: {problem}")
        if problem:  # the default asks for every circuit the checkpoint allows (e.g. a Q/K-only extract)
            log.warning("%s: qk rows only (%s)", source.model_id, problem)
            circuits = (schema.CIRCUIT_QK,)
    want_ov = schema.CIRCUIT_OV in circuits
    d_v = ov_d_head(config, shape) if want_ov else shape.d_head

    def read_layer(layer: int) -> tuple[tuple[LayerQK, Any, Any], float]:
        """Everything the rows of one layer are computed from: the local revision's pre-pass reads through it too.

        Q/K, and for the folded and null variants the norm and q/k-norm gains; with the ov
        circuit V and O (and the output-side norm gain), :func:`.ov.read_ov`.
        """
        t0 = time.perf_counter()
        if want_folding:  # MLA composes the latent norms' gains into its maps as it reads them
            qk, folding = layout.read_with_folding(
                checkpoint, layer, shape, lambda anchor: read_folding(checkpoint, config, layer, shape, anchor)
            )
        else:
            qk, folding = layout.read(checkpoint, layer, shape), None
        for info, array in zip(("q", "k"), (qk.q, qk.k)):
            if not np.isfinite(array).all():
                names = ", ".join(t.name for t in qk.tensors)
                raise CheckpointError(f"{source.model_id}: NaN or Inf in the {info.upper()} weights of layer {layer} ({names})")
        ov_blocks = read_ov_layer(layout, checkpoint, config, layer, shape, d_v, want_folding, folding) if want_ov else None
        return (qk, folding, ov_blocks), time.perf_counter() - t0

    dataset_repo.check_replace(out_dir, family, source.model_id, schema.VARIANT_RAW, force=force)
    previous = dataset_repo.existing_build(out_dir, family, source.model_id)
    if previous is not None and previous.get("model_id") not in (None, source.model_id):
        raise BuildError(  # never overwrite another model's rows (names that differ only in case, on such a file system)
            f"{dataset_repo.model_path(out_dir, family, source.model_id)} holds the rows of {previous['model_id']!r}, "
            f"not {source.model_id!r}: the two ids name one file here; build one of them into another family"
        )
    if source.revision is None and (force or previous is None):
        revision = None  # nothing to skip against: the digest of the build's own reads, one pass over the bytes
    elif source.revision is None:
        t0 = time.perf_counter()
        revision = local_revision_prepass(source, read_layer, layers)
        timings["digest"] = time.perf_counter() - t0
    else:
        revision = source.revision
    result = ModelResult(source.model_id, "built", revision=revision)

    model_file = dataset_repo.model_path(out_dir, family, source.model_id)
    if (not force and revision is not None and is_up_to_date(previous, revision)
            and skip_key.held_key(model_file) == skip_key.wanted_key(variants=variants, offsets=offsets, null_seed=null_seed, circuits=circuits,
                                                                    behaviour=behaviour)):
        result.status, result.path, result.n_rows = "skipped", model_file, previous["n_rows"]
        return result

    device = device or route.default_device()
    if device.startswith("cuda") and not require_build_extra().cuda.is_available():
        raise QKSpectraError("--device cuda was asked for but torch sees no CUDA device: use --device cpu")
    behaviour_result = None
    if behaviour is not None:  # --behaviour: the whole model loaded and run once (freed before the spectra)
        from .behaviour import checkpoint_dtype, model_behaviour

        behaviour_result = model_behaviour(source, config, behaviour, checkpoint_dtype(checkpoint, DTYPE_NAMES), device)
        timings["behaviour"] = behaviour_result.seconds

    spectra_by_variant: dict[tuple[str, str], list] = {(c, v): [] for c in circuits for v in variants}
    tensor_names: list[str] = []
    bar = _tqdm(range(len(layers)), progress, desc=f"{source.model_id} layers", leave=False)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="qk-prefetch") as pool:
        pending = pool.submit(read_layer, layers[0]) if layers else None
        for row, layer in zip(bar, layers):
            wait0 = time.perf_counter()
            (qk, folding, ov_blocks), read_seconds = pending.result()
            timings["read"] += time.perf_counter() - wait0
            timings["read_io"] += read_seconds
            if row + 1 < len(layers):
                pending = pool.submit(read_layer, layers[row + 1])
            else:
                pending = None  # the last layer's arrays are freed as soon as the locals below let go of them
            tensor_names.extend(t.name for t in qk.tensors)
            plan = None if route.numpy_route(variants, offsets, device) else layer_plan(
                variants, folding, rotaries.get(layer), offsets, source.model_id, layer, shape, null_seed, device
            )  # None: raw rows through numpy alone
            t0 = time.perf_counter()
            if ov_blocks is not None:  # OV first (no positional work), its blocks freed before the larger QK kernel runs
                tensor_names.extend(t.name for t in ov_blocks[0].tensors)
                ov_spectra = ov_layer_variants(
                    ov_blocks, variants, source.model_id, layer, null_seed, device, route.numpy_route(variants, offsets, device)
                )
                ov_blocks = None
                for name, spectra in ov_spectra.items():
                    spectra_by_variant[(schema.CIRCUIT_OV, name)].append(spectra)
            if schema.CIRCUIT_QK in circuits:
                for name, spectra in layer_variants_or_error(qk.q, qk.k, plan, source.model_id, layer, device).items():
                    spectra_by_variant[(schema.CIRCUIT_QK, name)].append(spectra)
            qk = folding = plan = None
            timings["kernel"] += time.perf_counter() - t0

    if source.revision is None:
        revision = result.revision = local_revision_after_build(source, revision)
    t0 = time.perf_counter()
    weights_dtype = ",".join(
        sorted({DTYPE_NAMES.get(dtype, dtype) for dtype in {checkpoint.tensors[n].dtype for n in tensor_names}})
    )
    columns = concat_columns([
        model_columns(
            np.stack([s.singular_values for s in per_layer]),
            np.stack([s.positivity for s in per_layer]),
            shape if circuit == schema.CIRCUIT_QK else replace(shape, d_head=d_v),
            facts=facts,
            model_id=source.model_id,
            revision=revision,
            family=family,
            model_type=config["model_type"],
            weights_dtype=weights_dtype,
            variant=name,
            positional=[s.positional for s in per_layer],
            offsets=offsets,
            null_seed=null_seed,
            circuit=circuit,
            eigenvalues=np.stack([s.eigenvalues for s in per_layer]),
            matched_null_seed=null_seed,
        )
        for (circuit, name), per_layer in spectra_by_variant.items()
    ])
    if behaviour_result is not None:
        from .behaviour import add_behaviour_columns

        add_behaviour_columns(columns, behaviour_result)
    timings["statistics"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    result.path = dataset_repo.write_model_table(out_dir, family, source.model_id, columns)
    remove_legacy_file(source.model_id, result.path)
    timings["write"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - started
    result.n_rows = len(layers) * shape.n_heads * len(variants) * len(circuits)
    result.variants = tuple(variants)
    result.circuits = tuple(circuits)
    result.timings = timings
    result.bytes_fetched = source.reads.distinct_bytes()
    result.bytes_transferred = source.fetched.total
    result.checkpoint_bytes = checkpoint.total_bytes()
    return result


LOCAL_REVISION_PREFIX = "local:"


def local_revision(source: ModelSource) -> str:
    """``local:`` + 40 hex of the digest of every byte the source has read (config.json, index, headers, tensors)."""
    return LOCAL_REVISION_PREFIX + source.read_digest()[:40]


def local_revision_prepass(source: ModelSource, read_layer, layers: Iterable[int]) -> str:
    """A local model's revision, before its kernel runs: read (and so hash) every layer through ``read_layer``.

    ``read_layer`` is the very function the build reads with, so whatever the
    rows depend on (Q/K rows now, norm gains or biases a variant reads there
    later) is in the digest, together with config.json and the headers read
    before. Each layer's arrays are dropped at once: memory stays one layer.
    It runs only when the model's file exists (a rerun may skip it): then the Q/K
    bytes are read once when it is skipped and twice when it is rebuilt (the second
    time mostly from the OS page cache). A first build or --force reads them once,
    hashed as the build reads them. Hub models need no pre-pass: their commit names the bytes.
    """
    for layer in layers:
        read_layer(layer)
    return local_revision(source)


def local_revision_after_build(source: ModelSource, before: str | None) -> str:
    """The revision to record once the rows are computed: the digest of everything read, pre-pass and build.

    ``before`` None: no pre-pass ran (no file to skip against, or --force), so the bytes were
    read and hashed once, by the build itself (the digest does not depend on the read order).

    A range read again with other bytes was refused as it was read (the files
    changed). If the build read ranges the pre-pass did not, the recorded
    revision covers them too (it then never equals a later pre-pass, so the
    model is rebuilt each time rather than ever skipped on a partial digest).
    """
    after = local_revision(source)
    if before is not None and after != before:
        log.warning("%s: the build read bytes its revision pre-pass did not; read_layer should read them", source.model_id)
    return after


def remove_legacy_file(model_id: str, written: Path) -> None:
    """Remove the file an older builder wrote for ``model_id`` under its old, non-injective name, now replaced.

    Only ids whose name changed (not Hub-style) have one, and only a file holding exactly this
    model id is removed: another model's file of that name is left alone.
    """
    import pyarrow.parquet as pq

    from ..naming import legacy_slug

    old = written.with_name(f"{legacy_slug(model_id)}.parquet")
    try:
        if old == written or not old.is_file():  # a name too long for the file system was never written
            return
        held = set(pq.read_table(old, columns=["model_id"]).column(0).to_pylist())
    except Exception:  # noqa: BLE001 - unreadable or unnameable: not known to be this model's, so kept
        return
    if held == {model_id}:
        old.unlink()
        log.warning("%s: removed %s, its file under the name older versions gave it (now %s)", model_id, old.name, written.name)


def is_up_to_date(previous: Mapping[str, Any] | None, revision: str) -> bool:
    """True if an existing model file has exactly this revision and the current method version."""
    return (
        previous is not None
        and previous.get("model_revision") == revision
        and previous.get("method_version") == schema.METHOD_VERSION
    )


def model_columns(
    singular_values: np.ndarray,
    positivity: np.ndarray,
    shape: AttentionShape,
    *,
    facts: list[LayerFacts] | None = None,
    model_id: str,
    revision: str,
    family: str,
    model_type: str,
    weights_dtype: str,
    variant: str = schema.VARIANT_RAW,
    positional: Sequence[np.ndarray | None] | None = None,
    offsets: Sequence[int] = (),
    null_seed: int | None = None,
    circuit: str = schema.CIRCUIT_QK,
    eigenvalues: np.ndarray | None = None,
    matched_null_seed: int | None = None,
) -> dict[str, Any]:
    """Current-schema columns for a model from its (L, H, d_head) float64 singular values.

    ``positional``: per layer None (no rotary, or a null row) or the (n_offsets, H, d_head)
    positional singular values at ``offsets``. ``null_seed`` is recorded on null rows only.
    ``eigenvalues`` (L, H, d_head) complex, the cross's mu, give symmetry, copying score and the
    matched null (:mod:`.circuit_rows`; None: those columns null). Behaviour and probe columns are null.
    """
    n_layers, n_heads, _ = singular_values.shape  # n_layers: the layers with softmax attention (facts)
    n = n_layers * n_heads
    s = singular_values.reshape(n, -1)
    ev = s**2
    if facts is None:  # rows of layers 0..L-1 whose facts are unknown (stored as null)
        facts = [LayerFacts(i, None, None, None) for i in range(n_layers)]
    layer = np.repeat(np.array([f.layer for f in facts], dtype=np.int32), n_heads)
    head = np.tile(np.arange(n_heads, dtype=np.int32), n_layers)
    columns: dict[str, Any] = {
        "model_id": [model_id] * n,
        "model_revision": [revision] * n,
        "family": [family] * n,
        "model_type": [model_type] * n,
        "variant": [variant] * n,
        "circuit": [circuit] * n,
        "layer": layer,
        "head": head,
        "kv_head": (head // shape.group_size).astype(np.int32),
        "n_layers": np.full(n, shape.n_layers, np.int32),
        "n_heads": np.full(n, shape.n_heads, np.int32),
        "n_kv_heads": np.full(n, shape.n_kv_heads, np.int32),
        "d_model": np.full(n, shape.d_model, np.int32),
        "d_head": np.full(n, shape.d_head, np.int32),
        **layer_fact_columns(facts, n_heads),
        "singular_values": list(s.astype(np.float32)),
        "eigenvalues": list(ev.astype(np.float32)),
        "weights_dtype": [weights_dtype] * n,
        "builder_version": [__version__] * n,
        "null_seed": [int(null_seed) if variant == schema.VARIANT_NULL else None] * n,
        "method_version": np.full(n, schema.METHOD_VERSION, np.int32),
        "schema_version": np.full(n, schema.SCHEMA_VERSION, np.int32),
    }
    for prefix, values in (("sv", s), ("ev", ev)):
        for name, stat in spectrum_statistics(values).items():
            columns[f"{prefix}_{name}"] = stat
    columns.update(spectrum_metrics(s, positivity.reshape(n)))
    columns.update(positional_columns(s.reshape(n_layers, n_heads, -1), positional, offsets))
    from .seeds import null_seed_key  # no torch: a raw CPU build writes its rows without it

    columns.update(circuit_metric_columns(
        circuit, variant, singular_values, eigenvalues, shape.d_model, [f.layer for f in facts],
        model_key=null_seed_key(model_id), seed=matched_null_seed, eigvals=eigvals_per_core,
    ))
    for name in schema.BEHAVIOUR_COLUMNS + schema.PROBE_COLUMNS:
        columns.setdefault(name, [None] * n)
    return columns


def layer_fact_columns(facts: list[LayerFacts], n_heads: int) -> dict[str, list]:
    """attention_type, sliding_window and rope_theta of every row (each layer's facts repeated per head)."""
    return {
        "attention_type": [f.attention_type for f in facts for _ in range(n_heads)],
        "sliding_window": [f.sliding_window for f in facts for _ in range(n_heads)],
        "rope_theta": [None if f.rope is None else f.rope.theta for f in facts for _ in range(n_heads)],
    }


def positional_columns(
    singular_values: np.ndarray, positional: Sequence[np.ndarray | None] | None, offsets: Sequence[int]
) -> dict[str, list]:
    """The positional columns (schema.OFFSET_COLUMNS), row-major over (layer, head); null where absent."""
    from ..statistics import positional_summaries  # numpy only: a raw CPU build never imports torch

    n_layers, n_heads, _ = singular_values.shape
    columns: dict[str, list] = {name: [] for name in schema.OFFSET_COLUMNS}
    for layer in range(n_layers):
        values = None if positional is None else positional[layer]
        if values is None:
            for name in schema.OFFSET_COLUMNS:
                columns[name].extend([None] * n_heads)
            continue
        per_head = np.moveaxis(values, 1, 0)  # (H, n_off, d_head)
        summary = positional_summaries(singular_values[layer], per_head, offsets)
        columns["offsets"].extend([list(map(int, offsets))] * n_heads)
        columns["positional_singular_values"].extend([list(h.astype(np.float32)) for h in per_head])
        columns["positional_norm_ratio_min"].extend(summary["positional_norm_ratio_min"].tolist())
        columns["positional_norm_ratio_max"].extend(summary["positional_norm_ratio_max"].tolist())
        columns["half_norm_offset"].extend(None if v < 0 else int(v) for v in summary["half_norm_offset"])
    return columns


def concat_columns(parts: Sequence[Mapping[str, Any]]) -> dict[str, list]:
    """Row-wise concatenation of column dicts (one per variant)."""
    if len(parts) == 1:
        return dict(parts[0])
    return {name: [v for part in parts for v in list(part[name])] for name in parts[0]}


DEFAULT_VARIANTS = schema.BUILT_VARIANTS


def check_offsets(offsets: Sequence[int] | None) -> tuple[int, ...] | None:
    """Offsets as given (None: the model's default), checked: whole numbers >= 0, sorted, without repeats."""
    if offsets is None:
        return None
    try:
        values = [int(str(o).strip()) for o in offsets if str(o).strip().lower() != "none"]
    except ValueError:
        raise BuildError(f"--offsets {','.join(map(str, offsets))!r}: give whole numbers >= 0 (e.g. 0,1,16,256) or none") from None
    if any(v < 0 or v >= 2**31 for v in values):
        raise BuildError(f"--offsets {','.join(map(str, offsets))!r}: offsets must be whole numbers from 0 to 2^31 - 1")
    return tuple(sorted(set(values)))


def check_null_seed(seed: int | str | None) -> int:
    """The null variant's seed (None: :data:`schema.NULL_SEED`): a whole number from 0 to 2^63 - 1, else one line."""
    if seed is None:
        return schema.NULL_SEED
    text = str(seed).strip()
    if isinstance(seed, bool) or not text.isdigit() or int(text) > schema.NULL_SEED_MAX:
        raise BuildError(f"--null-seed {seed!r}: give a whole number from 0 to 2^63 - 1 (default {schema.NULL_SEED})")
    return int(text)


def check_circuits(circuits: Sequence[str] | None) -> tuple[str, ...]:
    """The circuits to build, in canonical order (default qk, ov); one line for an unknown one."""
    if circuits is None:
        return schema.CIRCUITS
    chosen = [str(c).strip() for c in circuits]
    unknown = [c for c in chosen if c not in schema.CIRCUITS]
    if unknown or not chosen:
        raise BuildError(f"--circuits {','.join(chosen)!r}: choose among {', '.join(schema.CIRCUITS)}")
    return tuple(c for c in schema.CIRCUITS if c in chosen)


def read_ov_layer(layout, checkpoint, config, layer: int, shape: AttentionShape, d_v: int, folded: bool, qk_folding=None):
    """(raw LayerOV, folded (A, B) blocks or None) of one layer: V and O, and for folded/null the gains.

    ``qk_folding``: the gains the QK read already holds (read once); MLA's, composed into its Q/K blocks, are read again.
    """
    from .ov import fold_ov, output_norm_gain, read_ov

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


def ov_layer_variants(ov_blocks, variants, model_id: str, layer: int, null_seed: int, device: str, numpy_only: bool) -> dict:
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
    import torch

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


def check_variants(variants: Sequence[str] | None) -> tuple[str, ...]:
    """The variants to build, in canonical order (default raw, folded, null); one line for an unknown one."""
    if variants is None:
        return DEFAULT_VARIANTS
    chosen = [str(v).strip() for v in variants]
    unknown = [v for v in chosen if v not in schema.BUILT_VARIANTS]
    if unknown or not chosen:
        raise BuildError(f"--variants {','.join(chosen)!r}: choose among {', '.join(schema.BUILT_VARIANTS)}")
    return tuple(v for v in schema.BUILT_VARIANTS if v in chosen)


def layer_rotaries(
    arch, config: Mapping[str, Any], offsets: Sequence[int] | None, model_id: str = ""
) -> tuple[dict, tuple[int, ...]]:
    """(layer -> Rotary of every rotary layer, the model's offsets); offsets () when no layer rotates.

    With the default offsets (``offsets`` None), a rotary this builder cannot reproduce
    exactly (an unknown rope_type) gives no positional spectra and a warning; asked-for
    offsets make it an error. MLA's decoupled rope dims (the last qk_rope_head_dim of each
    head, ``Rotary.start``) are rotated where they sit.
    """
    from .rotary import default_offsets, rotary_from_spec

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
        longest = max((m or 0) for _, m in rotaries.values()) or config.get("n_positions") or config.get("max_position_embeddings")
        offsets = default_offsets(longest)
    return {layer: r for layer, (r, _) in rotaries.items()}, tuple(int(o) for o in offsets)


def layer_plan(
    variants, folding, rotary, offsets, model_id: str, layer: int, shape: AttentionShape, null_seed: int, device: str = "cpu"
):
    """The kernel's plan for one layer: variants, numeric folding, offsets, null draws.

    The rotary attention factor a enters c as a^2 when every dim of the head rotates, else
    as a on the rotating dims of the q/k gains (:func:`rotary_factor_gains`).

    A folding whose reader composed the gains into the head blocks (MLA) passes those
    blocks on (as float64 tensors on ``device``), with no gain left for the kernel.
    """
    from .variants import LayerFolding, LayerPlan, haar_rotations

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
            import torch

            blocks = tuple(torch.from_numpy(b).to(device=device, dtype=torch.float64) for b in folding.blocks)
    if schema.VARIANT_NULL in variants:
        rotations = haar_rotations(null_seed, model_id, layer, shape.n_heads, shape.d_head)
    return LayerPlan(tuple(variants), layer_folding, rotary if offsets else None, tuple(offsets), rotations, folded_blocks=blocks)


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


def layer_variants_or_error(q, k, plan, model_id: str, layer: int, device: str = "cpu", circuit: str = schema.CIRCUIT_QK) -> dict:
    """Every variant's spectra of a layer (numpy Q, K blocks; plan None: raw through numpy alone, see :mod:`.route`),
    or a one-line CheckpointError naming model, layer, head (and variant)."""
    from .route import layer_spectra
    from .spectra import WeightRangeError, float32_storage_problem

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


def build_family(
    family: str,
    out_dir: str | Path,
    models: Iterable[str] | None = None,
    *,
    device: str | None = None,
    force: bool = False,
    catalog_file: str | None = None,
    progress: bool = True,
    token: str | bool | None = None,
    shard: str | None = None,
    variants: Sequence[str] | None = None,
    offsets: Sequence[int] | None = None,
    null_seed: int | str | None = None,
    circuits: Sequence[str] | None = None,
    behaviour: Any = None,
) -> list[ModelResult]:
    """Build every model of a family (or the given ones) into ``out_dir``.

    A failing model does not stop the others; their files and the card are
    kept, and a ``BuildError`` naming the failures is raised at the end.
    """
    dataset_repo.check_family(family)
    check_output_dir(out_dir)  # refused before any model is read, not after hours of work
    swept = sweep_stale_temporaries(out_dir)  # left by a killed build: they would keep a full disk full
    if swept:
        log.warning("removed %d temporary file(s) an interrupted run left in %s", len(swept), out_dir)
    variants = None if variants is None else check_variants(variants)  # None: every variant a model allows
    offsets = check_offsets(offsets)
    null_seed = check_null_seed(null_seed)
    circuits = None if circuits is None else check_circuits(circuits)  # None: every circuit a checkpoint allows
    device = check_device(device)
    from .route import numpy_route

    if not numpy_route(variants or DEFAULT_VARIANTS, offsets, device):
        require_build_extra()  # before any model: one line if torch is missing
    specs = list(models) if models else catalog.family_models(family, catalog.load_catalog(catalog_file))
    specs = list(dict.fromkeys(str(spec).strip() for spec in specs))  # the same spec twice is built once
    if shard is not None:
        specs = select_shard(specs, shard)
    if not specs:
        raise BuildError(f"no models to build for family {family!r}")
    missing = [problem for problem in map(missing_directory, specs) if problem]
    if missing:  # a mistyped path stops the run before any model is read, not after the others
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ModelSourceError(f"{missing[0]}{more}; nothing was built")
    results: list[ModelResult] = []
    taken_ids: dict[str, str] = {}
    for spec in _tqdm(specs, progress, desc=f"{family} models", unit="model", leave=False):
        try:
            result = build_model(
                spec, family, out_dir, device=device, force=force, progress=progress, token=token, taken_ids=taken_ids,
                variants=variants, offsets=offsets, null_seed=null_seed, circuits=circuits, behaviour=behaviour,
            )
            taken_ids[result.model_id] = str(spec)
        except QKSpectraError as exc:
            result = ModelResult(str(spec), "failed", error=str(exc))
        except Exception as exc:  # a bug or an unforeseen input must not lose the other models
            log.debug("unexpected error while building %s", spec, exc_info=True)
            result = ModelResult(str(spec), "failed", error=f"{type(exc).__name__}: {exc}")
        results.append(result)
        if result.status == "built":
            refresh_card(out_dir)  # a failure here is retried below; the next models still run
    # Always, so that a rerun repairs a card an interrupted build left behind its files.
    card_error = refresh_card(out_dir) if dataset_repo.model_files(out_dir) else None
    failed = [r for r in results if r.status == "failed"]
    if failed or card_error:
        parts = [f"{len(failed)} of {len(results)} model(s) failed ({'; '.join(f'{r.model_id}: {r.error}' for r in failed)})"] if failed else []
        parts += [f"{card_error} (the model files are in place)"] if card_error else []
        raise BuildError("; ".join(parts), results, report=summarize(results))
    return results


def refresh_card(out_dir: str | Path) -> str | None:
    """Regenerate the card from the files present; a failure is returned as one line, never raised.

    The model files are already in place when this runs: a full disk (ENOSPC)
    or a card that does not parse must not lose them or stop the other models.
    """
    try:
        dataset_repo.write_card(out_dir)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        return f"the card {Path(out_dir) / dataset_repo.CARD_NAME} could not be written ({reason}); rerun to regenerate it"
    except QKSpectraError as exc:
        return str(exc)
    return None


def require_build_extra():
    """The torch module, or a one-line error naming what to install (the analysis half runs without it)."""
    try:
        import threadpoolctl  # noqa: F401 - the kernel's BLAS thread control, also from the build extra
        import torch
    except ImportError as exc:
        missing = getattr(exc, "name", None) or "torch"
        raise QKSpectraError(
            f"building needs {missing}, which cannot be imported ({exc}): install the build extra, "
            "pip install 'qk-spectra-ds[build]'"
        ) from None
    return torch


_DEVICE = re.compile(r"cpu|cuda(:\d+)?")


def check_device(device: str | None, torch=None) -> str:
    """The device to compute on: ``device`` if torch can use it (None: cuda if present, else cpu), else a one-line error.

    torch is imported only for a cuda device, or to look for one where GPU device files exist (:mod:`.route`).
    """
    from .route import default_device

    if device is None:
        return default_device()
    if not _DEVICE.fullmatch(str(device)):
        raise QKSpectraError(f"--device {device!r} is not cpu, cuda or cuda:N (N the index of a GPU)")
    if device.startswith("cuda"):
        torch = torch or require_build_extra()
        if not torch.cuda.is_available():
            raise QKSpectraError(f"--device {device} was asked for but torch sees no CUDA device: use --device cpu")
        count = torch.cuda.device_count()
        if int(device.partition(":")[2] or 0) >= count:
            raise QKSpectraError(f"--device {device}: torch sees {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
    return device


SHARD_AUTO = "auto"


def slurm_array_shard(environ: Mapping[str, str]) -> str:
    """``"I/N"`` of this SLURM array task: I = SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN, N = SLURM_ARRAY_TASK_COUNT.

    SLURM sets these in every task of ``sbatch --array``; ``--array=1-4`` gives
    tasks 1..4 with MIN 1, so I is 0..3. Outside an array job: one line saying so.
    A step (``--array=0-6:2``) leaves gaps that I/N cannot name: refused too.
    """
    names = ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_MIN")
    missing = [n for n in names if not str(environ.get(n, "")).strip()]
    if missing:
        raise BuildError(
            f"--shard auto reads a SLURM array's task id and count, but {', '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} not set (not a task of sbatch --array?): "
            "run it from an array job, or pass --shard I/N"
        )
    try:
        task, count, low = (int(str(environ[n]).strip()) for n in names)
    except ValueError:
        raise BuildError(f"--shard auto: {', '.join(f'{n}={environ[n]!r}' for n in names)} are not whole numbers") from None
    step = str(environ.get("SLURM_ARRAY_TASK_STEP", "1")).strip() or "1"
    high = str(environ.get("SLURM_ARRAY_TASK_MAX", "")).strip()
    index = task - low
    if step != "1" or (high.lstrip("-").isdigit() and int(high) - low + 1 != count) or not 0 <= index < count:
        raise BuildError(
            f"--shard auto needs a contiguous SLURM array (--array=0-{max(count, 1) - 1}); this one has task id {task}, "
            f"min {low}, max {high or '?'}, step {step}, count {count}: use --array=A-B without a step or %, or --shard I/N"
        )
    return f"{index}/{count}"


def resolve_shard(shard: str | None, environ: Mapping[str, str] | None = None) -> str | None:
    """``shard`` as ``"I/N"``: ``"auto"`` is read from the SLURM array variables (:func:`slurm_array_shard`)."""
    import os

    if shard is None or str(shard).strip().lower() != SHARD_AUTO:
        return shard
    return slurm_array_shard(os.environ if environ is None else environ)


def select_shard(specs: list[str], shard: str) -> list[str]:
    """Models I, I+N, ... of the list for shard ``"I/N"`` (0-based) or ``"auto"``, so N machines split a family."""
    shard = resolve_shard(shard)
    try:
        index, count = (int(x) for x in str(shard).split("/"))
        if not 0 <= index < count:
            raise ValueError
    except ValueError:
        raise BuildError(f"--shard {shard!r} is not of the form I/N with 0 <= I < N (e.g. 0/2), nor auto") from None
    return specs[index::count]


def summarize(results: Iterable[ModelResult]) -> str:
    """One line per model: status, rows, bytes fetched and their share, time."""
    lines = []
    for r in results:
        if r.status == "failed":
            lines.append(f"FAILED  {r.model_id}: {r.error}")
        elif r.status == "skipped":
            lines.append(f"skipped {r.model_id} (already built at {r.revision}; --force rebuilds)")
        else:
            lines.append(
                f"built   {r.model_id}: {r.n_rows} rows ({r.n_rows // len(r.variants) // len(r.circuits)} heads x {len(r.variants)} variants{_circuits(r)}) -> {r.path} | fetched {_mb(r.bytes_fetched)} of "
                f"{_mb(r.checkpoint_bytes)} ({100 * r.fetched_share:.1f}%{_rereads(r)}) | "
                + ", ".join(f"{k} {v:.2f}s" for k, v in r.timings.items())
            )
    return "\n".join(lines)


def _rereads(r: ModelResult) -> str:
    """``; read twice: ...`` when the bytes read exceed the distinct bytes by more than 1% (say why, never add them up)."""
    if r.bytes_transferred <= 1.01 * r.bytes_fetched:
        return ""
    return f"; {_mb(r.bytes_transferred)} read in all: a local model's revision digest reads its weights once before a rebuild, a Hub retry reads again"


def _circuits(r: ModelResult) -> str:
    """`` x 2 circuits`` when the rows hold more than one circuit."""
    return "" if len(r.circuits) == 1 else f" x {len(r.circuits)} circuits"


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def _tqdm(iterable, enabled: bool, **kwargs):
    from ..progress import progress_bar  # a bar on a terminal, plain periodic lines in a log

    return progress_bar(iterable, enabled, **kwargs)

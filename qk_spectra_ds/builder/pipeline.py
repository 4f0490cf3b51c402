"""Orchestration: a model spec -> per-head rows -> one parquet file in the dataset repo; a family, model by model.

:func:`build_model` reads top-down as its steps: open the source (:func:`open_model`), plan
the model from config.json and the headers (:func:`.planning.plan_model`), decide skip or
rebuild (:mod:`.local_revision`, :mod:`.skip_key`), run the behaviour probes if asked,
compute every layer with the next one prefetched (:func:`.layer_compute.compute_layers`),
assemble the columns (:func:`.columns.model_rows`) and write the file atomically
(:func:`write_rows`). :func:`build_family` checks the options once (:class:`.build_options.BuildOptions`),
builds each model and regenerates the card, so an interrupted or partly failing build keeps
every finished model, and a rerun skips them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from .. import dataset_card, dataset_repo, schema
from ..atomic import sweep_stale_temporaries
from ..errors import BuildError, ModelSourceError, QKSpectraError
from ..paths import check_output_dir
from ..progress import progress_bar
from . import catalog, memory, skip_key
from .behaviour import BehaviourResult, add_behaviour_columns, checkpoint_dtype, model_behaviour
from .build_options import DEFAULT_VARIANTS, BuildOptions, compute_device, require_build_extra
from .columns import DTYPE_NAMES, model_rows
from .layer_compute import compute_layers, read_layer
from .local_revision import local_revision_after_build, revision_before_build
from .model_file import existing_rows, remove_legacy_file
from .planning import ModelPlan, plan_model
from .results import ModelResult, summarize
from .route import numpy_route
from .shards import select_shard
from .weights import ModelSource, missing_directory, open_source

log = logging.getLogger(__name__)


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
    options: BuildOptions | None = None,
) -> ModelResult:
    """Build one model, or skip it if its file holds the same revision and method version.

    The skip key is exact: ``model_revision`` (a Hub commit, or for a local
    folder the digest of every byte its rows depend on, see
    :func:`.local_revision.local_revision_prepass`) and ``method_version``
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
    matched-null z-scores (:mod:`.circuit_rows`). ``behaviour`` (a :class:`.probes.ProbeSpec`,
    ``--behaviour``) also runs the model on seeded probes and fills the qk rows' behaviour columns.
    ``options``: all of these keywords gathered (:class:`.build_options.BuildOptions`, as
    :func:`build_family` passes them), instead of the keywords.
    """
    options = BuildOptions.given(
        options,
        device=device,
        force=force,
        progress=progress,
        token=token,
        variants=variants,
        offsets=offsets,
        null_seed=null_seed,
        circuits=circuits,
        behaviour=behaviour,
    )
    memory.fix_mmap_threshold()  # freed per-layer buffers go back to the OS: flat memory over the layers
    # read_io: time spent reading Q/K (in the prefetch thread); read: time the kernel waited for it.
    timings = {"read_io": 0.0, "read": 0.0, "kernel": 0.0, "statistics": 0.0, "write": 0.0}
    started = time.perf_counter()
    source, config = open_model(spec, options.token, taken_ids)
    plan = plan_model(source, config, options)
    read = partial(read_layer, plan)

    previous = existing_rows(out_dir, family, source.model_id, options.force)
    revision = revision_before_build(source, previous, options.force, read, plan.layers, timings)
    result = ModelResult(source.model_id, "built", revision=revision)
    model_file = dataset_repo.model_path(out_dir, family, source.model_id)
    wanted = skip_key.wanted_key(
        variants=plan.variants,
        offsets=plan.offsets,
        null_seed=options.null_seed,
        circuits=plan.circuits,
        behaviour=options.behaviour,
    )
    if not options.force and skip_key.is_current(previous, model_file, revision, wanted):
        result.status, result.path, result.n_rows = "skipped", model_file, previous["n_rows"]
        return result

    device = compute_device(options.device)
    behaviour_result = run_behaviour(plan, options.behaviour, device, timings)
    spectra, tensor_names = compute_layers(plan, read, device, options.null_seed, timings, options.progress)
    if source.revision is None:
        revision = result.revision = local_revision_after_build(source, revision)
    t0 = time.perf_counter()
    columns = model_rows(plan, spectra, tensor_names, revision=revision, family=family, null_seed=options.null_seed)
    if behaviour_result is not None:
        add_behaviour_columns(columns, behaviour_result)
    timings["statistics"] = time.perf_counter() - t0
    write_rows(result, plan, out_dir, family, columns, timings)
    timings["total"] = time.perf_counter() - started
    return result


def open_model(
    spec: str | ModelSource, token: str | bool | None, taken_ids: Mapping[str, str] | None
) -> tuple[ModelSource, dict]:
    """(the model's source, its config.json): one line for an id built earlier in the run, or a folder without a config."""
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
    return source, config


def resolve_source(spec: str, token: str | bool | None = None) -> ModelSource:
    """A model spec -> its source; catalogued Hub ids with an installed offline copy read that copy."""
    spec = str(spec).strip()
    packaged = catalog.packaged_model_dir(spec)
    if packaged is not None:
        return open_source(str(packaged), model_id=spec)
    return open_source(spec, token=token)


def run_behaviour(plan: ModelPlan, spec: Any, device: str, timings: dict[str, float]) -> BehaviourResult | None:
    """``--behaviour``: the whole model loaded and run once on the probes (freed before the spectra); None without it."""
    if spec is None:
        return None
    result = model_behaviour(plan.source, plan.config, spec, checkpoint_dtype(plan.checkpoint, DTYPE_NAMES), device)
    timings["behaviour"] = result.seconds
    return result


def write_rows(
    result: ModelResult, plan: ModelPlan, out_dir: str | Path, family: str, columns: dict, timings: dict[str, float]
) -> None:
    """Write the model's file atomically (replacing its old-named one), and record what was built in ``result``."""
    t0 = time.perf_counter()
    result.path = dataset_repo.write_model_table(out_dir, family, plan.model_id, columns)
    remove_legacy_file(plan.model_id, result.path)
    timings["write"] = time.perf_counter() - t0
    result.n_rows = len(plan.layers) * plan.shape.n_heads * len(plan.variants) * len(plan.circuits)
    result.variants = tuple(plan.variants)
    result.circuits = tuple(plan.circuits)
    result.timings = timings
    result.bytes_fetched = plan.source.reads.distinct_bytes()
    result.bytes_transferred = plan.source.fetched.total
    result.checkpoint_bytes = plan.checkpoint.total_bytes()


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
    options = BuildOptions.checked(
        variants=variants,
        offsets=offsets,
        null_seed=null_seed,
        circuits=circuits,
        device=device,
        force=force,
        progress=progress,
        token=token,
        behaviour=behaviour,
    )
    if not numpy_route(options.variants or DEFAULT_VARIANTS, options.offsets, options.device):
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
    card_current = False  # the card was written after the last change to the files (a render is ~0.3 s)
    for spec in progress_bar(specs, progress, desc=f"{family} models", unit="model", leave=False):
        try:
            result = build_model(spec, family, out_dir, taken_ids=taken_ids, options=options)
            taken_ids[result.model_id] = str(spec)
        except QKSpectraError as exc:
            result = ModelResult(str(spec), "failed", error=str(exc))
        except Exception as exc:  # a bug or an unforeseen input must not lose the other models
            log.debug("unexpected error while building %s", spec, exc_info=True)
            result = ModelResult(str(spec), "failed", error=f"{type(exc).__name__}: {exc}")
        results.append(result)
        card_current = result.status == "built" and refresh_card(out_dir) is None  # a failure is retried below
    # Always (unless just written), so that a rerun repairs a card an interrupted build left behind its files.
    card_error = refresh_card(out_dir) if dataset_repo.model_files(out_dir) and not card_current else None
    failed = [r for r in results if r.status == "failed"]
    if failed or card_error:
        parts = (
            [
                f"{len(failed)} of {len(results)} model(s) failed ({'; '.join(f'{r.model_id}: {r.error}' for r in failed)})"
            ]
            if failed
            else []
        )
        parts += [f"{card_error} (the model files are in place)"] if card_error else []
        raise BuildError("; ".join(parts), results, report=summarize(results))
    return results


def refresh_card(out_dir: str | Path) -> str | None:
    """Regenerate the card from the files present; a failure is returned as one line, never raised.

    The model files are already in place when this runs: a full disk (ENOSPC)
    or a card that does not parse must not lose them or stop the other models.
    """
    try:
        dataset_card.write_card(out_dir)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        return (
            f"the card {Path(out_dir) / dataset_repo.CARD_NAME} could not be written ({reason}); rerun to regenerate it"
        )
    except QKSpectraError as exc:
        return str(exc)
    return None

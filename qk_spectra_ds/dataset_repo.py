"""The dataset repository on disk: one parquet file per model, and the card.

Layout (identical on disk and on the Hub)::

    README.md                           card, rendered from dataset_card.md
    data/<family>/<model-slug>.parquet  one file per model

Every file is written to a temporary name beside its target and moved into
place with ``os.replace``, so a reader (or an interrupted build) never sees a
half-written file. The card is derived from the parquet files present, plus
the version history it already records, so it can always be regenerated.

Built spectra and the original study's imported legacy spectra (variant
``legacy``, computed with its factor pairing error) never replace each other
silently: :func:`check_replace` refuses it without ``force``.
"""

from __future__ import annotations

import datetime as _dt
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from . import __version__, schema
from .atomic import atomic_path, write_text
from .errors import CardError, DatasetRepoError
from .integrity import file_digest

CARD_NAME = "README.md"
DATA_DIR = "data"
SUMMARY_COLUMNS = (
    "model_id",
    "model_revision",
    "family",
    "model_type",
    "variant",
    "n_layers",
    "n_heads",
    "n_kv_heads",
    "d_model",
    "d_head",
    "weights_dtype",
    "builder_version",
    "schema_version",
)
_TEMPLATE = Path(__file__).with_name("templates") / "dataset_card.md"

_STAT_MEANINGS = {
    "min": "smallest {one}", "max": "largest {one}", "mean": "mean of the {many}",
    "std": "standard deviation (N-1) of the {many}", "skew": "skewness mean(z^3) of the {many}, z standardized",
    "kurtosis": "excess kurtosis mean(z^4) - 3 of the {many}, z standardized",
}  # fmt: skip
COLUMN_DESCRIPTIONS: dict[str, str] = {
    "model_id": "Hub id of the model (`org/name`), or the folder name of a local model",
    "model_revision": "40-hex commit of the model repo the weights were read at; local folders: `local:` + a digest "
    "of config.json and every byte read; null for imported legacy rows",
    "family": "dataset config the model was built into (the `--family` name)",
    "model_type": "`model_type` from the model's config.json (selects where Q and K live)",
    "variant": "what the spectra are of: `raw` = W_QK of the checkpoint's Q/K weights as stored (no norms, scale or "
    "rotary); `folded` = norm gains, centring, q/k norm gains and attention scale folded in; `null` = folded factors "
    "paired through a seeded Haar-random rotation; `legacy` = the original study's published numbers (see Variants)",
    "layer": "0-based layer index (TransformerLens `blocks.{layer}.attn`)",
    "head": "0-based query-head index within the layer (TransformerLens head index)",
    "kv_head": "key head the query head reads, head // (n_heads / n_kv_heads) (GQA/MQA; = head without GQA)",
    "n_layers": "layers of the model",
    "n_heads": "query heads per layer",
    "n_kv_heads": "key/value heads per layer (= n_heads without GQA/MQA)",
    "d_model": "residual-stream width (W_QK is d_model x d_model)",
    "d_head": "head dimension: the rank bound of W_QK and the length of each spectrum",
    "offsets": "token offsets delta (key delta tokens before the query) of the positional spectra; null without rotary "
    "and on null rows",
    "positional_singular_values": "per offset, the d_head singular values of the circuit with the model's rotary "
    "embedding applied at that offset (offset 0 = `singular_values`)",
    "positional_norm_ratio_min": "smallest s_1(delta) / s_1 over the offsets > 0: how far the strongest query-key "
    "coupling weakens with distance",
    "positional_norm_ratio_max": "largest s_1(delta) / s_1 over the offsets > 0",
    "half_norm_offset": "first offset > 0 where s_1(delta) / s_1 < 1/2; null if no offset gets there",
    "null_seed": "null rows: the seed their Haar-random rotations were drawn from (builder --null-seed); null on "
    "other rows",
    "singular_values": "the d_head singular values s_1 >= ... >= s_dhead >= 0 of W_QK = (W_Q^h)^T W_K^g",
    "eigenvalues": "their squares l_k = s_k^2, the eigenvalues of W_QK^T W_QK (the original study's name)",
    **{f"sv_{k}": v.format(one="singular value of the head", many="head's singular values") for k, v in _STAT_MEANINGS.items()},
    **{f"ev_{k}": v.format(one="eigenvalue of the head", many="head's eigenvalues") for k, v in _STAT_MEANINGS.items()},
    "frobenius": "Frobenius norm of W_QK, sqrt(sum l)",
    "spectral_norm": "largest singular value s_1 (operator norm of W_QK)",
    "stable_rank": "sum(l) / l_1: how many directions carry the circuit's energy (1 = rank one); NaN for an all-zero head",
    "effective_rank": "exp(entropy of p = l / sum(l)), between 1 and d_head; NaN for an all-zero head",
    "log_det": "sum(ln s): log volume of the d_head-dimensional core; -inf for a singular head",
    "positivity": "sum(Re mu) / sum(|mu|) over the eigenvalues mu of W_K^g (W_Q^h)^T (the non-zero eigenvalues of W_QK), "
    "in [-1, 1]: +1 when all are positive real (e.g. W_QK positive semi-definite: x^T W_QK x >= 0, tokens score "
    "themselves and similar tokens high), -1 when all are negative; NaN for an all-zero head",
    "attention_type": "what the layer's softmax attention sees, from config.json: `full`, `sliding` (a window) or "
    "`chunked` (Llama 4); hybrids have rows only for their softmax-attention layers; null in legacy rows",
    "sliding_window": "tokens in the layer's window (sliding layers only, else null)",
    **schema.CIRCUIT_DESCRIPTIONS,
    "rope_theta": "rotary base of the layer (Gemma 3's local and global layers differ); null without rotary "
    "(NoPE layers of Llama 4, SmolLM3, Cohere2, EXAONE 4; absolute positions; ALiBi; legacy rows)",
    **{f"behaviour_{name}": f"{meaning} (see Behaviour scores); null unless built with --behaviour, on ov rows{extra}"
       for name, meaning, extra in (
           ("previous_token", "mean attention to the previous position", ""),
           ("next_token", "mean attention to the next position", " and for causal models (encoders only)"),
           ("induction", "mean attention, in the probe's second repeat, to the token after the current token's earlier "
            "occurrence", " and for encoders"),
           ("first_token", "mean attention to the first position (sink; [CLS] in encoders)", ""),
           ("local", "mean attention mass within probe_local_window positions of the query, first token excluded", ""),
           ("entropy", "mean entropy of the attention distribution divided by ln(context length)", ""))},
    "probe_seed": "seed of the behaviour probes' random tokens (builder --probe-seed); null on unscored rows",
    "probe_sequences": "number of probe sequences the behaviour scores average over; null on unscored rows",
    "probe_length": "random tokens per repeat: each probe is a first token and the same probe_length tokens twice; "
    "null on unscored rows",
    "probe_local_window": "positions next to the query that count as local for behaviour_local; null on unscored rows",
    "weights_dtype": "dtype of the Q/K weights in the checkpoint (they were upcast to float64 for the factorization)",
    "builder_version": "qk-spectra-ds version that wrote the row",
    "method_version": "version of the computation behind the row (0 = imported from the original study)",
    "schema_version": "version of this column set",
}
"""What each column means, for the card's column table (one entry per column of every schema version)."""


def model_slug(model_id: str) -> str:
    """File-name stem of a model id, injective (:func:`qk_spectra_ds.naming.model_slug`): ``Qwen/Qwen3-0.6B`` -> ``Qwen--Qwen3-0.6B``."""
    from .naming import model_slug as injective_slug

    return injective_slug(model_id)


_BAD_FAMILY_CHARS = '<>:/\\|?*[]'  # datasets refuses <>:/\|?* in config names; [] would be a glob


def check_family(family: str) -> str:
    """``family`` if it can be a config name and one folder under data/, else a one-line CatalogError."""
    from .errors import CatalogError

    if not family or family.startswith(".") or not family.isprintable() or any(c in _BAD_FAMILY_CHARS for c in family):
        raise CatalogError(
            f"family {family!r} cannot name a dataset config: use a name without {_BAD_FAMILY_CHARS} "
            "that does not start with '.' (e.g. Qwen3)"
        )
    if family == "all":
        raise CatalogError("family 'all' is reserved for the dataset config of every family: pick another name")
    return family


def model_path(out_dir: str | os.PathLike, family: str, model_id: str) -> Path:
    """Where the parquet file of ``model_id`` in config ``family`` lives."""
    return Path(out_dir) / DATA_DIR / check_family(family) / f"{model_slug(model_id)}.parquet"


def write_model_table(
    out_dir: str | os.PathLike, family: str, model_id: str, columns: Mapping[str, Sequence[Any]]
) -> Path:
    """Write one model's rows (column name -> values) as parquet of the current schema, atomically.

    Written with pyarrow directly (no ``datasets`` import): the explicit Arrow schema of
    :func:`parquet_schema` with the ``huggingface`` features metadata ``datasets`` writes, and
    page checksums (CRC32 of every data page, verified by the loader). The file's SHA-256 and
    size are remembered for the card (:func:`write_card` records them).
    """
    import json

    import pyarrow as pa

    missing = [c for c in schema.COLUMNS if c not in columns]
    if missing:
        raise schema.SchemaError(f"rows for {model_id} lack column(s) {', '.join(missing)}")
    arrow = parquet_schema()
    arrow = arrow.with_metadata({b"huggingface": json.dumps({"info": {"features": features_dict()}}).encode()})
    table = pa.Table.from_arrays([_arrow_column(columns[f.name], f.type) for f in arrow], schema=arrow)
    target = model_path(out_dir, family, model_id)
    with atomic_path(target) as tmp:
        pq.write_table(table, tmp, write_page_checksum=True)
        digest = file_digest(tmp)
    _WRITTEN[str(target.resolve())] = digest
    return target


_WRITTEN: dict[str, dict[str, Any]] = {}
"""SHA-256 and size of every model file this process wrote (resolved path -> digest), for the card."""


def _arrow_type(kind: str):
    import pyarrow as pa

    if kind.startswith("list<"):
        return pa.list_(_arrow_type(kind[len("list<") : -1]))
    return {"float32": pa.float32(), "float64": pa.float64(), "int32": pa.int32(), "int64": pa.int64(),
            "string": pa.string()}[kind]  # fmt: skip


def parquet_schema(version: int = schema.SCHEMA_VERSION):
    """The Arrow schema of a schema version's parquet files (what ``datasets`` derives from :func:`schema.features`)."""
    import pyarrow as pa

    return pa.schema([pa.field(name, _arrow_type(kind)) for name, kind in schema.column_types(version).items()])


def features_dict(version: int = schema.SCHEMA_VERSION) -> dict[str, Any]:
    """``datasets.Features.to_dict()`` of :func:`schema.features`, built without importing ``datasets``."""

    def one(kind: str) -> dict[str, Any]:
        if kind.startswith("list<"):
            return {"feature": one(kind[len("list<") : -1]), "_type": "List"}
        return {"dtype": kind, "_type": "Value"}

    return {name: one(kind) for name, kind in schema.column_types(version).items()}


def _arrow_column(values: Any, kind):
    """One column as an Arrow array of ``kind``; a list column of equal-length float arrays in one copy."""
    import numpy as np
    import pyarrow as pa

    if pa.types.is_list(kind) and not pa.types.is_list(kind.value_type) and len(values) and all(
        isinstance(v, np.ndarray) and v.ndim == 1 for v in values
    ):
        lengths = np.fromiter((len(v) for v in values), dtype=np.int64, count=len(values))
        offsets = np.concatenate(([0], np.cumsum(lengths))).astype(np.int32)
        flat = np.concatenate(values).astype(kind.value_type.to_pandas_dtype(), copy=False)
        return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(flat, kind.value_type), type=kind)
    return pa.array(values, type=kind)


@contextmanager
def quiet_datasets() -> Iterator[None]:
    """Silence ``datasets``' progress bars and info logging (ours report per model), restoring them after."""
    from datasets.utils import logging as ds_logging

    was_enabled = ds_logging.is_progress_bar_enabled()
    level = ds_logging.get_verbosity()
    ds_logging.disable_progress_bar()
    ds_logging.set_verbosity_error()
    try:
        yield
    finally:
        ds_logging.set_verbosity(level)
        if was_enabled:
            ds_logging.enable_progress_bar()


def model_files(out_dir: str | os.PathLike) -> list[Path]:
    """Every model parquet file in the repo, sorted by family then slug."""
    return sorted((Path(out_dir) / DATA_DIR).glob("*/*.parquet"))


def read_summary(path: str | os.PathLike) -> dict[str, Any]:
    """Per-model metadata of one parquet file (first row of the metadata columns, row count)."""
    try:
        table = pq.read_table(path, columns=[c for c in SUMMARY_COLUMNS])
    except Exception as exc:  # ArrowInvalid (not parquet, truncated), a missing column, OSError
        raise DatasetRepoError(
            f"{_repo_relative(path)} is corrupt or not a model table ({' '.join(str(exc).split())[:200]}): "
            "rebuild that model (--force) or remove the file"
        ) from None
    first = table.slice(0, 1).to_pylist()
    summary = dict(first[0]) if first else {c: None for c in SUMMARY_COLUMNS}
    if first:  # a model's file holds one row per (layer, head, variant): name every variant
        summary["variant"] = ", ".join(str(v) for v in dict.fromkeys(table.column("variant").to_pylist()))
    summary["n_rows"] = table.num_rows
    summary["n_bytes"] = os.path.getsize(path)
    summary["config"] = Path(path).parent.name
    summary["path"] = Path(path).relative_to(Path(path).parents[2]).as_posix()
    return summary


def _repo_relative(path: str | os.PathLike) -> str:
    path = Path(path)
    return path.relative_to(path.parents[2]).as_posix() if len(path.parents) > 2 else path.as_posix()


def table_variants(path: str | os.PathLike) -> set[str] | None:
    """The variants a model's parquet file holds (None if it cannot be read: it is replaced, never trusted)."""
    try:
        return {str(v) for v in pq.read_table(path, columns=["variant"]).column("variant").unique().to_pylist()}
    except Exception:
        return None


def check_replace(out_dir: str | os.PathLike, family: str, model_id: str, variant: str, force: bool = False) -> None:
    """Refuse (one line) to replace built spectra by legacy ones, or legacy by built, unless ``force``.

    The model's table in ``family`` holds either spectra built from the weights
    or the original study's imported legacy spectra (with its pairing error);
    silently swapping one for the other would change every number under the
    same name.
    """
    path = model_path(out_dir, family, model_id)
    held = table_variants(path) if path.exists() else None
    if force or not held:
        return
    legacy = schema.VARIANT_LEGACY
    name = _repo_relative(path)
    if variant == legacy and held - {legacy}:
        raise DatasetRepoError(
            f"{name} holds spectra of {model_id} built from its weights (variant {', '.join(sorted(held - {legacy}))}): "
            "importing the legacy pickle would replace them with the original study's numbers; pass --force to "
            "replace them, or import into another family"
        )
    if variant != legacy and legacy in held:
        raise DatasetRepoError(
            f"{name} holds the original study's imported legacy spectra of {model_id}: building it would replace them; "
            "pass --force to replace them, or build into another family"
        )


def built_models(out_dir: str | os.PathLike, family: str, exclude: Sequence[str | os.PathLike] = ()) -> list[str]:
    """Model ids of ``family`` whose tables hold spectra built from weights (not legacy), files in ``exclude`` aside."""
    skip = {Path(p).resolve() for p in exclude}
    found = []
    for path in sorted((Path(out_dir) / DATA_DIR / family).glob("*.parquet")):
        if path.resolve() in skip:
            continue
        held = table_variants(path)
        if held and held - {schema.VARIANT_LEGACY}:
            try:
                found.append(str(pq.read_table(path, columns=["model_id"]).column("model_id")[0]))
            except Exception:
                found.append(path.stem)
    return found


def null_seed_of(path: str | os.PathLike) -> int | None:
    """The seed of a model file's null rows (None if it has none, or if they disagree)."""
    if "null_seed" not in pq.read_schema(path).names:
        return None
    seeds = {s for s in pq.read_table(path, columns=["null_seed"]).column(0).to_pylist() if s is not None}
    return seeds.pop() if len(seeds) == 1 else None


def existing_build(out_dir: str | os.PathLike, family: str, model_id: str) -> dict[str, Any] | None:
    """The summary of the model's file (with its first row's ``method_version``, None before schema v2,
    and its null rows' ``null_seed``, None without them (before schema v3)) if it exists and is readable, else None."""
    path = model_path(out_dir, family, model_id)
    if not path.exists():
        return None
    try:
        summary = read_summary(path)
        has_method = "method_version" in pq.read_schema(path).names and summary["n_rows"]
        first = pq.read_table(path, columns=["method_version"]).column(0)[0].as_py() if has_method else None
        return {**summary, "method_version": first, "null_seed": null_seed_of(path)}
    except Exception:  # an unreadable file is rebuilt, never trusted
        return None


# ---------------------------------------------------------------- the card


def card_yaml(text: str, where: str = CARD_NAME) -> dict[str, Any]:
    """The card's YAML header as plain data; one line (:class:`CardError`) if it does not parse.

    Parsed with ``yaml.safe_load`` (through ``huggingface_hub``): a tag such as
    ``!!python/object/apply`` is refused, never executed.
    """
    from huggingface_hub import DatasetCard

    try:
        return DatasetCard(text).data.to_dict()
    except Exception as exc:  # yaml.YAMLError (syntax, !!python tags), ValueError (not a mapping)
        detail = " ".join(str(exc).split())
        hint = "a !!python tag (never executed)" if "python/" in detail else detail[:160]
        raise CardError(
            f"the card {where} has a YAML header that does not parse as plain data ({hint}): fix it, or delete it to "
            "have it regenerated from the data files (its version history would be lost)"
        ) from None


def card_configs(text: str, where: str = CARD_NAME) -> set[str]:
    """The config names a card declares."""
    configs = card_yaml(text, where).get("configs") or []
    return {str(c.get("config_name")) for c in configs if isinstance(c, dict)} if isinstance(configs, list) else set()


def card_metadata(text: str | None, where: str = CARD_NAME) -> dict[str, list[dict[str, Any]]]:
    """The ``qk_spectra_ds`` block of a card: ``versions`` (history) and ``models`` (summaries).

    The card records both so that it can be regenerated, or merged with another
    builder's card, without downloading any parquet file.
    """
    if not text:
        return {"versions": [], "models": []}
    block = card_yaml(text, where).get("qk_spectra_ds") or {}
    if not isinstance(block, dict):
        raise CardError(f"the card {where} has a qk_spectra_ds block that is not a mapping: fix or delete the card")
    lists = {key: block.get(key) or [] for key in ("versions", "models")}
    for key, value in lists.items():
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise CardError(f"the card {where} has a qk_spectra_ds.{key} that is not a list of mappings: fix or delete the card")
    return {key: list(value) for key, value in lists.items()}


def read_card_versions(out_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The version history recorded in the card in ``out_dir`` (empty if none)."""
    card_path = Path(out_dir) / CARD_NAME
    text = card_path.read_text(encoding="utf-8") if card_path.exists() else None
    return card_metadata(text, where=str(card_path))["versions"]


def read_card_models(out_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The model entries recorded in the card in ``out_dir`` (with their ``sha256`` and ``n_bytes``; empty if none)."""
    card_path = Path(out_dir) / CARD_NAME
    text = card_path.read_text(encoding="utf-8") if card_path.exists() else None
    return card_metadata(text, where=str(card_path))["models"]


def with_digests(
    out_dir: str | os.PathLike,
    summaries: Sequence[Mapping[str, Any]],
    recorded: Sequence[Mapping[str, Any]],
    rerecord: bool = False,
) -> list[dict[str, Any]]:
    """``summaries`` with the ``sha256`` and ``n_bytes`` the card records for each file.

    A file this process wrote, or one the card has no checksum for yet, is recorded
    as it is. A file whose bytes differ from the card's record and that this process
    did not write keeps the recorded checksum: the card holds what was written, so
    a file corrupted or edited since is refused on load instead of being blessed.
    ``rerecord``: record every file as it is now (after a deliberate edit).
    """
    from .integrity import recorded_digests

    previous = recorded_digests(recorded)
    out = []
    for summary in summaries:
        path = Path(out_dir) / summary["path"]
        actual = file_digest(path)
        old = previous.get(summary["path"])
        keep = not rerecord and old is not None and old["sha256"] != actual["sha256"] and _WRITTEN.get(str(path.resolve())) != actual
        out.append({**summary, **(old if keep else actual)})
    return out


def local_digest_problem(out_dir: str | os.PathLike, files: Sequence[str | os.PathLike]) -> str | None:
    """One line naming the first of ``files`` whose SHA-256 or size differs from the card's record, else None."""
    from .integrity import digest_mismatch, recorded_digests

    recorded = recorded_digests(read_card_models(out_dir))
    for path in files:
        name = _repo_relative(path)
        if name in recorded:
            problem = digest_mismatch(name, file_digest(path), recorded[name], "rebuild that model (--force)")
            if problem:
                return problem
    return None


def merge_summaries(*groups: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Model summaries keyed by their path in the repo; later groups win. Sorted by path."""
    merged: dict[str, dict[str, Any]] = {}
    for group in groups:
        for summary in group:
            merged[summary["path"]] = dict(summary)
    return [merged[path] for path in sorted(merged)]


def add_version(versions: Sequence[Mapping[str, Any]], version: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Append a version entry (with today's date and the builder version), replacing a same-named one."""
    entry = {"date": _dt.date.today().isoformat(), "builder_version": __version__, **version}
    return [dict(v) for v in versions if v.get("version") != entry["version"]] + [entry]


def render_card(
    summaries: Sequence[Mapping[str, Any]],
    versions: Sequence[Mapping[str, Any]] = (),
    repo_id: str | None = None,
) -> str:
    """The README.md text: YAML (configs, dataset_info, license, versions) and the body."""
    from huggingface_hub import DatasetCard, DatasetCardData

    from .card_info import dataset_info

    families = sorted({s["config"] for s in summaries})
    configs = [
        {
            "config_name": "all",
            "default": True,
            "data_files": [{"split": "train", "path": f"{DATA_DIR}/*/*.parquet"}],
        }
    ] + [
        {"config_name": f, "data_files": [{"split": "train", "path": f"{DATA_DIR}/{f}/*.parquet"}]}
        for f in families
    ]
    selections = {"all": list(summaries)}
    selections.update({f: [s for s in summaries if s["config"] == f] for f in families})
    splits = {name: (sum(s["n_bytes"] for s in chosen), sum(s["n_rows"] for s in chosen)) for name, chosen in selections.items()}
    card_data = DatasetCardData(
        license="apache-2.0",
        pretty_name="QK-circuit spectra of transformer attention heads",
        task_categories=list(TASK_CATEGORIES),
        tags=list(TAGS),
        size_categories=_size_category(sum(s["n_rows"] for s in summaries)),
        configs=configs,
        qk_spectra_ds={
            "schema_version": schema.SCHEMA_VERSION,
            "builder_version": __version__,
            "versions": [dict(v) for v in versions],
            "models": [{k: m.get(k) for k in SUMMARY_COLUMNS + ("config", "path", "n_rows", "n_bytes", "sha256")} for m in summaries],
        },
    )
    card_data["dataset_info"] = dataset_info(splits)  # per config: the features and the train split's size
    from .markdown_text import md_code

    shown = [{**s, "model_id_md": md_code(s.get("model_id")), "model_id_cell": md_code(s.get("model_id"), table=True)}
             for s in summaries]  # ids shown as code, never as Markdown or HTML  # fmt: skip
    legacy = [s for s in shown if s.get("variant") == schema.VARIANT_LEGACY]
    card = DatasetCard.from_template(
        card_data,
        template_path=str(_TEMPLATE),
        repo_id=repo_id,
        models=[{**s, "source": model_source(s)} for s in shown],
        legacy_models=legacy,
        built_models=[s for s in shown if s.get("variant") != schema.VARIANT_LEGACY],
        families=families,
        versions=list(versions),
        columns=schema.column_types(),
        descriptions=COLUMN_DESCRIPTIONS,
        commands=build_commands(summaries),
        citation=dataset_citation(repo_id, versions),
        schema_version=schema.SCHEMA_VERSION,
        builder_version=__version__,
        null_seed=schema.NULL_SEED,
    )
    return str(card)


TASK_CATEGORIES = ("other",)
"""The card's ``task_categories``: none of the Hub's task categories (huggingface.js ``PIPELINE_DATA``, e.g.
tabular-classification, feature-extraction, graph-ml) describes spectra of weights, so the Hub's own ``other``."""

TAGS = ("interpretability", "mechanistic-interpretability", "attention", "transformers", "qk-circuits",
        "spectral-analysis", "singular-values", "tabular")  # fmt: skip
"""Free-form ``tags`` of the card (the Hub lets a card choose these)."""

_COMMIT = re.compile(r"[0-9a-f]{40}")
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def model_source(summary: Mapping[str, Any]) -> dict[str, str | None]:
    """Where a model's rows come from: ``kind`` hub / local / legacy, and the model card's ``url`` where one exists.

    A Hub model is one whose ``model_revision`` is a 40-hex commit; its license is on its model card
    (``https://huggingface.co/<id>``). A local folder has a ``local:`` revision: its card is linked only
    when its id is a Hub id (an installed copy of a Hub model, such as the packaged MiniLM), else none.
    """
    revision = str(summary.get("model_revision") or "")
    model_id = str(summary.get("model_id") or "")
    url = f"https://huggingface.co/{model_id}" if _HUB_ID.fullmatch(model_id) else None
    if summary.get("variant") == schema.VARIANT_LEGACY:
        return {"kind": "legacy", "url": url}
    if _COMMIT.fullmatch(revision):
        return {"kind": "hub", "url": url}
    return {"kind": "local", "url": url}


def build_commands(summaries: Sequence[Mapping[str, Any]]) -> list[str]:
    """One command per family that rebuilds its Hub models at their recorded commits (``--models id@commit,...``).

    Local folders and imported legacy rows cannot be fetched by anyone else, so they are listed by the card
    but left out of the command (a family of only those gets none).
    """
    commands = []
    for family in sorted({s["config"] for s in summaries}):
        hub = [s for s in summaries if s["config"] == family and model_source(s)["kind"] == "hub"]
        if hub:
            specs = ",".join(f"{s['model_id']}@{s['model_revision']}" for s in hub)
            commands.append(f"qk-spectra-build --family {family} --models {specs} --out DIR")
    return commands


def dataset_citation(repo_id: str | None, versions: Sequence[Mapping[str, Any]] = ()) -> str:
    """BibTeX for the dataset itself: the Hub repo (or "a local build" before publishing) and its latest version."""
    latest = versions[-1] if versions else {}
    key = model_slug(repo_id or "qk-spectra").replace("--", "_").replace("-", "_").replace(".", "_").lower()
    fields = {
        "title": "{QK-circuit spectra of transformer attention heads}",
        "author": "{" + (repo_id.split("/")[0] if repo_id else "unknown") + "}",
        "howpublished": "{\\url{https://huggingface.co/datasets/" + repo_id + "}}" if repo_id else "{a local build, not published}",
        "version": "{" + str(latest["version"]) + "}" if latest.get("version") else None,
        "year": "{" + str(latest["date"])[:4] + "}" if latest.get("date") else None,
        "note": "{Built with qk-spectra-ds " + str(latest.get("builder_version") or __version__) + "}",
    }
    body = ",\n".join(f"  {name:<12} = {value}" for name, value in fields.items() if value is not None)
    return f"@misc{{{key},\n{body}\n}}"


def write_card(
    out_dir: str | os.PathLike,
    new_version: Mapping[str, Any] | None = None,
    repo_id: str | None = None,
    rerecord: bool = False,
) -> Path:
    """Regenerate README.md from the parquet files present, atomically (not rewritten if unchanged).

    ``new_version`` (version, date, changes) is appended to the recorded history,
    replacing an entry of the same version. A card whose YAML does not parse, or
    a corrupt model file, is a one-line :class:`DatasetRepoError`; an ``OSError``
    (e.g. ENOSPC) leaves the previous card in place. Each file's SHA-256 and size are
    recorded as :func:`with_digests` says (``rerecord``: as the files are now).
    """
    versions = read_card_versions(out_dir)
    if new_version is not None:
        versions = add_version(versions, new_version)
    summaries = with_digests(out_dir, [read_summary(p) for p in model_files(out_dir)], read_card_models(out_dir), rerecord)
    text = render_card(summaries, versions, repo_id=repo_id)
    path = Path(out_dir) / CARD_NAME
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return path
    return write_text(path, text)


def _size_category(n: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < limit:
            return name
    return "1M<n<10M"

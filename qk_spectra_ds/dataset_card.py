"""The dataset card (README.md): rendered from the model files' summaries and regenerated in place.

The YAML header carries the configs (one per family and ``all``), the
``dataset_info`` block (:mod:`qk_spectra_ds.card_info`) and the
``qk_spectra_ds`` block (versions, models with checksums) that
:mod:`qk_spectra_ds.card_metadata` reads back; the body comes from
templates/dataset_card.md: what each column means, where each model's rows
come from, the commands that rebuild them and a citation.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from huggingface_hub import DatasetCard, DatasetCardData

from . import __version__, schema
from .atomic import write_text
from .card_info import dataset_info
from .card_metadata import add_version, read_card_models, read_card_versions, with_digests
from .dataset_repo import CARD_NAME, DATA_DIR, SUMMARY_COLUMNS, model_files, model_slug, read_summary
from .markdown_text import md_code

_TEMPLATE = Path(__file__).with_name("templates") / "dataset_card.md"

_STAT_MEANINGS = {
    "min": "smallest {one}",
    "max": "largest {one}",
    "mean": "mean of the {many}",
    "std": "standard deviation (N-1) of the {many}",
    "skew": "skewness mean(z^3) of the {many}, z standardized",
    "kurtosis": "excess kurtosis mean(z^4) - 3 of the {many}, z standardized",
}
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
    **{
        f"sv_{k}": v.format(one="singular value of the head", many="head's singular values")
        for k, v in _STAT_MEANINGS.items()
    },
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
    **{
        f"behaviour_{name}": f"{meaning} (see Behaviour scores); null unless built with --behaviour, on ov rows{extra}"
        for name, meaning, extra in (
            ("previous_token", "mean attention to the previous position", ""),
            ("next_token", "mean attention to the next position", " and for causal models (encoders only)"),
            (
                "induction",
                "mean attention, in the probe's second repeat, to the token after the current token's earlier "
                "occurrence",
                " and for encoders",
            ),
            ("first_token", "mean attention to the first position (sink; [CLS] in encoders)", ""),
            ("local", "mean attention mass within probe_local_window positions of the query, first token excluded", ""),
            ("entropy", "mean entropy of the attention distribution divided by ln(context length)", ""),
        )
    },
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


def render_card(
    summaries: Sequence[Mapping[str, Any]],
    versions: Sequence[Mapping[str, Any]] = (),
    repo_id: str | None = None,
) -> str:
    """The README.md text: YAML (configs, dataset_info, license, versions) and the body."""
    families = sorted({s["config"] for s in summaries})
    configs = [
        {
            "config_name": "all",
            "default": True,
            "data_files": [{"split": "train", "path": f"{DATA_DIR}/*/*.parquet"}],
        }
    ] + [{"config_name": f, "data_files": [{"split": "train", "path": f"{DATA_DIR}/{f}/*.parquet"}]} for f in families]
    selections = {"all": list(summaries)}
    selections.update({f: [s for s in summaries if s["config"] == f] for f in families})
    splits = {
        name: (sum(s["n_bytes"] for s in chosen), sum(s["n_rows"] for s in chosen))
        for name, chosen in selections.items()
    }
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
            "models": [
                {k: m.get(k) for k in SUMMARY_COLUMNS + ("config", "path", "n_rows", "n_bytes", "sha256")}
                for m in summaries
            ],
        },
    )
    card_data["dataset_info"] = dataset_info(splits)  # per config: the features and the train split's size
    shown = [
        {**s, "model_id_md": md_code(s.get("model_id")), "model_id_cell": md_code(s.get("model_id"), table=True)}
        for s in summaries
    ]  # ids shown as code, never as Markdown or HTML
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

TAGS = (
    "interpretability",
    "mechanistic-interpretability",
    "attention",
    "transformers",
    "qk-circuits",
    "spectral-analysis",
    "singular-values",
    "tabular",
)
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
        "howpublished": "{\\url{https://huggingface.co/datasets/" + repo_id + "}}"
        if repo_id
        else "{a local build, not published}",
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
    summaries = with_digests(
        out_dir, [read_summary(p) for p in model_files(out_dir)], read_card_models(out_dir), rerecord
    )
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

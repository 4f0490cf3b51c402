"""qk-spectra-ds: per-head QK-circuit spectra as a versioned Hugging Face dataset.

Two halves around a small shared core, in data-flow order (every module is listed;
tests/package/test_module_boundaries.py keeps this map complete):

  qk_spectra_ds.builder   (the ``build`` extra: torch; the builder reads safetensors itself)
    sources       catalog (families), weights (the source interface, local dirs),
                  hub_source (a Hub repo at a commit, checked range reads),
                  safetensors_io (tensor reads), config_checks (config.json fields)
    layouts       architectures (the one registry of model types; their records in
                  model_types/: record, folding_rules, llama_like, gpt_style, latent,
                  multimodal), config_fields (config.json by name), layouts and
                  latent_layout (where Q and K live), layer_facts (layer kinds, rotary),
                  ov (V and O), folding (reading norms, scales: the folded variant),
                  rotary (RoPE maths)
    math          spectra (exact QK singular values), raw_numpy (the same without
                  torch), variants (folded, positional, null), circuits and
                  circuit_rows (symmetry, copying, matched nulls), seeds (draw keys)
    running       route (which kernel), kernel (CPU/GPU scheduling), memory,
                  probes and behaviour (--behaviour: probe scores, the model run),
                  build_options (checked once), planning (model and layer plans),
                  layer_compute (per layer, prefetched), columns (the rows),
                  local_revision (a folder's digest), model_file, skip_key (rebuild
                  or skip), results and shards, pipeline (model -> parquet: the
                  steps), publish (to the Hub), cli (qk-spectra-build)
  core                    errors (every exception), atomic (atomic writes), schema
                          (the data contract), statistics, integrity (checksums,
                          recomputation), naming (file names), markdown_text,
                          dataset_repo (the model files), dataset_card (the card:
                          rendered, regenerated), card_metadata (the card read
                          back: versions, models, checksums), card_info, hub_access,
                          progress, paths (output dirs), textutil (comma lists),
                          cli_util (the CLIs' flag machinery; CLIs only)
  qk_spectra_ds.analysis  (the ``analysis`` extra, never torch)
    reading       loading (load_spectra: reading the config once, selection of rows,
                  row_checks), verification (file checksums), recompute (stored values),
                  legacy (the original study's pickles imported: legacy_pickle, the
                  restricted unpickler; legacy_format, layout and rows), optional (umap, statsmodels)
    methods       features, taxonomy (classification A, the original), layer_boxplots
                  (classification B, the original), consensus (k selection, one model end
                  to end: consensus_features, consensus_runs, consensus_stability;
                  consensus_result: its values; consensus_classifier: the estimator),
                  joint_consensus,
                  structure, class_profiles, layer_permutation_tests (valid per-layer tests),
                  rmt_null, variants_compare, circuit_tables (QK vs OV), behaviour (its tests),
                  positional, head_compare and depth_profiles (compare: the run)
    writing       plots (style and saving), class_figures, consensus_figures, layer_boxplot_figures,
                  circuit_figures and circuits (the report's QK and OV section),
                  compare_figures, behaviour_figures, behaviour_report, head_maps,
                  table_files, html_report, summary,
                  report (one config end to end, as a pipeline: report_params, scheduling,
                  model_analysis, joint_analysis, report_tables, report_index),
                  cli_defaults, cli_flags, cli_commands, cli (qk-spectra-analyze)

The public Python API (README, "Python API") is exported here lazily: ``import
qk_spectra_ds`` imports nothing heavy, and a name is imported from its module
on first use (``qk_spectra_ds.load_spectra`` loads the analysis half only, never
torch; ``qk_spectra_ds.build_family`` the builder), so both halves can import
the package.
"""

from __future__ import annotations

import importlib
import warnings

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    # build a dataset (the ``build`` extra)
    "build_family": "qk_spectra_ds.builder.pipeline",
    "build_model": "qk_spectra_ds.builder.pipeline",
    "publish": "qk_spectra_ds.builder.publish",
    # load it (the ``analysis`` extra)
    "load_spectra": "qk_spectra_ds.analysis.loading",
    "transformer_lens_name": "qk_spectra_ds.analysis.loading",
    "add_transformer_lens_names": "qk_spectra_ds.analysis.loading",
    # the default method: are there classes at all, which, how stable, what they are; valid per-layer tests
    "ConsensusHeadClassifier": "qk_spectra_ds.analysis.consensus_classifier",
    "consensus_classes": "qk_spectra_ds.analysis.consensus",
    "ConsensusResult": "qk_spectra_ds.analysis.consensus_result",
    "structure_test": "qk_spectra_ds.analysis.structure",
    "class_profiles": "qk_spectra_ds.analysis.class_profiles",
    "joint_consensus": "qk_spectra_ds.analysis.joint_consensus",
    "crosswalk": "qk_spectra_ds.analysis.joint_consensus",
    "series_tests": "qk_spectra_ds.analysis.layer_permutation_tests",
    "layer_test_table": "qk_spectra_ds.analysis.layer_permutation_tests",
    "simulated_power": "qk_spectra_ds.analysis.layer_permutation_tests",
    # the original study's method, to reproduce it: classification A (one KMeans(6)) and its joint taxonomy,
    # classification B (per-layer statistics; bds_table: asymptotic BDS p-values, invalid at 10-80 layers)
    "SpectralHeadClassifier": "qk_spectra_ds.analysis.taxonomy",
    "joint_taxonomy": "qk_spectra_ds.analysis.taxonomy",
    "model_heads": "qk_spectra_ds.analysis.joint_analysis",
    "layer_stats": "qk_spectra_ds.analysis.layer_boxplots",
    "bds_table": "qk_spectra_ds.analysis.layer_boxplots",
    # figures and the whole report
    "plot_clusters": "qk_spectra_ds.analysis.class_figures",
    "plot_layer_stats": "qk_spectra_ds.analysis.layer_boxplot_figures",
    "plot_taxonomy_classes": "qk_spectra_ds.analysis.class_figures",
    "plot_taxonomy_depth": "qk_spectra_ds.analysis.class_figures",
    "run_report": "qk_spectra_ds.analysis.report",
    # errors
    "QKSpectraError": "qk_spectra_ds.errors",
}
"""Public name -> the module that defines it (imported on first access)."""

_RETIRED: dict[str, tuple[str, str]] = {
    "layer_stat": ("qk_spectra_ds.analysis.layer_boxplots", "layer_stats(rows, [stat])[0]"),
}
"""Former public names that still resolve, with a DeprecationWarning naming the one to use (not in ``__all__``)."""

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    """Import a public name from its module on first use (PEP 562), then cache it here."""
    if name in _RETIRED:
        module, instead = _RETIRED[name]
        warnings.warn(f"qk_spectra_ds.{name} is retired: use {instead}", DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module(module), name)
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'qk_spectra_ds' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))

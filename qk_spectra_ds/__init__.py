"""qk-spectra-ds: per-head QK-circuit spectra as a versioned Hugging Face dataset.

Two halves around a small shared core, in data-flow order:

  qk_spectra_ds.build     (the ``build`` extra: torch, safetensors)
    catalog, weights, safetensors_io, architectures, spectra (math), kernel
    (scheduling), pipeline (model -> parquet), publish, cli (qk-spectra-build)
  core                    errors, atomic, schema, statistics, dataset_repo, cli_util
  qk_spectra_ds.analysis  (the ``analysis`` extra, never torch)
    loading, legacy, features, taxonomy, layer_stats, plots, report,
    cli (qk-spectra-analyze)

This module imports nothing heavy so that both halves can import the package.
"""

__version__ = "0.1.0"

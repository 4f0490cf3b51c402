"""qk-spectra-ds: per-head QK-circuit spectra as a versioned Hugging Face dataset.

Data flow (one module per step):

  builder half (needs the ``build`` extra: torch, safetensors)
    catalog        families of models and their Hub ids
    weights        where bytes come from: local dirs and Hub repos, ranged reads
    safetensors_io header parsing and single-tensor reads, no whole shard in memory
    architectures  where each model_type keeps Q and K, split into heads
    spectra        the math: singular values of W_Q^T W_K per head, statistics, metrics
    schema         the dataset contract (schema version 1)
    dataset_repo   parquet files and the card on disk, resume
    atomic         atomic writes for every output (parquet, card, tables, figures)
    build          orchestration: model -> rows -> parquet
    publish        pushing a dataset version to the Hub
    cli_util, errors  one-line errors for the two CLIs

  analysis half (needs only the ``analysis`` extra, never torch)
    loading, legacy, features, taxonomy, layer_stats, plots, report

This module imports nothing heavy so that both halves can import the package.
"""

__version__ = "0.1.0"

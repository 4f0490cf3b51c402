#!/usr/bin/env python
"""Build per-head QK spectra for a family of models into a Hugging Face dataset repo.

Examples:
  python build_dataset.py --list
  python build_dataset.py --family MiniLM                      # offline, the packaged all-MiniLM-L6-v2
  python build_dataset.py --family Qwen3 --out ./qk-spectra    # from the Hub
  python build_dataset.py --family Mine --models /path/to/model,org/name@main
"""

from __future__ import annotations

import sys

import fire

from qk_spectra_ds.cli_util import as_list, run_cli


def main(
    family: str | None = None,
    out: str = "./qk-spectra",
    models: str | None = None,
    device: str | None = None,
    force: bool = False,
    list: bool = False,  # noqa: A002 - the flag users type
    catalog: str | None = None,
    shard: str | None = None,
    push_to_hub: str | None = None,
    version: str | None = None,
    private: bool = False,
    revision: str | None = None,
    message: str | None = None,
    skip_build: bool = False,
    quiet: bool = False,
):
    """Compute the singular values of every attention head's W_QK = W_Q^T W_K and write them as a dataset.

    Each model becomes data/<family>/<model-slug>.parquet in OUT (one row per layer and query
    head, schema v1) and OUT/README.md is regenerated (configs per family and 'all'). Models
    already built from the same revision by this builder version are skipped; a failing model
    does not lose the others, and the command then exits non-zero naming it.

    Args:
      family: Dataset config to build, a catalogued family (see --list; Qwen3, Gemma2, Llama,
        Mistral, MiniLM, or one from --catalog), or any name when --models is given.
      out: Dataset repo directory (created if missing; reused and updated if present).
      models: Comma-separated models to build instead of the family's catalogue, Hub ids
        (org/name, optionally @branch, tag or commit) or local directories with config.json and
        safetensors weights.
      device: Where the float64 factorizations run, cpu or cuda (default: cuda if torch sees a GPU,
        else cpu).
      force: Rebuild models even if OUT already has them at the same revision and builder version,
        and with --push-to-hub, move an existing --version tag.
      list: Print the catalogued families and their models, then exit.
      catalog: YAML or JSON file mapping extra family names to model lists, merged over the
        built-in catalogue (default $QK_SPECTRA_CATALOG if set).
      shard: Build only part of the model list, as I/N (0-based): models I, I+N, I+2N, ... Use one
        shard per machine and --push-to-hub the same repo from each; the Hub repo is the shared store.
      push_to_hub: After building, publish OUT to this Hub dataset repo (ORG/NAME, created if
        missing), the changed parquet files and the merged card in one commit.
      version: Tag the published commit as this version (vMAJOR.MINOR.PATCH) and record it in the
        card's version table. An existing tag is refused unless --force.
      private: Create the Hub dataset repo as private (only when it does not exist yet).
      revision: Branch of the Hub dataset repo to commit to (default main; created if missing).
      message: Commit message and the "what changed" entry of the version table (default: the
        models added or updated).
      skip_build: Publish OUT as it is, without building (with --push-to-hub).
      quiet: No progress bars.
    """
    from qk_spectra_ds import build, catalog as catalog_mod

    if list:
        print(catalog_mod.format_catalog(catalog_mod.load_catalog(catalog)))
        return
    if skip_build:
        if not push_to_hub:
            raise catalog_mod.CatalogError("--skip-build only makes sense with --push-to-hub ORG/NAME")
    else:
        if not family:
            raise catalog_mod.CatalogError("no --family given: pass --family NAME (see --list)")
        results = build.build_family(
            str(family),
            out,
            models=as_list(models),
            device=device,
            force=force,
            catalog_file=catalog,
            progress=not quiet,
            shard=shard,
        )
        print(build.summarize(results))
        print(f"dataset: {out} (load with datasets.load_dataset({str(out)!r}, {str(family)!r}))")
    if push_to_hub:
        from qk_spectra_ds.publish import publish

        result = publish(
            out,
            str(push_to_hub),
            version=None if version is None else str(version),
            private=private,
            branch=revision,
            force=force,
            message=message,
        )
        print(result.summary())


if __name__ == "__main__":
    sys.exit(run_cli(lambda: fire.Fire(main)))

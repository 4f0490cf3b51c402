"""Build per-head QK spectra for a family of models into a Hugging Face dataset repo.

Examples:
  python build_dataset.py --list
  python build_dataset.py --family MiniLM                      # offline, the packaged all-MiniLM-L6-v2
  python build_dataset.py --family Qwen3 --out ./qk-spectra    # from the Hub
  python build_dataset.py --family Mine --models /path/to/model,org/name@main
"""

from __future__ import annotations

import importlib.util
import sys

from ..cli_util import UsageError, as_list, call_cli, long_flag, program_name, run_cli
from .catalog import format_catalog, load_catalog

BUILD_ONLY = (
    "family",
    "models",
    "device",
    "shard",
    "catalog",
    "variants",
    "offsets",
    "null_seed",
    "circuits",
    "behaviour",
)
PROBE_FLAGS = ("probe_seed", "probe_sequences", "probe_length", "probe_local_window")
PUBLISH_ONLY = ("version", "private", "branch", "revision", "message")
DEPRECATED = ("revision",)
"""Flags kept for old command lines, with a warning and no short flag: ``--revision`` (until 0.2.0; use ``--branch``)."""
LIST_FLAGS = ("models", "variants", "offsets")


def build(
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
    branch: str | None = None,
    revision: str | None = None,
    message: str | None = None,
    skip_build: bool = False,
    quiet: bool = False,
    variants: str | None = None,
    offsets: str | None = None,
    null_seed: str | None = None,
    circuits: str | None = None,
    behaviour: bool = False,
    probe_seed: str | None = None,
    probe_sequences: str | None = None,
    probe_length: str | None = None,
    probe_local_window: str | None = None,
):
    """Compute the singular values of every attention head's W_QK = W_Q^T W_K and write them as a dataset.

    Each model becomes data/<family>/<model-slug>.parquet in OUT (one row per layer and query
    head, circuit and variant, schema v4) and OUT/README.md is regenerated (configs per family and 'all'). Models
    already built from the same revision with the same method version are skipped; a failing model
    does not lose the others, and the command then exits non-zero naming it.

    Flags are checked before any work: an unknown or misspelt flag, a value of the wrong type, an
    --out that is a file or not writable, a --device torch cannot use, or a --version that is not
    vX.Y.Z stops the command at once with one line. Values are taken as typed (--family 1e3 is the
    name "1e3"); switches are --force or --force=false. Every failure is one `error:` line; for an
    unexpected one, set QK_SPECTRA_DEBUG=1 to see its traceback.

    Args:
      family: Dataset config to build, a catalogued family (see --list; Qwen3, Gemma2, Llama,
        Mistral, MiniLM, or one from --catalog), or any name when --models is given.
      out: Dataset repo directory (created if missing; reused and updated if present).
      models: Comma-separated models to build instead of the family's catalogue, Hub ids
        (org/name, optionally @branch, tag or commit) or local directories with config.json and
        safetensors weights.
      device: Where the float64 factorizations run: cpu, cuda or cuda:N (default: cuda if torch sees
        a GPU, else cpu).
      force: Rebuild models even if OUT already has them at the same revision and builder version,
        and with --push-to-hub, move an existing --version tag.
      list: Print the catalogued families and their models, then exit.
      catalog: YAML or JSON file mapping extra family names to model lists, merged over the
        built-in catalogue (default $QK_SPECTRA_CATALOG if set).
      shard: Build only part of the model list, as I/N (0-based): models I, I+N, I+2N, ... Use one
        shard per machine and --push-to-hub the same repo from each; the Hub repo is the shared store.
        "auto" reads I/N from a SLURM array task (SLURM_ARRAY_TASK_ID minus SLURM_ARRAY_TASK_MIN,
        SLURM_ARRAY_TASK_COUNT); for other schedulers pass --shard I/N from their variables (see README).
      push_to_hub: After building, publish OUT to this Hub dataset repo (ORG/NAME, created if
        missing), the changed parquet files and the merged card in one commit.
      version: Tag the published commit as this version (vMAJOR.MINOR.PATCH) and record it in the
        card's version table. An existing tag is refused unless --force.
      private: Create the Hub dataset repo as private (only when it does not exist yet).
      branch: Branch of the Hub dataset repo to commit to (default main; created if missing).
      revision: Deprecated (removed in 0.2.0): the old name of --branch, with a warning (in the analysis,
        --revision is the dataset revision to read).
      message: Commit message and the "what changed" entry of the version table (default: the
        models added or updated).
      skip_build: Publish OUT as it is, without building (with --push-to-hub).
      quiet: No progress bars.
      variants: Comma-separated variants to build, rows per (layer, head, variant): raw (W_Q^T W_K),
        folded (norm gains, q/k norm gains, centring and attention scale folded in), null (folded
        factors paired through a seeded Haar-random rotation). Default raw,folded,null.
      offsets: Comma-separated token offsets for the positional (RoPE) spectra of raw and folded rows
        of rotary layers (default 0,1,2,4,... up to max_position_embeddings; none: no positional spectra).
      null_seed: Seed of the null variant's Haar-random rotations, a whole number from 0 to 2^63 - 1
        (default 0). Each null row records it in its null_seed column; a model whose null rows hold
        another seed is rebuilt.
      circuits: Comma-separated circuits to build, rows per (layer, head, circuit, variant): qk (W_Q^T W_K,
        where a head looks) and ov (W_O W_V, what it writes), each with symmetry and matched-null z-scores
        (see the card). Default qk,ov; qk alone gives the rows of schema v3 plus the new metrics.
      behaviour: Also run each model (loaded whole with transformers, eager attention, its own dtype, on
        --device) on seeded probes, and store per-head behaviour scores on its qk rows: previous-token,
        induction, first-token (sink), local, entropy; encoders next-token instead of induction (see the
        card). Needs the full weights; a model without them is refused with one line. Off by default.
      probe_seed: Seed of the probes' random tokens (default 0; with --behaviour).
      probe_sequences: Number of probe sequences (default 16; with --behaviour).
      probe_length: Random tokens per repeat: each probe is a fixed first token and the same random
        tokens twice (default 32; with --behaviour).
      probe_local_window: How many positions next to the query count as local (default 3; with --behaviour).
    """
    flags = dict(locals())  # the parameters, before any other local exists
    if list:
        print(format_catalog(load_catalog(catalog)))
        return
    check_flag_combination({name for name, value in flags.items() if value is not None and value is not False})
    branch = branch_flag(branch, revision)
    probe = None
    if behaviour:
        if importlib.util.find_spec("transformers") is None:  # the behaviour extra
            raise UsageError(
                "--behaviour runs each model with transformers, which is not installed: "
                "pip install 'qk-spectra-ds[behaviour]' (or leave the flag out)"
            )
        from .probes import check_probe  # numpy; the steps below are lazy too, so that --help and --list start fast

        probe = check_probe(probe_seed, probe_sequences, probe_length, probe_local_window)  # before any work
    if push_to_hub:
        from .publish import check_target  # huggingface_hub (about 0.9 s)

        check_target(push_to_hub, version)  # before a build that could take hours
    if not skip_build:
        from . import pipeline  # numpy and the whole builder
        from .shards import SHARD_AUTO, resolve_shard

        if shard is not None and str(shard).strip().lower() == SHARD_AUTO:
            shard = resolve_shard(shard)  # before any work: outside an array job, one line
            print(f"shard {shard} (from the SLURM array task)")
        models_list = as_list(models, "--models")
        results = pipeline.build_family(
            family,
            out,
            models=models_list,
            device=device,
            force=force,
            catalog_file=catalog,
            progress=not quiet,
            shard=shard,
            variants=as_list(variants, "--variants") if variants is not None else None,
            offsets=as_list(offsets, "--offsets") if offsets is not None else None,
            null_seed=null_seed,
            circuits=as_list(circuits, "--circuits") if circuits is not None else None,
            **({"behaviour": probe} if probe is not None else {}),
        )
        print(pipeline.summarize(results))
        print(f"dataset: {out} (load with datasets.load_dataset({out!r}, {family!r}))")
    if push_to_hub:
        from .publish import publish

        result = publish(
            out, push_to_hub, version=version, private=private, branch=branch, force=force, message=message
        )
        print(result.summary())


def branch_flag(branch: str | None, revision: str | None) -> str | None:
    """The branch to commit to: ``--branch``, or the deprecated ``--revision`` with a warning on stderr."""
    if revision is None:
        return branch
    if branch is not None and str(branch) != str(revision):
        raise UsageError(f"--branch {branch!r} and the deprecated --revision {revision!r} disagree: give --branch only")
    print(
        "warning: --revision is deprecated in the build (it names the branch to commit to): use --branch",
        file=sys.stderr,
    )
    return revision


def check_flag_combination(given: set[str]) -> None:
    """Refuse flags that the rest of the command line would silently ignore."""
    if "skip_build" in given:
        if "push_to_hub" not in given:
            raise UsageError("--skip-build only makes sense with --push-to-hub ORG/NAME")
        ignored = [long_flag(name) for name in BUILD_ONLY if name in given]
        if ignored:
            raise UsageError(f"--skip-build builds nothing, so {', '.join(ignored)} would be ignored: drop them")
    elif "family" not in given:
        raise UsageError("no --family given: pass --family NAME (see --list)")
    probes = [long_flag(name) for name in PROBE_FLAGS if name in given]
    if probes and "behaviour" not in given:
        raise UsageError(
            f"{', '.join(probes)} only {'applies' if len(probes) == 1 else 'apply'} with --behaviour: "
            "add it, or leave them out"
        )
    if "push_to_hub" not in given:
        ignored = [long_flag(name) for name in PUBLISH_ONLY if name in given]
        if ignored:
            verb = "applies" if len(ignored) == 1 else "apply"
            raise UsageError(f"{', '.join(ignored)} only {verb} with --push-to-hub ORG/NAME: add it, or leave them out")


def cli(argv: list[str] | None = None) -> int:
    """Run the command line (``argv`` defaults to sys.argv): flags checked first, errors as one line."""
    name = program_name("build_dataset.py")
    return run_cli(lambda: call_cli(build, argv, name=name, list_flags=LIST_FLAGS, deprecated=DEPRECATED))

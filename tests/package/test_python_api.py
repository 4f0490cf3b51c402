"""Issue 14, items 1, 4, 5, 7: the Python API (the README's examples run here), the card by the Hub's
conventions, ``--shard auto`` on SLURM arrays, and the small things (help types, --list, CSV precision,
.gitignore, the index).

The README's Python examples are not mirrored: every ```python block preceded by the marker
``<!-- tested: tests/package/test_python_api.py -->`` is extracted from README.md and run, in order and in one
namespace, in a temporary directory (the README's own relative paths). What they produce is then
checked against references computed here independently: dense float64 SVDs of W_QK formed from the
packaged all-MiniLM-L6-v2 weights read with ``safetensors`` itself.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
MARKER = "<!-- tested: tests/package/test_python_api.py -->"
MINILM = "sentence-transformers/all-MiniLM-L6-v2"


def readme_blocks() -> list[str]:
    """The README's ```python blocks marked for testing, in order."""
    return re.findall(re.escape(MARKER) + r"\n```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)


@pytest.fixture(scope="module")
def readme_run(tmp_path_factory):
    """Run the marked README blocks in a fresh directory; their namespace and the directory."""
    work = tmp_path_factory.mktemp("readme")
    blocks = readme_blocks()
    namespace: dict = {"__name__": "__readme__"}
    cwd = os.getcwd()
    os.chdir(work)
    try:
        for number, block in enumerate(blocks, 1):
            with contextlib.redirect_stdout(io.StringIO()):
                exec(compile(block, f"README.md python block {number}", "exec"), namespace)
    finally:
        os.chdir(cwd)
    return namespace, work, len(blocks)


def minilm_reference() -> tuple[dict, dict[tuple[int, int], np.ndarray]]:
    """Dense float64 singular values of every head's W_QK of the packaged MiniLM, from its safetensors file."""
    from safetensors.numpy import load_file
    from threadpoolctl import threadpool_limits

    from qk_spectra_ds.builder.catalog import packaged_model_dir

    folder = packaged_model_dir(MINILM)
    config = json.loads((folder / "config.json").read_text())
    weights = load_file(str(next(folder.glob("*.safetensors"))))
    heads, d_head = config["num_attention_heads"], config["hidden_size"] // config["num_attention_heads"]
    ref = {}
    with threadpool_limits(1):  # 72 small SVDs: one BLAS thread each is fastest, above all on a busy machine
        for layer in range(config["num_hidden_layers"]):
            _layer_reference(weights, layer, heads, d_head, ref)
    return config, ref


def _layer_reference(weights: dict, layer: int, heads: int, d_head: int, ref: dict) -> None:
    """Dense float64 singular values of W_QK = (W_Q^h)^T W_K^h of each head of one BERT layer, into ``ref``."""
    (q_name,) = [n for n in weights if n.endswith(f"layer.{layer}.attention.self.query.weight")]
    wq = weights[q_name].astype(np.float64)
    wk = weights[q_name.replace(".query.", ".key.")].astype(np.float64)
    for h in range(heads):
        rows = slice(h * d_head, (h + 1) * d_head)  # HF's (and TransformerLens') split of Q/K into heads
        ref[(layer, h)] = np.linalg.svd(wq[rows].T @ wk[rows], compute_uv=False)[:d_head]


# ---------------------------------------------------------------- item 1: the API, as the README shows it


@pytest.mark.slow
def test_readme_examples_run_and_build_load_classify_and_test(readme_run):
    namespace, work, n_blocks = readme_run
    assert n_blocks >= 5  # build, load, taxonomy, per-layer tests, report: none silently dropped
    assert [(r.model_id, r.status) for r in namespace["results"]] == [(MINILM, "built")]
    frame = namespace["frame"]
    config, ref = minilm_reference()
    assert len(frame) == config["num_hidden_layers"] * config["num_attention_heads"] == len(ref)
    for row in frame.itertuples():
        expected = ref[(row.layer, row.head)]
        assert row.singular_values.dtype == np.float32 and len(row.singular_values) == len(expected)
        np.testing.assert_allclose(row.singular_values, expected, rtol=1e-5, atol=1e-6 * expected[0])
        np.testing.assert_allclose(row.eigenvalues, expected**2, rtol=2e-5, atol=1e-6 * expected[0] ** 2)
        assert (row.tl_module, row.tl_head) == (f"blocks.{row.layer}.attn", row.head)
    assert len(namespace["clf"].labels_) == len(frame) and set(frame["class"]) <= set(range(6))
    bds = namespace["qk"].bds_table(namespace["stats"])
    assert list(bds["stat"]) == ["MEAN", "STD"] and (bds["n_layers"] == config["num_hidden_layers"] - 2).all()
    for name in ("MiniLM_classes.png", "taxonomy_depth.png", "MEAN_box.png", "STD_box.png"):
        assert (work / "analysis" / "api" / name).stat().st_size > 0, name
    assert (work / "analysis" / "MiniLM" / "index.md").is_file()


@pytest.mark.slow
def test_readme_default_method_gives_the_reports_classes_and_leads_the_api(readme_run):
    """ConsensusHeadClassifier labels MiniLM's heads as the README's report did (consensus_labels.csv, of the variant
    the report analysed); the API and the README present the default method before the original's."""
    import qk_spectra_ds

    namespace, work, _ = readme_run
    report = pd.read_csv(work / "analysis" / "MiniLM" / "tables" / "consensus_labels.csv")
    (variant,) = report["variant"].unique()  # the report's default: folded where built (MiniLM is)
    frame = qk_spectra_ds.load_spectra(work / "qk-spectra", "MiniLM", variant=variant, keep_spectra=True)
    fitted = qk_spectra_ds.ConsensusHeadClassifier().fit(frame.sample(frac=1.0, random_state=0))
    mine = frame.sample(frac=1.0, random_state=0)[["layer", "head"]].assign(estimator=fitted.labels_)
    merged = report.merge(mine, on=["layer", "head"])
    assert len(merged) == len(frame) and (merged["class"] == merged["estimator"]).all()
    assert fitted.n_classes_ == report["class"].nunique() and len(fitted.result_.consensus_classes) == fitted.n_classes_
    readme = namespace["consensus"]  # the README's own fit (variant raw): labels for every head, in frame order
    assert len(readme.labels_) == len(namespace["frame"]) and set(readme.labels_) == set(range(readme.n_classes_))
    tests = namespace["tests"]  # 4 layers after the 2 skipped: shorter than the tests' 10, said so, no p-value
    assert list(tests["stat"]) == ["MEAN", "STD"] and tests["note"].str.startswith("not tested").all()
    assert tests["p_bds_permutation_holm"].isna().all()
    names = list(qk_spectra_ds._EXPORTS)
    assert names.index("ConsensusHeadClassifier") < names.index("SpectralHeadClassifier")
    assert names.index("series_tests") < names.index("bds_table")
    text = README.read_text(encoding="utf-8").split("## Python API")[1]
    assert text.index("ConsensusHeadClassifier") < text.index("SpectralHeadClassifier")


@pytest.mark.slow
def test_the_retired_layer_stat_still_works_with_a_warning(readme_run):
    import qk_spectra_ds as qk

    frame = readme_run[0]["frame"]
    with pytest.warns(DeprecationWarning, match=r"layer_stats\(rows, \[stat\]\)\[0\]"):
        one = qk.layer_stat(frame, "MEAN")
    assert np.array_equal(one.medians, qk.layer_stats(frame, ["MEAN"])[0].medians)
    assert "layer_stat" not in qk.__all__ and "layer_stat" not in dir(qk)


@pytest.mark.slow
def test_load_spectra_keeps_singular_values_only_when_asked(readme_run):
    from qk_spectra_ds import load_spectra

    _, work, _ = readme_run
    plain = load_spectra(work / "qk-spectra", "MiniLM")
    kept = load_spectra(work / "qk-spectra", "MiniLM", keep_spectra=True)
    assert "singular_values" not in plain.columns and "singular_values" in kept.columns
    assert list(kept.drop(columns="singular_values").columns) == list(plain.columns)
    for s, ev in zip(kept["singular_values"], kept["eigenvalues"]):
        assert (np.diff(s) <= 0).all()
        np.testing.assert_allclose(s.astype(np.float64) ** 2, ev, rtol=1e-5)


def test_transformer_lens_names():
    from qk_spectra_ds import add_transformer_lens_names, transformer_lens_name

    assert transformer_lens_name(3, 7) == ("blocks.3.attn", 7)
    frame = pd.DataFrame({"layer": [0, 11], "head": [5, 0]})
    named = add_transformer_lens_names(frame)
    assert named["tl_module"].tolist() == ["blocks.0.attn", "blocks.11.attn"] and named["tl_head"].tolist() == [5, 0]
    assert "tl_module" not in frame.columns  # a copy


@pytest.mark.slow
def test_package_import_is_light_and_the_analysis_api_never_imports_torch():
    code = (
        "import importlib.abc, sys\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in {'torch', 'safetensors', 'transformers'}:\n"
        "            raise ImportError(f'{name} is blocked for this test', name=name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import qk_spectra_ds as qk\n"
        "heavy = [m for m in ('pandas', 'numpy', 'datasets', 'sklearn') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "names = [qk.load_spectra, qk.SpectralHeadClassifier, qk.joint_taxonomy, qk.layer_stats, qk.plot_clusters,\n"
        "         qk.run_report, qk.add_transformer_lens_names, qk.model_heads, qk.bds_table]\n"
        "assert 'build_family' in dir(qk) and 'qk_spectra_ds.builder' not in sys.modules\n"
        "try:\n"
        "    qk.no_such_name\n"
        "except AttributeError as exc:\n"
        "    print('ok', exc)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "ok module 'qk_spectra_ds' has no attribute 'no_such_name'" in done.stdout


def test_every_public_name_is_exported_from_its_module():
    import qk_spectra_ds

    for name in qk_spectra_ds._EXPORTS:
        if name.startswith(("build_", "publish")):
            continue  # the build extra: covered by the README run
        assert getattr(qk_spectra_ds, name) is not None, name


# ---------------------------------------------------------------- item 4: the card


HUB_TASK_CATEGORIES = set(
    "text-classification token-classification table-question-answering question-answering zero-shot-classification "
    "translation summarization feature-extraction text-generation fill-mask sentence-similarity text-to-speech "
    "text-to-audio automatic-speech-recognition audio-to-audio audio-classification voice-activity-detection "
    "depth-estimation image-classification object-detection image-segmentation text-to-image image-to-text "
    "image-to-image image-to-video unconditional-image-generation video-classification reinforcement-learning "
    "robotics tabular-classification tabular-regression tabular-to-text table-to-text multiple-choice text-retrieval "
    "time-series-forecasting text-to-video visual-question-answering document-question-answering "
    "zero-shot-image-classification graph-ml mask-generation zero-shot-object-detection text-to-3d image-to-3d "
    "other".split()
)
"""The Hub's task categories (huggingface.js tasks, as listed in Hub dataset cards' metadata docs)."""


def _summary(model_id: str, revision: str | None, config: str = "Fam", variant: str = "raw") -> dict:
    return {
        "model_id": model_id,
        "model_revision": revision,
        "family": config,
        "model_type": "llama",
        "variant": variant,
        "n_layers": 2,
        "n_heads": 4,
        "n_kv_heads": 2,
        "d_model": 32,
        "d_head": 8,
        "weights_dtype": "bfloat16",
        "builder_version": "0.1.0",
        "schema_version": 2,
        "config": config,
        "path": f"data/{config}/{model_id.replace('/', '--')}.parquet",
        "n_rows": 8,
        "n_bytes": 100,
    }


def _card(summaries, versions=(), repo_id=None) -> str:
    from qk_spectra_ds.dataset_card import render_card

    return render_card(summaries, versions, repo_id=repo_id)


def test_card_metadata_follows_the_hub_conventions():
    from datasets.utils.metadata import MetadataConfigs
    from huggingface_hub import DatasetCard

    commit = "a" * 40
    text = _card([_summary("org/model-a", commit), _summary("model-b", "local:" + "b" * 40)])
    data = DatasetCard(text).data
    assert data.task_categories and set(data.task_categories) <= HUB_TASK_CATEGORIES
    assert data.tags and "interpretability" in data.tags and data.license == "apache-2.0"
    sizes = json.loads(
        (Path(__import__("datasets").__file__).parent / "utils/resources/size_categories.json").read_text()
    )
    assert data.size_categories in sizes
    configs = MetadataConfigs.from_dataset_card_data(data)  # datasets' own check of the configs' data_files
    assert set(configs) == {"all", "Fam"} and configs.get_default_config_name() == "all"
    assert DatasetCard(text).data.to_dict() == data.to_dict()  # round-trips


def test_card_explains_columns_uses_limitations_creation_and_citations():
    from qk_spectra_ds import schema
    from qk_spectra_ds.dataset_card import COLUMN_DESCRIPTIONS

    commit = "c" * 40
    text = _card([_summary("org/model-a", commit), _summary("model-b", "local:" + "d" * 40)])
    body = text.split("\n---\n", 1)[1]
    for name in schema.COLUMNS:  # every column has a meaning, not only a type
        description = COLUMN_DESCRIPTIONS[name]
        assert len(description) > 10 and f"| `{name}` | {schema.column_types()[name]} | {description} |" in body
    for heading in ("## Uses", "## Dataset Creation", "## Bias, Risks, and Limitations", "## License and citation"):
        assert f"\n{heading}\n" in body, heading
    limitations = body.split("## Bias, Risks, and Limitations", 1)[1].split("\n## ", 1)[0]
    for left_out in ("norms", "scale", "rotary", "biases", "sinks"):
        assert left_out in limitations
    assert 'pip install "qk-spectra-ds[analysis]"' in body and "python analyze.py" not in body
    assert "qk-spectra-analyze report --dataset" in body
    # Hub models: rebuilt at their commits, license on their model card; local folders: said so.
    assert f"qk-spectra-build --family Fam --models org/model-a@{commit} --out DIR" in body
    assert "license on [its model card](https://huggingface.co/org/model-a)" in body
    row_b = next(line for line in body.splitlines() if line.startswith("| Fam | `model-b`"))
    assert "local folder" in row_b and "huggingface.co" not in row_b
    # two citations: the dataset itself and the original study
    entries = re.findall(r"```bibtex\n(@misc\{.*?\n\})\n```", body, re.S)
    assert len(entries) == 2 and "darveshi2025qkspectral" in entries[1]
    assert "QK-circuit spectra of transformer attention heads" in entries[0]


def test_card_of_a_local_build_shows_its_local_origin_and_a_published_one_its_repo():
    local = _card([_summary("model-b", "local:" + "d" * 40)]).split("\n---\n", 1)[1]
    assert "local\nbuild, not (yet) published" in local and "a local build, not published" in local
    assert "revision default" not in local and "Pin a\nversion" not in local
    published = _card(
        [_summary("org/m", "e" * 40)],
        [{"version": "v1.2.3", "date": "2026-01-02", "builder_version": "0.1.0", "changes": "x"}],
        "ORG/qk",
    ).split("\n---\n", 1)[1]
    assert "https://huggingface.co/datasets/ORG/qk" in published and "version      = {v1.2.3}" in published
    assert "year         = {2026}" in published and "not (yet) published" not in published


@pytest.mark.slow
def test_built_card_links_the_packaged_minilm_to_its_hub_card(readme_run):
    _, work, _ = readme_run
    body = (work / "qk-spectra" / "README.md").read_text().split("\n---\n", 1)[1]
    row = next(line for line in body.splitlines() if line.startswith(f"| MiniLM | `{MINILM}`"))
    assert "local folder, a copy of [the Hub model](https://huggingface.co/" + MINILM + ")" in row
    assert "| `local:" in row


# ---------------------------------------------------------------- item 5: --shard auto


def _slurm(task, count, low, high=None, step=None) -> dict:
    env = {"SLURM_ARRAY_TASK_ID": str(task), "SLURM_ARRAY_TASK_COUNT": str(count), "SLURM_ARRAY_TASK_MIN": str(low)}
    env["SLURM_ARRAY_TASK_MAX"] = str(low + count - 1 if high is None else high)
    if step is not None:
        env["SLURM_ARRAY_TASK_STEP"] = str(step)
    return env


@pytest.mark.parametrize(
    "env, shard",
    [
        (_slurm(0, 4, 0), "0/4"),
        (_slurm(3, 4, 0), "3/4"),
        (_slurm(1, 4, 1), "0/4"),
        (_slurm(7, 3, 5), "2/3"),
        (_slurm(0, 1, 0), "0/1"),
    ],
)
def test_shard_auto_reads_the_slurm_array_task(env, shard):
    from qk_spectra_ds.builder.shards import resolve_shard, select_shard

    assert resolve_shard("auto", env) == shard
    assert resolve_shard("1/2", env) == "1/2" and resolve_shard(None, env) is None
    index, count = map(int, shard.split("/"))
    specs = [f"m{i}" for i in range(10)]
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        assert select_shard(specs, "auto") == specs[index::count]
    # every model in exactly one task of the array
    tasks = [
        resolve_shard("auto", _slurm(int(env["SLURM_ARRAY_TASK_MIN"]) + t, count, int(env["SLURM_ARRAY_TASK_MIN"])))
        for t in range(count)
    ]
    assert sorted(m for t in tasks for m in select_shard(specs, t)) == specs


@pytest.mark.parametrize(
    "env, words",
    [
        ({}, "not set (not a task of sbatch --array?)"),
        ({"SLURM_ARRAY_TASK_ID": "2"}, "SLURM_ARRAY_TASK_COUNT"),
        (_slurm(2, 3, 0, step=2), "contiguous"),
        (_slurm(5, 3, 1, high=5), "contiguous"),
        ({**_slurm(0, 2, 0), "SLURM_ARRAY_TASK_ID": "x"}, "not whole numbers"),
    ],
)
def test_shard_auto_outside_a_contiguous_array_is_one_line(env, words):
    from qk_spectra_ds.builder.shards import resolve_shard
    from qk_spectra_ds.errors import QKSpectraError

    with pytest.raises(QKSpectraError) as info:
        resolve_shard("auto", env)
    assert words in str(info.value) and "\n" not in str(info.value) and "--shard" in str(info.value)


def _clear_slurm(monkeypatch):
    for key in list(os.environ):
        if key.startswith("SLURM_"):
            monkeypatch.delenv(key)


def test_cli_shard_auto_outside_an_array_stops_before_any_work(tmp_path, monkeypatch, capsys):
    from qk_spectra_ds.builder.cli import cli

    _clear_slurm(monkeypatch)
    out = tmp_path / "ds"
    assert cli(["--family", "MiniLM", "--shard", "auto", "--out", str(out), "--quiet", "--device", "cpu"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --shard auto") and "SLURM_ARRAY_TASK_ID" in err[0]
    assert not out.exists()


@pytest.mark.slow
def test_cli_shard_auto_builds_this_tasks_models(tmp_path, monkeypatch, capsys):
    from tiny_models import make_saved

    from qk_spectra_ds.builder.cli import cli

    models = [make_saved(case, tmp_path / case)[1] for case in ("llama-gqa", "gpt2-conv1d", "bert-prefixed")]
    _clear_slurm(monkeypatch)
    for key, value in _slurm(11, 2, 10).items():  # task 1 of --array=10-11
        monkeypatch.setenv(key, value)
    out = tmp_path / "ds"
    argv = [
        "--family",
        "Tiny",
        "--models",
        ",".join(map(str, models)),
        "--shard",
        "auto",
        "--out",
        str(out),
        "--quiet",
        "--device",
        "cpu",
    ]
    assert cli(argv) == 0, capsys.readouterr().err
    assert "shard 1/2 (from the SLURM array task)" in capsys.readouterr().out
    built = sorted(p.stem for p in (out / "data" / "Tiny").glob("*.parquet"))
    assert built == [Path(models[1]).name]  # models 1, 3, ... of the list: only the second


# ---------------------------------------------------------------- item 7: small things


def test_help_shows_plain_types(capfd):  # fire writes to the file descriptor
    from qk_spectra_ds.analysis.cli import COMMANDS
    from qk_spectra_ds.builder.cli import build
    from qk_spectra_ds.cli_util import show_help

    with pytest.raises(SystemExit):
        show_help(build, [], "build_dataset.py")
    text = "".join(capfd.readouterr())  # fire shows --help on stderr
    types = re.findall(r"Type: (.*)", text)
    assert types and set(types) <= {"str", "bool", "int", "float", "Optional[str]", "Optional[int]", "Optional[float]"}
    assert re.search(r"--family=FAMILY\n\s+Type: Optional\[str\]", text)
    assert "--quiet=QUIET\n        Type: bool" in text and "'" not in "".join(types)
    with pytest.raises(SystemExit):
        show_help(COMMANDS, ["report"], "analyze.py")
    assert "SLURM_ARRAY_TASK_MIN, SLURM_ARRAY_TASK_COUNT); for other schedulers pass --shard I/N" in text
    types = re.findall(r"Type: (.*)", "".join(capfd.readouterr()))
    assert "Optional[int]" in types and all("'" not in t and "|" not in t for t in types)


def test_list_pluralises():
    from qk_spectra_ds.builder.catalog import format_catalog

    text = format_catalog({"One": ["org/a"], "Two": ["org/a", "org/b"]})
    assert "One (1 model)\n" in text and "Two (2 models)\n" in text


@pytest.mark.slow
def test_tables_round_to_six_digits_and_keep_exact_values_beside(readme_run):
    _, work, _ = readme_run
    namespace = readme_run[0]
    from qk_spectra_ds.analysis.report import Params

    # the original's classes/labels/bds tables come from --method original only (issue 13): run it beside the README's report
    namespace["qk"].run_report(
        work / "qk-spectra", "MiniLM", out=work / "original", progress=False, params=Params(method="original")
    )
    tables = work / "original" / "MiniLM" / "tables"
    csvs = sorted(tables.glob("*.csv")) + sorted((work / "analysis" / "MiniLM" / "tables").glob("*.csv"))
    assert {"classes.csv", "labels.csv", "bds.csv", "consensus_classes.csv"} <= {p.name for p in csvs}
    reported = namespace["qk"].load_spectra(
        work / "qk-spectra", "MiniLM"
    )  # the rows the report ran on (its default variant)
    exact_classes = namespace["qk"].SpectralHeadClassifier().fit(reported).class_table()
    parquet = pd.read_parquet(tables / "classes.parquet")
    for column in ("alpha", "theta", "jsd"):
        assert parquet[column].tolist() == exact_classes[column].tolist()  # exact, bit for bit
    for path in csvs:
        exact = pd.read_parquet(path.with_suffix(".parquet"))
        rounded = pd.read_csv(path)
        assert list(rounded.columns) == list(exact.columns) and len(rounded) == len(exact)
        for column in exact.select_dtypes("float").columns:
            np.testing.assert_allclose(rounded[column], exact[column], rtol=5e-6, equal_nan=True)
        floats = [
            v
            for line in path.read_text().splitlines()[1:]
            for v in line.split(",")
            if re.fullmatch(r"-?\d+\.\d+(e[-+]\d+)?", v)
        ]
        assert all(len(re.sub(r"e.*|[-.]", "", v).lstrip("0")) <= 6 for v in floats), path.name


@pytest.mark.slow
def test_index_says_class_numbers_are_arbitrary_and_a_local_dataset_has_no_revision(readme_run):
    _, work, _ = readme_run
    index = (work / "analysis" / "MiniLM" / "index.md").read_text()
    assert "Class numbers (`class`, `Class_k`) are arbitrary labels" in index
    assert "a local directory (no revision)" in index and "revision `default`" not in index


def test_gitignore_covers_the_readme_output_folders():
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    text = README.read_text(encoding="utf-8")
    folders = set(re.findall(r"--out \"?\.?/?([\w-]+)\b", text)) | set(re.findall(r'out="([\w-]+)"', text))
    folders |= set(re.findall(r'"\./([\w-]+)"', text))
    assert {"qk-spectra", "analysis", "legacy-spectra", "qk-spectra-shards"} <= folders
    for folder in sorted(folders - {"DIR"}):
        done = subprocess.run(["git", "check-ignore", "-q", f"{folder}/x"], cwd=ROOT)
        assert done.returncode == 0, f"{folder}/ is not in .gitignore"
    assert subprocess.run(["git", "check-ignore", "-q", "qk_spectra_ds/analysis/cli.py"], cwd=ROOT).returncode == 1


@pytest.mark.slow
def test_slurm_array_tasks_meet_in_one_hub_repo_and_are_tagged_once(
    tmp_path, monkeypatch, capsys, hub_server, unique_repo_name
):
    """The README's SLURM recipe: each array task builds its shard into its own directory and pushes to one
    repo; a last step tags the version from one task's directory (the card is merged with the remote one)."""
    from tiny_models import make_saved

    from qk_spectra_ds import load_spectra
    from qk_spectra_ds.builder.cli import cli

    models = [make_saved(case, tmp_path / case)[1] for case in ("llama-gqa", "gpt2-conv1d")]
    repo = unique_repo_name("slurm")
    _clear_slurm(monkeypatch)
    for task in (1, 2):  # sbatch --array=1-2
        for key, value in _slurm(task, 2, 1).items():
            monkeypatch.setenv(key, value)
        argv = [
            "--family",
            "Tiny",
            "--models",
            ",".join(map(str, models)),
            "--shard",
            "auto",
            "--quiet",
            "--device",
            "cpu",
            "--out",
            str(tmp_path / f"task{task}"),
            "--push-to-hub",
            repo,
        ]
        assert cli(argv) == 0, capsys.readouterr().err
    _clear_slurm(monkeypatch)
    argv = ["--skip-build", "--out", str(tmp_path / "task1"), "--push-to-hub", repo, "--version", "v0.1.0", "--quiet"]
    assert cli(argv) == 0, capsys.readouterr().err
    frame = load_spectra(repo, "Tiny", revision="v0.1.0", variant="raw")
    assert sorted(frame["model_id"].unique()) == sorted(Path(m).name for m in models)
    from huggingface_hub import hf_hub_download

    card = Path(hf_hub_download(repo, "README.md", repo_type="dataset", revision="v0.1.0")).read_text()
    assert all(f"| Tiny | `{Path(m).name}` |" in card for m in models) and "| v0.1.0 |" in card

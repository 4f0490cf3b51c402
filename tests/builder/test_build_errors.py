"""Every way a build can fail: one clear line, a non-zero exit, nothing half-written, others kept.

Each bad input is a copy of one good tiny model (``tiny_models``), damaged in one way. For each,
``build_model`` raises a ``QKSpectraError`` whose message is a single line naming the problem,
the dataset dir holds no file for that model (nor any temp file), ``build_family`` keeps the
good models around it (their parquet files and the card), and ``python build_dataset.py`` exits
non-zero with one ``error:`` line on stderr and no traceback.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from helpers import run_script
from safetensors.numpy import load_file, save_file
from tiny_models import make_saved

from qk_spectra_ds import dataset_repo
from qk_spectra_ds.builder.architectures import SUPPORTED_MODEL_TYPES
from qk_spectra_ds.builder.hub_source import HubSource
from qk_spectra_ds.builder.pipeline import build_family, build_model
from qk_spectra_ds.builder.weights import open_source
from qk_spectra_ds.errors import (
    BuildError,
    CatalogError,
    CheckpointError,
    ModelSourceError,
    QKSpectraError,
    UnsupportedArchitectureError,
)

ROOT = Path(__file__).resolve().parents[2]
WEIGHTS = "model.safetensors"
Q_LAYER1 = "model.layers.1.self_attn.q_proj.weight"
K_LAYER1 = "model.layers.1.self_attn.k_proj.weight"


# ------------------------------------------------------------------ damaging a model


def _rewrite(model_dir: Path, change) -> None:
    """Load model.safetensors, let ``change`` edit the dict of arrays, save it back."""
    tensors = load_file(str(model_dir / WEIGHTS))
    change(tensors)
    save_file(tensors, str(model_dir / WEIGHTS), metadata={"format": "pt"})


def _edit_config(model_dir: Path, **changes) -> None:
    path = model_dir / "config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


def _set(name: str, value: float):
    def change(tensors):
        tensors[name] = tensors[name].copy()
        tensors[name][3, 5] = value

    return change


def _truncate(model_dir: Path) -> None:
    path = model_dir / WEIGHTS
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _garbage_length(model_dir: Path) -> None:
    """The first 8 bytes (header length) are garbage: not a safetensors file at all."""
    path = model_dir / WEIGHTS
    data = path.read_bytes()
    path.write_bytes(b"\xde\xad\xbe\xef\x13\x37\xc0\xde" + data[8:])


def _garbage_header(model_dir: Path) -> None:
    """A plausible header length, but the JSON header is overwritten with garbage bytes."""
    path = model_dir / WEIGHTS
    data = bytearray(path.read_bytes())
    data[8:40] = bytes(range(200, 232))
    path.write_bytes(bytes(data))


def _no_safetensors(model_dir: Path) -> None:
    (model_dir / WEIGHTS).rename(model_dir / "pytorch_model.bin")


# id -> (damage, exception class, words the one-line message must contain)
DAMAGE = {
    "no-config": (lambda d: (d / "config.json").unlink(), ModelSourceError, ["no config.json"]),
    "unsupported-model-type": (
        lambda d: _edit_config(d, model_type="t5"),
        UnsupportedArchitectureError,
        ["unsupported model_type 't5'", *SUPPORTED_MODEL_TYPES],
    ),
    "missing-q": (
        lambda d: _rewrite(d, lambda t: t.pop(Q_LAYER1)),
        CheckpointError,
        ["layers.1.self_attn.q_proj.weight"],
    ),
    "missing-k": (
        lambda d: _rewrite(d, lambda t: t.pop(K_LAYER1)),
        CheckpointError,
        ["layers.1.self_attn.k_proj.weight"],
    ),
    "truncated": (_truncate, CheckpointError, ["model.safetensors", "truncated"]),
    "garbage-length": (_garbage_length, CheckpointError, ["model.safetensors", "not safetensors"]),
    "garbage-header": (_garbage_header, CheckpointError, ["model.safetensors", "corrupt header"]),
    "nan-in-q": (lambda d: _rewrite(d, _set(Q_LAYER1, np.nan)), CheckpointError, ["NaN or Inf", "Q", "layer 1"]),
    "inf-in-k": (lambda d: _rewrite(d, _set(K_LAYER1, -np.inf)), CheckpointError, ["NaN or Inf", "K", "layer 1"]),
    "no-safetensors": (_no_safetensors, ModelSourceError, ["no safetensors weights"]),
    "config-mismatch": (
        lambda d: _edit_config(d, num_attention_heads=2),
        CheckpointError,
        ["q_proj.weight", "config and weights do not match"],
    ),
    "config_with_fewer_layers": (
        lambda d: _edit_config(d, num_hidden_layers=1),
        CheckpointError,
        ["have a layer 1", "config.json says 1 layers", "config and weights do not match"],
    ),
}


@pytest.fixture(scope="module")
def good_model(tmp_path_factory) -> Path:
    """A good tiny llama (GQA, 2 layers, float32, single file) to copy and damage."""
    _, directory = make_saved("llama-gqa", tmp_path_factory.mktemp("good") / "good-llama")
    return directory


def copy_model(good_model: Path, directory: Path) -> Path:
    shutil.copytree(good_model, directory)
    return directory


@pytest.fixture(params=sorted(DAMAGE), ids=str)
def damaged(request, good_model, tmp_path):
    """(model dir named after the damage, expected exception class, words its message names)."""
    damage, exc_type, words = DAMAGE[request.param]
    model_dir = copy_model(good_model, tmp_path / f"bad-{request.param}")
    damage(model_dir)
    return model_dir, exc_type, words


def assert_one_clear_line(exc: BaseException, words) -> None:
    message = str(exc)
    assert message and "\n" not in message and "\r" not in message, repr(message)
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"
    assert "Traceback" not in message


def assert_nothing_written_for(out: Path, family: str, model_id: str) -> None:
    assert not dataset_repo.model_path(out, family, model_id).exists()
    leftovers = [p for p in out.rglob("*") if p.is_file() and (p.name.startswith(".") or p.suffix == ".tmp")]
    assert leftovers == []


def assert_cli_error(proc: subprocess.CompletedProcess, *words: str) -> str:
    """Exit 1, exactly one ``error:`` line on stderr naming the problem, no traceback."""
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    for word in words:
        assert word in errors[0], (word, errors[0])
    return errors[0]


# ------------------------------------------------------------------ one model at a time


def test_damaged_model_fails_with_one_clear_line(damaged, tmp_path):
    model_dir, exc_type, words = damaged
    out = tmp_path / "out"
    with pytest.raises(exc_type) as info:
        build_model(str(model_dir), "Bad", out, device="cpu", progress=False)
    assert isinstance(info.value, QKSpectraError)
    assert_one_clear_line(info.value, words)
    assert_nothing_written_for(out, "Bad", model_dir.name)


@pytest.mark.slow
def test_good_model_copy_builds(good_model, tmp_path):
    """The control: the undamaged copy builds, so each failure above is the damage's doing."""
    model_dir = copy_model(good_model, tmp_path / "good-copy")
    result = build_model(str(model_dir), "Bad", tmp_path / "out", device="cpu", progress=False)
    assert result.status == "built" and result.path.is_file()


@pytest.mark.slow
def test_damaged_model_does_not_lose_the_others(damaged, good_model, tmp_path):
    model_dir, _, words = damaged
    out = tmp_path / "out"
    first = copy_model(good_model, tmp_path / "first-good")
    last = copy_model(good_model, tmp_path / "last-good")
    with pytest.raises(BuildError) as info:
        build_family("Mixed", out, models=[str(first), str(model_dir), str(last)], progress=False)
    assert_one_clear_line(info.value, ["1 of 3 model(s) failed", model_dir.name, *words[:1]])
    assert [(r.model_id, r.status) for r in info.value.results] == [
        ("first-good", "built"),
        (str(model_dir), "failed"),
        ("last-good", "built"),
    ]
    for good in ("first-good", "last-good"):
        assert (
            pq.read_table(
                dataset_repo.model_path(out, "Mixed", good), filters=[("variant", "=", "raw"), ("circuit", "=", "qk")]
            ).num_rows
            == 8
        )
    card = (out / "README.md").read_text()
    assert "`first-good`" in card and "`last-good`" in card and model_dir.name not in card
    assert_nothing_written_for(out, "Mixed", model_dir.name)


@pytest.mark.slow
def test_a_failure_keeps_the_previous_build_of_that_model(good_model, tmp_path):
    """A model that built before and is now damaged keeps its old file (force does not delete it)."""
    out = tmp_path / "out"
    model_dir = copy_model(good_model, tmp_path / "model")
    path = build_model(str(model_dir), "Bad", out, device="cpu", progress=False).path
    content = path.read_bytes()
    _rewrite(model_dir, _set(K_LAYER1, np.nan))
    with pytest.raises(CheckpointError):
        build_model(str(model_dir), "Bad", out, device="cpu", progress=False, force=True)
    assert path.read_bytes() == content


@pytest.mark.slow
def test_two_models_with_one_id_do_not_overwrite_each_other(good_model, tmp_path):
    """Two local folders named alike give one model id: the second is refused, the first kept."""
    out = tmp_path / "out"
    first = copy_model(good_model, tmp_path / "run-a" / "model")
    second = copy_model(good_model, tmp_path / "run-b" / "model")
    _rewrite(second, _set(K_LAYER1, 2.0))
    with pytest.raises(BuildError) as info:
        build_family("Runs", out, models=[str(first), str(second), str(first)], progress=False)
    assert_one_clear_line(info.value, ["1 of 2 model(s) failed", "has the model id 'model'", "rename the folder"])
    assert [r.status for r in info.value.results] == ["built", "failed"]  # the repeated spec is built once
    expected = build_model(str(first), "Check", tmp_path / "check", device="cpu", progress=False).path
    built = pq.read_table(dataset_repo.model_path(out, "Runs", "model"))
    assert built.column("singular_values").equals(pq.read_table(expected).column("singular_values"))


def test_missing_directory(tmp_path):
    with pytest.raises(ModelSourceError) as info:
        build_model(str(tmp_path / "nowhere" / "model"), "Bad", tmp_path / "out", progress=False)
    assert_one_clear_line(info.value, ["does not exist"])
    with pytest.raises(ModelSourceError) as info:
        open_source("not a model id")
    assert_one_clear_line(info.value, ["neither a local directory nor a Hub id"])


def test_unknown_family(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(CatalogError) as info:
        build_family("NoSuchFamily", out, progress=False)
    assert_one_clear_line(info.value, ["unknown family 'NoSuchFamily'", "Qwen3", "MiniLM", "--models"])
    assert not out.exists()


@pytest.mark.parametrize("family", ["a/b", "../outside", ".hidden", "", "x*", "all"])
def test_family_that_cannot_be_a_config(family, good_model, tmp_path):
    """A family is a config name and one folder under data/ ("a/b" used to land outside the card)."""
    out = tmp_path / "out"
    with pytest.raises(CatalogError) as info:
        build_family(family, out, models=[str(good_model)], progress=False)
    assert_one_clear_line(info.value, [f"family {family!r}"])
    with pytest.raises(CatalogError):
        build_model(str(good_model), family, out, device="cpu", progress=False)
    assert not out.exists() and not (tmp_path / "outside").exists()


# ------------------------------------------------------------------ an unreachable Hub


@pytest.fixture
def closed_endpoint():
    """An http URL on 127.0.0.1 whose port is bound but not listening: connections are refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


def test_unreachable_hub(closed_endpoint, monkeypatch, tmp_path):
    import time

    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", closed_endpoint)
    started = time.perf_counter()
    with pytest.raises(ModelSourceError) as info:
        HubSource("some-org/some-model")
    assert_one_clear_line(info.value, ["cannot reach the Hub for some-org/some-model", "HF_ENDPOINT"])
    with pytest.raises(BuildError) as info:
        build_family("Hubless", tmp_path / "out", models=["some-org/some-model@main"], progress=False)
    assert_one_clear_line(info.value, ["some-org/some-model", "cannot reach the Hub"])
    assert time.perf_counter() - started < 30  # refused at once: no long retry loop
    assert not dataset_repo.model_files(tmp_path / "out")


# ------------------------------------------------------------------ the CLI


@pytest.mark.slow
def test_cli_unknown_family(tmp_path):
    proc = run_script("--family", "NoSuchFamily", "--out", str(tmp_path / "out"), "--quiet")
    assert_cli_error(proc, "unknown family 'NoSuchFamily'")
    assert not (tmp_path / "out").exists()


def test_cli_no_family():
    assert_cli_error(run_script("--quiet"), "--family")


@pytest.mark.slow
def test_cli_family_with_a_slash(good_model, tmp_path):
    proc = run_script("--family", "a/b", "--models", str(good_model), "--out", str(tmp_path / "out"), "--quiet")
    assert_cli_error(proc, "family 'a/b' cannot name a dataset config")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_cli_unreachable_hub(closed_endpoint, tmp_path):
    proc = run_script(
        "--family",
        "X",
        "--models",
        "some-org/some-model",
        "--out",
        str(tmp_path / "out"),
        "--quiet",
        env={"HF_ENDPOINT": closed_endpoint},
    )
    assert_cli_error(proc, "some-org/some-model", "cannot reach the Hub")


@pytest.mark.slow
def test_cli_mixed_family_exits_non_zero_and_keeps_the_good_model(good_model, tmp_path):
    bad_type = copy_model(good_model, tmp_path / "bad-type")
    _edit_config(bad_type, model_type="t5")
    truncated = copy_model(good_model, tmp_path / "truncated")
    _truncate(truncated)
    good = copy_model(good_model, tmp_path / "good")
    out = tmp_path / "out"
    proc = run_script("--family", "Mixed", "--models", f"{bad_type},{good},{truncated}", "--out", str(out), "--quiet")
    line = assert_cli_error(proc, "2 of 3 model(s) failed", "unsupported model_type 't5'", "truncated")
    assert "bad-type" in line and "truncated" in line
    assert "FAILED" in proc.stderr and "built   good" in proc.stderr  # the per-model summary
    assert dataset_repo.model_path(out, "Mixed", "good").is_file()
    assert [p.name for p in dataset_repo.model_files(out)] == ["good.parquet"]
    assert "`good`" in (out / "README.md").read_text()

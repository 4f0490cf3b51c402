"""Issue 18 items 10 and 11, issue 23 item 8: Hub faults and Hub ids, each one line before any work.

- a truncated ranged body (the server announces N bytes, sends fewer and closes) is retried like any
  wrong answer, then refused in one line (was ``RuntimeError: generator didn't stop after throw()``);
- a Hub that does not answer fails a Hub dataset's loading at once, in one line (one request, no
  retries; HF_HUB_OFFLINE skips it); ids for --push-to-hub and --dataset must be ORG/NAME;
- the build CLI: a bad --push-to-hub id or --version, and a missing model path, are one line before any
  work; when every model failed, the error line alone (no duplicate FAILED line).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from helpers import one_line, record_builds, write_qk_llama

from qk_spectra_ds.builder import hub_source
from qk_spectra_ds.builder.hub_source import HubSource
from qk_spectra_ds.errors import ModelSourceError
from qk_spectra_ds.hub_access import HubAccessError, check_reachable, check_repo_id

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    """A two-layer llama checkpoint (config.json, Q/K/V/O), written with safetensors."""
    return write_qk_llama(tmp_path_factory.mktemp("hub") / "tiny", projections="qkvo")


@pytest.fixture(scope="module")
def hosted(hub_server, tiny_dir, unique_repo_name) -> str:
    repo_id = unique_repo_name("trust-short")
    hub_server.seed_repo(repo_id, tiny_dir)
    return repo_id


@pytest.fixture
def no_retry_wait(monkeypatch):
    monkeypatch.setattr(hub_source, "RANGE_RETRY_WAIT", 0.0)


# ------------------------------------------------------------------ 10. a truncated body


@pytest.mark.slow
def test_a_truncated_body_is_retried(hub_server, hosted, tiny_dir, no_retry_wait):
    source = HubSource(hosted)
    source.size("model.safetensors")
    hub_server.clear_faults()
    hub_server.misserve_ranges(10**6, "short", path_contains=".safetensors", once_per_range=True)
    try:
        data = source.read_range("model.safetensors", 8, 1000)
    finally:
        hub_server.clear_faults()
    assert bytes(data) == (tiny_dir / "model.safetensors").read_bytes()[8:1000]


def test_a_server_that_always_truncates_is_refused_in_one_line(hub_server, hosted, no_retry_wait):
    source = HubSource(hosted)
    source.size("model.safetensors")
    hub_server.clear_faults()
    hub_server.misserve_ranges(10**6, "short", path_contains=".safetensors")
    try:
        with pytest.raises(ModelSourceError) as info:
            source.read_range("model.safetensors", 8, 1000)
    finally:
        hub_server.clear_faults()
    one_line(str(info.value), hosted, "model.safetensors", "bytes 8-999", f"{hub_source.RANGE_ATTEMPTS} tries")


@pytest.mark.slow
def test_a_build_through_one_truncated_answer_per_range_is_right(hub_server, hosted, tiny_dir, tmp_path, no_retry_wait):
    from qk_spectra_ds.builder.pipeline import build_model

    hub_server.clear_faults()
    hub_server.misserve_ranges(10**6, "short", path_contains=".safetensors", once_per_range=True)
    try:
        result = build_model(
            hosted, "Trust", tmp_path / "out", device="cpu", progress=False, variants=["raw"], offsets=[]
        )
    finally:
        hub_server.clear_faults()
    reference = build_model(
        str(tiny_dir), "Trust", tmp_path / "ref", device="cpu", progress=False, variants=["raw"], offsets=[]
    )
    import pyarrow.parquet as pq

    got = pq.read_table(result.path, columns=["singular_values"])["singular_values"].to_pylist()
    assert got == pq.read_table(reference.path, columns=["singular_values"])["singular_values"].to_pylist()


# ------------------------------------------------------------------ 11. no network, and ids of the wrong form


@pytest.mark.parametrize(
    "repo_id", ["foo", "a/b/c", "a//b", "/b", "a/", "-a/b", "a/b-", "a/b--c", "a b/c", "a/b.git", "", 3]
)
def test_repo_ids_that_are_not_org_name_are_one_line(repo_id):
    with pytest.raises(HubAccessError) as info:
        check_repo_id(repo_id, "--push-to-hub")
    one_line(str(info.value), "--push-to-hub", "ORG/NAME")


def test_org_name_ids_pass():
    for repo_id in ("org/name", "sentence-transformers/all-MiniLM-L6-v2", "Qwen/Qwen3-0.6B", "a_b/c.d"):
        assert check_repo_id(repo_id, "--dataset") == repo_id


def _silent_endpoint():
    """A port that accepts connections and never answers: a network that swallows requests."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held = []
    stop = threading.Event()

    def accept():
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    threading.Thread(target=accept, daemon=True).start()
    return server, stop, held


LOAD = """
import sys, time
from qk_spectra_ds import hub_access
hub_access.REACH_TIMEOUT = 2.0
from qk_spectra_ds.analysis.loading import load_spectra
t0 = time.perf_counter()
try:
    load_spectra("org/name", "F")
except Exception as exc:
    print(f"{time.perf_counter() - t0:.2f}", type(exc).__name__, exc, sep="|")
"""


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["refused", "silent"])
def test_a_hub_dataset_without_a_network_fails_at_once_in_one_line(kind):
    """One request, no retries: refused at once; a network that swallows requests after REACH_TIMEOUT (2 s here)."""
    if kind == "refused":
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            endpoint = f"http://127.0.0.1:{sock.getsockname()[1]}"
        server = None
    else:
        server, stop, held = _silent_endpoint()
        endpoint = f"http://127.0.0.1:{server.getsockname()[1]}"
    try:
        proc = subprocess.run(
            [sys.executable, "-c", LOAD],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "HF_ENDPOINT": endpoint},
            check=False,
        )
    finally:
        if server is not None:
            stop.set()
            server.close()
            for conn in held:
                conn.close()
    seconds, kind_name, message = proc.stdout.strip().split("|", 2)
    assert kind_name == "LoadError", proc.stdout + proc.stderr
    one_line(message, "cannot reach the Hub", endpoint, "org/name", "HF_ENDPOINT")
    assert float(seconds) < 6.0, seconds  # the clients' retries took 27 s
    assert "Retrying" not in proc.stderr


def test_offline_mode_skips_the_reachability_check(monkeypatch):
    import huggingface_hub
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub, "get_session", lambda: pytest.fail("no request in offline mode"))
    check_reachable("dataset org/name")


def test_a_dataset_that_is_neither_a_directory_nor_an_id_is_one_line(tmp_path):
    from qk_spectra_ds.analysis.loading import LoadError, load_spectra

    with pytest.raises(LoadError) as info:
        load_spectra("no-such-dataset", "F")
    one_line(str(info.value), "--dataset 'no-such-dataset'", "ORG/NAME", "local dataset directory")


# ------------------------------------------------------------------ issue 23 item 8: the build CLI, before any work


@pytest.fixture
def build_cli(monkeypatch):
    """(cli(argv) -> exit status, the models the builder started on)."""
    from qk_spectra_ds.builder import cli as build_cli_module

    return build_cli_module.cli, record_builds(monkeypatch)


@pytest.mark.parametrize(
    "flags, words",
    [
        (["--push-to-hub", "foo"], ["--push-to-hub 'foo'", "ORG/NAME"]),
        (["--push-to-hub", "a/b/c"], ["--push-to-hub 'a/b/c'", "ORG/NAME"]),
        (["--push-to-hub", "org/name", "--version", "1.0"], ["version '1.0'", "vMAJOR.MINOR.PATCH"]),
    ],
)
def test_publish_flags_are_checked_before_the_build(flags, words, build_cli, tiny_dir, tmp_path, capsys):
    cli, started = build_cli
    out = tmp_path / "out"
    rc = cli(["--family", "F", "--models", str(tiny_dir), "--out", str(out), "--quiet", *flags])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and err[0].startswith("error: "), err
    one_line(err[0], *words)
    assert not started and not out.exists()


def test_a_missing_model_path_is_one_line_before_any_work(build_cli, tiny_dir, tmp_path, capsys):
    cli, started = build_cli
    missing = tmp_path / "no-such-model"
    rc = cli(["--family", "F", "--models", f"{tiny_dir},{missing}", "--out", str(tmp_path / "out")])
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and err[0].startswith("error: "), captured.err
    one_line(err[0], f"model directory {missing} does not exist", "nothing was built")
    assert not started and "FAILED" not in captured.out + captured.err and "100%" not in captured.err


def test_when_every_model_fails_the_error_line_is_not_repeated(build_cli, tiny_dir, tmp_path, capsys):
    import shutil

    cli, _ = build_cli
    bad = tmp_path / "bad"
    shutil.copytree(tiny_dir, bad)
    config = json.loads((bad / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**config, "model_type": "t5"}))
    rc = cli(["--family", "F", "--models", str(bad), "--out", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1, err
    one_line(err[0], "1 of 1 model(s) failed", "t5")

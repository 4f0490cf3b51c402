"""The Hub in both directions, against the project's Hub-protocol test server.

- models hosted on the server are read with ranged requests (only headers and Q/K bytes);
- datasets are published as tagged versions, concurrently from two processes, and
  loaded back by version with the real ``datasets`` client in a fresh process.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from tiny_models import llama_case, make_saved

from qk_spectra_ds import card_metadata, dataset_repo
from qk_spectra_ds.builder import pipeline as build
from qk_spectra_ds.builder.publish import PublishError, publish
from qk_spectra_ds.errors import BuildError

ROOT = Path(__file__).resolve().parents[2]
FAMILY = "Tiny"
pytestmark = pytest.mark.slow  # every test here builds, publishes or loads through the Hub test server


@pytest.fixture(scope="module")
def hosted_models(hub_server, tmp_path_factory, unique_repo_name):
    """Two tiny model repos and one sharded bf16 repo on the server: (repo_id, local_dir)."""
    import torch

    root = tmp_path_factory.mktemp("hosted")
    models = {}
    for name, kwargs in {
        "a": dict(seed=1),
        "b": dict(seed=2),
        "sharded": dict(seed=3, layers=3, shard="20KB", dtype=torch.bfloat16),
    }.items():
        _, local = make_saved(llama_case(f"tiny-{name}", max_position_embeddings=64, **kwargs), root / name)
        repo_id = unique_repo_name(f"tiny-{name}")
        hub_server.seed_repo(repo_id, local)
        models[name] = (repo_id, local)
    assert (models["sharded"][1] / "model.safetensors.index.json").exists()
    return models


def _rows(path: Path) -> dict:
    return pq.read_table(path).to_pydict()


def test_remote_build_fetches_only_qk_bytes_and_matches_local(hub_server, hosted_models, tmp_path):
    repo_id, local = hosted_models["sharded"]
    hub_server.reset_counters()
    [remote] = build.build_family(FAMILY, tmp_path / "remote", models=[repo_id], device="cpu", progress=False)

    # What the builder needs: config, index, each shard's 8-byte length + JSON header, Q/K and V/O bytes
    # (the OV circuit's; and the input norm gains the folded variants read), each byte once.
    expected = (local / "config.json").stat().st_size + (local / "model.safetensors.index.json").stat().st_size
    shards = sorted(set(json.loads((local / "model.safetensors.index.json").read_text())["weight_map"].values()))
    qk_bytes = 0
    for shard in shards:
        raw = (local / shard).read_bytes()
        (n,) = struct.unpack("<Q", raw[:8])
        expected += 8 + n
        for name, entry in json.loads(raw[8 : 8 + n]).items():
            if name.endswith(
                ("q_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight", "input_layernorm.weight")
            ):
                qk_bytes += entry["data_offsets"][1] - entry["data_offsets"][0]
    expected += qk_bytes
    served = hub_server.bytes_served(repo_id=repo_id)
    assert served == expected
    assert remote.bytes_fetched == expected
    total = sum((local / s).stat().st_size for s in shards)
    assert remote.checkpoint_bytes == total and remote.fetched_share < 0.5
    ranged = [r for r in hub_server.requests(method="GET") if r.path.endswith(".safetensors")]
    assert ranged and all(r.range for r in ranged), "every shard read must be a range request"

    # Identical spectra from the local directory.
    [from_dir] = build.build_family(FAMILY, tmp_path / "local", models=[str(local)], device="cpu", progress=False)
    a, b = _rows(remote.path), _rows(from_dir.path)
    same = [i for i, v in enumerate(a["variant"]) if v != "null"]  # null draws are seeded by model id, which differs
    assert [a["singular_values"][i] for i in same] == [b["singular_values"][i] for i in same]
    assert [a["positivity"][i] for i in same] == [b["positivity"][i] for i in same]
    assert len(remote.revision) == 40 and all(c in "0123456789abcdef" for c in remote.revision)
    assert set(a["model_revision"]) == {remote.revision} and set(a["model_id"]) == {repo_id}
    assert set(a["weights_dtype"]) == {"bfloat16"}


def _load_in_subprocess(repo_id: str, config: str, revision: str) -> dict:
    code = (
        "import json, sys, datasets\n"
        f"ds = datasets.load_dataset({repo_id!r}, {config!r}, revision={revision!r}, split='train')\n"
        "print(json.dumps({'n': ds.num_rows, 'models': sorted(set(ds['model_id']))}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=os.environ.copy()
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_versioned_round_trip(hub_server, hosted_models, tmp_path, unique_repo_name):
    dataset = unique_repo_name("spectra")
    out = tmp_path / "ds"
    (a, _), (b, _) = hosted_models["a"], hosted_models["b"]

    build.build_family(FAMILY, out, models=[a], device="cpu", progress=False)
    first = publish(out, dataset, version="v0.1.0")
    assert first.commit and first.uploaded == [f"data/{FAMILY}/{dataset_repo.model_slug(a)}.parquet", "README.md"]

    # Re-publishing the same content is a no-op, even with the same version.
    again = publish(out, dataset, version="v0.1.0")
    assert again.commit is None and again.uploaded == []

    build.build_family(FAMILY, out, models=[b], device="cpu", progress=False)
    second = publish(out, dataset, version="v0.2.0")
    assert second.uploaded == [f"data/{FAMILY}/{dataset_repo.model_slug(b)}.parquet", "README.md"]
    assert second.unchanged == [f"data/{FAMILY}/{dataset_repo.model_slug(a)}.parquet"]

    v1 = _load_in_subprocess(dataset, FAMILY, "v0.1.0")
    v2 = _load_in_subprocess(dataset, FAMILY, "v0.2.0")
    assert v1 == {"n": 2 * 3 * 8, "models": [a]}  # qk and ov; raw, folded and null rows
    assert v2 == {"n": 2 * 3 * 16, "models": sorted([a, b])}

    from huggingface_hub import HfApi, hf_hub_download

    card = Path(hf_hub_download(dataset, "README.md", repo_type="dataset", revision="v0.2.0")).read_text()
    meta = card_metadata.card_metadata(card)
    assert [v["version"] for v in meta["versions"]] == ["v0.1.0", "v0.2.0"]
    assert {m["model_id"] for m in meta["models"]} == {a, b}
    for repo, _ in (hosted_models["a"], hosted_models["b"]):
        assert HfApi().model_info(repo).sha in card  # provenance: the 40-hex model revision

    # An existing tag with different content is refused (one line), unless forced.
    build.build_family(FAMILY, out, models=[hosted_models["sharded"][0]], device="cpu", progress=False)
    with pytest.raises(PublishError, match="already has tag v0.2.0") as err:
        publish(out, dataset, version="v0.2.0")
    assert "\n" not in str(err.value)
    moved = publish(out, dataset, version="v0.2.0", force=True)
    assert moved.commit is not None
    assert _load_in_subprocess(dataset, FAMILY, "v0.2.0")["n"] == 2 * 3 * (16 + 12)  # qk and ov


def test_analysis_runs_on_pushed_dataset(hub_server, hosted_models, tmp_path, unique_repo_name):
    loading = pytest.importorskip("qk_spectra_ds.analysis.loading")
    dataset = unique_repo_name("spectra-analysis")
    out = tmp_path / "ds"
    build.build_family(
        FAMILY, out, models=[hosted_models["a"][0], hosted_models["sharded"][0]], device="cpu", progress=False
    )
    publish(out, dataset, version="v1.0.0")
    frame = loading.load_spectra(dataset, FAMILY, revision="v1.0.0")
    assert len(frame) == 8 + 12


def test_concurrent_publishers_both_land(hub_server, hosted_models, tmp_path, unique_repo_name):
    """Two processes push different models of a family to one repo at once; both land."""
    dataset = unique_repo_name("race")
    dirs = []
    for name in ("a", "b"):
        out = tmp_path / name
        build.build_family(FAMILY, out, models=[hosted_models[name][0]], device="cpu", progress=False)
        dirs.append(out)
    publish(dirs[0], dataset)  # the repo exists before the race; both then race on main
    hub_server.reset_counters()
    cmd = [sys.executable, str(ROOT / "build_dataset.py"), "--skip-build", "--push-to-hub", dataset, "--quiet"]
    procs = [
        subprocess.Popen(cmd + ["--out", str(d)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for d in dirs
    ]
    outputs = [p.communicate(timeout=180) for p in procs]
    for proc, (_stdout, stderr) in zip(procs, outputs):
        assert proc.returncode == 0, stderr
    from huggingface_hub import HfApi, hf_hub_download

    files = HfApi().list_repo_files(dataset, repo_type="dataset")
    for name in ("a", "b"):
        assert f"data/{FAMILY}/{dataset_repo.model_slug(hosted_models[name][0])}.parquet" in files
    card = Path(hf_hub_download(dataset, "README.md", repo_type="dataset")).read_text()
    assert {m["model_id"] for m in card_metadata.card_metadata(card)["models"]} == {
        hosted_models["a"][0],
        hosted_models["b"][0],
    }


def test_commit_conflict_is_retried(hub_server, hosted_models, tmp_path, unique_repo_name):
    dataset = unique_repo_name("conflict")
    out = tmp_path / "ds"
    build.build_family(FAMILY, out, models=[hosted_models["a"][0]], device="cpu", progress=False)
    publish(out, dataset)
    build.build_family(FAMILY, out, models=[hosted_models["b"][0]], device="cpu", progress=False)
    hub_server.fail_next(2, status=412, method="POST", path_contains="/commit/")
    result = publish(out, dataset, version="v0.1.0")
    assert result.attempts == 3 and result.commit


def test_missing_repo_and_revision_are_one_line_errors(hub_server, hosted_models, tmp_path):
    repo_a = hosted_models["a"][0]
    with pytest.raises(BuildError) as err:
        build.build_family(
            FAMILY, tmp_path, models=["qk-test/does-not-exist", f"{repo_a}@no-such-branch"], progress=False
        )
    message = str(err.value)
    assert "\n" not in message
    assert "qk-test/does-not-exist is not a local directory and not found on the Hub" in message
    assert "has no revision 'no-such-branch'" in message
    assert not dataset_repo.model_files(tmp_path)


def test_server_errors_then_success(hub_server, hosted_models, tmp_path):
    repo_id = hosted_models["a"][0]
    hub_server.fail_next(2, status=503, path_contains="/resolve/")
    [result] = build.build_family(FAMILY, tmp_path, models=[repo_id], device="cpu", progress=False)
    assert result.status == "built"
    assert hub_server.requests(status=503)


def test_bad_token_is_one_line(hub_server, hosted_models, tmp_path, monkeypatch):
    hub_server.bad_tokens.add("hf_bad")
    try:
        with pytest.raises(BuildError) as err:
            build.build_family(FAMILY, tmp_path, models=[hosted_models["a"][0]], progress=False, token="hf_bad")
        assert "401" in str(err.value) and "\n" not in str(err.value)
    finally:
        hub_server.bad_tokens.discard("hf_bad")

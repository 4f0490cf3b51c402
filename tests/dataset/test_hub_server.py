"""The test Hub server works with the real, unmodified huggingface_hub and datasets clients."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import textwrap
import threading

import pandas as pd
import pytest
from huggingface_hub import CommitOperationAdd, HfApi, HfFileSystem, hf_hub_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import http_backoff

README = textwrap.dedent(
    """\
    ---
    configs:
    - config_name: all
      default: true
      data_files:
      - split: train
        path: data/*/*.parquet
    - config_name: Fam
      data_files:
      - split: train
        path: data/Fam/*.parquet
    - config_name: Other
      data_files:
      - split: train
        path: data/Other/*.parquet
    ---
    # Test dataset
    """
)


def _parquet(path, row_ids):
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"row_id": row_ids, "value": [float(i) / 7 for i in row_ids]}).to_parquet(path, index=False)
    return path


@pytest.fixture(scope="module")
def published(hub_server, tmp_path_factory, unique_repo_name):
    """A dataset repo with two tagged versions: v0.1.0 (Fam rows 0-2, Other rows 100-101)
    and v0.2.0 (plus Fam rows 3-4 in a second parquet file)."""
    api = HfApi()
    repo = unique_repo_name("ds")
    folder = tmp_path_factory.mktemp("dataset")
    (folder / "README.md").write_text(README)
    _parquet(folder / "data/Fam/part-0.parquet", [0, 1, 2])
    _parquet(folder / "data/Other/part-0.parquet", [100, 101])
    part1 = _parquet(tmp_path_factory.mktemp("extra") / "part-1.parquet", [3, 4])

    api.create_repo(repo, repo_type="dataset")
    api.create_repo(repo, repo_type="dataset", exist_ok=True)
    c1 = api.upload_folder(folder_path=folder, repo_id=repo, repo_type="dataset", commit_message="v0.1.0 data")
    api.create_tag(repo, tag="v0.1.0", revision=c1.oid, repo_type="dataset")
    c2 = api.create_commit(
        repo,
        [CommitOperationAdd("data/Fam/part-1.parquet", part1)],
        commit_message="more Fam rows",
        repo_type="dataset",
        parent_commit=c1.oid,
    )
    api.create_tag(repo, tag="v0.2.0", repo_type="dataset")
    return {"repo": repo, "c1": c1.oid, "c2": c2.oid, "folder": folder, "part1": part1}


def test_history_refs_and_tree(hub_server, published):
    api, repo = HfApi(), published["repo"]
    assert len(published["c1"]) == len(published["c2"]) == 40
    refs = api.list_repo_refs(repo, repo_type="dataset")
    assert {t.name: t.target_commit for t in refs.tags} == {"v0.1.0": published["c1"], "v0.2.0": published["c2"]}
    assert [b.name for b in refs.branches] == ["main"]

    assert api.dataset_info(repo, revision="v0.1.0").sha == published["c1"]
    assert api.dataset_info(repo).sha == published["c2"]
    old = api.list_repo_files(repo, repo_type="dataset", revision="v0.1.0")
    new = api.list_repo_files(repo, repo_type="dataset", revision=published["c2"][:10])
    assert set(new) - set(old) == {"data/Fam/part-1.parquet"}
    assert {".gitattributes", "README.md", "data/Fam/part-0.parquet"} <= set(old)

    tree = {e.path: e for e in api.list_repo_tree(repo, repo_type="dataset", recursive=True, expand=True)}
    assert tree["data/Fam/part-1.parquet"].lfs is not None  # parquet goes through LFS
    assert tree["data/Fam/part-1.parquet"].lfs.size == published["part1"].stat().st_size
    assert tree["README.md"].lfs is None
    assert tree["data/Other/part-0.parquet"].last_commit.oid == published["c1"]
    assert tree["data/Fam"].last_commit.oid == published["c2"]
    infos = api.get_paths_info(repo, ["README.md", "data", "missing"], repo_type="dataset", revision="v0.1.0")
    assert sorted(i.path for i in infos) == ["README.md", "data"]

    commits = api.list_repo_commits(repo, repo_type="dataset")
    assert [c.commit_id for c in commits[:2]] == [published["c2"], published["c1"]]
    assert commits[-1].title == "initial commit"


@pytest.mark.slow
def test_load_dataset_at_tags_in_subprocess(hub_server, published):
    script = textwrap.dedent(
        """
        import json, sys
        import datasets
        repo = sys.argv[1]
        out = {}
        for rev in ("v0.1.0", "v0.2.0"):
            out["Fam@" + rev] = sorted(datasets.load_dataset(repo, "Fam", revision=rev, split="train")["row_id"])
        out["all@v0.2.0"] = sorted(datasets.load_dataset(repo, revision="v0.2.0", split="train")["row_id"])
        print("RESULT=" + json.dumps(out))
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, published["repo"]], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout.split("RESULT=", 1)[1])
    assert result == {"Fam@v0.1.0": [0, 1, 2], "Fam@v0.2.0": [0, 1, 2, 3, 4], "all@v0.2.0": [0, 1, 2, 3, 4, 100, 101]}
    assert not hub_server.errors


def test_download_and_ranged_reads(hub_server, published, tmp_path):
    repo, part1 = published["repo"], published["part1"]
    path = hf_hub_download(repo, "data/Fam/part-1.parquet", repo_type="dataset", revision="v0.2.0", cache_dir=tmp_path)
    assert open(path, "rb").read() == part1.read_bytes()
    assert published["c2"] in path  # snapshot folder named after the commit the tag resolves to

    fs = HfFileSystem(skip_instance_cache=True)
    assert sorted(fs.glob(f"datasets/{repo}@v0.2.0/data/*/*.parquet")) == [
        f"datasets/{repo}@v0.2.0/data/{p}" for p in ("Fam/part-0.parquet", "Fam/part-1.parquet", "Other/part-0.parquet")
    ]
    fpath = f"datasets/{repo}@v0.2.0/data/Fam/part-1.parquet"
    assert fs.info(fpath)["size"] == part1.stat().st_size

    hub_server.reset_counters()
    assert fs.cat_file(fpath, start=4, end=20, cache_type="none") == part1.read_bytes()[4:20]
    assert hub_server.bytes_served(repo, "data/Fam/part-1.parquet") == 16
    gets = hub_server.requests("GET", "/resolve/")
    assert [(r.range, r.status) for r in gets] == [("bytes=4-19", 206)]

    hub_server.reset_counters()
    with fs.open(fpath, "rb", block_size=0) as f:  # streaming, whole file
        assert f.read() == part1.read_bytes()
    assert hub_server.bytes_served(repo, "data/Fam/part-1.parquet", repo_type="dataset") == part1.stat().st_size


def test_errors_map_to_client_exceptions(hub_server, published, tmp_path):
    api, repo = HfApi(), published["repo"]
    with pytest.raises(HfHubHTTPError) as exc:  # stale parent commit
        api.create_commit(
            repo,
            [CommitOperationAdd("x.txt", b"x")],
            commit_message="stale",
            repo_type="dataset",
            parent_commit=published["c1"],
        )
    assert exc.value.response.status_code == 412
    with pytest.raises(HfHubHTTPError) as exc:  # existing tag
        api.create_tag(repo, tag="v0.1.0", repo_type="dataset")
    assert exc.value.response.status_code == 409
    api.create_tag(repo, tag="v0.1.0", repo_type="dataset", exist_ok=True)
    with pytest.raises(HfHubHTTPError) as exc:
        api.create_repo(repo, repo_type="dataset")
    assert exc.value.response.status_code == 409

    with pytest.raises(RepositoryNotFoundError):
        api.dataset_info(repo + "-missing")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download(repo, "README.md", repo_type="model", cache_dir=tmp_path)  # wrong repo type
    with pytest.raises(RevisionNotFoundError):
        api.dataset_info(repo, revision="v9.9.9")
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(repo, "README.md", repo_type="dataset", revision="nope", cache_dir=tmp_path)
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(repo, "no/such/file.txt", repo_type="dataset", cache_dir=tmp_path)
    assert not api.file_exists(repo, "data/Fam/part-1.parquet", repo_type="dataset", revision="v0.1.0")
    assert api.file_exists(repo, "data/Fam/part-1.parquet", repo_type="dataset", revision="v0.2.0")


@pytest.mark.slow
def test_fault_injection_and_retries(hub_server, published, tmp_path):
    repo = published["repo"]
    hub_server.reset_counters()
    # hf_hub_download: the first HEAD is not retried, but without a cached copy it retries
    # the metadata call with http_backoff (1 s wait), which then succeeds.
    hub_server.fail_next(2, 500, path_contains="/resolve/")
    path = hf_hub_download(repo, "README.md", repo_type="dataset", revision="v0.1.0", cache_dir=tmp_path)
    assert open(path).read() == README
    assert [r.status for r in hub_server.requests(path_contains="/resolve/")][:2] == [500, 500]

    url = f"{hub_server.url}/api/datasets/{repo}"
    hub_server.fail_next(2, 503)
    assert http_backoff("GET", url, base_wait_time=0.01, max_wait_time=0.02).status_code == 200
    hub_server.fail_next(1, 429)
    assert http_backoff("GET", url, base_wait_time=0.01).status_code == 200
    hub_server.fail_next(1, 500)
    with pytest.raises(HfHubHTTPError) as exc:  # faults really fire: no retry left => raised
        http_backoff("GET", url, max_retries=0)
    assert exc.value.response.status_code == 500
    assert http_backoff("GET", url).status_code == 200


def test_tokens_gates_and_privacy(hub_server, published, tmp_path, unique_repo_name):
    api, repo = HfApi(), published["repo"]
    hub_server.bad_tokens.add("hf_revoked")
    try:
        with pytest.raises(HfHubHTTPError) as exc:
            api.dataset_info(repo, token="hf_revoked")
        assert exc.value.response.status_code == 401
        with pytest.raises(HfHubHTTPError) as exc:
            hf_hub_download(repo, "README.md", repo_type="dataset", token="hf_revoked", cache_dir=tmp_path)
        assert exc.value.response.status_code == 401
    finally:
        hub_server.bad_tokens.discard("hf_revoked")

    model = unique_repo_name("gated")
    hub_server.seed_files(model, {"config.json": "{}"})
    hub_server.set_gated(model, granted_tokens=["hf_granted"])
    with pytest.raises(GatedRepoError):
        hf_hub_download(model, "config.json", cache_dir=tmp_path)
    assert open(hf_hub_download(model, "config.json", token="hf_granted", cache_dir=tmp_path)).read() == "{}"

    private = unique_repo_name("private")
    api.create_repo(private, private=True)
    assert api.model_info(private).private is True
    with pytest.raises(RepositoryNotFoundError):
        api.model_info(private, token=False)


def _safetensors(tensors: dict[str, tuple[list[int], bytes]]) -> bytes:
    header, offset, payload = {}, 0, b""
    for name, (shape, data) in tensors.items():
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + len(data)]}
        offset, payload = offset + len(data), payload + data
    blob = json.dumps(header).encode()
    return struct.pack("<Q", len(blob)) + blob + payload


def test_seeded_sharded_checkpoint_ranges(hub_server, tmp_path, unique_repo_name):
    repo = unique_repo_name("tiny")
    (tmp_path / "ckpt").mkdir()
    shard1 = _safetensors({"q.weight": ([4, 4], bytes(range(64))), "mlp.weight": ([256, 64], b"\1" * 65536)})
    shard2 = _safetensors({"k.weight": ([4, 4], bytes(range(64, 128)))})
    (tmp_path / "ckpt/model-00001-of-00002.safetensors").write_bytes(shard1)
    (tmp_path / "ckpt/model-00002-of-00002.safetensors").write_bytes(shard2)
    shards = ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors")
    index = {"metadata": {}, "weight_map": {"q.weight": shards[0], "mlp.weight": shards[0], "k.weight": shards[1]}}
    (tmp_path / "ckpt/model.safetensors.index.json").write_text(json.dumps(index))
    (tmp_path / "ckpt/config.json").write_text('{"model_type": "tiny"}')
    sha = hub_server.seed_repo(repo, tmp_path / "ckpt")
    assert hub_server.head(repo) == sha

    api = HfApi()
    info = api.model_info(repo, files_metadata=True)
    assert info.sha == sha
    lfs = {s.rfilename for s in info.siblings if s.lfs is not None}
    assert lfs == {"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"}
    meta = api.get_safetensors_metadata(repo)
    assert meta.sharded and meta.weight_map["k.weight"] == "model-00002-of-00002.safetensors"

    # Read only the header and q.weight of shard 1, the way a lazy builder would.
    hub_server.reset_counters()
    fs = HfFileSystem(skip_instance_cache=True)
    path = f"{repo}/model-00001-of-00002.safetensors"
    (n,) = struct.unpack("<Q", fs.cat_file(path, 0, 8, cache_type="none"))
    header = json.loads(fs.cat_file(path, 8, 8 + n, cache_type="none"))
    start, end = header["q.weight"]["data_offsets"]
    q = fs.cat_file(path, 8 + n + start, 8 + n + end, cache_type="none")
    assert q == bytes(range(64))
    assert hub_server.bytes_served(repo, "model-00001-of-00002.safetensors") == 8 + n + 64
    assert hub_server.bytes_served(repo) == 8 + n + 64  # nothing else downloaded


def test_concurrent_commits_are_serialized(hub_server, unique_repo_name):
    api, repo = HfApi(), unique_repo_name("concurrent")
    api.create_repo(repo, repo_type="dataset")
    errors = []

    def push(worker: int) -> None:
        try:
            for i in range(4):
                api.upload_file(
                    path_or_fileobj=f"{worker}-{i}".encode(),
                    path_in_repo=f"w{worker}/{i}.txt",
                    repo_id=repo,
                    repo_type="dataset",
                    commit_message=f"w{worker} {i}",
                )
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=push, args=(w,)) for w in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    files = set(api.list_repo_files(repo, repo_type="dataset"))
    assert {f"w{w}/{i}.txt" for w in range(2) for i in range(4)} <= files
    assert len(api.list_repo_commits(repo, repo_type="dataset")) == 1 + 8  # linear history

    # optimistic concurrency: the loser of a race on the same parent gets 412
    head = api.dataset_info(repo).sha
    kwargs = dict(path_in_repo="race.txt", repo_id=repo, repo_type="dataset", parent_commit=head)
    api.upload_file(path_or_fileobj=b"a", **kwargs)
    with pytest.raises(HfHubHTTPError) as exc:
        api.upload_file(path_or_fileobj=b"b", **kwargs)
    assert exc.value.response.status_code == 412


def test_branches_deletes_and_tag_removal(hub_server, unique_repo_name):
    api, repo = HfApi(), unique_repo_name("branches")
    hub_server.seed_files(repo, {"a.txt": "a", "dir/b.txt": "b"}, tag="v1")
    api.create_branch(repo, branch="dev", revision="v1")
    api.upload_file(path_or_fileobj=b"c", path_in_repo="c.txt", repo_id=repo, revision="dev")
    api.delete_file("a.txt", repo, revision="dev")
    assert sorted(hub_server.list_files(repo, revision="dev")) == [".gitattributes", "c.txt", "dir/b.txt"]
    assert "a.txt" in api.list_repo_files(repo)  # main untouched
    assert {b.name for b in api.list_repo_refs(repo).branches} == {"main", "dev"}
    api.delete_tag(repo, tag="v1")
    assert not api.revision_exists(repo, "v1")
    with pytest.raises(HfHubHTTPError):
        api.create_branch(repo, branch="dev")
    api.create_branch(repo, branch="dev", exist_ok=True)
    assert not hub_server.errors

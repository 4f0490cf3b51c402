"""No stale or wrong numbers from the input side (issue 9, items 1-5).

- a local model's revision names every byte its rows come from (config.json, headers, Q/K):
  new weights under the same names and shapes, or a new config.json, rebuild;
- the skip key is (model_revision, method_version), exactly; schema v2 carries method_version
  and v1 data still validates;
- ranged Hub reads check Content-Range against the range asked: a wrong answer is retried,
  then refused in one line;
- safetensors headers are refused where the ``safetensors`` library refuses them (each crafted
  header is checked against the library itself);
- an index cannot point outside the model's folder, and its weight_map decides the shard.

References are dense float64 SVDs of W_Q^T W_K formed from the in-memory model or arrays.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import one_line
from safetensors import SafetensorError, safe_open
from safetensors.numpy import load_file, save_file
from tiny_models import CASES_BY_ID, dense_singular_values, make_saved, save

from qk_spectra_ds import dataset_card, dataset_repo, schema
from qk_spectra_ds.analysis.loading import load_spectra
from qk_spectra_ds.builder import hub_source, weights
from qk_spectra_ds.builder.hub_source import HubSource, range_answer_problem
from qk_spectra_ds.builder.local_revision import LOCAL_REVISION_PREFIX
from qk_spectra_ds.builder.pipeline import build_family, build_model
from qk_spectra_ds.builder.safetensors_io import Checkpoint
from qk_spectra_ds.builder.weights import LocalSource, ReadLog
from qk_spectra_ds.errors import BuildError, CheckpointError, ModelSourceError

ROOT = Path(__file__).resolve().parents[2]
FAMILY = "Trust"
CASE = CASES_BY_ID["llama-gqa"]  # 2 layers, 4 query heads over 2 key heads, d_model 32, d_head 8, float32
Q0 = "model.layers.0.self_attn.q_proj.weight"
K0 = "model.layers.0.self_attn.k_proj.weight"


def reference(model) -> np.ndarray:
    """(layers, heads, d_head) dense float64 singular values from the in-memory module."""
    out = []
    for wq, wk in CASE.reference(model):
        group = wq.shape[0] // wk.shape[0]
        out.append([dense_singular_values(wq[h], wk[h // group]) for h in range(wq.shape[0])])
    return np.array(out)


def built_singular_values(path: Path) -> np.ndarray:
    table = pq.read_table(path, filters=[("variant", "=", "raw"), ("circuit", "=", "qk")]).to_pydict()
    order = np.lexsort((table["head"], table["layer"]))
    n_layers, n_heads = table["n_layers"][0], table["n_heads"][0]
    return np.array([table["singular_values"][i] for i in order]).reshape(n_layers, n_heads, -1)


def assert_matches(path: Path, expected: np.ndarray) -> None:
    actual = built_singular_values(path)
    assert np.max(np.abs(actual - expected) / expected) < 1e-6


def header_bytes(path: Path) -> bytes:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return raw[: 8 + n]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(model, directory) of the tiny GQA llama, saved once; tests copy it."""
    return make_saved(CASE.id, tmp_path_factory.mktemp("tiny") / "tiny-llama")


def copy_model(tiny, directory: Path) -> Path:
    shutil.copytree(tiny[1], directory)
    return directory


# ------------------------------------------------------------------ 1. stale local models


@pytest.mark.slow
def test_new_weights_under_the_same_names_and_shapes_rebuild(tiny, tmp_path):
    model_dir, out = copy_model(tiny, tmp_path / "m"), tmp_path / "out"
    first = build_model(str(model_dir), FAMILY, out, device="cpu", progress=False)
    assert first.status == "built"
    assert_matches(first.path, reference(tiny[0]))

    other = dataclasses.replace(CASE, seed=7).make()  # same config, names, shapes and dtype; other values
    before = header_bytes(model_dir / "model.safetensors")
    save(other, model_dir, CASE)
    assert header_bytes(model_dir / "model.safetensors") == before  # a header digest cannot tell them apart
    second = build_model(str(model_dir), FAMILY, out, device="cpu", progress=False)
    assert second.status == "built" and second.revision != first.revision
    assert_matches(second.path, reference(other))
    assert set(pq.read_table(second.path)["model_revision"].to_pylist()) == {second.revision}


@pytest.mark.slow
def test_a_changed_config_alone_changes_the_revision(tiny, tmp_path):
    model_dir, out = copy_model(tiny, tmp_path / "m"), tmp_path / "out"
    first = build_model(str(model_dir), FAMILY, out, device="cpu", progress=False)
    assert build_model(str(model_dir), FAMILY, out, device="cpu", progress=False).status == "skipped"
    config = json.loads((model_dir / "config.json").read_text())
    config["rope_theta"] = 1234.5
    (model_dir / "config.json").write_text(json.dumps(config))
    second = build_model(str(model_dir), FAMILY, out, device="cpu", progress=False)
    assert second.status == "built" and second.revision != first.revision


def test_the_revision_pre_pass_reads_only_config_headers_and_qk(tiny, tmp_path):
    """Skipping a local model reads config, header, Q/K and norm-gain bytes once each, never a whole shard.

    (The folded variant's input_layernorm gains are read through the same read path as Q/K; the OV
    circuit's V and O weights too, each byte once.)
    """
    model_dir, out = copy_model(tiny, tmp_path / "m"), tmp_path / "out"
    build_model(str(model_dir), FAMILY, out, device="cpu", progress=False)
    source = LocalSource(model_dir)
    assert build_model(source, FAMILY, out, device="cpu", progress=False).status == "skipped"
    shard = model_dir / "model.safetensors"
    header = header_bytes(shard)
    entries = json.loads(header[8:])
    qk = sum(
        e["data_offsets"][1] - e["data_offsets"][0]
        for n, e in entries.items()
        if n.endswith(("q_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight", "input_layernorm.weight"))
    )
    assert source.fetched.total == (model_dir / "config.json").stat().st_size + len(header) + qk
    assert source.fetched.total < 0.5 * shard.stat().st_size


def test_a_range_that_reads_differently_twice_is_refused():
    log = ReadLog()
    log.record("m", "model.safetensors", 8, 16, b"a" * 8)
    log.record("m", "model.safetensors", 8, 16, b"a" * 8)  # the same bytes again: fine
    with pytest.raises(ModelSourceError) as info:
        log.record("m", "model.safetensors", 8, 16, b"b" * 8)
    one_line(info.value, "model.safetensors", "changed while it was being read", "8-15")


def test_the_read_digest_ignores_order_and_repeats():
    a, b = ReadLog(), ReadLog()
    for start in (0, 8, 16):
        a.record("m", "f", start, start + 8, bytes([start]) * 8)
    for start in (16, 0, 8, 0):
        b.record("m", "f", start, start + 8, bytes([start]) * 8)
    assert a.digest() == b.digest()
    b.record("m", "g", 0, weights.WHOLE_FILE, b"{}")
    assert a.digest() != b.digest()


# ------------------------------------------------------------------ 2. the method version


@pytest.mark.slow
def test_a_new_method_version_rebuilds_and_only_an_exact_match_skips(tiny, tmp_path, monkeypatch):
    model_dir, out = copy_model(tiny, tmp_path / "m"), tmp_path / "out"
    first = build_model(str(model_dir), FAMILY, out, device="cpu", progress=False)
    assert set(pq.read_table(first.path)["method_version"].to_pylist()) == {schema.METHOD_VERSION}
    assert build_model(str(model_dir), FAMILY, out, device="cpu", progress=False).status == "skipped"

    monkeypatch.setattr(schema, "METHOD_VERSION", schema.METHOD_VERSION + 1)
    again = build_model(str(model_dir), FAMILY, out, device="cpu", progress=False)
    assert again.status == "built" and again.revision == first.revision
    assert set(pq.read_table(again.path)["method_version"].to_pylist()) == {schema.METHOD_VERSION}
    assert build_model(str(model_dir), FAMILY, out, device="cpu", progress=False).status == "skipped"


def _as_schema_v1(path: Path) -> None:
    """Rewrite a built file as the schema-v1 file an older builder wrote (no method_version)."""
    table = pq.read_table(path)
    table = table.drop([c for c in table.column_names if c not in schema.COLUMNS_BY_VERSION[1]])  # v2's additions
    version = table.column_names.index("schema_version")
    table = table.set_column(version, table.schema.field(version), pa.array([1] * table.num_rows, pa.int32()))
    assert table.column_names == list(schema.COLUMNS_BY_VERSION[1])
    pq.write_table(table, path)


@pytest.mark.slow
def test_schema_v1_files_are_read_and_rebuilt(tiny, tmp_path):
    model_dir, out = copy_model(tiny, tmp_path / "old-model"), tmp_path / "out"
    first = build_model(
        str(model_dir), FAMILY, out, device="cpu", progress=False, circuits=["qk"]
    )  # v1 had qk rows only
    _as_schema_v1(first.path)
    dataset_card.write_card(out)
    frame = load_spectra(out, FAMILY)  # v1 alone
    assert set(frame["schema_version"]) == {1} and len(frame) == 8

    _, newer = make_saved(CASE.id, tmp_path / "new-model")
    build_model(str(newer), FAMILY, out, device="cpu", progress=False)
    dataset_card.write_card(out)
    mixed = load_spectra(out, FAMILY)  # v1 and the current version side by side
    assert sorted(set(mixed["schema_version"])) == [1, schema.SCHEMA_VERSION] and len(mixed) == 16

    rebuilt = build_model(str(model_dir), FAMILY, out, device="cpu", progress=False)  # same weights, v1 row
    assert rebuilt.status == "built"
    assert set(pq.read_table(rebuilt.path)["schema_version"].to_pylist()) == {schema.SCHEMA_VERSION}


def test_validation_knows_each_version_and_refuses_others():
    v1, v2, v3 = (schema.COLUMNS_BY_VERSION[v] for v in (1, 2, 3))
    schema.validate_columns(v1, [1])
    schema.validate_columns(v2, [2])
    schema.validate_columns(v2, [1, 2])
    schema.validate_columns(v3, [1, 2, 3])
    schema.validate_columns(v1, [])
    with pytest.raises(schema.SchemaError, match="lacks column.*method_version of schema v2"):
        schema.validate_columns(v1, [2])
    with pytest.raises(schema.SchemaError, match="lacks column.*null_seed of schema v3"):
        schema.validate_columns(v2, [3])
    schema.validate_columns(schema.COLUMNS_BY_VERSION[4], [3, 4])
    with pytest.raises(schema.SchemaError) as info:
        schema.validate_columns(v3, [3, 5])
    one_line(info.value, "schema_version 5", "understands only 1, 2, 3, 4", "upgrade qk-spectra-ds")
    assert "method_version" in schema.column_types() and "method_version" not in schema.column_types(1)


# ------------------------------------------------------------------ 3. wrong bytes from a server


@pytest.mark.parametrize(
    "status, content_range, asked, size, ok",
    [
        (206, "bytes 8-15/100", (8, 16), 100, True),
        (206, "bytes 8-15/*", (8, 16), 100, True),
        (206, "bytes 8-15/100", (8, 16), None, True),
        (206, "Bytes 8-15/100", (8, 16), 100, True),  # range units are case-insensitive
        (206, "bytes 9-16/100", (8, 16), 100, False),  # same length, other bytes
        (206, "bytes 8-16/100", (8, 16), 100, False),
        (206, "bytes 8-15/101", (8, 16), 100, False),  # another file
        (206, None, (8, 16), 100, False),
        (206, "bytes=8-15/100", (8, 16), 100, False),
        (200, None, (8, 16), 100, False),  # the server ignored the range
        (200, None, (0, 100), 100, True),  # ... but the range was the whole file
        (200, None, (0, 100), None, False),
        (416, None, (8, 16), 100, False),
    ],
)
def test_range_answers_are_checked(status, content_range, asked, size, ok):
    assert (range_answer_problem(status, content_range, asked, size) is None) == ok


@pytest.fixture(scope="module")
def hosted(hub_server, tiny, unique_repo_name):
    repo_id = unique_repo_name("trust-tiny")
    hub_server.seed_repo(repo_id, tiny[1])
    return repo_id


@pytest.fixture
def no_retry_wait(monkeypatch):
    monkeypatch.setattr(hub_source, "RANGE_RETRY_WAIT", 0.0)


@pytest.mark.slow
def test_one_wrong_content_range_per_request_is_retried(hub_server, hosted, tiny, tmp_path, no_retry_wait):
    """A flaky proxy: the first answer to every range is other bytes of the right length."""
    hub_server.clear_faults()
    hub_server.reset_counters()
    hub_server.misserve_ranges(10**6, "shift", path_contains=".safetensors", once_per_range=True)
    try:
        result = build_model(hosted, FAMILY, tmp_path / "out", device="cpu", progress=False)
    finally:
        hub_server.clear_faults()
    assert result.status == "built"
    assert_matches(result.path, reference(tiny[0]))
    ranged = [r for r in hub_server.requests(method="GET") if r.path.endswith(".safetensors")]
    assert len(ranged) == 2 * len({r.range for r in ranged})  # every range was misserved once, then asked again


@pytest.mark.parametrize("mode", ["shift", "total", "no-header", "whole"])
def test_a_server_that_always_answers_the_wrong_range_is_refused(hub_server, hosted, mode, no_retry_wait):
    source = HubSource(hosted)
    source.size("model.safetensors")
    hub_server.clear_faults()
    hub_server.misserve_ranges(10**6, mode, path_contains=".safetensors")
    try:
        with pytest.raises(ModelSourceError) as info:
            source.read_range("model.safetensors", 8, 40)
    finally:
        hub_server.clear_faults()
    one_line(info.value, hosted, "model.safetensors", "bytes 8-39", f"{hub_source.RANGE_ATTEMPTS} tries")


@pytest.mark.slow
def test_cli_always_wrong_ranges_exit_non_zero_and_write_nothing(hub_server, hosted, tmp_path):
    out = tmp_path / "out"
    hub_server.clear_faults()
    hub_server.misserve_ranges(10**6, "shift", path_contains=".safetensors")
    try:
        proc = subprocess.run(
            [
                sys.executable,
                str(ROOT / "build_dataset.py"),
                "--family",
                FAMILY,
                "--models",
                hosted,
                "--out",
                str(out),
                "--device",
                "cpu",
                "--quiet",
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=180,
            env=dict(os.environ),
        )
    finally:
        hub_server.clear_faults()
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "model.safetensors" in errors[0] and "bytes 0-7" in errors[0], proc.stderr
    assert not list(out.rglob("*.parquet"))


# ------------------------------------------------------------------ 4. safetensors headers


GOOD = {
    "a": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
    "b": {"dtype": "F32", "shape": [2], "data_offsets": [16, 24]},
}


def write_raw(directory: Path, header: str | bytes, data_bytes: int) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    raw = header.encode() if isinstance(header, str) else header
    (directory / "model.safetensors").write_bytes(
        struct.pack("<Q", len(raw)) + raw + bytes(range(256)) * (data_bytes // 256) + bytes(data_bytes % 256)
    )
    return directory / "model.safetensors"


def with_entry(name, **changes) -> str:
    header = json.loads(json.dumps(GOOD))
    header[name].update(changes)
    return json.dumps(header)


BAD_HEADERS = {  # id -> (header text, data bytes, words of the message)
    "negative-offset": (with_entry("a", data_offsets=[-8, 8]), 24, ["a", "data_offsets"]),
    "begin-after-end": (with_entry("b", dtype="F32", shape=[0], data_offsets=[24, 16]), 24, ["b", "after it ends"]),
    "overlap": (with_entry("b", data_offsets=[8, 16]), 16, ["overlaps"]),
    "gap": (with_entry("b", data_offsets=[20, 28]), 28, ["gap"]),
    "data-not-covered": (json.dumps(GOOD), 32, ["cover 24 of the 32"]),
    "data-truncated": (json.dumps(GOOD), 20, ["truncated"]),
    "wrong-size-for-dtype": (with_entry("b", dtype="F64"), 24, ["b", "do not hold"]),
    "unknown-dtype": (with_entry("b", dtype="F33"), 24, ["unknown dtype 'F33'"]),
    "negative-dim": (with_entry("b", shape=[-2]), 24, ["shape"]),
    "float-dim": ('{"a":{"dtype":"F32","shape":[2.0,2],"data_offsets":[0,16]}}', 16, ["shape"]),
    "float-offset": ('{"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16.0]}}', 16, ["data_offsets"]),
    "bool-dim": ('{"a":{"dtype":"F32","shape":[true,4],"data_offsets":[0,16]}}', 16, ["shape"]),
    "three-offsets": (with_entry("b", data_offsets=[16, 24, 24]), 24, ["data_offsets"]),
    "huge-shape": (with_entry("b", shape=[2**40, 2**40]), 24, ["overflows"]),
    "sub-byte-tail": ('{"a":{"dtype":"F4","shape":[3],"data_offsets":[0,2]}}', 2, ["do not hold"]),
    "duplicate-name": (
        '{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"a":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}}',
        16,
        ["'a' appears twice"],
    ),
    "metadata-not-strings": (json.dumps({"__metadata__": {"format": 1}, **GOOD}), 24, ["__metadata__"]),
    "entry-not-object": ('{"a": 5}', 0, ["lacks dtype"]),
    "missing-offsets": ('{"a":{"dtype":"F32","shape":[2]}}', 8, ["lacks"]),
    "header-a-list": ("[]", 0, ["not a JSON object"]),
    "nan-in-header": ('{"a":{"dtype":"F32","shape":[NaN],"data_offsets":[0,8]}}', 8, ["corrupt header"]),
    "not-utf8": (b'{"\xff":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}', 8, ["not UTF-8"]),
    "trailing-nul": (json.dumps(GOOD) + "\0", 24, ["not JSON"]),
}


@pytest.mark.parametrize("case", sorted(BAD_HEADERS))
def test_headers_the_safetensors_library_refuses_are_refused(case, tmp_path):
    header, n_data, words = BAD_HEADERS[case]
    path = write_raw(tmp_path / case, header, n_data)
    with pytest.raises(SafetensorError):  # the reference: the library itself refuses this file
        with safe_open(str(path), "np") as f:
            [f.get_tensor(k) for k in f.keys()]
    with pytest.raises(CheckpointError) as info:
        Checkpoint(LocalSource(path.parent))
    one_line(info.value, "model.safetensors", *words)


GOOD_VARIANTS = {  # what the library accepts must be accepted too
    "names-not-in-offset-order": json.dumps({"b": GOOD["b"], "a": GOOD["a"]}),
    "metadata-null": json.dumps({"__metadata__": None, **GOOD}),
    "metadata-strings": json.dumps({"__metadata__": {"format": "pt"}, **GOOD}),
    "padded-with-spaces": json.dumps(GOOD) + "     ",
    "other-dtypes-and-empty-tensor": json.dumps(
        {
            "a": {"dtype": "I64", "shape": [2], "data_offsets": [0, 16]},
            "e": {"dtype": "F32", "shape": [0, 4], "data_offsets": [16, 16]},
            "b": {"dtype": "F8_E4M3", "shape": [8], "data_offsets": [16, 24]},
        }
    ),
    "extra-entry-field": with_entry("a", extra="ignored"),
}


@pytest.mark.parametrize("case", sorted(GOOD_VARIANTS))
def test_headers_the_library_accepts_are_accepted(case, tmp_path):
    path = write_raw(tmp_path / case, GOOD_VARIANTS[case], 24)
    with safe_open(str(path), "np") as f:
        expected = set(f.keys())
    assert set(Checkpoint(LocalSource(path.parent)).tensors) == expected


def _shift_q_offsets_negative(model_dir: Path) -> None:
    """The issue's case: layer 0's Q claims negative data_offsets, i.e. the header's own bytes."""
    path = model_dir / "model.safetensors"
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    begin, end = header[Q0]["data_offsets"]
    header[Q0]["data_offsets"] = [begin - end, 0]
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + n :])


@pytest.mark.slow
def test_a_model_with_negative_offsets_fails_in_one_line_and_writes_nothing(tiny, tmp_path):
    good = copy_model(tiny, tmp_path / "good")
    bad = copy_model(tiny, tmp_path / "bad")
    _shift_q_offsets_negative(bad)
    out = tmp_path / "out"
    with pytest.raises(BuildError) as info:
        build_family(FAMILY, out, models=[str(good), str(bad)], device="cpu", progress=False)
    one_line(info.value, "bad", "model.safetensors", Q0, "data_offsets")
    assert [r.status for r in info.value.results] == ["built", "failed"]
    assert not dataset_repo.model_path(out, FAMILY, "bad").exists()


# ------------------------------------------------------------------ 5. the index


def write_sharded(
    directory: Path, config_from: Path, shards: dict[str, dict[str, np.ndarray]], weight_map: dict
) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copy(config_from / "config.json", directory / "config.json")
    for name, tensors in shards.items():
        save_file(tensors, str(directory / name), metadata={"format": "pt"})
    (directory / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return directory


def split_in_two(tensors: dict[str, np.ndarray]) -> tuple[dict, dict]:
    layer1 = {k: v for k, v in tensors.items() if ".layers.1." in k}
    rest = {k: v for k, v in tensors.items() if k not in layer1}
    return rest, layer1


A, B = "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"


@pytest.mark.slow
def test_the_index_decides_which_shard_a_tensor_comes_from(tiny, tmp_path):
    tensors = load_file(str(tiny[1] / "model.safetensors"))
    first, second = split_in_two(tensors)
    second[Q0] = (tensors[Q0] * 3.0 + 1.0).astype(np.float32)  # a stale copy in the later shard
    weight_map = {name: A for name in first} | {name: B for name in second if name != Q0}
    model_dir = write_sharded(tmp_path / "two-copies", tiny[1], {A: first, B: second}, weight_map)
    result = build_model(str(model_dir), FAMILY, tmp_path / "out", device="cpu", progress=False)
    assert_matches(result.path, reference(tiny[0]))  # the copy the index names, not the later one


def test_a_tensor_the_index_maps_to_a_shard_without_it_is_refused(tiny, tmp_path):
    tensors = load_file(str(tiny[1] / "model.safetensors"))
    first, second = split_in_two(tensors)
    weight_map = {name: A for name in first} | {name: B for name in second}
    weight_map[Q0] = B  # but Q0 is only in A
    model_dir = write_sharded(tmp_path / "wrong-map", tiny[1], {A: first, B: second}, weight_map)
    with pytest.raises(CheckpointError) as info:
        build_model(str(model_dir), FAMILY, tmp_path / "out", device="cpu", progress=False)
    one_line(info.value, Q0, B, f"it is in {A}")


@pytest.mark.parametrize(
    "shard",
    [
        "/etc/passwd",
        "../outside/model.safetensors",
        "sub/../../outside/model.safetensors",
        "..\\outside\\model.safetensors",
        "sub/model.safetensors",
        "C:model.safetensors",
        "config.json",
        "",
        7,
    ],
    ids=str,
)
def test_an_index_naming_files_outside_the_model_is_refused(tiny, tmp_path, shard):
    outside = copy_model(tiny, tmp_path / "outside")  # a valid model where ../outside/ points
    (tmp_path / "m" / "sub").mkdir(parents=True)
    shutil.copy(outside / "model.safetensors", tmp_path / "m" / "sub" / "model.safetensors")
    tensors = load_file(str(outside / "model.safetensors"))
    first, second = split_in_two(tensors)
    weight_map = {name: A for name in first} | {name: shard for name in second}
    model_dir = write_sharded(tmp_path / "m", outside, {A: first}, weight_map)
    with pytest.raises(CheckpointError) as info:
        build_model(str(model_dir), FAMILY, tmp_path / "out", device="cpu", progress=False)
    one_line(info.value, "model.safetensors.index.json")
    assert not list((tmp_path / "out").rglob("*.parquet"))


@pytest.mark.parametrize("index", ['["model.safetensors"]', '{"weight_map": []}', '{"weight_map": {}}', "{}"])
def test_an_index_without_a_weight_map_is_refused(tiny, tmp_path, index):
    model_dir = copy_model(tiny, tmp_path / "m")
    (model_dir / "model.safetensors.index.json").write_text(index)
    with pytest.raises(CheckpointError) as info:
        Checkpoint(LocalSource(model_dir))
    one_line(info.value, "has no weight_map")


def test_an_index_listing_a_tensor_twice_is_refused(tiny, tmp_path):
    tensors = load_file(str(tiny[1] / "model.safetensors"))
    first, second = split_in_two(tensors)
    second[Q0] = tensors[Q0]
    model_dir = write_sharded(tmp_path / "twice", tiny[1], {A: first, B: second}, {name: A for name in first})
    index = model_dir / "model.safetensors.index.json"
    entries = ", ".join(f'"{n}": "{A}"' for n in first) + ", " + ", ".join(f'"{n}": "{B}"' for n in second)
    index.write_text('{"metadata": {}, "weight_map": {' + entries + "}}")  # Q0 twice, to A then to B
    with pytest.raises(CheckpointError) as info:
        Checkpoint(LocalSource(model_dir))
    one_line(info.value, "model.safetensors.index.json", Q0, "appears twice")


def test_the_sources_refuse_names_that_leave_the_model(tiny, tmp_path):
    source = LocalSource(tiny[1])
    for name in ("../x", "/etc/passwd", "a/../../x", "a\\b", ""):
        with pytest.raises(ModelSourceError) as info:
            source.read_file(name)
        one_line(info.value, "refusing to read")
    with pytest.raises(ModelSourceError):
        source.read_range("../tiny-llama/model.safetensors", 0, 8)
    assert LOCAL_REVISION_PREFIX == "local:"

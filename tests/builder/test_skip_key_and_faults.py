"""Issue 18 items 5, 7, 10, 13 (and issue 24's byte question): the build's skip key, faults while writing or
reading, and the byte count.

- every build option is either listed in ``skip_key.ROW_OPTIONS`` (and a rerun with another value
  rebuilds, the same value skips) or named here as one that does not change rows;
- each byte of a checkpoint is counted once: a local rebuild (revision pre-pass + build) reports
  the distinct bytes (config, header, Q/K), never more than the checkpoint.
"""

from __future__ import annotations

import inspect
import json
import shutil
import struct
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from qk_spectra_ds.builder import pipeline, skip_key
from qk_spectra_ds.builder.pipeline import build_family, build_model

pytest.importorskip("torch")

FAMILY = "Faults"

ROW_OPTIONS = {  # option -> (a value, another value), each built over BASE
    "variants": (["raw", "null"], ["raw", "folded", "null"]),
    "offsets": ([0, 1], [0, 2]),
    "null_seed": (1, 2),
    "circuits": (["qk"], ["qk", "ov"]),
    "behaviour": (None, "probe"),  # "probe": a small probes.ProbeSpec
}
NOT_ROW_OPTIONS = {  # option -> why it never changes a row
    "family": "names the folder (another family is another file)",
    "out_dir": "where the dataset is",
    "models": "which models, not how",
    "device": "where the float64 kernel runs (the same numbers within 1e-6)",
    "force": "rebuilds regardless",
    "catalog_file": "which models",
    "progress": "progress bars",
    "token": "access to the Hub",
    "shard": "which models",
}
BASE = {"variants": ["raw", "null"], "offsets": [0, 1], "null_seed": 1, "circuits": ["qk"]}


def _value(option: str, value):
    if value == "probe":
        from qk_spectra_ds.builder.probes import ProbeSpec

        return ProbeSpec(seed=3, sequences=2, length=8, local_window=2)
    return value


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from tiny_models import make_saved

    return make_saved("llama-gqa", tmp_path_factory.mktemp("faults") / "tiny")[1]


def test_every_build_option_is_in_the_skip_key_or_said_not_to_change_rows():
    parameters = set(inspect.signature(build_family).parameters)
    unclassified = parameters - set(ROW_OPTIONS) - set(NOT_ROW_OPTIONS)
    assert not unclassified, (
        f"classify {unclassified}: in skip_key.ROW_OPTIONS (and ROW_OPTIONS here), or NOT_ROW_OPTIONS"
    )
    in_key = {o.name for o in skip_key.ROW_OPTIONS}
    assert parameters & set(ROW_OPTIONS) <= in_key, "an option that changes rows must be in skip_key.ROW_OPTIONS"
    assert in_key <= set(ROW_OPTIONS), "each option of the key needs two values here, to prove that it rebuilds"
    assert not in_key & set(NOT_ROW_OPTIONS)


@pytest.mark.slow
@pytest.mark.parametrize("option", sorted(ROW_OPTIONS))
def test_another_value_of_each_row_option_rebuilds_and_the_same_value_skips(option, tiny, tmp_path):
    if option not in inspect.signature(build_model).parameters:
        pytest.skip(f"build_model has no {option} option yet")
    first, second = (_value(option, v) for v in ROW_OPTIONS[option])
    out = tmp_path / "out"

    def build(value):
        return build_model(str(tiny), FAMILY, out, device="cpu", progress=False, **{**BASE, option: value})

    assert build(first).status == "built"
    assert build(first).status == "skipped"
    rebuilt = build(second)
    assert rebuilt.status == "built", f"--{option} changed but the model was {rebuilt.status}"
    assert build(second).status == "skipped"
    held = skip_key.held_key(rebuilt.path)
    assert held == skip_key.wanted_key(**{**BASE, option: second})


def test_offsets_are_read_back_from_the_rows(tiny, tmp_path):
    result = build_model(str(tiny), FAMILY, tmp_path, device="cpu", progress=False, variants=["raw"], offsets=[0, 3])
    offsets = {
        tuple(o) for o in pq.read_table(result.path, columns=["offsets"])["offsets"].to_pylist() if o is not None
    }
    assert offsets == {(0, 3)} and skip_key.held_key(result.path)["offsets"] == (0, 3)


# ------------------------------------------------------------------ 13. each byte counted once


def _distinct_floor(model_dir: Path, suffixes: tuple[str, ...]) -> int:
    """config.json + the shard's header + the named tensors: the bytes a build must read, each once."""
    shard = model_dir / "model.safetensors"
    raw = shard.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    entries = json.loads(raw[8 : 8 + n])
    tensors = sum(e["data_offsets"][1] - e["data_offsets"][0] for k, e in entries.items() if k.endswith(suffixes))
    return (model_dir / "config.json").stat().st_size + 8 + n + tensors


def test_a_local_rebuild_counts_each_byte_once(tiny, tmp_path):
    model_dir = tmp_path / "m"
    shutil.copytree(tiny, model_dir)
    out = tmp_path / "out"
    qk_only = {"circuits": ["qk"]} if "circuits" in inspect.signature(build_model).parameters else {}
    build_model(str(model_dir), FAMILY, out, device="cpu", progress=False, variants=["raw"], offsets=[], **qk_only)
    rebuilt = build_model(
        str(model_dir), FAMILY, out, device="cpu", progress=False, variants=["raw"], offsets=[0, 1], **qk_only
    )
    assert rebuilt.status == "built"
    floor = _distinct_floor(model_dir, ("q_proj.weight", "k_proj.weight"))
    assert rebuilt.bytes_fetched == floor  # Q/K, header and config, each byte once
    assert rebuilt.bytes_transferred >= rebuilt.bytes_fetched
    assert rebuilt.fetched_share <= 1.0
    line = pipeline.summarize([rebuilt])
    share = 100 * floor / rebuilt.checkpoint_bytes
    assert f"({share:.1f}%" in line
    if rebuilt.bytes_transferred > 1.01 * rebuilt.bytes_fetched:  # the pre-pass read Q/K a second time: said, not added
        assert "read in all" in line


def test_the_read_log_counts_overlapping_and_repeated_ranges_once():
    from qk_spectra_ds.builder.weights import WHOLE_FILE, ReadLog

    log = ReadLog()
    data = bytes(range(100))
    for start, stop in ((0, 10), (0, 10), (5, 20), (30, 40), (35, 38)):
        log.record("m", "a.safetensors", start, stop, data[start:stop])
    log.record("m", "b.safetensors", 0, 7, data[:7])
    log.record("m", "config.json", 0, WHOLE_FILE, b"{}" * 21)
    assert log.distinct_bytes() == 20 + 10 + 7 + 42


# ------------------------------------------------------------------ 7. a full disk, and what killed writers leave


def _enospc_writer(real, victim: str):
    """write_model_table that, for ``victim``, writes part of the file and then fails as a full disk does."""
    import errno

    from qk_spectra_ds import dataset_repo
    from qk_spectra_ds.atomic import atomic_path

    def write(out_dir, family, model_id, columns):
        if model_id != victim:
            return real(out_dir, family, model_id, columns)
        with atomic_path(dataset_repo.model_path(out_dir, family, model_id)) as tmp:
            tmp.write_bytes(b"PAR1" + b"\0" * 4096)  # what a writer had written when the disk filled up
            raise OSError(errno.ENOSPC, "Error writing bytes to file. Detail: [errno 28] No space left on device")

    return write


@pytest.mark.slow
def test_a_full_disk_fails_one_model_in_one_line_and_the_next_ones_are_built(tiny, tmp_path, monkeypatch):
    from qk_spectra_ds import dataset_repo
    from qk_spectra_ds.errors import BuildError

    models = []
    for name in ("m1", "m2", "m3"):
        shutil.copytree(tiny, tmp_path / name)
        models.append(str(tmp_path / name))
    monkeypatch.setattr(
        pipeline.dataset_repo, "write_model_table", _enospc_writer(dataset_repo.write_model_table, "m2")
    )
    out = tmp_path / "out"
    with pytest.raises(BuildError) as info:
        build_family(FAMILY, out, models=models, progress=False, variants=["raw"], offsets=[])
    results = {Path(r.model_id).name: r for r in info.value.results}  # a failed model is named by its spec
    assert [results[m].status for m in ("m1", "m2", "m3")] == ["built", "failed", "built"]
    error = results["m2"].error
    assert "\n" not in error and "no space left on device" in error and "m2.parquet" in error and "free space" in error
    assert "Errno" not in error and "OSError" not in error, error
    assert sorted(p.name for p in (out / "data" / FAMILY).iterdir()) == ["m1.parquet", "m3.parquet"]  # no .tmp left
    assert "m2" not in (out / "README.md").read_text()


def _leave_a_temporary(target: Path) -> None:
    """Run a process that opens an atomic write of ``target`` and is killed (SIGKILL) inside it."""
    import subprocess
    import sys

    code = (
        "import os, signal, sys\n"
        "from qk_spectra_ds.atomic import atomic_path\n"
        "with atomic_path(sys.argv[1]) as tmp:\n"
        "    tmp.write_bytes(b'x' * 1000)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(target)], capture_output=True, timeout=60, check=False)
    assert proc.returncode == -9, proc.stderr


def test_temporaries_of_killed_writers_are_swept_and_live_ones_kept(tmp_path):
    import os
    import time

    from qk_spectra_ds.atomic import atomic_path, sweep_stale_temporaries

    target = tmp_path / "data" / "F" / "m.parquet"
    _leave_a_temporary(target)
    (left,) = target.parent.glob(".*.tmp")
    old = time.time() - 2 * 24 * 3600
    legacy_old = target.parent / ".x.parquet.abcd1234.tmp"  # written before temporaries carried host and pid
    legacy_new = target.parent / ".y.parquet.efgh5678.tmp"
    foreign_old = target.parent / ".z.parquet.otherhost-123.ijkl9012.tmp"
    foreign_new = target.parent / ".w.parquet.otherhost-123.mnop3456.tmp"
    for path in (legacy_old, legacy_new, foreign_old, foreign_new):
        path.write_bytes(b"x")
    for path in (legacy_old, foreign_old):
        os.utime(path, (old, old))
    with atomic_path(tmp_path / "live.csv") as live:  # a writer still running (this process)
        live.write_text("a")
        removed = sweep_stale_temporaries(tmp_path)
        assert live.exists()
    assert sorted(p.name for p in removed) == sorted(p.name for p in (left, legacy_old, foreign_old))
    assert {p.name for p in target.parent.glob(".*.tmp")} == {legacy_new.name, foreign_new.name}


@pytest.mark.slow
def test_a_build_sweeps_what_a_killed_build_left(tiny, tmp_path, caplog):
    out = tmp_path / "out"
    _leave_a_temporary(out / "data" / FAMILY / "tiny.parquet")
    assert list((out / "data" / FAMILY).glob(".*.tmp"))
    with caplog.at_level("WARNING"):
        build_family(FAMILY, out, models=[str(tiny)], progress=False, variants=["raw"], offsets=[])
    assert not list(out.rglob("*.tmp"))
    assert any("removed 1 temporary file(s)" in r.getMessage() for r in caplog.records)


def test_a_report_sweeps_what_a_killed_report_left(tmp_path):
    pytest.importorskip("sklearn")
    from qk_spectra_ds.analysis.report import run_report
    from qk_spectra_ds.errors import QKSpectraError

    _leave_a_temporary(tmp_path / "analysis" / "F" / "tables" / "classes.csv")
    lines: list[str] = []
    with pytest.raises(QKSpectraError):  # no such dataset: the sweep comes first, before any reading
        run_report(str(tmp_path / "no-dataset"), "F", tmp_path / "analysis", progress=False, log=lines.append)
    assert not list((tmp_path / "analysis").rglob("*.tmp"))
    assert lines and lines[0].startswith("removed 1 temporary file(s)")

"""Flat build memory: glibc's mmap threshold is fixed before a build (benchmarks/bench_build.py measures the RSS)."""

from __future__ import annotations

import platform

import pytest
from tiny_models import CASES_BY_ID, make_saved

from qk_spectra_ds.builder import memory, pipeline


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_the_threshold_is_set_on_glibc():
    assert memory.fix_mmap_threshold() is True
    assert memory.fix_mmap_threshold() is True  # idempotent


@pytest.mark.slow
def test_every_build_fixes_the_threshold_first(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(memory, "fix_mmap_threshold", lambda: calls.append(1) or True)
    _, directory = make_saved(CASES_BY_ID["llama-gqa"].id, tmp_path / "m")
    result = pipeline.build_model(str(directory), "fam", tmp_path / "out", progress=False, variants=["raw"])
    assert result.status == "built" and calls == [1]

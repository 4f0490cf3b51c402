"""Opt-in: the same round trip against the real Hugging Face Hub.

Skipped unless ``QK_SPECTRA_LIVE_HF_TOKEN`` holds a write token (the test session's own
``HF_TOKEN`` is a dummy for the local test server). Runs in a subprocess with the real
endpoint: builds the real all-MiniLM-L6-v2 from the Hub with ranged reads, publishes it
to a private dataset repo (``QK_SPECTRA_LIVE_REPO``, default ``<user>/qk-spectra-ds-live-test``),
and loads it back with ``datasets``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

import pytest

TOKEN = os.environ.get("QK_SPECTRA_LIVE_HF_TOKEN")

SCRIPT = r"""
import os, sys, tempfile
from huggingface_hub import HfApi
from qk_spectra_ds.builder import pipeline as build
from qk_spectra_ds.builder import weights
from qk_spectra_ds.builder.publish import publish

repo = os.environ.get("QK_SPECTRA_LIVE_REPO") or HfApi().whoami()["name"] + "/qk-spectra-ds-live-test"
source = weights.open_source("sentence-transformers/all-MiniLM-L6-v2")
with tempfile.TemporaryDirectory() as out:
    [result] = build.build_family("MiniLM", out, models=[source], progress=False)
    assert result.status == "built" and len(result.revision) == 40, result
    assert result.fetched_share < 0.2, result.fetched_share
    published = publish(out, repo, private=True, message="qk-spectra-ds live test")
    import datasets
    ds = datasets.load_dataset(repo, "MiniLM", split="train", download_mode="force_redownload")
    assert ds.num_rows == 2 * 72, ds.num_rows  # qk and ov rows
print("live ok", repo, published.summary())
"""


@pytest.mark.skipif(not TOKEN, reason="set QK_SPECTRA_LIVE_HF_TOKEN to run against the real Hub")
def test_live_round_trip():
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("HF_ENDPOINT", "HF_HOME", "HF_HUB_CACHE", "HF_DATASETS_CACHE"))
    }
    env.update(HF_TOKEN=TOKEN, HF_HOME=tempfile.mkdtemp(prefix="qk_live_hf_"))
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "live ok" in out.stdout

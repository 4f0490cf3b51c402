"""Files read whole (config.json, the safetensors index) are bounded: a huge one is one line, never read into memory.

The limit is lowered for the tests (``weights.SMALL_FILE_LIMIT``); the model's config.json is padded
with whitespace (still valid JSON) past it, in a local folder and in a repo on the Hub-protocol test server.
"""

from __future__ import annotations

import shutil

import pytest
from tiny_models import make_saved

from qk_spectra_ds.builder import hub_source, weights
from qk_spectra_ds.builder.pipeline import build_family
from qk_spectra_ds.errors import BuildError, ModelSourceError

LIMIT = 4096


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(a tiny model folder, the same with its config.json padded to 64 KiB)."""
    root = tmp_path_factory.mktemp("small-files")
    _, good = make_saved("llama-gqa", root / "good")
    padded = root / "padded"
    shutil.copytree(good, padded)
    config = (padded / "config.json").read_text()
    (padded / "config.json").write_text(config + " " * (64 * 1024))
    return good, padded


@pytest.fixture
def low_limit(monkeypatch):
    monkeypatch.setattr(weights, "SMALL_FILE_LIMIT", LIMIT)


def _failure(exc: BuildError) -> str:
    (failed,) = [r for r in exc.results if r.status == "failed"]
    return failed.error


@pytest.mark.slow
def test_a_huge_local_config_is_one_line_and_the_other_model_is_built(models, low_limit, tmp_path):
    good, padded = models
    assert (padded / "config.json").stat().st_size > LIMIT > (good / "config.json").stat().st_size
    with pytest.raises(BuildError) as info:
        build_family("Fam", tmp_path / "out", models=[str(padded), str(good)], progress=False, variants=["raw"])
    error = _failure(info.value)
    assert "config.json is larger than" in error and "\n" not in error
    assert [p.name for p in (tmp_path / "out" / "data" / "Fam").glob("*.parquet")] == ["good.parquet"]


def test_a_huge_config_on_the_hub_is_one_line(models, low_limit, hub_server, unique_repo_name, tmp_path):
    _, padded = models
    repo_id = unique_repo_name("padded-config")
    hub_server.seed_repo(repo_id, padded)
    with pytest.raises(ModelSourceError, match="config.json is larger than") as info:
        hub_source.HubSource(repo_id).read_json("config.json")
    assert "\n" not in str(info.value)


class _Streamed:
    """A response whose body arrives in chunks (what ``iter_bytes`` of an httpx response gives)."""

    def __init__(self, chunks: list[bytes]):
        self.chunks, self.served = chunks, 0

    def iter_bytes(self):
        for chunk in self.chunks:
            self.served += 1
            yield chunk


def test_a_body_longer_than_asked_stops_at_the_limit():
    response = _Streamed([b"x" * 1000] * 100)
    assert hub_source._bounded_body(response, 2500) is None and response.served == 3  # not the other 97 chunks
    assert hub_source._bounded_body(_Streamed([b"ab", b"cd"]), 4) == bytearray(b"abcd")

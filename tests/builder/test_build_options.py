"""build_model's options gathered in one value (issue 19 item 3): build_family checks them once and passes them down.

The keywords keep working (the public API); ``options=`` is the same thing gathered, never both.
"""

from __future__ import annotations

import inspect
from dataclasses import fields

import pyarrow.parquet as pq
import pytest
from tiny_models import make_saved

from qk_spectra_ds.builder import pipeline
from qk_spectra_ds.builder.build_options import BuildOptions
from qk_spectra_ds.builder.results import ModelResult
from qk_spectra_ds.errors import BuildError

NOT_OPTIONS = {"spec", "family", "out_dir", "taken_ids", "options"}  # what build_model is given besides its options


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_saved("llama-gqa", tmp_path_factory.mktemp("options") / "tiny")[1]


def test_the_options_are_build_models_keywords_and_build_familys():
    names = {f.name for f in fields(BuildOptions)}
    assert names == set(inspect.signature(pipeline.build_model).parameters) - NOT_OPTIONS
    assert names <= set(inspect.signature(pipeline.build_family).parameters)
    for f in fields(BuildOptions):  # the same defaults as the keywords (build_family's null_seed None: checked)
        default = inspect.signature(pipeline.build_model).parameters[f.name].default
        assert getattr(BuildOptions(), f.name) == default, f.name


def test_build_family_checks_the_options_once_and_passes_them_down(tiny, tmp_path, monkeypatch):
    seen = []

    def recording(spec, family, out_dir, **kwargs):
        seen.append(kwargs)
        return ModelResult(str(spec), "skipped")

    monkeypatch.setattr(pipeline, "build_model", recording)
    pipeline.build_family(
        "Fam",
        tmp_path / "out",
        models=[str(tiny)],
        device="cpu",
        progress=False,
        variants=["null", "raw"],
        offsets=["4", "0", "4"],
        null_seed="7",
        circuits=["qk"],
    )
    [kwargs] = seen
    assert set(kwargs) == {"taken_ids", "options"}
    assert kwargs["options"] == BuildOptions(
        device="cpu", progress=False, variants=("raw", "null"), offsets=(0, 4), null_seed=7, circuits=("qk",)
    )


def test_a_wrong_option_stops_the_family_before_any_model(tiny, tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline, "build_model", lambda *a, **k: pytest.fail("no model may start"))
    with pytest.raises(BuildError, match="--null-seed 'x'"):
        pipeline.build_family("Fam", tmp_path / "out", models=[str(tiny)], device="cpu", progress=False, null_seed="x")


def test_options_and_keywords_build_the_same_rows(tiny, tmp_path):
    keywords = {"device": "cpu", "progress": False, "variants": ["raw"], "offsets": [], "circuits": ["qk", "ov"]}
    by_keywords = pipeline.build_model(str(tiny), "Fam", tmp_path / "a", **keywords)
    by_options = pipeline.build_model(str(tiny), "Fam", tmp_path / "b", options=BuildOptions(**keywords))
    assert by_keywords.status == by_options.status == "built"
    assert pq.read_table(by_keywords.path).equals(pq.read_table(by_options.path))
    again = pipeline.build_model(str(tiny), "Fam", tmp_path / "b", options=BuildOptions(**keywords))
    assert again.status == "skipped"  # the skip key reads the options the same way


def test_options_or_keywords_never_both(tmp_path):
    with pytest.raises(TypeError, match="variants"):
        pipeline.build_model("no/such-model", "Fam", tmp_path, options=BuildOptions(), variants=["raw"])
    with pytest.raises(TypeError, match="device, null_seed"):
        pipeline.build_model("no/such-model", "Fam", tmp_path, options=BuildOptions(), device="cpu", null_seed=3)
    assert not tmp_path.joinpath("data").exists()

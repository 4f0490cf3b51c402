"""The report as a pipeline (issue 19 item 3): one read of the dataset, every frame selected from it."""

from __future__ import annotations

import datasets
import pytest
from helpers import synthetic_columns

from qk_spectra_ds import dataset_card, dataset_repo
from qk_spectra_ds.analysis.report import Params, run_report

FAST = {"stats": ("MEAN",), "k": "3", "permutations": 99}


@pytest.mark.slow  # a whole report: about 15 s on a loaded 2-core machine
def test_a_report_reads_the_dataset_once(tmp_path, monkeypatch):
    """The default report needs the analysed rows, the null variant, the other variant (raw against folded) and
    the other circuit: all of them come from one ``load_dataset`` (it was four: a load per selection)."""
    raw, folded = (synthetic_columns("org/a", "syn", n_heads=4, d_head=8, seed=1, variant=v) for v in ("raw", "folded"))
    both = {name: raw[name] + folded[name] for name in raw}
    dataset_repo.write_model_table(tmp_path / "ds", "syn", "org/a", both)
    dataset_card.write_card(tmp_path / "ds")
    calls = []
    load_dataset = datasets.load_dataset

    def counted(*args, **kwargs):
        calls.append(args)
        return load_dataset(*args, **kwargs)

    monkeypatch.setattr(datasets, "load_dataset", counted)
    outputs = run_report(str(tmp_path / "ds"), "syn", tmp_path / "out", params=Params(**FAST), jobs=1, progress=False)
    assert len(calls) == 1, calls
    assert outputs.frames["variants_ari"][["variant_a", "variant_b"]].values.tolist() == [["raw", "folded"]]

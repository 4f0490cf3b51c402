"""No silently wrong, stale or lost numbers (issue 9, items 9-12 and part of 14).

- Legacy and built spectra never replace each other without --force, the
  analysis does not pool them unless asked, and the card says where the numbers
  come from (item 9).
- Rows no QK spectrum can have, a file copied twice, a corrupt or empty parquet:
  one line naming the file (items 10, 14).
- A card out of step with the files is repaired by a rerun and does not stop
  the analysis; a full disk while writing the card loses nothing (item 11).
- Hand-crafted pickles that would allocate without bound, hand back
  uninitialised memory or flatten exponentially are refused before they can
  (item 12); they run in a subprocess with an address-space limit and a
  per-case alarm, so that the tests cannot eat the machine if the bounds regress.
- A card whose YAML does not parse, or carries a !!python tag: one line, never
  executed (item 14).
"""

from __future__ import annotations

import collections
import errno
import json
import pickle
import shutil
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import make_dataset, one_line, write_qk_llama

from qk_spectra_ds import card_metadata, dataset_card, dataset_repo, schema
from qk_spectra_ds.analysis.legacy import LegacyFormatError, import_legacy, read_legacy
from qk_spectra_ds.analysis.loading import AnalysisError, LoadError, load_spectra
from qk_spectra_ds.builder import pipeline as build
from qk_spectra_ds.builder.columns import model_columns
from qk_spectra_ds.builder.layouts import AttentionShape
from qk_spectra_ds.errors import BuildError, QKSpectraError

FAMILY = "syn"


# ---------------------------------------------------------------- data made here, independently of the readers


def built_columns(
    model_id: str,
    family: str = FAMILY,
    n_layers: int = 3,
    n_heads: int = 4,
    n_kv_heads: int = 2,
    d_head: int = 8,
    seed: int = 0,
) -> dict:
    """Rows of a model 'built from weights': spectra of random heads (dense SVD of random Q, K blocks)."""
    rng = np.random.default_rng(seed)
    d_model = 3 * d_head
    wq = rng.standard_normal((n_layers, n_heads, d_head, d_model))
    wk = rng.standard_normal((n_layers, n_kv_heads, d_head, d_model))
    group = n_heads // n_kv_heads
    sv = np.empty((n_layers, n_heads, d_head))
    for layer in range(n_layers):
        for head in range(n_heads):
            sv[layer, head] = np.linalg.svd(wq[layer, head].T @ wk[layer, head // group], compute_uv=False)[:d_head]
    shape = AttentionShape(n_layers, n_heads, n_kv_heads, d_model, d_head)
    return model_columns(
        sv,
        rng.uniform(-1, 1, (n_layers, n_heads)),
        shape,
        model_id=model_id,
        revision="local:" + "0" * 40,
        family=family,
        model_type="llama",
        weights_dtype="float32",
    )


def legacy_data(n_layers: int = 3, n_heads: int = 4, d_head: int = 8, seed: int = 0) -> collections.defaultdict:
    """A dict in the original study's pickle layout (defaultdict(dict), float32 arrays, (n_heads, 1) stats)."""
    rng = np.random.default_rng(seed)
    data = collections.defaultdict(dict)
    for layer in range(n_layers):
        sv = -np.sort(-np.abs(rng.standard_normal((n_heads, d_head))), axis=1).astype(np.float32)
        ev = (sv.astype(np.float64) ** 2).astype(np.float32)
        for key, values in (("singular_values", sv), ("eigen_values", ev)):
            x = values.astype(np.float64)
            z = (x - x.mean(1, keepdims=True)) / np.maximum(x.std(1, ddof=1, keepdims=True), 1e-9)
            stats = [x.min(1), x.max(1), x.mean(1), x.std(1, ddof=1), (z**3).mean(1), (z**4).mean(1) - 3]
            data[key][layer] = values
            data[f"{key}_stats"][layer] = [s.reshape(-1, 1).astype(np.float32) for s in stats]
    return data


def write_pickle(directory: Path, name: str, data) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.pkl"
    path.write_bytes(pickle.dumps(data, protocol=4))
    return path


def built_dataset(out: Path, *models: str) -> Path:
    """A dataset of ``models`` with :func:`built_columns` rows (seeds 0, 1, ...)."""
    return make_dataset(out, FAMILY, [(model, seed) for seed, model in enumerate(models)], columns=built_columns)


def rewrite(path: Path, edit) -> None:
    """Rewrite a parquet file with ``edit(dict of python lists) -> dict``, keeping its schema."""
    table = pq.read_table(path)
    columns = edit(table.to_pydict())
    pq.write_table(pa.Table.from_pydict(columns, schema=table.schema), path)
    dataset_card.write_card(path.parents[2], rerecord=True)  # a consistent card: the loader's own checks must refuse it


# ---------------------------------------------------------------- item 9: legacy and built data


@pytest.mark.slow
def test_import_legacy_refuses_to_replace_a_built_model_without_force(tmp_path):
    out = built_dataset(tmp_path / "ds", "tiny")
    target = dataset_repo.model_path(out, FAMILY, "tiny")
    before = target.read_bytes()
    pickles = tmp_path / "pickles"
    write_pickle(pickles, "tiny", legacy_data())
    with pytest.raises(QKSpectraError) as info:
        import_legacy(pickles, FAMILY, out)
    one_line(info.value, "tiny", "built from its weights", "--force")
    assert target.read_bytes() == before  # the 36 built rows are still there
    import_legacy(pickles, FAMILY, out, force=True)
    assert set(pq.read_table(target).column("variant").to_pylist()) == {schema.VARIANT_LEGACY}


@pytest.mark.slow
def test_rebuild_refuses_to_replace_a_legacy_table_without_force(tiny_model, tmp_path):
    out = tmp_path / "ds"
    import_legacy(write_pickle(tmp_path / "pickles", tiny_model.name, legacy_data(n_layers=2)), FAMILY, out)
    target = dataset_repo.model_path(out, FAMILY, tiny_model.name)
    before = target.read_bytes()
    with pytest.raises(BuildError) as info:
        build.build_family(FAMILY, out, [str(tiny_model)], device="cpu", progress=False)
    assert [r.status for r in info.value.results] == ["failed"]
    one_line(info.value, tiny_model.name, "legacy", "--force")
    assert target.read_bytes() == before
    [result] = build.build_family(FAMILY, out, [str(tiny_model)], device="cpu", force=True, progress=False)
    assert result.status == "built"
    assert set(pq.read_table(target).column("variant").to_pylist()) == set(schema.BUILT_VARIANTS)  # legacy replaced


@pytest.mark.slow
def test_import_legacy_into_a_family_of_built_models_needs_pool_legacy(tmp_path, analyze_cli, capsys):
    out = built_dataset(tmp_path / "ds", "org/built")
    pickles = tmp_path / "pickles"
    write_pickle(pickles, "old-model", legacy_data())
    argv = ["import_legacy", "--pickles", str(pickles), "--family", FAMILY, "--out", str(out), "--quiet"]
    assert analyze_cli(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "org/built" in err[0] and "--pool_legacy" in err[0], err
    assert not dataset_repo.model_path(out, FAMILY, "old-model").exists()
    assert analyze_cli(argv + ["--pool_legacy"]) == 0
    assert dataset_repo.model_path(out, FAMILY, "old-model").exists()


@pytest.fixture
def mixed_dataset(tmp_path) -> Path:
    out = built_dataset(tmp_path / "ds", "org/built")
    import_legacy(write_pickle(tmp_path / "pickles", "old-model", legacy_data()), FAMILY, out, pool_legacy=True)
    return out


@pytest.mark.slow
def test_analysis_does_not_pool_legacy_with_built_spectra_unless_asked(mixed_dataset):
    with pytest.raises(LoadError) as info:
        load_spectra(mixed_dataset, FAMILY)
    one_line(info.value, "old-model", "org/built", "pairing error", "--variant raw,legacy")
    assert set(load_spectra(mixed_dataset, FAMILY, variant="legacy")["model_id"]) == {"old-model"}
    assert set(load_spectra(mixed_dataset, FAMILY, variant="raw")["model_id"]) == {"org/built"}
    for frame in (
        load_spectra(mixed_dataset, FAMILY, pool_legacy=True),
        load_spectra(mixed_dataset, FAMILY, variant="raw,legacy"),
    ):
        assert set(frame["model_id"]) == {"old-model", "org/built"} and len(frame) == 2 * 3 * 4


@pytest.mark.slow
def test_cards_say_where_the_numbers_come_from(tmp_path, mixed_dataset):
    legacy_only = tmp_path / "legacy-ds"
    import_legacy(write_pickle(tmp_path / "p2", "old-model", legacy_data()), FAMILY, legacy_only)
    card = " ".join((legacy_only / "README.md").read_text().split())
    assert "imported unchanged from the original study's published pickles" in card
    assert "pairing error" in card and "computed straight from the released weights" not in card
    mixed = " ".join((mixed_dataset / "README.md").read_text().split())
    assert "1 model(s) computed straight from the released weights by `qk-spectra-ds` (`org/built`)" in mixed
    assert "1 model(s) imported unchanged from the original study's published pickles" in mixed
    assert "(`old-model`; variant `legacy`" in mixed
    built_only = built_dataset(tmp_path / "built-ds", "org/built")
    text = " ".join((built_only / "README.md").read_text().split())
    assert "computed straight from the released weights" in text and "imported unchanged from" not in text


# ---------------------------------------------------------------- item 10: impossible rows


def _set_row(column: str, row: int, value):
    def edit(columns):
        columns[column][row] = value
        return columns

    return edit


def _scale_eigenvalues(row: int, factor: float):
    def edit(columns):
        columns["eigenvalues"][row] = [v * factor for v in columns["eigenvalues"][row]]
        return columns

    return edit


def _swap_first_two(row: int):
    def edit(columns):
        for name in ("singular_values", "eigenvalues"):
            values = columns[name][row]
            values[0], values[1] = values[1], values[0]
        return columns

    return edit


def _negative_eigenvalue(row: int):
    def edit(columns):
        columns["eigenvalues"][row][-1] = -abs(columns["eigenvalues"][row][-1]) - 1e-3
        columns["singular_values"][row][-1] = 0.0
        return columns

    return edit


def _shorten(row: int):
    def edit(columns):
        for name in ("singular_values", "eigenvalues"):
            columns[name][row] = columns[name][row][:-1]
        return columns

    return edit


def _drop_row(row: int):
    return lambda columns: {name: values[:row] + values[row + 1 :] for name, values in columns.items()}


def _duplicate_row(row: int):
    return lambda columns: {name: values + [values[row]] for name, values in columns.items()}


IMPOSSIBLE = {  # name: (edit of the table of 3 layers x 4 heads (d_head 8), words of the one-line message)
    "negative-eigenvalue": (_negative_eigenvalue(5), ["layer 1 head 1", "negative eigenvalue"]),
    "layer-too-large": (_set_row("layer", 11, 3), ["layer 3 is outside 0..2"]),
    "layer-negative": (_set_row("layer", 0, -1), ["layer -1 is outside 0..2"]),
    "head-outside-n-heads": (_set_row("head", 2, 4), ["head 4 is outside 0..3"]),
    "kv-head-not-its-group": (_set_row("kv_head", 3, 0), ["layer 0 head 3", "kv_head 0"]),
    "duplicate-row": (_duplicate_row(6), ["layer 1 head 2", "more than once"]),
    "missing-head": (_drop_row(9), ["layer 2 has 3 of its 4 heads"]),
    "eigenvalues-not-squares": (_scale_eigenvalues(4, 1.01), ["layer 1 head 0", "not the squares"]),
    "not-descending": (_swap_first_two(7), ["layer 1 head 3", "descending"]),
    "length-not-d-head": (_shorten(1), ["layer 0 head 1", "7 eigenvalues, but d_head is 8"]),
    "ev-max-not-the-max": (_set_row("ev_max", 10, 1e3), ["layer 2 head 2", "ev_max 1000"]),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(IMPOSSIBLE))
def test_impossible_rows_are_one_line_naming_the_file(case, tmp_path):
    out = built_dataset(tmp_path / "ds", "org/good", "org/bad")
    edit, words = IMPOSSIBLE[case]
    rewrite(dataset_repo.model_path(out, FAMILY, "org/bad"), edit)
    with pytest.raises(AnalysisError) as info:
        load_spectra(out, FAMILY)
    one_line(info.value, f"data/{FAMILY}/org--bad.parquet", *words)
    assert len(load_spectra(out, FAMILY, models="org/good")) == 12  # the good model alone still loads


@pytest.mark.slow
def test_report_refuses_negative_eigenvalues_with_exit_1(tmp_path, analyze_cli, capsys):
    out = built_dataset(tmp_path / "ds", "org/bad")
    rewrite(dataset_repo.model_path(out, FAMILY, "org/bad"), _negative_eigenvalue(0))
    argv = ["report", "--dataset", str(out), "--family", FAMILY, "--out", str(tmp_path / "analysis"), "--quiet"]
    assert analyze_cli(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "negative eigenvalue" in err[0] and "org--bad.parquet" in err[0], err


def test_a_parquet_copied_twice_into_a_family_names_both_files(tmp_path):
    out = built_dataset(tmp_path / "ds", "org/a", "org/b")
    original = dataset_repo.model_path(out, FAMILY, "org/a")
    shutil.copy(original, original.with_name("org--a-copy.parquet"))
    with pytest.raises(LoadError) as info:
        load_spectra(out, FAMILY)
    one_line(info.value, "model org/a", "data/syn/org--a-copy.parquet", "data/syn/org--a.parquet")


@pytest.mark.parametrize("damage", ["garbage", "empty", "truncated"])
def test_a_corrupt_or_empty_parquet_says_it_is_corrupt(damage, tmp_path):
    out = built_dataset(tmp_path / "ds", "org/a", "org/b")
    path = dataset_repo.model_path(out, FAMILY, "org/b")
    data = path.read_bytes()
    path.write_bytes(
        {"garbage": b"not a parquet file at all" * 40, "empty": b"", "truncated": data[: len(data) // 2]}[damage]
    )
    with pytest.raises(LoadError) as info:
        load_spectra(out, FAMILY)
    message = one_line(info.value, "data/syn/org--b.parquet")
    assert ("corrupt" in message or "empty" in message) and "features" not in message, message


def test_a_corrupt_parquet_read_through_the_card_says_it_is_corrupt(tmp_path):
    """The path a Hub dataset takes (no local pre-check): the error of ``datasets`` is named for what it is."""
    from qk_spectra_ds.analysis.reading import _load_arrow

    out = built_dataset(tmp_path / "ds", "org/a")
    dataset_repo.model_path(out, FAMILY, "org/a").write_bytes(b"PAR1 but not really a parquet file" * 10)
    with pytest.raises(LoadError) as info:
        _load_arrow(str(out), FAMILY, None)
    message = one_line(info.value, "corrupt")
    assert "features" not in message, message


def test_import_legacy_on_a_full_disk_is_one_line(tmp_path, monkeypatch):
    def full_disk(path, text):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(dataset_card, "write_text", full_disk)
    with pytest.raises(LegacyFormatError) as info:
        import_legacy(write_pickle(tmp_path / "p", "m", legacy_data()), FAMILY, tmp_path / "ds")
    one_line(info.value, "No space left on device", "README.md", "rerun")


# ---------------------------------------------------------------- item 11: card out of step with the files


@pytest.mark.slow
def test_analysis_reads_the_files_when_the_card_is_behind_them(tmp_path):
    out = built_dataset(tmp_path / "ds", "org/a")
    # kill -9 between a parquet's rename and the card's rewrite: files the card does not know
    dataset_repo.write_model_table(out, FAMILY, "org/b", built_columns("org/b", seed=1))
    dataset_repo.write_model_table(out, "fresh", "org/c", built_columns("org/c", family="fresh", seed=2))
    frame = load_spectra(out, FAMILY)
    assert list(dict.fromkeys(frame["model_id"])) == ["org/a", "org/b"] and len(frame) == 24
    expected = np.stack(pq.read_table(dataset_repo.model_path(out, FAMILY, "org/b")).column("eigenvalues").to_pylist())
    np.testing.assert_array_equal(np.stack(frame.loc[frame.model_id == "org/b", "eigenvalues"].tolist()), expected)
    assert set(load_spectra(out, "fresh")["model_id"]) == {"org/c"}
    assert set(load_spectra(out, "all")["model_id"]) == {"org/a", "org/b", "org/c"}


@pytest.mark.slow
def test_a_rerun_repairs_a_card_left_behind_by_an_interrupted_build(tiny_model, tmp_path):
    out = tmp_path / "ds"
    [first] = build.build_family(FAMILY, out, [str(tiny_model)], device="cpu", progress=False)
    assert first.status == "built"
    (out / "README.md").write_text(dataset_card.render_card([]))  # the card from before the model's rename
    [again] = build.build_family(FAMILY, out, [str(tiny_model)], device="cpu", progress=False)
    assert again.status == "skipped"
    card = (out / "README.md").read_text()
    assert f"`{tiny_model.name}`" in card
    assert [m["model_id"] for m in card_metadata.card_metadata(card)["models"]] == [tiny_model.name]


@pytest.mark.slow
def test_enospc_while_writing_the_card_loses_no_model(tiny_model, tmp_path, monkeypatch, capsys):
    from qk_spectra_ds.cli_util import run_cli

    specs = [shutil.copytree(tiny_model, tmp_path / name) for name in ("model-one", "model-two")]
    out = tmp_path / "ds"

    def full_disk(path, text):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(dataset_card, "write_text", full_disk)
    status = run_cli(lambda: build.build_family(FAMILY, out, [str(s) for s in specs], device="cpu", progress=False))
    assert status == 1
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("error: ")]
    assert len(errors) == 1 and "No space left on device" in errors[0] and "README.md" in errors[0], err
    assert sum(line.startswith("built") for line in err) == 2, err  # the summary, both models built
    assert all(dataset_repo.model_path(out, FAMILY, s.name).is_file() for s in specs)
    assert not (out / "README.md").exists() and not list(out.glob(".README*"))
    monkeypatch.undo()
    results = build.build_family(FAMILY, out, [str(s) for s in specs], device="cpu", progress=False)
    assert [r.status for r in results] == ["skipped", "skipped"]
    card = (out / "README.md").read_text()
    assert "`model-one`" in card and "`model-two`" in card


# ---------------------------------------------------------------- item 14: the card's YAML


BAD_CARDS = {
    "syntax": "---\nconfigs: [1, 2\n---\n# card\n",
    "python-tag": "---\nconfigs: !!python/object/apply:os.system ['touch {marker}']\n---\n# card\n",
}


@pytest.mark.parametrize("case", sorted(BAD_CARDS))
def test_a_card_that_does_not_parse_is_one_line_and_never_executed(case, tmp_path):
    out = built_dataset(tmp_path / "ds", "org/a")
    marker = tmp_path / "executed"
    (out / "README.md").write_text(BAD_CARDS[case].format(marker=marker))
    with pytest.raises(LoadError) as info:
        load_spectra(out, FAMILY)
    one_line(info.value, "README.md", "does not parse")
    with pytest.raises(dataset_repo.CardError) as info:
        dataset_card.write_card(out)
    one_line(info.value, "README.md", "does not parse")
    assert not marker.exists()


def test_import_legacy_with_a_broken_card_writes_nothing(tmp_path):
    out = tmp_path / "ds"
    (out / "data").mkdir(parents=True)
    (out / "README.md").write_text(BAD_CARDS["syntax"])
    with pytest.raises(dataset_repo.CardError):
        import_legacy(write_pickle(tmp_path / "p", "m", legacy_data()), FAMILY, out)
    assert not list(out.rglob("*.parquet"))


# ---------------------------------------------------------------- item 12: bounded pickle import

P = pickle


def _int(n: int) -> bytes:
    return P.BININT + struct.pack("<i", n)


def _str(text: str) -> bytes:
    raw = text.encode()
    return P.BINUNICODE + struct.pack("<I", len(raw)) + raw


def _global(module: str, name: str) -> bytes:
    return P.GLOBAL + f"{module}\n{name}\n".encode()


def _put(i: int) -> bytes:
    return P.BINPUT + bytes([i])


def _get(i: int) -> bytes:
    return P.BINGET + bytes([i])


def _ndarray_call(*shape: int) -> bytes:
    """``numpy.ndarray(shape, 'f4')``: uninitialised memory of any size the pickle names."""
    return (
        _global("numpy", "ndarray")
        + P.MARK
        + P.MARK
        + b"".join(map(_int, shape))
        + P.TUPLE
        + _str("f4")
        + P.TUPLE
        + P.REDUCE
    )


def _array(shape: tuple[int, ...], data: bytes) -> bytes:
    """numpy's own protocol-2+ array: ``_reconstruct(ndarray, (0,), b'b')`` then BUILD with ``data`` (an opcode)."""
    dtype = (
        _global("numpy", "dtype")
        + _str("f4")
        + P.NEWFALSE
        + P.NEWTRUE
        + P.TUPLE3
        + P.REDUCE
        + P.MARK
        + _int(3)
        + _str("<")
        + P.NONE * 3
        + _int(-1)
        + _int(-1)
        + _int(0)
        + P.TUPLE
        + P.BUILD
    )
    return (
        _global("numpy._core.multiarray", "_reconstruct")
        + _global("numpy", "ndarray")
        + _int(0)
        + P.TUPLE1
        + P.SHORT_BINBYTES
        + b"\x01b"
        + P.TUPLE3
        + P.REDUCE
        + P.MARK
        + _int(1)
        + P.MARK
        + b"".join(map(_int, shape))
        + P.TUPLE
        + dtype
        + P.NEWFALSE
        + data
        + P.TUPLE
        + P.BUILD
    )


def _legacy_layout(spectrum: bytes, stat: bytes, n_layers: int = 1, prelude: bytes = b"") -> bytes:
    """The legacy dict with every spectrum memo-referencing one ``spectrum`` and every statistic one ``stat``."""
    out = P.PROTO + b"\x02" + prelude + spectrum + _put(0) + P.POP + stat + _put(1) + P.POP + P.EMPTY_DICT + P.MARK
    for key in ("singular_values", "eigen_values"):
        out += _str(key) + P.EMPTY_DICT + P.MARK + b"".join(_int(k) + _get(0) for k in range(n_layers)) + P.SETITEMS
    for key in ("singular_values_stats", "eigen_values_stats"):
        stats = P.EMPTY_LIST + P.MARK + _get(1) * 6 + P.APPENDS
        out += _str(key) + P.EMPTY_DICT + P.MARK + b"".join(_int(k) + stats for k in range(n_layers)) + P.SETITEMS
    return out + P.SETITEMS + P.STOP


def _shared_buffer() -> bytes:
    """64 arrays of 1 MB whose BUILD data are one memoized buffer: 64 MB of arrays from a 1 MB pickle."""
    buffer = P.BINBYTES + struct.pack("<I", 512 * 512 * 4) + np.ones(512 * 512, np.float32).tobytes() + _put(0) + P.POP
    stat = _array((512, 1), P.BINBYTES + struct.pack("<I", 2048) + np.ones(512, np.float32).tobytes())
    layers = 32
    out = P.PROTO + b"\x02" + buffer + stat + _put(1) + P.POP + P.EMPTY_DICT + P.MARK
    for key in ("singular_values", "eigen_values"):
        out += (
            _str(key)
            + P.EMPTY_DICT
            + P.MARK
            + b"".join(_int(k) + _array((512, 512), _get(0)) for k in range(layers))
            + P.SETITEMS
        )
    for key in ("singular_values_stats", "eigen_values_stats"):
        stats = P.EMPTY_LIST + P.MARK + _get(1) * 6 + P.APPENDS
        out += _str(key) + P.EMPTY_DICT + P.MARK + b"".join(_int(k) + stats for k in range(layers)) + P.SETITEMS
    return out + P.SETITEMS + P.STOP


def _dag(depth: int) -> bytes:
    node: dict = {"eigen_values": {}}
    for _ in range(depth):
        node = {"a": node, "b": node}
    return pickle.dumps(node, protocol=4)


def _shared_layer_dict() -> bytes:
    """The legacy layout with one dict of layers under both spectra keys, and one under both stats keys."""
    data = legacy_data()
    data["singular_values"], data["singular_values_stats"] = data["eigen_values"], data["eigen_values_stats"]
    return pickle.dumps(data, protocol=4)


def _self_reference() -> bytes:
    node: dict = {}
    node["eigen_values"] = node
    return pickle.dumps(node, protocol=4)


MALICIOUS = {  # name: (pickle bytes, exception class name, words of its message)
    "ndarray-1.6GB": (P.PROTO + b"\x02" + _ndarray_call(400_000_000) + P.STOP, "UnsafePickleError", ["numpy.ndarray"]),
    "reconstruct-400MB": (
        P.PROTO
        + b"\x02"
        + _global("numpy._core.multiarray", "_reconstruct")
        + _global("numpy", "ndarray")
        + _int(400_000_000)
        + P.TUPLE1
        + P.SHORT_BINBYTES
        + b"\x01b"
        + P.TUPLE3
        + P.REDUCE
        + P.STOP,
        "UnsafePickleError",
        ["_reconstruct"],
    ),
    "4000x4000-model": (
        _legacy_layout(_ndarray_call(4000, 4000), _ndarray_call(4000, 1)),
        "UnsafePickleError",
        ["numpy.ndarray"],
    ),
    "uninitialised-arrays": (
        _legacy_layout(_ndarray_call(16, 128), _ndarray_call(16, 1)),
        "UnsafePickleError",
        ["numpy.ndarray"],
    ),
    "oversized-shape": (
        _legacy_layout(_array((4000, 4000), P.NONE), _array((4000, 1), P.NONE)),
        "LegacyFormatError",
        ["shape (4000, 4000)", "at most 1024"],
    ),
    "shared-buffer-64x": (_shared_buffer(), "LegacyFormatError", ["more bytes than the pickle itself"]),
    "dict-dag-2^40": (_dag(40), "LegacyFormatError", ["not the layout of the legacy pickles"]),
    "shared-layer-dict": (_shared_layer_dict(), "LegacyFormatError", ["referenced twice"]),
    "self-referencing-dict": (_self_reference(), "LegacyFormatError", ["referenced twice"]),
    "memo-index-2^31": (
        P.PROTO + b"\x04" + P.NONE + P.LONG_BINPUT + struct.pack("<I", 2**31 - 1) + P.STOP,
        "LegacyFormatError",
        ["memo index 2147483647"],
    ),
    "truncated-4GB-bytes": (
        P.PROTO + b"\x03" + P.BINBYTES + struct.pack("<I", 2**32 - 1) + b"x" * 16 + P.STOP,
        "LegacyFormatError",
        ["expected 4294967295 bytes", "but only"],
    ),
}

CASE_SECONDS = 10
_RUNNER = textwrap.dedent(
    """
    import json, resource, signal, sys
    from pathlib import Path

    from qk_spectra_ds.analysis.legacy import read_legacy

    def vm_bytes():
        return 1024 * int(next(l for l in open("/proc/self/status") if l.startswith("VmSize")).split()[1])

    limit = vm_bytes() + 1_500_000_000  # at most 1.5 GB more than the interpreter with its imports
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    class Timeout(Exception):
        pass

    def alarm(signum, frame):
        raise Timeout()

    signal.signal(signal.SIGALRM, alarm)
    outcomes = {}
    for path in sorted(Path(sys.argv[1]).glob("*.pkl")):
        signal.alarm(int(sys.argv[2]))
        try:
            read_legacy(path)
            outcomes[path.stem] = ["imported", ""]
        except Timeout:
            outcomes[path.stem] = ["timeout", ""]
        except BaseException as exc:
            outcomes[path.stem] = [type(exc).__name__, str(exc)]
        finally:
            signal.alarm(0)
    print(json.dumps(outcomes))
    """
)


@pytest.fixture(scope="module")
def malicious_outcomes(tmp_path_factory) -> dict:
    """read_legacy on every crafted pickle, in one subprocess with RLIMIT_AS and a per-case alarm."""
    directory = tmp_path_factory.mktemp("malicious")
    for name, (data, _, _) in MALICIOUS.items():
        (directory / f"{name}.pkl").write_bytes(data)
    proc = subprocess.run(
        [sys.executable, "-c", _RUNNER, str(directory), str(CASE_SECONDS)],
        capture_output=True,
        text=True,
        timeout=CASE_SECONDS * len(MALICIOUS) + 120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(MALICIOUS))
def test_crafted_pickle_is_refused_before_it_allocates_or_loops(case, malicious_outcomes):
    _, kind, words = MALICIOUS[case]
    outcome, message = malicious_outcomes[case]
    assert outcome == kind, (outcome, message)
    assert "\n" not in message and f"{case}.pkl" in message, message
    assert "MemoryError" not in message and "RecursionError" not in message, message
    for word in words:
        assert word in message, (word, message)


def test_legacy_arrays_of_strings_are_one_line_naming_the_file(tmp_path):
    data = legacy_data()
    data["eigen_values"][1] = np.full((4, 8), "x")
    path = write_pickle(tmp_path / "p", "strings", data)
    with pytest.raises(LegacyFormatError) as info:
        import_legacy(path, FAMILY, tmp_path / "out")
    one_line(info.value, "strings.pkl", "dtype", "float32")
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").rglob("*.parquet"))


@pytest.mark.parametrize(
    "edit, words",
    [
        (lambda d: d["eigen_values"][2].__setitem__((1, 7), -0.25), ["layer 2 head 1", "negative eigenvalue"]),
        (
            lambda d: d["eigen_values"][0].__setitem__((3, 0), d["eigen_values"][0][3, 0] * 1.5),
            ["layer 0 head 3", "not the squares"],
        ),
        (lambda d: d["eigen_values_stats"][1][1].__setitem__((2, 0), 99.0), ["layer 1 head 2", "ev_max 99"]),
        (lambda d: d.__setitem__("extra", {}), ["unexpected key(s) extra"]),
    ],
    ids=["negative", "not-squares", "wrong-ev-max", "extra-key"],
)
def test_legacy_values_no_spectrum_can_have_are_refused(edit, words, tmp_path):
    data = legacy_data()
    edit(data)
    with pytest.raises(LegacyFormatError) as info:
        read_legacy(write_pickle(tmp_path, "bad", data))
    one_line(info.value, "bad.pkl", *words)


def test_well_formed_legacy_pickle_reads_exactly(tmp_path):
    data = legacy_data(n_layers=4, n_heads=3, d_head=5, seed=7)
    read = read_legacy(write_pickle(tmp_path, "good", data))
    assert list(read) == list(data) and list(read["eigen_values"]) == [0, 1, 2, 3]
    for key in ("singular_values", "eigen_values"):
        for layer, values in data[key].items():
            assert read[key][layer].dtype == np.float32 and read[key][layer].flags.writeable
            np.testing.assert_array_equal(read[key][layer], values)
            for got, want in zip(read[f"{key}_stats"][layer], data[f"{key}_stats"][layer]):
                np.testing.assert_array_equal(got, want)


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """A tiny random llama (GQA, 2 layers, only what the builder reads) saved as safetensors, named tiny-llama."""
    n_layers, n_heads, n_kv_heads, d_head, d_model = 2, 4, 2, 4, 16
    config = {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "num_hidden_layers": n_layers,
        "hidden_size": d_model,
        "num_attention_heads": n_heads,
        "num_key_value_heads": n_kv_heads,
        "head_dim": d_head,
        "intermediate_size": 32,
        "vocab_size": 64,
        "rms_norm_eps": 1e-6,
        "torch_dtype": "float32",
    }
    return write_qk_llama(
        tmp_path_factory.mktemp("model") / "tiny-llama",
        config,
        layers=n_layers,
        heads=n_heads,
        kv_heads=n_kv_heads,
        d_model=d_model,
        d_head=d_head,
        norms=True,
    )

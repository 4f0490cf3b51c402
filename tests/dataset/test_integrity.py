"""Issue 18 items 1, 3 and 6: every data file verifiable, every stored number checked on load, legacy statistics.

- the builder writes parquet with pyarrow (page checksums, the schema and metadata ``datasets`` wrote) and
  records each file's SHA-256 and size in the card; the loader verifies them (local: the bytes; Hub: the
  Hub's LFS SHA-256 at the revision) and refuses a mismatch in one line;
- every stored statistic, metric and positional summary is recomputed from the stored arrays on load;
- one flipped byte in any column chunk of a built file (raw, folded and null rows, positional spectra)
  never loads silently;
- legacy pickles: statistics arrays of exactly (n_heads, 1), and published statistics equal to the ones the
  original's formula gives for the published spectra.
"""

from __future__ import annotations

import pickle
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import one_line

from qk_spectra_ds import card_metadata, dataset_card, dataset_repo, integrity, schema
from qk_spectra_ds.analysis.loading import load_spectra
from qk_spectra_ds.analysis.recompute import StoredValueError
from qk_spectra_ds.analysis.verification import UnverifiedFilesWarning
from qk_spectra_ds.errors import QKSpectraError

pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parents[2]
FAMILY = "fam"
LEGACY = Path(__file__).resolve().parents[1] / "data" / "legacy"


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """A tiny Llama built with raw, folded and null rows and positional spectra (offsets 0, 1, 4, 64)."""
    from tiny_models import make_saved

    from qk_spectra_ds.builder import pipeline

    root = tmp_path_factory.mktemp("integrity")
    _, model_dir = make_saved("llama-gqa", root / "tiny-llama")
    out = root / "ds"
    result = pipeline.build_model(
        str(model_dir),
        FAMILY,
        out,
        device="cpu",
        progress=False,
        variants=["raw", "folded", "null"],
        offsets=(0, 1, 4, 64),
    )
    dataset_card.write_card(out)
    assert result.status == "built"
    return out


def copy_of(built: Path, tmp_path: Path) -> tuple[Path, Path]:
    out = tmp_path / "ds"
    shutil.copytree(built, out)
    return out, dataset_repo.model_files(out)[0]


def rewrite(path: Path, edit) -> None:
    """Rewrite one file with ``edit(pydict) -> pydict`` and re-record the card: only the loader's checks can refuse it."""
    table = pq.read_table(path)
    pq.write_table(pa.Table.from_pydict(edit(table.to_pydict()), schema=table.schema), path)
    dataset_card.write_card(path.parents[2], rerecord=True)


# ---------------------------------------------------------------- item 1: the file and the card


@pytest.mark.slow
def test_written_file_is_what_datasets_wrote_with_page_checksums(built, tmp_path):
    """pyarrow writes the same schema, features metadata and values as ``Dataset.to_parquet`` did."""
    from datasets import Dataset, load_dataset

    path = dataset_repo.model_files(built)[0]
    ours = pq.read_table(path)
    Dataset.from_dict(ours.to_pydict(), features=schema.features()).to_parquet(str(tmp_path / "ref.parquet"))
    reference = pq.read_table(tmp_path / "ref.parquet")
    assert ours.schema.equals(reference.schema, check_metadata=True)
    assert ours.equals(reference)
    assert load_dataset(str(built), FAMILY, split="train").features == schema.features()
    # a flipped byte inside a data page fails pyarrow's page checksum verification
    ((start, size),) = [(start, size) for column, start, size in column_chunks(path) if column == "ev_mean"]
    data = bytearray(path.read_bytes())
    data[start + size - 3] ^= 0x01
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(bytes(data))
    pq.read_table(bad, columns=["ev_mean"])  # without verification the flip is read as another value
    with pytest.raises(OSError, match="CRC"):
        pq.read_table(bad, columns=["ev_mean"], page_checksum_verification=True)


@pytest.mark.slow
def test_writing_a_model_file_does_not_import_datasets(tmp_path):
    code = (
        "import sys; from qk_spectra_ds import dataset_repo, schema\n"
        "cols = {c: [None] for c in schema.COLUMNS}\n"
        "cols.update(model_id=['m'], variant=['raw'], singular_values=[[2.0, 1.0]], eigenvalues=[[4.0, 1.0]])\n"
        f"dataset_repo.write_model_table({str(tmp_path)!r}, 'f', 'm', cols)\n"
        "assert 'datasets' not in sys.modules, 'datasets imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


@pytest.mark.slow
def test_card_records_each_file_sha256_and_size_and_keeps_them(built, tmp_path):
    out, path = copy_of(built, tmp_path)
    digest = integrity.file_digest(path)
    (entry,) = card_metadata.read_card_models(out)
    assert entry["sha256"] == digest["sha256"] and entry["n_bytes"] == digest["n_bytes"] == path.stat().st_size
    text = (out / dataset_repo.CARD_NAME).read_text()
    assert digest["sha256"] in text.split("---", 2)[2]  # the body's checksum table too
    dataset_card.write_card(out, new_version={"version": "v0.1.0", "changes": "x"})  # regenerated: kept
    assert card_metadata.read_card_models(out)[0]["sha256"] == digest["sha256"]
    # merged with a remote card (publish): the remote's entries keep their checksums
    remote = dict(entry, path="data/other/x.parquet", config="other", sha256="ab" * 32)
    merged = card_metadata.merge_summaries([remote], [entry])
    card = dataset_card.render_card(merged)
    recorded = integrity.recorded_digests(card_metadata.card_metadata(card)["models"])
    assert recorded["data/other/x.parquet"]["sha256"] == "ab" * 32
    assert recorded[entry["path"]]["sha256"] == digest["sha256"]


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x40
    path.write_bytes(bytes(data))


@pytest.mark.slow
def test_a_changed_file_is_refused_in_one_line_and_a_later_card_keeps_the_record(built, tmp_path, monkeypatch):
    out, path = copy_of(built, tmp_path)
    recorded = card_metadata.read_card_models(out)[0]["sha256"]
    ((start, size),) = [(start, size) for column, start, size in column_chunks(path) if column == "ev_mean"]
    _flip(path, start + size - 3)  # one value of ev_mean changes; the file stays a readable parquet file
    with pytest.raises(integrity.IntegrityError) as info:
        load_spectra(out, FAMILY)
    one_line(info.value, "data/fam/tiny-llama.parquet", "SHA-256", "rebuild")
    # another process regenerates the card (a later build of another model): it must not bless the changed file
    monkeypatch.setattr(dataset_repo, "_WRITTEN", {})
    dataset_card.write_card(out)
    assert card_metadata.read_card_models(out)[0]["sha256"] == recorded
    with pytest.raises(integrity.IntegrityError):
        load_spectra(out, FAMILY)
    path.write_bytes(path.read_bytes()[:-10])  # truncated: the size says so
    with pytest.raises(integrity.IntegrityError) as info:
        load_spectra(out, FAMILY)
    one_line(info.value, "data/fam/tiny-llama.parquet", "bytes")


@pytest.mark.slow
def test_publish_refuses_a_file_the_card_does_not_vouch_for(built, tmp_path):
    from qk_spectra_ds.builder.publish import PublishError, publish

    out, path = copy_of(built, tmp_path)
    _flip(path, path.stat().st_size // 2)
    with pytest.raises(PublishError) as info:
        publish(out, "org/never-contacted")
    one_line(info.value, "data/fam/tiny-llama.parquet", "nothing was published")


@pytest.mark.slow
def test_files_without_checksums_load_with_one_warning(built, tmp_path):
    """Datasets written before checksums were recorded (schema v1-v3 cards) still load, unverified."""
    out, _ = copy_of(built, tmp_path)
    card = out / dataset_repo.CARD_NAME
    card.write_text("\n".join(line for line in card.read_text().splitlines() if "sha256:" not in line) + "\n")
    with pytest.warns(UnverifiedFilesWarning, match="1 data file.*cannot be verified"):
        frame = load_spectra(out, FAMILY, variant="raw")
    assert len(frame) == 2 * 4
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnverifiedFilesWarning)
        load_spectra(built, FAMILY, variant="raw")  # the recorded dataset: verified, no warning


@pytest.mark.slow
def test_legacy_fixture_dataset_loads(tmp_path):
    from qk_spectra_ds.analysis.legacy import import_legacy

    import_legacy(LEGACY, "Qwen3", tmp_path / "ds")
    assert card_metadata.read_card_models(tmp_path / "ds")[0]["sha256"]
    frame = load_spectra(tmp_path / "ds", "Qwen3")
    assert set(frame["variant"]) == {"legacy"}


@pytest.mark.slow
@pytest.mark.hub
def test_hub_revision_is_checked_against_the_hubs_lfs_sha256(built, hub_server, tmp_path, unique_repo_name):
    """A parquet replaced on the Hub without its card is refused at that revision; the tagged one still loads."""
    from huggingface_hub import HfApi

    from qk_spectra_ds.builder.publish import publish

    repo = unique_repo_name("integrity")
    out, path = copy_of(built, tmp_path)
    publish(out, repo, version="v1.0.0")
    assert len(load_spectra(repo, FAMILY, revision="v1.0.0", variant="raw")) == 8
    table = pq.read_table(path)
    other = tmp_path / "other.parquet"
    pq.write_table(table.slice(0, table.num_rows - 1), other)  # a valid parquet file, one row short
    HfApi().upload_file(
        path_or_fileobj=str(other),
        path_in_repo="data/fam/tiny-llama.parquet",
        repo_id=repo,
        repo_type="dataset",
        commit_message="replace a file, not the card",
    )
    with pytest.raises(integrity.IntegrityError) as info:
        load_spectra(repo, FAMILY)
    one_line(info.value, repo, "data/fam/tiny-llama.parquet", "the card records", "republish")
    assert len(load_spectra(repo, FAMILY, revision="v1.0.0", variant="raw")) == 8


def test_the_hub_check_s_own_failures_are_one_line(monkeypatch):
    """No network, or a missing repo, while resolving the revision and reading the LFS checksums: one LoadError line."""
    from huggingface_hub import HfApi

    from qk_spectra_ds.analysis.loading import LoadError

    class ProxyRefused(ConnectionError):
        pass

    def refuse(*args, **kwargs):
        raise ProxyRefused("connection refused by proxy")

    monkeypatch.setattr(HfApi, "dataset_info", refuse)
    monkeypatch.setattr(
        "qk_spectra_ds.hub_access.check_reachable", lambda what, timeout=None: None
    )  # test_trust_hub_access
    with pytest.raises(LoadError) as info:
        load_spectra("org/name", FAMILY, revision="v1")
    one_line(info.value, "org/name", "'v1'", "ProxyRefused", "proxy")


# ---------------------------------------------------------------- item 3: every column checked on load


def _set(column: str, row: int, value):
    def edit(columns):
        columns[column][row] = value
        return columns

    return edit


def _scale(column: str, row: int, factor: float):
    def edit(columns):
        columns[column][row] = columns[column][row] * factor
        return columns

    return edit


def _positional(row: int, change):
    def edit(columns):
        values = [list(v) for v in columns["positional_singular_values"][row]]
        change(values)
        columns["positional_singular_values"][row] = values
        return columns

    return edit


def _first_positional_row(path: Path) -> int:
    return pq.read_table(path, columns=["offsets"]).column(0).is_valid().to_pylist().index(True)


MUTATIONS = {
    "ev_mean": (lambda p: _scale("ev_mean", 3, 0.5), "ev_mean"),
    "sv_std": (lambda p: _scale("sv_std", 0, 1.001), "sv_std"),
    "ev_skew": (lambda p: _scale("ev_skew", 5, 1.01), "ev_skew"),
    "sv_kurtosis": (lambda p: _set("sv_kurtosis", 1, 0.0), "sv_kurtosis"),
    "ev_min": (lambda p: _scale("ev_min", 2, 2.0), "ev_min"),
    "frobenius": (lambda p: _scale("frobenius", 0, 1.0001), "frobenius"),
    "spectral_norm": (lambda p: _scale("spectral_norm", 0, 0.999), "spectral_norm"),
    "stable_rank": (lambda p: _scale("stable_rank", 4, 1.01), "stable_rank"),
    "effective_rank": (lambda p: _set("effective_rank", 0, 107.0), "effective_rank"),
    "log_det": (lambda p: _scale("log_det", 0, 1.01), "log_det"),
    "positivity": (lambda p: _set("positivity", 0, 1.5), "positivity"),
    "nan singular value": (lambda p: _positional_free_sv(0, float("nan")), "singular values are NaN"),
    "negative singular value": (lambda p: _positional_free_sv(0, -1.0), "negative singular value"),
    "norm ratio min": (
        lambda p: _set("positional_norm_ratio_min", _first_positional_row(p), 0.0588),
        "positional_norm_ratio_min",
    ),
    "norm ratio max": (
        lambda p: _set("positional_norm_ratio_max", _first_positional_row(p), 1.086),
        "positional_norm_ratio_max",
    ),
    "half norm offset": (lambda p: _set("half_norm_offset", _first_positional_row(p), -7), "half_norm_offset"),
    "duplicate offsets": (lambda p: _set("offsets", _first_positional_row(p), [0, 1, 1, 64]), "strictly increasing"),
    "negative offset": (lambda p: _set("offsets", _first_positional_row(p), [-1, 1, 4, 64]), "strictly increasing"),
    "nan positional": (
        lambda p: _positional(_first_positional_row(p), lambda v: v[2].__setitem__(0, float("nan"))),
        "positional singular values are NaN",
    ),
    "inf positional": (
        lambda p: _positional(_first_positional_row(p), lambda v: v[2].__setitem__(0, float("inf"))),
        "positional singular values are NaN",
    ),
    "negative positional": (
        lambda p: _positional(_first_positional_row(p), lambda v: v[1].__setitem__(-1, -1.03)),
        "negative",
    ),
    "offset 0 not the spectrum": (
        lambda p: _positional(_first_positional_row(p), lambda v: v[0].__setitem__(0, v[0][0] * 1.01)),
        "offset 0",
    ),
    "positional summaries on a row without": (
        lambda p: _set("positional_norm_ratio_min", _null_row(p), 0.5),
        "without positional spectra",
    ),
}


def _positional_free_sv(row: int, value: float):
    def edit(columns):
        values = list(columns["singular_values"][row])
        values[-1] = value
        columns["singular_values"][row] = values
        return columns

    return edit


def _null_row(path: Path) -> int:
    return pq.read_table(path, columns=["variant"]).column(0).to_pylist().index("null")


@pytest.mark.slow
@pytest.mark.parametrize("name", list(MUTATIONS))
def test_every_stored_value_is_recomputed_on_load(name, built, tmp_path):
    out, path = copy_of(built, tmp_path)
    make_edit, words = MUTATIONS[name]
    rewrite(path, make_edit(path))
    variant = pq.read_table(path, columns=["variant"]).column(0).to_pylist()
    with pytest.raises((StoredValueError, QKSpectraError, ValueError)) as info:
        for chosen in sorted(set(variant)):
            load_spectra(out, FAMILY, variant=chosen, keep_spectra=True, keep_positional=True)
    one_line(info.value, "data/fam/tiny-llama.parquet", words)


@pytest.mark.slow
def test_correct_builds_pass_every_check(built):
    for variant in ("raw", "folded", "null"):
        frame = load_spectra(built, FAMILY, variant=variant, keep_spectra=True, keep_positional=True)
        assert len(frame) == 8


# ---------------------------------------------------------------- item 5: single-byte corruption everywhere


def column_chunks(path: Path):
    """(column, first byte, size) of every column chunk of every row group (pyarrow's metadata)."""
    meta = pq.ParquetFile(path).metadata
    for group in range(meta.num_row_groups):
        for index in range(meta.num_columns):
            chunk = meta.row_group(group).column(index)
            start = chunk.dictionary_page_offset if chunk.has_dictionary_page else chunk.data_page_offset
            yield chunk.path_in_schema, start, chunk.total_compressed_size


def _load_all(out: Path):
    return [
        load_spectra(out, FAMILY, variant=v, keep_spectra=True, keep_positional=True) for v in ("raw", "folded", "null")
    ]


def _same(frames, clean) -> bool:
    for a, b in zip(frames, clean):
        if list(a.columns) != list(b.columns) or len(a) != len(b):
            return False
        for column in a.columns:
            for x, y in zip(a[column], b[column]):
                if isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
                    if x is None or y is None or not np.array_equal(x, y, equal_nan=True):
                        return False
                elif not (x == y or (pd.isna(x) and pd.isna(y))):
                    return False
    return True


@pytest.mark.slow
def test_no_single_byte_flip_in_any_column_chunk_loads_silently(built, tmp_path):
    """Every column chunk (qk and ov, raw, folded and null rows; positional spectra), two bytes each (page
    header, middle): with the card's checksum every flip is refused by it; with the checksum removed (a dataset
    from before checksums) every flip is refused in one line by the page CRC or the recomputation checks, or
    leaves every loaded value unchanged (a byte the reader does not use, e.g. a statistic in the footer)."""
    out, path = copy_of(built, tmp_path)
    clean = _load_all(out)
    original = path.read_bytes()
    chunks = list(column_chunks(path))
    assert len(chunks) == len(schema.COLUMNS)
    card = out / dataset_repo.CARD_NAME
    recorded_card = card.read_text()
    unrecorded_card = "\n".join(line for line in recorded_card.splitlines() if "sha256:" not in line) + "\n"
    outcomes = {"checksum": 0, "refused": 0, "unchanged": 0}
    for column, start, size in chunks:
        for offset in sorted({start + 1, start + size // 2}):
            data = bytearray(original)
            data[offset] ^= 0x10
            path.write_bytes(bytes(data))
            card.write_text(recorded_card)
            with pytest.raises(integrity.IntegrityError, match="SHA-256"):
                load_spectra(out, FAMILY, variant="raw")
            outcomes["checksum"] += 1
            card.write_text(unrecorded_card)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    frames = _load_all(out)
                except (QKSpectraError, ValueError) as exc:
                    one_line(exc)
                    outcomes["refused"] += 1
                    continue
            assert _same(frames, clean), f"a flip at byte {offset} of column {column} loaded other values silently"
            outcomes["unchanged"] += 1
    path.write_bytes(original)
    assert outcomes["checksum"] == outcomes["refused"] + outcomes["unchanged"] >= len(chunks)
    assert outcomes["refused"] > outcomes["unchanged"], outcomes


# ---------------------------------------------------------------- item 6: legacy statistics


def _legacy(name: str = "Qwen3-0.6B.pkl") -> dict:
    from qk_spectra_ds.analysis.legacy import read_legacy

    return read_legacy(LEGACY / name)


def _write_pickle(data: dict, path: Path) -> Path:
    from collections import defaultdict

    out = defaultdict(dict)
    out.update(data)
    path.write_bytes(pickle.dumps(out, protocol=4))
    return path


def test_legacy_statistics_of_the_wrong_shape_are_refused(tmp_path):
    from qk_spectra_ds.analysis.legacy import LegacyFormatError, read_legacy

    data = _legacy()
    layer = next(iter(data["eigen_values_stats"]))
    n_heads = data["eigen_values"][layer].shape[0]
    stats = list(data["eigen_values_stats"][layer])
    stats[2] = stats[2].reshape(2, n_heads // 2)  # (2, n/2) in place of (n, 1): same size, wrong shape
    data["eigen_values_stats"][layer] = stats
    with pytest.raises(LegacyFormatError) as info:
        read_legacy(_write_pickle(data, tmp_path / "m.pkl"))
    one_line(info.value, "m.pkl", "eigen_values_stats", "(mean)", f"expected shape ({n_heads}, 1)")


@pytest.mark.parametrize(
    "key, index, column",
    [
        ("eigen_values_stats", 2, "ev_mean"),
        ("singular_values_stats", 3, "sv_std"),
        ("eigen_values_stats", 5, "ev_kurtosis"),
    ],
)
def test_legacy_statistics_that_are_not_the_spectra_s_are_refused(key, index, column, tmp_path):
    from qk_spectra_ds.analysis.legacy import (
        LegacyFormatError,
        import_legacy,
        read_legacy,
    )

    data = _legacy()
    layer = next(iter(data[key]))
    stats = list(data[key][layer])
    stats[index] = stats[index].copy()
    stats[index][1, 0] = stats[index][1, 0] * 0.9 if stats[index][1, 0] else 1.0
    data[key][layer] = stats
    pickles = tmp_path / "pickles"
    pickles.mkdir()
    _write_pickle(data, pickles / "m.pkl")
    with pytest.raises(LegacyFormatError) as info:
        read_legacy(pickles / "m.pkl")
    one_line(info.value, "m.pkl", f"layer {layer} head 1", column)
    with pytest.raises(LegacyFormatError):
        import_legacy(pickles, "fam", tmp_path / "ds")
    assert not (tmp_path / "ds").exists()


def test_every_shipped_legacy_pickle_passes_the_recomputation():
    from qk_spectra_ds.analysis.legacy import read_legacy

    for path in sorted(LEGACY.glob("*.pkl")):
        read_legacy(path)

"""Issue 18 items 2 and 12: file names injective in the model id, and model ids escaped in index.md.

- :func:`qk_spectra_ds.naming.model_slug` keeps the published names of ordinary (Hub-style) ids and
  gives every other id a readable part plus a hash: no two ids share a file, no name is too long;
- the builder writes ``m x`` and ``m-x`` to two files; the report draws ``org/m``, ``org--m``,
  ``..``, ``model`` and a 20,000-character id to distinct figures, each section showing its own;
- index.md rendered as CommonMark (markdown-it-py) shows a hostile id as text, never as HTML.
"""

from __future__ import annotations

import re
import shutil

import pyarrow.parquet as pq
import pytest

from qk_spectra_ds import dataset_card, dataset_repo
from qk_spectra_ds.builder import catalog
from qk_spectra_ds.naming import is_ordinary, model_slug

HOSTILE = [
    "m x",
    "m-x",
    "m_x",
    "m--x",
    "m/x",
    "m//x",
    "org/m",
    "org--m",
    "..",
    ".",
    "",
    " ",
    "model",
    "model---0",
    "/",
    "a/b/c",
    "a-/b",
    "a/-b",
    "-a",
    "a-",
    ".hidden",
    "a..b",
    "Org/M",
    "org/m ",
    "<script>alert(1)</script>",
    "x" * 20_000,
    "x" * 20_001,
    "é/ü",
    "日本語/モデル",
    "a\nb",
    "a\tb",
    "a\0b",
    "a|b",
    "a*b",
    "a?b",
    "con",
    "nul.txt",
]


def test_file_names_are_injective_safe_and_short():
    slugs = [model_slug(m) for m in HOSTILE]
    assert len(set(slugs)) == len(HOSTILE), [s for s in slugs if slugs.count(s) > 1]
    for model_id, slug in zip(HOSTILE, slugs):
        assert re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9._-]*", slug), (model_id, slug)  # no hidden file, no separator
        assert len(slug.encode()) <= 130, (
            model_id[:40],
            len(slug),
        )  # + ".parquet", a temporary prefix, a box-plot suffix
        assert len(f".{slug}_KURTOSIS_box.parquet.123456-123456-abcdefgh.tmp".encode()) < 255


def test_ordinary_ids_keep_the_names_already_published():
    ids = [m for models in catalog.load_catalog().values() for m in models]
    assert ids and all(is_ordinary(m) for m in ids)
    for model_id in ids + ["sentence-transformers/all-MiniLM-L6-v2", "tiny-llama", "Qwen/Qwen3-0.6B"]:
        assert model_slug(model_id) == model_id.replace("/", "--")  # the name every published file has
        assert dataset_repo.model_slug(model_id) == model_slug(model_id)


def test_an_ordinary_slug_never_looks_like_a_hashed_one():
    """Hashed names carry '---', which an ordinary slug cannot contain: the two kinds never meet."""
    for model_id in HOSTILE:
        assert is_ordinary(model_id) != ("---" in model_slug(model_id)), model_id


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    pytest.importorskip("torch")
    from tiny_models import make_saved

    return make_saved("llama-gqa", tmp_path_factory.mktemp("names") / "tiny")[1]


@pytest.mark.slow
def test_two_local_models_whose_plain_slugs_collide_get_two_files(tiny_dir, tmp_path):
    from qk_spectra_ds.builder.pipeline import build_family

    for name in ("m x", "m-x"):
        shutil.copytree(tiny_dir, tmp_path / name)
    results = build_family(
        "F",
        tmp_path / "out",
        models=[str(tmp_path / "m x"), str(tmp_path / "m-x")],
        progress=False,
        variants=["raw"],
        offsets=[],
    )
    assert [r.status for r in results] == ["built", "built"]
    assert results[0].path != results[1].path
    for result in results:
        assert set(pq.read_table(result.path, columns=["model_id"])["model_id"].to_pylist()) == {result.model_id}
    assert len(dataset_repo.model_files(tmp_path / "out")) == 2


REPORT_IDS = ["org/m", "org--m", "..", "model", "<script>alert(1)</script>", "z" * 300]  # 300: past the 255-byte limit


@pytest.fixture(scope="module")
def hostile_report(tiny_dir, tmp_path_factory):
    """A report over one tiny model built under ids whose old file names collided (or were too long)."""
    from qk_spectra_ds.analysis.report import Params, run_report
    from qk_spectra_ds.builder.pipeline import build_model
    from qk_spectra_ds.builder.weights import LocalSource

    root = tmp_path_factory.mktemp("hostile")
    for model_id in REPORT_IDS:
        result = build_model(
            LocalSource(tiny_dir, model_id=model_id), "F", root / "ds", progress=False, variants=["raw"], offsets=[]
        )
        assert result.status == "built"
    dataset_card.write_card(root / "ds")
    outputs = run_report(
        str(root / "ds"),
        "F",
        root / "report",
        params=Params(stats=("MEAN",), k="2", permutations=99, skip_layers_below=0),
        jobs=1,
        progress=False,
    )
    return outputs


@pytest.mark.slow
def test_each_model_of_a_report_draws_its_own_figures(hostile_report):
    outputs = hostile_report
    assert sorted(outputs.models) == sorted(REPORT_IDS)
    seen: dict[str, str] = {}
    for model_id in REPORT_IDS:
        figures = outputs.figures[model_id]
        assert figures
        for figure in figures:
            assert figure not in seen, (figure, model_id, seen.get(figure))
            seen[figure] = model_id
            assert (outputs.family_dir / figure).is_file()


@pytest.mark.slow
def test_index_md_shows_hostile_ids_as_text(hostile_report):
    from markdown_it import MarkdownIt

    text = (hostile_report.family_dir / "index.md").read_text()
    html = MarkdownIt("commonmark").render(text)
    assert "<script" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html  # the id is shown, as text
    headings = re.findall(r"<h3>(.*?)</h3>", html)
    assert any(h.startswith("org/m ") for h in headings) and any(h.startswith("org--m ") for h in headings)
    alts = re.findall(r'<img src="[^"]*" alt="([^"]*)"', html)
    assert any(a.startswith("&lt;script&gt;") for a in alts), alts


MARKDOWN_HOSTILE = HOSTILE + [
    "[x](javascript:alert(1))",
    "![i](http://e/x.png)",
    "**b** _i_ ~~s~~ `c` ``d``",
    "&amp; &lt;",
    "\\<b>\\",
    "a\r\nb",
    "<img src=x onerror=alert(1)>",
    "http://example.com",
    "# h",
    "> q",
    "1. l",
    "| a | b |",
    "$x$",
    "{{ x }}",
    "__init__",
]


def _shown(text: str) -> str:
    """What a viewer should show: the text itself, on one line, HTML-escaped as markdown-it escapes text."""
    import html

    return html.escape(re.sub(r"[\x00-\x1f\x7f]+", " ", text).replace("\0", " "), quote=True).replace("&#x27;", "'")


def test_md_text_and_md_code_render_as_the_text_itself():
    from markdown_it import MarkdownIt

    from qk_spectra_ds.markdown_text import md_code, md_text

    md = MarkdownIt("commonmark").enable("table")
    for text in MARKDOWN_HOSTILE:
        shown = _shown(text)
        assert md.renderInline(md_text(text)) == shown, (text, md_text(text))
        code = md.renderInline(md_code(text))
        assert code.startswith("<code>") and code.endswith("</code>") and "<" not in code[6:-7], (text, code)
        cell = md.render(f"| model |\n| --- |\n| {md_text(text)} |\n")
        assert re.search(r"<td>(.*?)</td>", cell, re.DOTALL).group(1).strip() == shown.strip(), (text, cell)
        assert md.render(f"### {md_text(text)}\n").strip() == f"<h3>{shown.strip()}</h3>", text


@pytest.mark.slow
def test_the_card_shows_hostile_ids_as_code(tiny_dir, tmp_path):
    """The dataset card (README.md, rendered by the Hub) shows a model id as code in one cell of its table."""
    from markdown_it import MarkdownIt

    from qk_spectra_ds.builder.pipeline import build_model
    from qk_spectra_ds.builder.weights import LocalSource

    hostile = "<script>alert(1)</script>|x`y"
    build_model(LocalSource(tiny_dir, model_id=hostile), "F", tmp_path, progress=False, variants=["raw"], offsets=[])
    dataset_card.write_card(tmp_path)
    card = (tmp_path / "README.md").read_text()
    body = card.split("\n---\n", 1)[1]
    html = MarkdownIt("commonmark").enable("table").render(body)
    assert "<script" not in html
    shown = "<code>&lt;script&gt;alert(1)&lt;/script&gt;|x`y</code>"
    assert f"<td>{shown}</td>" in html  # one cell, the whole id


@pytest.mark.slow
def test_a_file_under_the_old_name_is_replaced_and_another_models_kept(tiny_dir, tmp_path):
    """A model whose name changed (``m x``: was m-x.parquet) is rebuilt under its new name, the old file removed;
    ``m-x``'s own m-x.parquet is never touched."""
    from qk_spectra_ds.builder.pipeline import build_model
    from qk_spectra_ds.builder.weights import LocalSource
    from qk_spectra_ds.naming import legacy_slug

    out, options = tmp_path / "out", {"progress": False, "variants": ["raw"], "offsets": []}
    first = build_model(LocalSource(tiny_dir, model_id="m x"), "F", out, **options)
    old = first.path.with_name(f"{legacy_slug('m x')}.parquet")
    first.path.rename(old)  # as an older version named it
    second = build_model(LocalSource(tiny_dir, model_id="m x"), "F", out, **options)
    assert second.status == "built" and second.path.is_file() and not old.exists()
    other = build_model(LocalSource(tiny_dir, model_id="m-x"), "F", out, **options)
    assert other.path == old and old.is_file()
    third = build_model(LocalSource(tiny_dir, model_id="m x"), "F", out, **{**options, "force": True})
    assert third.status == "built" and old.is_file()  # m-x's file: not m x's to remove
    assert sorted(p.name for p in (out / "data" / "F").iterdir()) == sorted([second.path.name, old.name])


@pytest.mark.slow
def test_a_file_holding_another_models_rows_is_never_overwritten(tiny_dir, tmp_path):
    """Where two ids name one file (on a case-insensitive file system, Org/M and org/m), the second is refused."""
    from qk_spectra_ds.builder.pipeline import build_model
    from qk_spectra_ds.builder.weights import LocalSource
    from qk_spectra_ds.errors import BuildError

    out, options = tmp_path / "out", {"progress": False, "variants": ["raw"], "offsets": []}
    first = build_model(LocalSource(tiny_dir, model_id="Org/M"), "F", out, **options)
    same_file = dataset_repo.model_path(out, "F", "org/m")
    first.path.rename(same_file)  # what a case-insensitive file system does with the two names
    before = same_file.read_bytes()
    with pytest.raises(BuildError) as info:
        build_model(LocalSource(tiny_dir, model_id="org/m"), "F", out, **{**options, "force": True})
    message = str(info.value)
    assert "\n" not in message and "'Org/M'" in message and "'org/m'" in message and "another family" in message
    assert same_file.read_bytes() == before

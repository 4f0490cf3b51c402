"""The report's summary: what a run found, in words, generated from its tables (never written by hand).

:func:`summarize` turns the tables a report wrote (``name -> DataFrame``, the
names of ``Outputs.tables``) into a few lines, each a topic and a sentence
whose numbers link to the table they come from (``links``: name -> relative
path). It reads whatever tables are there and says plainly what a run did not
test (no structure test, too few layers, no raw/folded pair): a table that is
absent leaves its line out or says so, never a made-up number.

Topics, in order: the data (heads, models), structure (is there evidence of
classes at all; ``structure`` table when the run has one, else the consensus k
and the caveat that the method never returns k = 1), the classes of each model
(size, confidence, distance to the random-matrix null, a descriptive name when
the class table has one), per-layer trends after correction, folded vs raw,
what the null says, the joint taxonomy, and the behaviour and OV sections when
their tables exist. :func:`to_markdown` and :func:`to_html` render the lines.
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .consensus import STABLE_ARI

MAX_MODELS_LISTED = 6
"""Above this many models, per-model lines are aggregated (counts over models) to keep the summary short."""

AGREE_ARI = STABLE_ARI
"""ARI at or above which two variants' classes are called alike (the consensus's own stability threshold)."""

ALPHA = 0.05
"""Significance level used only when a structure table gives p-values without its own decision column."""


@dataclass(frozen=True)
class Part:
    """A piece of a sentence: text, and the table it comes from (a relative link) when it is a number."""

    text: str
    link: str | None = None
    code: bool = False


@dataclass(frozen=True)
class Line:
    """One line of the summary: its topic and its sentence."""

    topic: str
    parts: tuple[Part, ...]

    @property
    def text(self) -> str:
        return "".join(p.text for p in self.parts)


class _Builder:
    """Collects :class:`Part` s; ``num`` adds a number linked to ``table``'s file."""

    def __init__(self, links: Mapping[str, str]):
        self.links = links
        self.parts: list[Part] = []

    def say(self, text: str) -> _Builder:
        self.parts.append(Part(text))
        return self

    def code(self, text: str) -> _Builder:
        self.parts.append(Part(text, code=True))
        return self

    def num(self, value, table: str, fmt: str = "{}") -> _Builder:
        text = "NaN" if isinstance(value, float) and not math.isfinite(value) else fmt.format(value)
        self.parts.append(Part(text, self.links.get(table)))
        return self

    def line(self, topic: str) -> Line:
        return Line(topic, tuple(self.parts))


def read_tables(family_dir: str | Path, tables: Mapping[str, str]) -> dict[str, pd.DataFrame]:
    """The tables a run wrote (``name -> path`` relative to ``family_dir``): the exact parquet beside each CSV when present."""
    frames = {}
    for name, rel in tables.items():
        path = Path(family_dir) / rel
        exact = path.with_suffix(".parquet")
        if exact.is_file():
            frames[name] = pd.read_parquet(exact)
        elif path.is_file():
            frames[name] = pd.read_csv(path)
    return frames


def _short(model: str) -> str:
    """The model's name without its organisation (``org/name`` -> ``name``), for sentences."""
    return str(model).split("/")[-1]


def _models(tables: Mapping[str, pd.DataFrame], order: Sequence[str] | None) -> list[str]:
    """Models in display order: ``order`` first, then any other model the tables name."""
    seen = list(order or [])
    for frame in tables.values():
        if "model" in frame.columns:
            seen += [str(m) for m in dict.fromkeys(frame["model"]) if str(m) not in seen]
    return list(dict.fromkeys(seen))


def _variants(tables: Mapping[str, pd.DataFrame]) -> list[str]:
    found: list[str] = []
    for name in ("consensus_labels", "labels", "taxonomy_labels"):
        frame = tables.get(name)
        if frame is not None and "variant" in frame.columns:
            found += [str(v) for v in frame["variant"].unique()]
    return sorted(set(found))


def _data_line(tables, links, models) -> Line | None:
    per_head = next((n for n in ("consensus_labels", "labels", "taxonomy_labels") if n in tables), None)
    if per_head is None:
        return None
    frame = tables[per_head]
    b = _Builder(links).num(len(frame), per_head, "{:,}").say(" heads in ")
    b.num(frame["model"].nunique(), per_head).say(" model" + ("s" if frame["model"].nunique() != 1 else ""))
    if len(models) <= MAX_MODELS_LISTED:
        b.say(" (")
        for i, model in enumerate(m for m in models if (frame["model"] == m).any()):
            rows = frame[frame["model"] == model]
            b.say(", " if i else "").code(model).say(": ")
            if "layer" in rows and "head" in rows:
                b.num(rows["layer"].nunique(), per_head).say(" layers × ").num(rows["head"].nunique(), per_head).say(
                    " heads"
                )
            else:
                b.num(len(rows), per_head).say(" heads")
        b.say(")")
    variants = _variants(tables)
    if variants:
        b.say(f"; {' + '.join(variants)} spectra")
    return b.say(".").line("data")


_DECISION_COLUMNS = ("structure", "significant", "evidence", "reject", "has_structure")


def _structure_line(tables, links, models) -> Line | None:
    """Is there evidence of classes? The structure test if the run has one; else what the k scan can and cannot say."""
    test = tables.get("structure")
    if test is not None and len(test) and "model" in test.columns:
        decision = next((c for c in _DECISION_COLUMNS if c in test.columns and test[c].dtype == bool), None)
        p_col = next((c for c in test.columns if re.fullmatch(r"p(_value)?(_.*)?", str(c))), None)
        if decision is None and p_col is None:
            return (
                _Builder(links)
                .say("a structure test ran (")
                .num(len(test), "structure")
                .say(" rows) but its table has no decision or p-value column this summary knows.")
                .line("structure")
            )
        tested = test["tested"].astype(bool) if "tested" in test.columns else pd.Series(True, index=test.index)
        yes = (test[decision].astype(bool) if decision else test[p_col] < ALPHA) & tested
        chosen = _chosen_k(tables)
        b = _Builder(links).say("evidence of classes in ").num(int(yes.sum()), "structure").say(" of ")
        b.num(int(tested.sum()), "structure").say(" models tested (")
        if decision:
            b.code(decision).say(" column")
        else:
            b.code(p_col).say(" < ").num(ALPHA, "structure")
        if "alpha" in test.columns and test["alpha"].notna().any():
            b.say(", level ").num(float(test["alpha"].dropna().iloc[0]), "structure", "{:g}")
        b.say(")")
        for i, (idx, row) in enumerate(list(test.iterrows())[:MAX_MODELS_LISTED]):
            b.say("; " if i else ": ").code(_short(row["model"])).say(": ")
            if not tested[idx]:
                b.say("not tested")
            elif isinstance(row.get("conclusion"), str) and row["conclusion"]:
                b.num(row["conclusion"], "structure")
            else:
                b.say("classes" if bool(yes[idx]) else "no evidence of classes (a continuum)")
            if p_col is not None and tested[idx] and pd.notna(row[p_col]):
                b.say(", p = ").num(float(row[p_col]), "structure", "{:.3g}")
            k = row["k"] if "k" in row and pd.notna(row["k"]) else chosen.get(str(row["model"]))
            if k is not None:
                b.say(", k = ").num(int(k), "structure" if "k" in row else "k_selection")
        if len(test) > MAX_MODELS_LISTED:
            b.say("; ...")
        return b.say(".").line("structure")
    scan = tables.get("k_selection")
    if scan is None or not len(scan):
        return None
    chosen = scan[scan["chosen"].astype(bool)]
    b = _Builder(links).say("the consensus chose ")
    if len(chosen) <= MAX_MODELS_LISTED:
        for i, row in enumerate(chosen.itertuples(index=False)):
            b.say("; " if i else "").say("k = ").num(int(row.k), "k_selection").say(" for ").code(_short(row.model))
            b.say(" (stability ARI ").num(float(row.stability_ari_mean), "k_selection", "{:.2f}")
            b.say(", silhouette ").num(float(row.silhouette), "k_selection", "{:.2f}").say(")")
    else:
        counts = chosen["k"].value_counts().sort_index()
        b.say("k = ")
        for i, (k, n) in enumerate(counts.items()):
            b.say(", " if i else "").num(int(k), "k_selection").say(" in ").num(int(n), "k_selection").say(" models")
    if int(scan["k"].min()) >= 2:
        b.say(
            ". Whether the heads form classes at all was not tested in this run (no structure test table): "
            "this k scan starts at "
        ).num(int(scan["k"].min()), "k_selection").say(", so classes are imposed, not found")
    return b.say(".").line("structure")


def _chosen_k(tables) -> dict[str, int]:
    """model -> the k its consensus used (``k_selection``'s chosen row), where the run has the table."""
    scan = tables.get("k_selection")
    if scan is None or not len(scan) or "chosen" not in scan:
        return {}
    chosen = scan[scan["chosen"].astype(bool)]
    return {str(m): int(k) for m, k in zip(chosen["model"], chosen["k"])}


def _class_lines(tables, links, models) -> list[Line]:
    classes = tables.get("consensus_classes")
    if classes is None or not len(classes):
        classes = tables.get("classes")
        if classes is None or not len(classes):
            return []
        source = "classes"
    else:
        source = "consensus_classes"
    null = tables.get("null_classes")
    lines = []
    listed = [m for m in models if (classes["model"] == m).any()]
    if len(listed) > MAX_MODELS_LISTED:
        sizes = classes.groupby("model")["class"].nunique()
        b = _Builder(links).say(f"{len(listed)} models, ").num(int(sizes.min()), source).say("–")
        b.num(int(sizes.max()), source).say(" classes each; per class: ").num(len(classes), source).say(
            " rows in its table."
        )
        return [b.line("classes")]
    for model in listed:
        rows = classes[classes["model"] == model]
        b = _Builder(links).code(_short(model)).say(": ")
        for i, row in enumerate(rows.to_dict("records")):
            b.say("; " if i else "").say("class ").num(row["class"], source)
            if isinstance(row.get("name"), str) and row["name"]:
                b.say(f" “{row['name']}”")
            b.say(": ").num(int(row["n_heads"]), source).say(" heads")
            if "share" in row:
                b.say(" (").num(float(row["share"]), source, "{:.0%}").say(")")
            if "confidence_mean" in row:
                b.say(", confidence ").num(float(row["confidence_mean"]), source, "{:.2f}")
            if "alpha" in row and "theta" in row:
                b.say(", gamma α ").num(float(row["alpha"]), source, "{:.2f}").say(" θ ").num(
                    float(row["theta"]), source, "{:.2f}"
                )
            if null is not None and len(null):
                match = null[(null["model"] == model) & (null["class"] == row["class"])]
                if len(match) and "median_fraction_outside" in match:
                    b.say(", ").num(float(match["median_fraction_outside"].iloc[0]), "null_classes", "{:.0%}")
                    b.say(" of a head's spectrum outside the random-matrix law's edges (median)")
        lines.append(b.say(".").line("classes"))
    return lines


def _trend_line(tables, links, models) -> Line | None:
    tests = tables.get("layer_tests")
    if tests is None or not len(tests):
        return None
    tested = tests[tests["p_bds_permutation_holm"].notna() | tests["p_trend_permutation_holm"].notna()]
    survives = tests[tests["survives"].astype(bool)] if "survives" in tests else tests.iloc[:0]
    b = _Builder(links)
    if not len(tested):
        reasons = sorted(set(map(str, tests.get("note", pd.Series(dtype=str)).dropna())))
        b.say("no per-layer series was tested (").num(len(tests), "layer_tests").say(" series")
        if reasons:
            b.say(": ").num("; ".join(reasons), "layer_tests")
        b.say("), so nothing can be said about depth trends")
        if "original_significant" in tests and tests["original_significant"].astype(bool).any():
            b.say("; the original method's asymptotic BDS p-values call ")
            b.num(int(tests["original_significant"].astype(bool).sum()), "layer_tests")
            b.say(" of them significant, which is not valid at these lengths")
        return b.say(".").line("per-layer trends")
    b.num(len(survives), "layer_tests").say(" of ").num(len(tested), "layer_tests")
    b.say(" tested per-layer series survive permutation tests with Holm's correction")
    for i, r in enumerate(survives.head(12).itertuples(index=False)):
        b.say(", " if i else ": ").code(f"{_short(r.model)} {r.stat}")
    if len(survives) > 12:
        b.say(", ...")
    untested = len(tests) - len(tested)
    if untested:
        b.say("; ").num(untested, "layer_tests").say(" not tested (too few layers)")
    return b.say(".").line("per-layer trends")


def _variants_line(tables, links, models) -> Line | None:
    ari = tables.get("variants_ari")
    if ari is None or not len(ari):
        return None
    b = _Builder(links)
    rows = ari if len(ari) <= MAX_MODELS_LISTED else ari.iloc[:0]
    for i, row in enumerate(rows.itertuples(index=False)):
        b.say("; " if i else "").code(_short(row.model)).say(f": {row.variant_a} k = ").num(
            int(row.k_a), "variants_ari"
        )
        b.say(f", {row.variant_b} k = ").num(int(row.k_b), "variants_ari").say(", agreement ARI ")
        b.num(float(row.ari), "variants_ari", "{:.2f}")
    if not len(rows):
        b.say("median ARI between the variants' classes ").num(float(ari["ari"].median()), "variants_ari", "{:.2f}")
        b.say(" over ").num(len(ari), "variants_ari").say(" models")
    worst = float(ari["ari"].min())
    b.say(" (ARI one: the same classes; near zero: unrelated)" if math.isfinite(worst) else "")
    b.say(". The variants group the heads " + ("alike" if worst >= AGREE_ARI else "differently") + ".")
    return b.line("folded vs raw")


def _null_line(tables, links, models) -> Line | None:
    null = tables.get("null_classes")
    if null is None or not len(null):
        return None
    b = _Builder(links)
    gauss = null["distinguishable_from_gaussian"].astype(bool) if "distinguishable_from_gaussian" in null else None
    if gauss is not None:
        b.num(int(gauss.sum()), "null_classes").say(" of ").num(len(null), "null_classes")
        b.say(" classes differ from Gaussian random heads of the same shape")
    col = "distinguishable_from_null_variant"
    if col in null and null[col].notna().any():
        known = null[null[col].notna()]
        b.say("; ").num(int(known[col].astype(bool).sum()), "null_classes").say(" of ").num(len(known), "null_classes")
        b.say(" differ from the dataset's null variant (the same factors, a random query-key pairing)")
    if gauss is not None and gauss.all() and len(null) > 1:
        b.say(". A null every class differs from says little on its own")
    return b.say(".").line("null")


def _joint_line(tables, links, models) -> Line | None:
    """One set of classes over all models: the default method's joint consensus, else the original's joint KMeans."""
    cons = tables.get("taxonomy_consensus_classes")
    joint = tables.get("taxonomy_classes")
    b = _Builder(links)
    if cons is not None and len(cons):
        b.say("one set of classes for all models (default method): ").num(len(cons), "taxonomy_consensus_classes")
        b.say(" class" if len(cons) == 1 else " classes")
        test = tables.get("taxonomy_structure")
        if test is not None and len(test) and "conclusion" in test.columns:
            b.say(" (structure test: ").num(str(test["conclusion"].iloc[0]), "taxonomy_structure")
            if "p_value" in test.columns and pd.notna(test["p_value"].iloc[0]):
                b.say(", p = ").num(float(test["p_value"].iloc[0]), "taxonomy_structure", "{:.3g}")
            b.say(")")
        for i, row in enumerate(cons.head(8).to_dict("records")):
            b.say(": " if i == 0 else "; ").say("class ").num(row["class"], "taxonomy_consensus_classes")
            if isinstance(row.get("name"), str) and row["name"]:
                b.say(f" “{row['name']}”")
            if "share" in row:
                b.say(" ").num(float(row["share"]), "taxonomy_consensus_classes", "{:.0%}")
        if "crosswalk" in tables:
            b.say("; how each model's classes map onto these: ").num("crosswalk", "crosswalk")
        if joint is not None and len(joint):
            b.say("; the original's joint KMeans: ").num(len(joint), "taxonomy_classes").say(" classes")
        return b.say(".").line("joint taxonomy")
    if joint is None or not len(joint):
        return None
    b.say("one classification across all models (the original's KMeans): ")
    b.num(len(joint), "taxonomy_classes").say(" classes, the largest with ")
    b.num(float(joint["share"].max()), "taxonomy_classes", "{:.0%}").say(" of the heads.")
    return b.line("joint taxonomy")


def _extra_lines(tables, links, models) -> list[Line]:
    """Sections other stages add (behaviour, OV): their stated conclusions when the table has them, else a pointer."""
    lines = []
    for topic, pattern in (("behaviour", r"behaviou?r.*"), ("QK and OV", r"(qk_)?ov.*")):
        for name in (n for n in tables if re.fullmatch(pattern, n)):
            frame = tables[name]
            text_col = next((c for c in ("conclusion", "summary", "finding") if c in frame.columns), None)
            b = _Builder(links)
            if text_col is not None:
                said = [str(t) for t in dict.fromkeys(frame[text_col].dropna()) if str(t).strip()]
                b.num("; ".join(said[:6]) or "no conclusion stated", name).say(" (").num(len(frame), name).say(
                    " rows, "
                )
                b.code(name).say(")")
            else:
                b.num(len(frame), name).say(" rows in ").code(name).say("; its table states no conclusion column")
            lines.append(b.say(".").line(topic))
    return lines


def summarize(
    tables: Mapping[str, pd.DataFrame], links: Mapping[str, str] | None = None, order: Sequence[str] | None = None
) -> list[Line]:
    """The summary's lines from a run's ``tables`` (``links``: table name -> relative path; ``order``: models' display order)."""
    links = dict(links or {})
    tables = {k: v for k, v in tables.items() if v is not None}
    models = _models(tables, order)
    lines: list[Line | None] = [_data_line(tables, links, models), _structure_line(tables, links, models)]
    lines += _class_lines(tables, links, models)
    lines += [
        _trend_line(tables, links, models),
        _variants_line(tables, links, models),
        _null_line(tables, links, models),
        _joint_line(tables, links, models),
    ]
    lines += _extra_lines(tables, links, models)
    return [line for line in lines if line is not None]


def _md_text(text: str) -> str:
    return re.sub(r"([\\`*_\[\]<>|#])", r"\\\1", text)


def to_markdown(lines: Sequence[Line]) -> str:
    """A Markdown list: ``- **topic**: sentence``, numbers as links to their tables, model ids as code."""
    out = []
    for line in lines:
        body = "".join(
            f"`{p.text.replace('`', '')}`"
            if p.code
            else (f"[{_md_text(p.text)}]({p.link})" if p.link else _md_text(p.text))
            for p in line.parts
        )
        out.append(f"- **{line.topic}**: {body}")
    return "\n".join(out)


def to_html(lines: Sequence[Line]) -> str:
    """An HTML ``<ul>``: the same lines, numbers as ``<a>`` links to their tables, escaped."""
    items = []
    for line in lines:
        body = "".join(
            f"<code>{html.escape(p.text)}</code>"
            if p.code
            else (f'<a href="{html.escape(p.link)}">{html.escape(p.text)}</a>' if p.link else html.escape(p.text))
            for p in line.parts
        )
        items.append(f"<li><strong>{html.escape(line.topic)}</strong>: {body}</li>")
    return '<ul class="summary">\n' + "\n".join(items) + "\n</ul>"

#!/usr/bin/env python
"""`analyze.py report` vs the original study's analysis, on the legacy Qwen3 family (5 models).

GitHub issue 5, target 4. The five published Qwen3 pickles (Qwen3-0.6B .. 14B,
4,800 heads) are imported with ``import_legacy`` into a temporary schema-v1
dataset (timed, not part of the comparison). Then, every run in a fresh
process, imports included, after one warm-up run of each (compile caches on
disk exist, as for the reference numbers):

- baseline: the original study's algorithm shape (its Classification A and B
  notebooks), re-implemented compactly in :func:`baseline`: per model a Python
  loop of ``np.histogram(density=True)``, KMeans, an unseeded UMAP (as the
  original; numba-parallel, its functions recompiled in every process), per
  class ``curve_fit`` of a gamma pdf and the JSD, a pyplot/seaborn figure; then
  per statistic and model a re-read of the pickle, ``plt.boxplot``, BDS and a
  linear spline, ``plt.savefig`` at 100 dpi. Reference on this 2-core machine:
  about 42 s (5 s imports, 22 s clusters with UMAP, 15 s box plots).
- ours: ``python analyze.py report --dataset DS --family Qwen3 --out OUT``
  (figures, tables, joint taxonomy, index) with the default ``--jobs`` (what a
  user gets: one worker per core for large configs) and with ``--jobs 1``,
  ``--jobs <nproc>`` and ``--embedding umap`` (the original's figures), runs
  interleaved. Target: at most 20 s warm.
- ``--method original`` (the original study's method only) in the same
  interleaved runs: the default method (consensus classes, stability, k
  curve, permutation tests, random-matrix null, plus the original's tables)
  at most 3x its time (issue 13).

Also printed: the per-stage split of both (ours from the timings the report
logs, plus histograms / KMeans / embeddings / gamma fits timed by calling the
package's functions on the loaded data in a separate process), whether every
run wrote byte-identical tables (figures: per embedding), and whether the
baseline's classes and BDS values agree with ours.

Cold and warm (GitHub issue 10, item 6): ``analyze.py report`` on the MiniLM
dataset (built here from the packaged all-MiniLM-L6-v2 checkpoint, or
``--minilm DIR``), for each ``--embedding``. Cold: a new process with an
empty numba cache (``NUMBA_CACHE_DIR``) and an empty matplotlib cache
(``MPLCONFIGDIR``, so its font list is rebuilt too); warm: further new
processes with those caches kept. Target: cold at most 20 s with the default
embedding. Ratios are printed last.

    python benchmarks/bench_analysis.py [--repeats 3] [--pickles DIR] [--skip-baseline] [--minilm DIR] [--skip-minilm] [--methods-only]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PICKLES = Path(__file__).resolve().parents[2] / "shared" / "legacy" / "Qwen3"
FAMILY = "Qwen3"
TARGET_S = 20.0
REFERENCE_S = 42.0
REFERENCE = "about 42 s (5 s imports, 22 s clusters with UMAP, 15 s box plots)"
COLD_TARGET_S = 20.0
METHOD_RATIO_TARGET = 3.0
"""Issue 13: the default method's report at most 3x ``--method original``'s, same run, same machine."""


# ---------------------------------------------------------------- baseline: the original study's algorithm shape


def baseline(pickles: str, out: str) -> dict:
    """The original study's algorithm shape (Classification A + B notebooks), in this one process.

    Faithful on purpose, slow parts included: pickles re-read per statistic,
    per-head ``np.histogram`` loop, unseeded UMAP, pyplot + seaborn,
    ``plt.boxplot``. Only the pickle loader differs (the package's restricted
    unpickler instead of ``pickle.load``); its import (pandas, pyarrow, which
    the original did not need) is timed apart and left out of the total.
    """
    t = {}
    t0 = time.perf_counter()
    import matplotlib
    import numpy as np

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns
    import umap
    from scipy.interpolate import make_splrep
    from scipy.optimize import curve_fit
    from scipy.stats import gamma
    from sklearn.cluster import KMeans
    from statsmodels.tsa.stattools import bds

    sns.set_theme("talk")
    sns.set_style("white")
    t["imports"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    from qk_spectra_ds.analysis.features import N_BINS, QUANTILE
    from qk_spectra_ds.analysis.layer_boxplots import SKIP_LAYERS_BELOW as SKIP_BELOW
    from qk_spectra_ds.analysis.layer_boxplots import STAT_NAMES as STATS
    from qk_spectra_ds.analysis.legacy_pickle import safe_load
    from qk_spectra_ds.analysis.taxonomy import N_CLUSTERS

    t["loader import (excluded)"] = time.perf_counter() - t0  # with the package's default parameters

    def gamma_pdf(x, a, scale):
        return gamma.pdf(x, a, loc=0, scale=scale)

    def jsd(p, q, eps=1e-12):
        p, q = np.asarray(p, np.float64), np.asarray(q, np.float64)
        p, q = p / (p.sum() + eps), q / (q.sum() + eps)
        m = 0.5 * (p + q)
        return float(0.5 * (np.sum(p * np.log((p + eps) / (m + eps))) + np.sum(q * np.log((q + eps) / (m + eps)))))

    def tick(key, since):
        t[key] = t.get(key, 0.0) + time.perf_counter() - since
        return time.perf_counter()

    files = [Path(pickles)] if Path(pickles).is_file() else sorted(Path(pickles).glob("*.pkl"))
    classes, bds_values = [], {}
    (Path(out) / "ESDs").mkdir(parents=True, exist_ok=True)
    c0 = time.perf_counter()
    for path in files:  # ---- Classification A
        s = time.perf_counter()
        data = safe_load(path)["eigen_values"]
        ev = np.concatenate(list(data.values()), axis=0)
        s = tick("A load", s)
        norm = ev / ev.mean(axis=-1)[..., np.newaxis]
        edges = np.linspace(0.0, np.quantile(norm, QUANTILE), N_BINS + 1)
        hists = np.stack([np.histogram(x, edges, density=True)[0] for x in norm], axis=0)
        centers = (edges[:-1] + edges[1:]) / 2
        s = tick("A histograms", s)
        labels = KMeans(n_clusters=N_CLUSTERS, random_state=0, n_init="auto").fit_predict(hists)
        s = tick("A KMeans", s)
        embedding = umap.UMAP(n_components=2, n_neighbors=10, min_dist=0.1).fit_transform(hists)  # unseeded
        s = tick("A UMAP", s)
        fits = []
        for k in range(N_CLUSTERS):
            mean, std = hists[labels == k].mean(axis=0), hists[labels == k].std(axis=0)
            (a, theta), _ = curve_fit(gamma_pdf, centers, mean, p0=(3.0, 0.5), sigma=mean.std(), absolute_sigma=True)
            pdf = gamma_pdf(centers, a, theta)
            fits.append((k, mean, std, a, theta, pdf, jsd(mean, pdf)))
            classes.append(
                dict(model=path.stem, cls=k, n_heads=int((labels == k).sum()), alpha=a, theta=theta, jsd=fits[-1][-1])
            )
        s = tick("A gamma fits + JSD", s)
        n_rows = int(3 + max(np.ceil((N_CLUSTERS - 6) / 5), 0))
        fig, axs = plt.subplots(
            n_rows, 5, figsize=(15, 2.8 * n_rows), gridspec_kw={"width_ratios": [0.65, 0.65, 0.65, 1, 1]}
        )
        gs = axs[0, 0].get_gridspec()
        for ax in axs[:3, :3].ravel():
            ax.remove()
        big = fig.add_subplot(gs[:3, :3])
        big.scatter(embedding[:, 0], embedding[:, 1], c=labels, s=10, cmap="Set2", alpha=0.75)
        big.set_xticks([]), big.set_yticks([]), big.set_title("UMAP features")
        panels = [ax for i, ax in enumerate(axs.ravel()) if i not in (0, 1, 2, 5, 6, 7, 10, 11, 12)]
        for ax, (k, mean, std, a, theta, pdf, div) in zip(panels, fits):
            ax.bar(range(N_BINS), mean)
            ax.set_xticks([]), ax.set_yticks([])
            ax.errorbar(range(N_BINS), mean, yerr=std, fmt="none", capsize=2.0, color="black", alpha=0.7, elinewidth=2)
            ax.plot(range(N_BINS), pdf, color="red", linestyle="--", lw=0.8)
            ax.set_ylim((0, ax.get_ylim()[1]))
            ax.text(
                0.6,
                0.9,
                f"α : {a:.2f}\nθ : {theta:.2f}",
                transform=ax.transAxes,
                ha="left",
                va="top",
                fontsize=16,
                bbox=dict(facecolor="white", alpha=0.6, edgecolor="none"),
            )
            ax.set_title(f"Class_{k} (JSD:{div:.3f})")
        fig.suptitle(path.stem)
        plt.tight_layout()
        plt.savefig(Path(out) / "ESDs" / f"{path.stem}.png")
        plt.close()
        tick("A figures", s)
    t["clusters (incl. UMAP)"] = time.perf_counter() - c0
    b0 = time.perf_counter()
    for i, stat in enumerate(STATS):  # ---- Classification B: the original loops statistics, then files
        (Path(out) / "plots" / stat).mkdir(parents=True, exist_ok=True)
        for path in files:
            s = time.perf_counter()
            plt.figure(figsize=(20, 8), dpi=100)
            data = dict(safe_load(path))["eigen_values_stats"]  # re-read per statistic, as the original
            data = {k: v[i].squeeze() for k, v in data.items()}
            data = dict(sorted((k, v) for k, v in data.items() if k >= SKIP_BELOW))
            s = tick("B load", s)
            n = len(data)
            bds_stat, p_value = bds([np.median(x) for x in data.values()])
            means = [x.mean() for x in data.values()]
            spline = make_splrep(np.arange(n), means, s=20, k=1)
            x_new = np.linspace(0, n - 1, 500)
            y_new = spline(x_new)
            bds_values[(path.stem, stat)] = (float(bds_stat), float(p_value))
            s = tick("B BDS + spline", s)
            plt.boxplot(list(data.values()), positions=np.arange(n), widths=0.5, showmeans=True, showfliers=False)
            plt.xticks(np.arange(n), list(data.keys()))
            plt.title(f"{path.stem}_{stat} (BDS: {bds_stat:.2f} p-value: {p_value:.2e})")
            plt.plot(x_new, y_new, linestyle="--")
            plt.tight_layout()
            plt.savefig(Path(out) / "plots" / stat / f"{path.stem}_{stat}_box.png")
            plt.close()
            tick("B figures", s)
    t["box plots"] = time.perf_counter() - b0
    bds_rows = [dict(model=m, stat=s, bds=b, p_value=p) for (m, s), (b, p) in bds_values.items()]
    return {"timings": t, "classes": classes, "bds": bds_rows}


# ---------------------------------------------------------------- ours: stages not logged separately by the report


STAGES = (
    "histograms",
    "fit: bins + KMeans",
    "embedding (pca)",
    "embedding (umap)",
    "gamma fits + JSD",
    "box-plot stats (BDS, spline)",
    "joint taxonomy",
)


def our_stages(dataset: str, repeats: int) -> dict:
    """Load, histograms, KMeans, the embeddings, gamma fits, box-plot statistics and the joint taxonomy, as the workers run them.

    Calls the package's functions on the loaded data (single-threaded, as in
    ``report.analyze_model``): one pass to warm up this process (the first
    UMAP call imports umap and compiles its numba functions), then the median
    of ``repeats`` passes. Sums over the 5 models.
    """
    t0 = time.perf_counter()
    import warnings

    from threadpoolctl import threadpool_limits

    from qk_spectra_ds.analysis import features, layer_boxplots, report, taxonomy
    from qk_spectra_ds.analysis.loading import load_spectra
    from qk_spectra_ds.analysis.selection import eigenvalue_matrix, split_models

    imports = time.perf_counter() - t0
    t0 = time.perf_counter()
    frame = load_spectra(dataset, FAMILY)
    load = time.perf_counter() - t0
    params = report.Params()
    passes = []
    with warnings.catch_warnings(), threadpool_limits(1):
        warnings.simplefilter("ignore")
        for _ in range(1 + repeats):
            t = dict.fromkeys(STAGES, 0.0)
            for model_id, rows in split_models(frame):
                s = time.perf_counter()
                hists, edges = features.eigenvalue_histograms(eigenvalue_matrix(rows))
                t["histograms"] += time.perf_counter() - s
                s = time.perf_counter()
                classifier = params.classifier(embedding=None).fit(eigenvalue_matrix(rows))  # bins, KMeans, gamma fits
                t["fit: bins + KMeans"] += time.perf_counter() - s
                for method in taxonomy.EMBEDDINGS:
                    s = time.perf_counter()
                    taxonomy.embed(hists, method, params.seed)
                    t[f"embedding ({method})"] += time.perf_counter() - s
                s = time.perf_counter()
                taxonomy.describe_classes(
                    hists, classifier.labels_, features.bin_centers(edges), params.n_clusters, model_id
                )
                t["gamma fits + JSD"] += time.perf_counter() - s
                s = time.perf_counter()
                layer_boxplots.layer_stats(rows, None, params.skip_layers_below, model_id)
                t["box-plot stats (BDS, spline)"] += time.perf_counter() - s
            s = time.perf_counter()
            taxonomy.joint_taxonomy(report.model_heads(frame), params.classifier(embedding=None, canonical_order=True))
            t["joint taxonomy"] += time.perf_counter() - s
            passes.append(t)
    median = {k: statistics.median(p[k] for p in passes[1:]) for k in passes[0]}
    median["fit: bins + KMeans"] -= median["gamma fits + JSD"]  # the fit above includes them
    return {"imports": imports, "load": load, "first pass UMAP": passes[0]["embedding (umap)"], "median": median}


# ---------------------------------------------------------------- cold and warm (MiniLM)


def minilm_dataset(out: Path) -> Path:
    """The MiniLM dataset (72 heads), built offline from the packaged all-MiniLM-L6-v2 checkpoint."""
    run_timed([sys.executable, "build_dataset.py", "--family", "MiniLM", "--out", str(out)])
    return out


def cold_warm(dataset: Path, tmp: Path, repeats: int) -> dict[str, dict[str, list[float]]]:
    """Wall times of ``analyze.py report`` on MiniLM per embedding: one cold run, then ``repeats`` warm runs.

    Cold: new process, empty ``NUMBA_CACHE_DIR`` and ``MPLCONFIGDIR``; warm: new
    processes that keep those caches. The embeddings are interleaved so that
    background load hits both alike.
    """
    from qk_spectra_ds.analysis.taxonomy import EMBEDDINGS

    times: dict[str, dict[str, list[float]]] = {m: {"cold": [], "warm": []} for m in EMBEDDINGS}
    caches = {
        m: {
            "NUMBA_CACHE_DIR": tempfile.mkdtemp(prefix=f"numba_{m}_", dir=tmp),
            "MPLCONFIGDIR": tempfile.mkdtemp(prefix=f"mpl_{m}_", dir=tmp),
        }
        for m in EMBEDDINGS
    }
    for i in range(1 + repeats):
        for method in EMBEDDINGS:
            cmd = [
                sys.executable,
                "analyze.py",
                "report",
                "--dataset",
                str(dataset),
                "--family",
                "MiniLM",
                "--out",
                str(tmp / f"minilm_{method}_{i}"),
                "--embedding",
                method,
                "--quiet",
            ]
            wall, _ = run_timed(cmd, env=caches[method])
            times[method]["cold" if i == 0 else "warm"].append(wall)
    return times


def print_cold_warm(times: dict[str, dict[str, list[float]]]) -> None:
    print("cold and warm: python analyze.py report --dataset MINILM --family MiniLM --embedding E (72 heads)")
    print("  cold: new process, empty NUMBA_CACHE_DIR and MPLCONFIGDIR; warm: new processes, caches kept")
    print(f"  {'embedding':12s}{'cold':>10s}{'warm (median)':>16s}   warm runs")
    for method, t in times.items():
        print(f"  {method:12s}{t['cold'][0]:9.2f}s{med(t['warm']):15.2f}s   {', '.join(f'{w:.1f}' for w in t['warm'])}")
    print()


# ---------------------------------------------------------------- driver


def run_timed(
    cmd: list[str], timeout: float = 900, env: dict | None = None
) -> tuple[float, subprocess.CompletedProcess]:
    env = dict(os.environ, MPLBACKEND="Agg", PYTHONHASHSEED="0", **(env or {}))
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return wall, proc


def worker_json(proc: subprocess.CompletedProcess) -> dict:
    return json.loads(proc.stdout.strip().splitlines()[-1])


TIMINGS_LINE = re.compile(r"^timings: (.*)$", re.M)
TIMING_ITEM = re.compile(r"(?:^|, )(.*?) (-?\d+(?:\.\d+)?)s(?=, |$)")


def report_timings(stderr: str) -> dict[str, float]:
    """The ``timings: key 1.23s, ...`` line that ``analyze.py report`` logs on stderr."""
    match = TIMINGS_LINE.search(stderr)
    return {k: float(v) for k, v in TIMING_ITEM.findall(match.group(1))} if match else {}


def tree_hashes(family_dir: Path) -> dict[str, str]:
    """sha256 of the tables (CSVs), the figures (PNGs) and index.md of one report output."""
    groups: dict[str, hashlib._Hash] = {
        "tables": hashlib.sha256(),
        "figures": hashlib.sha256(),
        "index": hashlib.sha256(),
    }
    for path in sorted(p for p in family_dir.rglob("*") if p.is_file()):
        group = "tables" if path.suffix == ".csv" else "figures" if path.suffix == ".png" else "index"
        groups[group].update(path.relative_to(family_dir).as_posix().encode() + b"\0" + path.read_bytes())
    return {k: h.hexdigest() for k, h in groups.items()}


def med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def rel_diff(frame, column: str) -> float:
    """Largest relative difference between ``column`` (ours) and ``column_b`` (baseline)."""
    theirs = frame[column + "_b"]
    return float(((frame[column] - theirs).abs() / theirs.abs().clip(lower=1e-300)).max())


def agreement(base: dict, family_dir: Path) -> str:
    """How the baseline's classes and BDS values compare with the report's tables."""
    import pandas as pd

    ours = pd.read_csv(family_dir / "tables" / "classes.csv")
    theirs = pd.DataFrame(base["classes"]).rename(columns={"cls": "class"})
    both = ours.merge(theirs, on=["model", "class"], suffixes=("", "_b"))
    same_sizes = len(both) == len(ours) == len(theirs) and (both["n_heads"] == both["n_heads_b"]).all()
    rel = max(rel_diff(both, c) for c in ("alpha", "theta", "jsd"))
    bds_ours = pd.read_csv(family_dir / "tables" / "bds.csv")
    b = bds_ours.merge(pd.DataFrame(base["bds"]), on=["model", "stat"], suffixes=("", "_b"))
    bds_rel = max(rel_diff(b, c) for c in ("bds", "p_value"))
    return (
        f"classes (sizes, per model): {'identical' if same_sizes else 'DIFFERENT'}; alpha/theta/JSD max rel. diff "
        f"{rel:.1e}; BDS/p max rel. diff {bds_rel:.1e} over {len(b)} (model, stat)"
    )


WALL_KEY = re.compile(r"\(wall, jobs=(\d+)\)")
BASELINE_ROWS = (
    "clusters (incl. UMAP)",
    "A load",
    "A histograms",
    "A KMeans",
    "A UMAP",
    "A gamma fits + JSD",
    "A figures",
    "box plots",
    "B load",
    "B BDS + spline",
    "B figures",
    "loader import (excluded)",
)


def print_baseline(base_runs: list[tuple[float, dict]], agree: str) -> float:
    """The baseline's stages; returns its median total (process wall, loader import left out)."""
    timings = [r["timings"] for _, r in base_runs]
    total = med([w - t["loader import (excluded)"] for (w, _), t in zip(base_runs, timings)])
    work = [t["clusters (incl. UMAP)"] + t["box plots"] + t["loader import (excluded)"] for t in timings]
    startup = med([w - x for (w, _), x in zip(base_runs, work)])
    print(f"baseline: the original study's algorithm shape (fresh process each, warm; median of {len(base_runs)})")
    print(f"  reference for the original code on this machine: {REFERENCE}")
    print(
        "  UMAP unseeded, as the original (numba-parallel; UMAP's numba functions recompile in every process, as there)"
    )
    print(
        f"  {'total wall (process, imports incl.)':40s} {total:7.2f}s   runs: {', '.join(f'{w:.1f}' for w, _ in base_runs)}"
    )
    print(f"  {'  startup + imports':40s} {startup:7.2f}s")
    for key in BASELINE_ROWS:
        indent = "    " if key[:2] in ("A ", "B ") else "  "
        print(f"  {indent + key:40s} {med([t[key] for t in timings]):7.2f}s")
    print(f"  agreement with ours: {agree}")
    print()
    return total


def print_ours(ours: dict[str, list[tuple[float, dict]]], stages: dict, repeats: int) -> None:
    """Our wall times and logged stage timings per --jobs variant, then the re-timed stages."""
    print(
        f"ours: python analyze.py report --dataset DS --family {FAMILY} --out OUT [--jobs N] "
        f"(fresh process each, warm; median of {repeats})"
    )
    labels: list[str] = []
    for runs in ours.values():
        for _, timings in runs:
            names = [WALL_KEY.sub("(wall)", k) for k in timings if not k.startswith("_")]
            labels += [name for name in names if name not in labels]

    def cell(values: list[float]) -> str:
        return f"{med(values):15.2f}s" if values else f"{'-':>16s}"

    print(f"  {'stage (from the timings the report logs)':44s}" + "".join(f"{v:>16s}" for v in ours))
    print(
        f"  {'total wall (process, imports incl.)':44s}" + "".join(cell([w for w, _ in runs]) for runs in ours.values())
    )
    for label in labels:
        row = [
            cell([v for _, t in runs for k, v in t.items() if WALL_KEY.sub("(wall)", k) == label])
            for runs in ours.values()
        ]
        print(f"  {'  ' + label:44s}" + "".join(row))
    print(
        f"  {'  startup + imports (wall - total)':44s}"
        + "".join(cell([w - t["total"] for w, t in runs if "total" in t]) for runs in ours.values())
    )
    chosen = [WALL_KEY.search(k).group(1) for _, t in ours["default"] for k in t if WALL_KEY.search(k)]
    loads = ", ".join(f"{t['_load1']:.2f}" for _, t in ours["default"])
    print(
        f"  default --jobs chose {', '.join(chosen)} (1-min load average before each run: {loads}; "
        "it includes this benchmark's previous runs)"
    )
    print("  'sum over models' = time inside the workers: with several jobs they overlap and include contention")
    print(
        f"  stages re-timed in one process, single-threaded as in the workers (sum over models, "
        f"median of {repeats} after a warm pass):"
    )
    print(f"    {'imports':38s} {stages['imports']:6.2f}s")
    print(f"    {'load (load_spectra)':38s} {stages['load']:6.2f}s")
    for key, value in stages["median"].items():
        print(f"    {key:38s} {value:6.2f}s")
    print(f"    {'UMAP, 1st pass (import + numba JIT)':38s} {stages['first pass UMAP']:6.2f}s")
    print()


def print_identity(hashes: dict[str, dict[str, str]], variants) -> bool:
    """Whether every report run wrote the same tables, and the same figures and index per embedding; hashes if not."""

    def method_of(name: str) -> str:
        return "original" if "method=original" in name else "consensus"

    groups = {"tables": method_of}
    groups["figures"] = groups["index"] = lambda name: f"{method_of(name)}, {'umap' if 'umap' in name else 'pca'}"
    print(f"output identity over {len(hashes)} report runs ({', '.join(variants)}, warm-up included):")
    same = True
    for group, embedding_of in groups.items():
        for embedding in sorted({embedding_of(name) for name in hashes}):
            versions = {h[group] for name, h in hashes.items() if embedding_of(name) == embedding}
            label = f"{group} ({embedding})"
            print(
                f"  {label:16s} {'identical' if len(versions) == 1 else f'DIFFERENT ({len(versions)} versions)'}  "
                f"sha256 {sorted(versions)[0][:16]}..."
            )
            same = same and len(versions) == 1
    if not same:
        for name, h in hashes.items():
            print(f"    {name}: tables {h['tables'][:12]} figures {h['figures'][:12]} index {h['index'][:12]}")
    return same


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--repeats", type=int, default=3, help="timed runs of each command after the warm-up (median reported)"
    )
    parser.add_argument("--pickles", default=str(DEFAULT_PICKLES), help="directory of the legacy Qwen3 pickles")
    parser.add_argument("--skip-baseline", action="store_true", help="time only ours (no ratio against the baseline)")
    parser.add_argument("--minilm", help="MiniLM dataset directory for the cold/warm runs (default: built here)")
    parser.add_argument("--skip-minilm", action="store_true", help="no cold/warm runs on MiniLM")
    parser.add_argument(
        "--methods-only",
        action="store_true",
        help="only the default method and --method original (the issue-13 ratio), no other variants",
    )
    parser.add_argument("--_worker", choices=["baseline", "stages"], help=argparse.SUPPRESS)
    parser.add_argument("--_arg", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._worker == "baseline":
        print(json.dumps(baseline(*args._arg)))
        return
    if args._worker == "stages":
        print(json.dumps(our_stages(args._arg[0], int(args._arg[1]))))
        return

    t_start = time.perf_counter()
    nproc = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    load_start = os.getloadavg()
    repeats = max(1, args.repeats)
    print(
        f"machine: {nproc} usable core(s), load average {' '.join(f'{x:.2f}' for x in load_start)} at start; "
        f"python {sys.version.split()[0]}"
    )
    me = [sys.executable, str(Path(__file__).resolve())]
    variants = {
        "default": [],
        "jobs=1": ["--jobs", "1"],
        f"jobs={nproc}": ["--jobs", str(nproc)],
        "embedding=umap": ["--embedding", "umap"],
        "method=original": ["--method", "original"],
    }
    if args.methods_only:
        variants = {v: variants[v] for v in ("default", "method=original")}
    ours: dict[str, list[tuple[float, dict]]] = {v: [] for v in variants}
    hashes: dict[str, dict[str, str]] = {}
    base_runs: list[tuple[float, dict]] = []
    with tempfile.TemporaryDirectory(prefix="bench_analysis_") as tmp_name:
        tmp = Path(tmp_name)
        dataset = tmp / "dataset"
        t0 = time.perf_counter()
        from qk_spectra_ds.analysis.legacy import import_legacy, legacy_files

        try:
            written = import_legacy(args.pickles, FAMILY, dataset)
        except Exception as exc:  # a missing or unreadable pickle directory
            sys.exit(f"error: cannot import the legacy pickles from {args.pickles}: {exc} (see --pickles)")
        print(
            f"import_legacy: {len(written)} model(s) from {args.pickles} in {time.perf_counter() - t0:.2f}s (not timed below)"
        )

        kept: dict[str, Path] = {}  # the first --method original output: only it has classes.csv and bds.csv (issue 13)

        def run_ours(variant: str, record: bool) -> None:
            out = tmp / f"out{len(hashes) + 1}"
            load = os.getloadavg()[0]
            cmd = [
                sys.executable,
                "analyze.py",
                "report",
                "--dataset",
                str(dataset),
                "--family",
                FAMILY,
                "--out",
                str(out),
            ]
            wall, proc = run_timed(cmd + variants[variant])
            timings = report_timings(proc.stderr)
            if "total" not in timings:
                print(f"warning: no timings line in the report's stderr ({variant})", file=sys.stderr)
            timings["_load1"] = load
            hashes[f"run {len(hashes) + 1} ({variant}{'' if record else ', warm-up'})"] = tree_hashes(out / FAMILY)
            if record:
                ours[variant].append((wall, timings))
            if (
                variant == "method=original" and "original" not in kept
            ):  # the original's tables, for the agreement check
                kept["original"] = out
            elif len(hashes) > 1:  # the first output stays too
                shutil.rmtree(out)

        def run_baseline(record: bool) -> None:
            out = tmp / "baseline_out"
            source = (
                args.pickles if record else str(legacy_files(args.pickles)[0])
            )  # warm-up: one model fills the caches
            wall, proc = run_timed(me + ["--_worker", "baseline", "--_arg", source, str(out)])
            if record:
                base_runs.append((wall, worker_json(proc)))
            shutil.rmtree(out)

        # warm-up, not timed: one report run and one baseline run on the smallest model (numba, font, bytecode caches)
        t0 = time.perf_counter()
        run_ours("default", record=False)
        if not args.skip_baseline:
            run_baseline(record=False)
        print(f"warm-up runs: {time.perf_counter() - t0:.1f}s")
        for _ in range(repeats):  # interleaved, so that background load hits every command alike
            if not args.skip_baseline:
                run_baseline(record=True)
            for variant in variants:
                run_ours(variant, record=True)
        _, stages_proc = run_timed(me + ["--_worker", "stages", "--_arg", str(dataset), str(repeats)])
        stages = worker_json(stages_proc)
        agree = agreement(base_runs[0][1], kept["original"] / FAMILY) if base_runs and "original" in kept else ""
        cold = None
        if not args.skip_minilm:
            minilm = Path(args.minilm) if args.minilm else minilm_dataset(tmp / "minilm")
            cold = cold_warm(minilm, tmp, repeats)

    print()
    b_total = print_baseline(base_runs, agree) if base_runs else None
    print_ours(ours, stages, repeats)
    same = print_identity(hashes, variants)
    if cold is not None:
        print()
        print_cold_warm(cold)
    print(f"\nbenchmark wall time: {time.perf_counter() - t_start:.0f}s\n")

    o_default = med([w for w, _ in ours["default"]])
    o_parallel = med([w for w, _ in ours.get(f"jobs={nproc}", ours["default"])])
    if b_total is not None:
        for v, runs in ours.items():
            o = med([w for w, _ in runs])
            print(f"RATIO baseline/ours ({v}, warm): {b_total / o:.2f}x  ({b_total:.2f}s / {o:.2f}s)")
    o_original = med([w for w, _ in ours["method=original"]])
    verdict = "MET" if o_default <= METHOD_RATIO_TARGET * o_original else "NOT MET"
    print(
        f"RATIO default method (consensus)/--method original: {o_default / o_original:.2f}x  "
        f"({o_default:.2f}s / {o_original:.2f}s; target <= {METHOD_RATIO_TARGET:.0f}x: {verdict})"
    )
    verdict = "MET" if o_default <= TARGET_S else "NOT MET"
    print(
        f"RATIO ours (default)/target: {o_default / TARGET_S:.2f}  ({o_default:.2f}s vs {TARGET_S:.0f}s: {verdict}); "
        f"ours (jobs={nproc})/target: {o_parallel / TARGET_S:.2f}"
    )
    if b_total is not None:
        scaled = o_default * REFERENCE_S / b_total
        print(
            f"RATIO ours (default) scaled to the reference's machine speed (ours x {REFERENCE_S:.0f}s / baseline): "
            f"{scaled:.2f}s = {scaled / TARGET_S:.2f} of the target"
        )
    if cold is not None:
        from qk_spectra_ds.analysis.taxonomy import DEFAULT_EMBEDDING

        for method, t in cold.items():
            verdict = (
                ("MET" if t["cold"][0] <= COLD_TARGET_S else "NOT MET") if method == DEFAULT_EMBEDDING else "no target"
            )
            print(
                f"RATIO MiniLM cold/target (--embedding {method}): {t['cold'][0] / COLD_TARGET_S:.2f}  "
                f"({t['cold'][0]:.2f}s vs {COLD_TARGET_S:.0f}s: {verdict}); warm {med(t['warm']):.2f}s"
            )
    print(
        f"RATIO machine: nproc {nproc}, load average {' '.join(f'{x:.2f}' for x in load_start)} at start, "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} at end"
    )
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()

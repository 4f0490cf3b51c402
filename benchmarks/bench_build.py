#!/usr/bin/env python
"""Builder memory and throughput on a Llama-3.2-1B-shaped synthetic bf16 checkpoint.

Writes (once, into --dir) a two-shard bf16 safetensors checkpoint with every
tensor of a Llama-3.2-1B-shaped model: 16 layers, d_model 2048, 32/8 heads,
d_head 64, MLP 8192, vocab 128256 (~2.5 GB). Then, each in a fresh process:

- memory: peak RSS of building the model minus the process baseline
  (interpreter + imports), with every variant (raw, folded, null and the
  positional spectra, the default) and with ``--variants raw`` alone, next to the
  peak RSS of loading one whole shard with ``safetensors.torch.load_file`` (what
  the original study did);
- throughput: the time split (reading the Q/K bytes, kernel, statistics, writing
  parquet) and end-to-end time as a multiple of (read time + kernel time);
- end to end against the original study's pipeline shape (issue 24), each a fresh
  process timed from its start, interpreter and imports included, runs interleaved:
  ``build_dataset.py --variants raw --offsets none --force`` (raw rows, QK circuit only:
  what the original computes) against loading each whole shard with
  ``safetensors.torch.load_file``, its Q/K in float32, two thin SVDs and a core SVD per
  query head, the six statistics, and a pickle (the original's output). Wall time and
  peak RSS of each (the child's own ``ru_maxrss``), and their ratios.

    python benchmarks/bench_build.py [--dir /tmp/qk-bench-llama1b] [--repeats 3] [--e2e-only]
"""

from __future__ import annotations

import argparse
import json
import statistics
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

SHAPE = dict(layers=16, d_model=2048, heads=32, kv_heads=8, d_head=64, mlp=8192, vocab=128256)


def layer_tensors(layer: int) -> list[tuple[str, tuple[int, ...]]]:
    d, h, hkv, dh, m = SHAPE["d_model"], SHAPE["heads"], SHAPE["kv_heads"], SHAPE["d_head"], SHAPE["mlp"]
    p = f"model.layers.{layer}."
    return [
        (p + "input_layernorm.weight", (d,)),
        (p + "self_attn.q_proj.weight", (h * dh, d)),
        (p + "self_attn.k_proj.weight", (hkv * dh, d)),
        (p + "self_attn.v_proj.weight", (hkv * dh, d)),
        (p + "self_attn.o_proj.weight", (d, h * dh)),
        (p + "post_attention_layernorm.weight", (d,)),
        (p + "mlp.gate_proj.weight", (m, d)),
        (p + "mlp.up_proj.weight", (m, d)),
        (p + "mlp.down_proj.weight", (d, m)),
    ]


def write_shard(path: Path, tensors: list[tuple[str, tuple[int, ...]]], rng: np.random.Generator) -> None:
    """Stream a bf16 safetensors file tensor by tensor (never the whole shard in memory)."""
    header, offset = {}, 0
    for name, shape in tensors:
        size = int(np.prod(shape)) * 2
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    block = (rng.standard_normal(1 << 22, dtype=np.float32) * 0.02).view(np.uint32) >> 16
    block = block.astype(np.uint16).tobytes()  # 8 MB of bf16 noise, tiled for the bulk tensors
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(raw)) + raw)
        for name, shape in tensors:
            n = int(np.prod(shape))
            if "q_proj" in name or "k_proj" in name:  # distinct random weights where the math looks
                w = rng.standard_normal(n, dtype=np.float32) / np.float32(np.sqrt(shape[-1]))
                fh.write((w.view(np.uint32) >> 16).astype(np.uint16).tobytes())
                continue
            remaining = n * 2
            while remaining:
                chunk = block[: min(remaining, len(block))]
                fh.write(chunk)
                remaining -= len(chunk)


def make_checkpoint(directory: Path) -> Path:
    if (directory / "model.safetensors.index.json").exists():
        write_config(directory)
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    d, vocab = SHAPE["d_model"], SHAPE["vocab"]
    half = SHAPE["layers"] // 2
    shards = {
        "model-00001-of-00002.safetensors": [("model.embed_tokens.weight", (vocab, d))]
        + [t for layer in range(half) for t in layer_tensors(layer)],
        "model-00002-of-00002.safetensors": [t for layer in range(half, SHAPE["layers"]) for t in layer_tensors(layer)]
        + [("model.norm.weight", (d,))],
    }
    weight_map = {}
    for filename, tensors in shards.items():
        write_shard(directory / filename, tensors, rng)
        weight_map.update({name: filename for name, _ in tensors})
    write_config(directory)
    (directory / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return directory


def write_config(directory: Path) -> None:
    """Llama-3.2-1B's config (llama3 rope scaling, 131072 positions: 18 default offsets)."""
    config = {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": SHAPE["d_model"],
        "intermediate_size": SHAPE["mlp"],
        "num_hidden_layers": SHAPE["layers"],
        "num_attention_heads": SHAPE["heads"],
        "num_key_value_heads": SHAPE["kv_heads"],
        "head_dim": SHAPE["d_head"],
        "vocab_size": SHAPE["vocab"],
        "torch_dtype": "bfloat16",
        "tie_word_embeddings": True,
        "max_position_embeddings": 131072,
        "rope_theta": 500000.0,
        "rope_scaling": {
            "rope_type": "llama3",
            "factor": 32.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
    }
    (directory / "config.json").write_text(json.dumps(config, indent=1))


CHILD = r"""
import json, resource, sys, time, tempfile
import torch, datasets, safetensors.torch  # the same imports in both children: the baseline
import qk_spectra_ds.builder.pipeline as build
def rss_mb():  # current RSS from /proc, peak from getrusage (both MB)
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 1e6
mode, ckpt = sys.argv[1], sys.argv[2]
baseline = rss_mb()
t0 = time.perf_counter()
out = {}
if mode in ("build", "build_raw"):
    variants = ["raw"] if mode == "build_raw" else None  # None: the default, every variant
    with tempfile.TemporaryDirectory() as tmp:
        r = build.build_model(ckpt, "Bench", tmp, device="cpu", progress=False, force=True, variants=variants)
    out.update(r.timings, bytes_fetched=r.bytes_fetched, checkpoint_bytes=r.checkpoint_bytes)
else:
    tensors = safetensors.torch.load_file(ckpt + "/model-00001-of-00002.safetensors")
    for t in tensors.values():  # use every tensor once, as a computation on the loaded shard would
        t.view(-1)[:: max(1, 4096 // t.element_size())].float().sum()
    out["n_tensors"] = len(tensors)
out["wall"] = time.perf_counter() - t0
out["baseline_mb"] = baseline
out["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3
print("RESULT " + json.dumps(out))
"""


ORIGINAL = r"""
import pickle, sys, tempfile
import torch
from safetensors.torch import load_file
ckpt, layers, heads, kv_heads, d_head = sys.argv[1], *map(int, sys.argv[2:6])
group = heads // kv_heads
def stats(x):  # the original's six statistics along the last axis
    mean, std = x.mean(-1, keepdim=True), x.std(-1, keepdim=True)
    z = (x - mean) / std.clamp_min(1e-9)
    return [x.min(-1, keepdim=True).values, x.max(-1, keepdim=True).values, mean, std,
            (z**3).mean(-1, keepdim=True), (z**4).mean(-1, keepdim=True) - 3]
out = {"singular_values": {}, "eigen_values": {}, "singular_values_stats": {}, "eigen_values_stats": {}}
for shard in ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"):
    tensors = load_file(f"{ckpt}/{shard}")  # the whole shard
    for layer in range(layers):
        name = f"model.layers.{layer}.self_attn."
        if name + "q_proj.weight" not in tensors:
            continue
        q = tensors[name + "q_proj.weight"].float().reshape(heads, d_head, -1)
        k = tensors[name + "k_proj.weight"].float().reshape(kv_heads, d_head, -1).repeat_interleave(group, 0)
        sv = []
        for h in range(heads):  # per head: thin SVDs of W_Q^T and W_K^T, then the core's singular values
            _, s_a, vh_a = torch.linalg.svd(q[h].T, full_matrices=False)
            _, s_b, vh_b = torch.linalg.svd(k[h].T, full_matrices=False)
            sv.append(torch.linalg.svdvals((s_a[:, None] * (vh_a @ vh_b.T)) * s_b[None, :]))
        sv = torch.stack(sv)
        out["singular_values"][layer], out["eigen_values"][layer] = sv.numpy(), (sv**2).numpy()
        out["singular_values_stats"][layer] = [t.numpy() for t in stats(sv)]
        out["eigen_values_stats"][layer] = [t.numpy() for t in stats(sv**2)]
    del tensors
with tempfile.TemporaryDirectory() as tmp, open(f"{tmp}/spectra.pkl", "wb") as fh:
    pickle.dump(out, fh)
"""


def run_timed_rss(argv: list[str], env: dict | None = None) -> dict:
    """Wall time from the process's start to its end, and its own peak RSS in MB (wait4's ru_maxrss)."""
    import os
    import time

    with tempfile.TemporaryFile() as out_f, tempfile.TemporaryFile() as err_f:  # files: no pipe to fill up
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=out_f, stderr=err_f, cwd=Path(__file__).parents[1], env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out_f.seek(0), err_f.seek(0)
        stdout, stderr = out_f.read().decode(), err_f.read().decode()
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"{' '.join(argv[:4])}... failed:\n{stderr[-3000:]}")
    cpu = usage.ru_utime + usage.ru_stime  # less sensitive than wall time to other processes on the machine
    return {"wall": wall, "cpu": cpu, "peak_mb": usage.ru_maxrss / 1e3, "stdout": stdout}


def cli_argv(ckpt: Path, out: Path) -> list[str]:
    """The builder's command for raw rows of the QK circuit without positional spectra (the original's output)."""
    root = Path(__file__).parents[1]
    argv = [
        sys.executable,
        str(root / "build_dataset.py"),
        "--family",
        "Bench",
        "--models",
        str(ckpt),
        "--out",
        str(out),
        "--variants",
        "raw",
        "--offsets",
        "none",
        "--force",
        "--quiet",
    ]
    shown = subprocess.run(argv[:2] + ["--help"], capture_output=True, text=True, check=True)
    help_text = shown.stdout + shown.stderr  # fire shows help on stderr
    if "--circuits" in help_text:  # the OV circuit, when the builder has it, is work the original never did
        argv += ["--circuits", "qk"]
    return argv


def end_to_end(ckpt: Path, repeats: int, original_threads: int | None = None) -> None:
    """The builder's command against the original pipeline shape, interleaved, medians and ratios printed."""
    with tempfile.TemporaryDirectory(prefix="qk-bench-out-") as out:
        end_to_end_in(ckpt, repeats, original_threads, Path(out))


def end_to_end_in(ckpt: Path, repeats: int, original_threads: int | None, out: Path) -> None:
    """:func:`end_to_end` with the builder writing into ``out`` (removed afterwards)."""
    argv = cli_argv(ckpt, out)
    original = [
        sys.executable,
        "-c",
        ORIGINAL,
        str(ckpt),
        str(SHAPE["layers"]),
        str(SHAPE["heads"]),
        str(SHAPE["kv_heads"]),
        str(SHAPE["d_head"]),
    ]
    import os

    env = None
    if original_threads:  # torch's OpenMP/MKL threads spin when the cores are busy: pin them for a shared machine
        env = dict(os.environ, OMP_NUM_THREADS=str(original_threads), MKL_NUM_THREADS=str(original_threads))
    runs: dict[str, list[dict]] = {"builder": [], "original": []}
    for _ in range(repeats):  # interleaved, so that a busy machine slows both alike
        runs["original"].append(run_timed_rss(original, env))
        runs["builder"].append(run_timed_rss(argv))
    med = {
        name: {k: statistics.median(r[k] for r in rs) for k in ("wall", "cpu", "peak_mb")} for name, rs in runs.items()
    }
    summary = [line for line in runs["builder"][-1]["stdout"].splitlines() if line.startswith("built")]
    print(f"end to end ({' '.join(argv[2:3] + argv[4:5] + argv[8:])}), median of {repeats}, interleaved:")
    print("  builder:  " + (summary[0] if summary else "?"))
    for name in ("builder", "original"):
        walls = ", ".join(f"{r['wall']:.2f}" for r in runs[name])
        print(
            f"  {name:8s} wall {med[name]['wall']:.2f}s ({walls}), CPU {med[name]['cpu']:.2f}s, "
            f"peak RSS {med[name]['peak_mb']:.0f} MB"
        )
    threads = f", the original on {original_threads} thread(s)" if original_threads else ""
    time_ratio = med["builder"]["wall"] / med["original"]["wall"]
    cpu_ratio = med["builder"]["cpu"] / med["original"]["cpu"]
    memory_ratio = med["builder"]["peak_mb"] / med["original"]["peak_mb"]
    print(
        f"RATIO end to end: builder / original pipeline shape = {time_ratio:.2f}x time (target <= 0.8x), "
        f"{cpu_ratio:.2f}x CPU time, {memory_ratio:.2f}x peak memory (target <= 0.8x){threads}"
    )


def run_child(mode: str, ckpt: Path) -> dict:
    proc = subprocess.run([sys.executable, "-c", CHILD, mode, str(ckpt)], capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(proc.stderr[-3000:])
    line = [text for text in proc.stdout.splitlines() if text.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT ") :])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dir", default=str(Path(tempfile.gettempdir()) / "qk-bench-llama1b"), help="checkpoint dir (reused)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="build runs (median reported)")
    parser.add_argument("--e2e-only", action="store_true", help="only the end-to-end comparison with the original")
    parser.add_argument("--original-threads", type=int, help="OMP/MKL threads of the original (default: torch's own)")
    args = parser.parse_args()
    ckpt = make_checkpoint(Path(args.dir))
    size = sum(p.stat().st_size for p in ckpt.glob("*.safetensors"))
    print(f"checkpoint {ckpt}: {size / 1e9:.2f} GB bf16, 2 shards")
    end_to_end(ckpt, args.repeats, args.original_threads)
    if args.e2e_only:
        return

    builds = [run_child("build", ckpt) for _ in range(args.repeats)]
    raw_builds = [run_child("build_raw", ckpt) for _ in range(args.repeats)]
    load = run_child("load_file", ckpt)
    med = {k: statistics.median(b[k] for b in builds) for k in builds[0]}
    raw = {k: statistics.median(b[k] for b in raw_builds) for k in raw_builds[0]}
    build_extra = med["peak_mb"] - med["baseline_mb"]
    raw_extra = raw["peak_mb"] - raw["baseline_mb"]
    load_extra = load["peak_mb"] - load["baseline_mb"]
    print(
        f"memory: baseline {med['baseline_mb']:.0f} MB; build peak {med['peak_mb']:.0f} MB (+{build_extra:.0f} MB); "
        f"load_file(one shard) peak {load['peak_mb']:.0f} MB (+{load_extra:.0f} MB)"
    )
    unavoidable = med["read_io"] + med["kernel"]
    print(
        f"time split (median of {args.repeats}): read Q/K {med['read_io']:.2f}s (kernel waited {med['read']:.2f}s of it), "
        f"kernel {med['kernel']:.2f}s, statistics {med['statistics']:.3f}s, write {med['write']:.3f}s, "
        f"end-to-end {med['total']:.2f}s; fetched {med['bytes_fetched'] / 1e6:.1f} MB of {med['checkpoint_bytes'] / 1e6:.0f} MB"
    )
    print(
        f"RATIO memory: build adds {build_extra:.0f} MB over the baseline (target < 300 MB); "
        f"load_file of one shard adds {load_extra:.0f} MB ({load_extra / max(build_extra, 1):.0f}x more)"
    )
    print(f"RATIO throughput: end-to-end / (read + kernel) = {med['total'] / unavoidable:.2f} (target <= 1.25)")
    print(
        f"RATIO variants: peak RSS all variants {med['peak_mb']:.0f} MB / raw only {raw['peak_mb']:.0f} MB = "
        f"{med['peak_mb'] / raw['peak_mb']:.2f}x (target <= 1.5x); over the baseline +{build_extra:.0f} MB vs "
        f"+{raw_extra:.0f} MB; time {med['total']:.1f}s vs {raw['total']:.1f}s ({med['total'] / raw['total']:.1f}x)"
    )


if __name__ == "__main__":
    main()

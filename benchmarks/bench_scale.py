#!/usr/bin/env python
"""Planning a catalogue build: bytes read and estimated time for the largest models, from measured costs.

Measured here, on this machine: the d_head x d_head small problems per head (SVD of the
core and eigenvalues of the cross, numpy LAPACK on one core: what the GPU path hands to
the host's cores) at each model's d_head, and one core's float64 GEMM rate (for the
host-side work: MLA's reader composes its maps in a reduced basis on the CPU).
Counted: the bytes of the Q/K tensors a build reads per layer (the safetensors byte
sizes of the shapes below), and the float64 flops of the factor stage (Gram matrices,
crosses) that runs on the GPU.

Estimated for one H100 (FP64 tensor-core rate ``--gpu-tflops``, default 50 of the
67 peak) with ``--host-cores`` host cores for the small problems, reading at
``--gbps`` gigabits per second: per layer max(read, GPU factors + small problems /
cores) (the next layer is read while this one computes), summed over the layers.

    python benchmarks/bench_scale.py [--gbps 10] [--host-cores 16] [--gpu-tflops 50]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from qk_spectra_ds.builder.raw_numpy import core_problems, single_threaded_blas

MODELS = {
    # Llama-3.1-405B: 126 layers, d_model 16384, 128 query / 8 key heads of 128, bf16
    "Llama-3.1-405B (dense, GQA)": dict(
        layers=126, d_model=16384, heads=128, kv_heads=8, d_head=128, qk_bytes=(128 * 128 + 8 * 128) * 16384 * 2
    ),
    # DeepSeek-V3 (671B MoE, MLA): 61 layers, d_model 7168, 128 heads of 192 (128 nope + 64 rope), FP8 e4m3
    # (+ one float32 scale per 128 x 128 block); per layer q_a (1536 x 7168), q_b (24576 x 1536),
    # kv_a_with_mqa (576 x 7168), kv_b (32768 x 512) read whole
    "DeepSeek-V3 671B (MoE, MLA)": dict(
        layers=61,
        d_model=7168,
        heads=128,
        kv_heads=128,
        d_head=192,
        basis=2112,
        host_flops=2 * 7168 * 2112**2 + 2 * (24576 * 1536 + 16384 * 512) * 2112,
        qk_bytes=sum(o * i * (1 + 4 / 128**2) for o, i in ((1536, 7168), (24576, 1536), (576, 7168), (32768, 512))),
    ),
}


def factor_flops(m: dict) -> float:
    """float64 flops of the factor stage per layer on the GPU (batched GEMMs): Gram matrices of every Q and K head, crosses."""
    dh, d = m["d_head"], m.get("basis", m["d_model"])
    return (m["heads"] + m["kv_heads"]) * 2 * dh * dh * d + m["heads"] * 2 * dh * dh * d


def small_problem_seconds(d_head: int, n: int = 64) -> float:
    """Seconds per head, one core: SVD of a d_head x d_head core and eigenvalues of a cross (median of 3)."""
    rng = np.random.default_rng(0)
    core, cross = rng.standard_normal((n, d_head, d_head)), rng.standard_normal((n, d_head, d_head))
    times = []
    with single_threaded_blas():
        core_problems(core[:2], cross[:2])
        for _ in range(3):
            t0 = time.perf_counter()
            core_problems(core, cross)
            times.append((time.perf_counter() - t0) / n)
    return float(np.median(times))


def core_gflops(n: int = 1024) -> float:
    """One core's float64 GEMM rate here (numpy BLAS on one thread, median of 3), GFLOP/s."""
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((n, n)), rng.standard_normal((n, n))
    times = []
    with single_threaded_blas():
        a @ b
        for _ in range(3):
            t0 = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - t0)
    return 2 * n**3 / float(np.median(times)) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gbps", type=float, default=10.0, help="network bandwidth to the Hub, gigabits per second")
    parser.add_argument("--host-cores", type=int, default=16, help="host CPU cores for the small problems")
    parser.add_argument("--gpu-tflops", type=float, default=50.0, help="sustained float64 rate of the GPU, TFLOP/s")
    args = parser.parse_args()
    rate = core_gflops()
    print(f"this machine: {rate:.1f} GFLOP/s float64 GEMM per core (numpy, one thread)")
    for name, m in MODELS.items():
        per_head = small_problem_seconds(m["d_head"])
        read = m["qk_bytes"] / (args.gbps / 8 * 1e9)
        gpu = factor_flops(m) / (args.gpu_tflops * 1e12)
        small = m["heads"] * per_head / args.host_cores
        host = m.get("host_flops", 0) / (rate * 1e9 * args.host_cores)  # MLA: the reader composes in a reduced basis
        layer = max(read, gpu + small + host)
        total_bytes = m["qk_bytes"] * m["layers"]
        print(
            f"{name}: {m['layers']} layers x {m['qk_bytes'] / 1e6:.0f} MB of Q/K = {total_bytes / 1e9:.1f} GB read; per layer: "
            f"read {read:.2f}s at {args.gbps:g} Gbit/s; GPU factors {factor_flops(m) / 1e9:.0f} GFLOP = {gpu * 1e3:.1f} ms "
            f"at {args.gpu_tflops:g} TFLOP/s; small problems {per_head * 1e3:.2f} ms/head (measured, one core) x "
            f"{m['heads']} heads / {args.host_cores} cores = {small:.2f}s"
            + (f"; host composition {m['host_flops'] / 1e9:.0f} GFLOP = {host:.2f}s" if host else "")
        )
        print(
            f"ESTIMATE {name} on one H100 + {args.host_cores} host cores at {args.gbps:g} Gbit/s: "
            f"{m['layers'] * layer / 60:.1f} min for raw QK rows ({'read-bound' if read >= layer else 'compute-bound'})"
        )


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""Both circuits against QK alone on a Llama-3.1-8B-shaped layer (issue 21), same run, same machine.

Writes (once, into --dir) a bf16 checkpoint of one Llama-3.1-8B-shaped decoder layer's attention
(d_model 4096, 32/8 heads, d_head 128, rope_theta 5e5, max_position_embeddings 131072: every
variant's default offsets) with its norms and an MLP (so the attention is a part of the file).
Then, each build in a fresh process (interleaved, --repeats times), with every variant (raw, folded,
null, positional spectra, matched-null z-scores):

- ``--circuits qk``: the baseline;
- ``--circuits qk,ov``: both circuits.

Reports the median wall time of the build (ModelResult timings' total), the peak RSS of the child
(ru_maxrss) minus its RSS after the imports, and the bytes read against the floor (the bytes of
q_proj, k_proj, v_proj, o_proj and the input norm's gain, once each). Targets: time <= 2.2x,
peak memory <= 1.3x, bytes read <= 1.1x the Q/K/V/O floor.

    python benchmarks/bench_ov.py [--dir /tmp/qk-bench-ov] [--repeats 2] [--layers 1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np

D, H, HKV, DH, MLP = 4096, 32, 8, 128, 14336


def write_model(directory: Path, layers: int) -> None:
    import torch
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    if (directory / "model.safetensors").exists():
        return
    rng = np.random.default_rng(0)
    tensors = {}
    for layer in range(layers):
        p = f"model.layers.{layer}."
        for name, shape in (
            ("self_attn.q_proj", (H * DH, D)),
            ("self_attn.k_proj", (HKV * DH, D)),
            ("self_attn.v_proj", (HKV * DH, D)),
            ("self_attn.o_proj", (D, H * DH)),
            ("mlp.gate_proj", (MLP, D)),
            ("mlp.up_proj", (MLP, D)),
            ("mlp.down_proj", (D, MLP)),
        ):
            tensors[p + name + ".weight"] = torch.from_numpy(rng.standard_normal(shape, dtype=np.float32) * 0.02).to(
                torch.bfloat16
            )
        for name in ("input_layernorm", "post_attention_layernorm"):
            tensors[p + name + ".weight"] = torch.from_numpy(1 + 0.1 * rng.standard_normal(D, dtype=np.float32)).to(
                torch.bfloat16
            )
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    config = {
        "model_type": "llama",
        "hidden_size": D,
        "num_hidden_layers": layers,
        "num_attention_heads": H,
        "num_key_value_heads": HKV,
        "head_dim": DH,
        "intermediate_size": MLP,
        "vocab_size": 128256,
        "max_position_embeddings": 131072,
        "rope_theta": 500000.0,
        "rms_norm_eps": 1e-5,
        "rope_scaling": {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
    }
    (directory / "config.json").write_text(json.dumps(config))


CHILD = r"""
import json, resource, sys, time
import torch, numpy, pyarrow  # the imports, before the baseline
from qk_spectra_ds.builder.pipeline import build_model
from qk_spectra_ds.builder.safetensors_io import Checkpoint
from qk_spectra_ds.builder.weights import open_source
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize()
base = rss()
model, out, circuits = sys.argv[1], sys.argv[2], sys.argv[3].split(",")
t0 = time.perf_counter()
r = build_model(model, "B", out, force=True, progress=False, circuits=circuits)
wall = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
ck = Checkpoint(open_source(model))
qk = ("q_proj.weight", "k_proj.weight", "input_layernorm.weight")  # Llama: no norm on the attention output
wanted = qk + ("v_proj.weight", "o_proj.weight") if "ov" in circuits else qk
floor = sum(i.end - i.start for n, i in ck.tensors.items() if n.endswith(wanted))
print(json.dumps(dict(wall=wall, peak=peak - base, read=r.bytes_fetched, floor=floor, timings=r.timings, rows=r.n_rows)))
"""


def run(model: Path, out: Path, circuits: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(model), str(out), circuits], capture_output=True, text=True, check=False
    )
    if done.returncode:
        raise SystemExit(done.stderr[-2000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default="/tmp/qk-bench-ov")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--layers", type=int, default=1)
    args = parser.parse_args()
    model = Path(args.dir) / "model"
    write_model(model, args.layers)
    runs: dict[str, list[dict]] = {"qk": [], "qk,ov": []}
    for _ in range(args.repeats):
        for circuits, done in runs.items():
            done.append(run(model, Path(args.dir) / "out", circuits))
            r = done[-1]
            print(
                f"--circuits {circuits:6s} wall {r['wall']:.2f}s peak +{r['peak'] / 1e6:.0f} MB read {r['read'] / 1e6:.1f} MB "
                f"(floor {r['floor'] / 1e6:.1f} MB) rows {r['rows']} | "
                + ", ".join(f"{k} {v:.2f}s" for k, v in r["timings"].items())
            )
    med = {c: {k: statistics.median(r[k] for r in rs) for k in ("wall", "peak")} for c, rs in runs.items()}
    both = runs["qk,ov"][-1]
    print(f"time ratio (qk,ov / qk): {med['qk,ov']['wall'] / med['qk']['wall']:.2f}x (target <= 2.2x)")
    print(f"peak memory ratio: {med['qk,ov']['peak'] / med['qk']['peak']:.2f}x (target <= 1.3x)")
    print(f"bytes read / Q,K,V,O floor: {both['read'] / both['floor']:.3f}x (target <= 1.1x)")


if __name__ == "__main__":
    main()

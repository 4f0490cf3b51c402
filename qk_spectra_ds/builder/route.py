"""Which kernel a layer goes to, and whether a build imports torch at all.

Raw rows without positional spectra on the CPU run through numpy alone
(:mod:`.raw_numpy`): such a build never imports torch, whose import alone takes
longer than the whole kernel of a 1B model on a 2-core machine. A GPU, the folded
and null variants and positional spectra (rotary frequencies bit-identical to
transformers' float32 torch code) go through the torch kernel (:mod:`.kernel`),
whose raw numbers come from the same numpy functions on the CPU.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from .. import schema

GPU_DEVICE_NODES = ("/dev/nvidiactl", "/dev/nvidia0", "/dev/kfd", "/dev/dxg")
"""Device files a CUDA (NVIDIA), ROCm (AMD, torch.cuda too) or WSL GPU needs: without any, torch sees no GPU."""


def numpy_route(variants: Sequence[str], offsets: Sequence[int] | None, device: str) -> bool:
    """True when a layer's rows need no torch: raw rows only, no positional spectra, on the CPU."""
    return device == "cpu" and tuple(variants) == (schema.VARIANT_RAW,) and offsets is not None and not tuple(offsets)


def default_device() -> str:
    """cuda if torch sees a GPU, else cpu; on Linux without any GPU device file, cpu without importing torch."""
    if sys.platform.startswith("linux") and not any(os.path.exists(node) for node in GPU_DEVICE_NODES):
        return "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def layer_spectra(q, k, plan, device: str) -> dict:
    """Every variant's spectra of a layer from its float32/float64 numpy Q and K blocks: variant -> spectra.

    ``plan`` None: raw rows through numpy alone (:func:`numpy_route`); else the torch kernel
    (:func:`.kernel.qk_layer_variants`) on ``device``, the blocks moved there as float64.
    """
    if plan is None:
        from .raw_numpy import raw_layer_spectra

        return {schema.VARIANT_RAW: raw_layer_spectra(q, k)}
    import torch

    from .kernel import qk_layer_variants

    q = torch.from_numpy(q).to(device=device, dtype=torch.float64)
    k = torch.from_numpy(k).to(device=device, dtype=torch.float64)
    return qk_layer_variants(q, k, plan)

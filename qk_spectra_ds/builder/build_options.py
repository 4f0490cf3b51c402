"""A build's options, checked once: which rows (variants, circuits, offsets, null seed, behaviour) and how (device, ...).

:func:`.pipeline.build_family` checks them (:meth:`BuildOptions.checked`) before any model is
read and passes one :class:`BuildOptions` down to :func:`.pipeline.build_model`; the options
that change rows are the skip key's (:data:`.skip_key.ROW_OPTIONS`). Each check is one line
naming the flag and what to give instead.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

from .. import schema
from ..errors import BuildError, QKSpectraError
from .route import default_device

DEFAULT_VARIANTS = schema.BUILT_VARIANTS


@dataclass(frozen=True)
class BuildOptions:
    """The keywords of :func:`.pipeline.build_model` and :func:`.pipeline.build_family`, gathered.

    None for ``variants``, ``offsets``, ``circuits`` and ``device``: what each model allows
    (every variant and circuit its checkpoint can give, offsets up to its context, cuda if
    present). ``behaviour``: a :class:`.probes.ProbeSpec` (``--behaviour``), or None.
    """

    device: str | None = None
    force: bool = False
    progress: bool = True
    token: str | bool | None = None
    variants: Sequence[str] | None = None
    offsets: Sequence[int] | None = None
    null_seed: int = schema.NULL_SEED
    circuits: Sequence[str] | None = None
    behaviour: Any = None

    @classmethod
    def checked(
        cls, *, variants=None, offsets=None, null_seed=None, circuits=None, device=None, **rest: Any
    ) -> BuildOptions:
        """The options with each one checked, in this order (one line for a wrong one), before any model is read."""
        variants = None if variants is None else check_variants(variants)  # None: every variant a model allows
        offsets = check_offsets(offsets)
        null_seed = check_null_seed(null_seed)
        circuits = None if circuits is None else check_circuits(circuits)  # None: every circuit a checkpoint allows
        device = check_device(device)
        return cls(variants=variants, offsets=offsets, null_seed=null_seed, circuits=circuits, device=device, **rest)

    @classmethod
    def given(cls, options: BuildOptions | None, **keywords: Any) -> BuildOptions:
        """``options`` if given (then every keyword must be left at its default), else the keywords gathered."""
        gathered = cls(**keywords)
        if options is None:
            return gathered
        default = cls()
        both = [f.name for f in fields(cls) if not _same(getattr(gathered, f.name), getattr(default, f.name))]
        if both:
            raise TypeError(f"build_model() got options and the keyword(s) {', '.join(both)}: give one or the other")
        return options


def _same(a: Any, b: Any) -> bool:
    """``a is b``, or equal values of one type (never an array comparison)."""
    return a is b or (type(a) is type(b) and a == b)


def check_variants(variants: Sequence[str] | None) -> tuple[str, ...]:
    """The variants to build, in canonical order (default raw, folded, null); one line for an unknown one."""
    if variants is None:
        return DEFAULT_VARIANTS
    chosen = [str(v).strip() for v in variants]
    unknown = [v for v in chosen if v not in schema.BUILT_VARIANTS]
    if unknown or not chosen:
        raise BuildError(f"--variants {','.join(chosen)!r}: choose among {', '.join(schema.BUILT_VARIANTS)}")
    return tuple(v for v in schema.BUILT_VARIANTS if v in chosen)


def check_circuits(circuits: Sequence[str] | None) -> tuple[str, ...]:
    """The circuits to build, in canonical order (default qk, ov); one line for an unknown one."""
    if circuits is None:
        return schema.CIRCUITS
    chosen = [str(c).strip() for c in circuits]
    unknown = [c for c in chosen if c not in schema.CIRCUITS]
    if unknown or not chosen:
        raise BuildError(f"--circuits {','.join(chosen)!r}: choose among {', '.join(schema.CIRCUITS)}")
    return tuple(c for c in schema.CIRCUITS if c in chosen)


def check_offsets(offsets: Sequence[int] | None) -> tuple[int, ...] | None:
    """Offsets as given (None: the model's default), checked: whole numbers >= 0, sorted, without repeats."""
    if offsets is None:
        return None
    try:
        values = [int(str(o).strip()) for o in offsets if str(o).strip().lower() != "none"]
    except ValueError:
        raise BuildError(
            f"--offsets {','.join(map(str, offsets))!r}: give whole numbers >= 0 (e.g. 0,1,16,256) or none"
        ) from None
    if any(v < 0 or v >= 2**31 for v in values):
        raise BuildError(f"--offsets {','.join(map(str, offsets))!r}: offsets must be whole numbers from 0 to 2^31 - 1")
    return tuple(sorted(set(values)))


def check_null_seed(seed: int | str | None) -> int:
    """The null variant's seed (None: :data:`schema.NULL_SEED`): a whole number from 0 to 2^63 - 1, else one line."""
    if seed is None:
        return schema.NULL_SEED
    text = str(seed).strip()
    if isinstance(seed, bool) or not text.isdigit() or int(text) > schema.NULL_SEED_MAX:
        raise BuildError(f"--null-seed {seed!r}: give a whole number from 0 to 2^63 - 1 (default {schema.NULL_SEED})")
    return int(text)


def require_build_extra():
    """The torch module, or a one-line error naming what to install (the analysis half runs without it)."""
    try:
        import threadpoolctl  # noqa: F401 - the kernel's BLAS thread control, also from the build extra
        import torch  # deliberately lazy: a raw CPU build never imports torch (:mod:`.route`)
    except ImportError as exc:
        missing = getattr(exc, "name", None) or "torch"
        raise QKSpectraError(
            f"building needs {missing}, which cannot be imported ({exc}): install the build extra, "
            "pip install 'qk-spectra-ds[build]'"
        ) from None
    return torch


_DEVICE = re.compile(r"cpu|cuda(:\d+)?")


def check_device(device: str | None, torch=None) -> str:
    """The device to compute on: ``device`` if torch can use it (None: cuda if present, else cpu), else a one-line error.

    torch is imported only for a cuda device, or to look for one where GPU device files exist (:mod:`.route`).
    """
    if device is None:
        return default_device()
    if not _DEVICE.fullmatch(str(device)):
        raise QKSpectraError(f"--device {device!r} is not cpu, cuda or cuda:N (N the index of a GPU)")
    if device.startswith("cuda"):
        torch = torch or require_build_extra()
        if not torch.cuda.is_available():
            raise QKSpectraError(f"--device {device} was asked for but torch sees no CUDA device: use --device cpu")
        count = torch.cuda.device_count()
        if int(device.partition(":")[2] or 0) >= count:
            raise QKSpectraError(f"--device {device}: torch sees {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
    return device


def compute_device(device: str | None) -> str:
    """The device a model's kernel runs on (None: cuda if torch sees one, else cpu); cuda without a GPU is one line."""
    device = device or default_device()
    if device.startswith("cuda") and not require_build_extra().cuda.is_available():
        raise QKSpectraError("--device cuda was asked for but torch sees no CUDA device: use --device cpu")
    return device

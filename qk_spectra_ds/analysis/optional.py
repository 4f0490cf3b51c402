"""The analysis's optional dependencies: umap-learn (``--embedding umap``) and statsmodels (``--method original``).

The ``analysis`` extra runs the default method without them; the flag that needs one checks for it before any
work and, when it is missing, says in one line which extra to install.
"""

from __future__ import annotations

import importlib.util

from ..errors import AnalysisError

PACKAGES = {"umap": ("umap-learn", "umap"), "statsmodels": ("statsmodels", "original")}
"""Importable module -> (the package that provides it, the extra of qk-spectra-ds that installs it)."""


def available(module: str) -> bool:
    """Whether ``module`` can be imported (found without importing it: umap's import alone takes seconds)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def require(module: str, needed_by: str) -> None:
    """Nothing if ``module`` is installed, else a one-line :class:`AnalysisError` naming the extra to install."""
    if not available(module):
        package, extra = PACKAGES[module]
        raise AnalysisError(
            f"{needed_by} needs {package}, which is not installed: "
            f"pip install 'qk-spectra-ds[{extra}]' (or leave the flag out)"
        )

#!/usr/bin/env python
"""``python build_dataset.py --family NAME ...``: the same as the installed ``qk-spectra-build`` command.

A thin shim over :mod:`qk_spectra_ds.builder.cli` (run ``python build_dataset.py --help``).
"""

import sys

from qk_spectra_ds.builder.cli import build, cli  # noqa: F401 - build (the flags) for introspection

if __name__ == "__main__":
    sys.exit(cli())

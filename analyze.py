#!/usr/bin/env python
"""``python analyze.py COMMAND ...``: the same as the installed ``qk-spectra-analyze`` command.

A thin shim over :mod:`qk_spectra_ds.analysis.cli` (run ``python analyze.py --help``).
"""

import sys

from qk_spectra_ds.analysis.cli import COMMANDS, main  # noqa: F401 - COMMANDS for introspection

if __name__ == "__main__":
    sys.exit(main())

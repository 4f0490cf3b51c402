"""Classify attention heads from a published QK-spectra dataset (no model weights, no torch).

Commands (``python analyze.py COMMAND --help`` for the flags of each):

  clusters       classification A per model: histograms, KMeans, UMAP, gamma fits, JSD
  boxplots       classification B per model: statistics by layer, BDS test, spline
  taxonomy       one set of classes across all models of a config, shares by model and depth
  report         all of the above plus an index.md linking every figure and table
  import_legacy  convert the original study's pickles into a schema-v1 dataset directory
  compare        one model in two datasets/variants head by head; any metric against relative depth

Flags are checked against the command before any work: an unknown flag (the closest valid one is
named), a value of the wrong type or an unusable ``--out`` stops at once with one ``error:`` line.
Values are taken as typed (``--family 1e3`` is "1e3"). For an unexpected error, set
``QK_SPECTRA_DEBUG=1`` to see its traceback.

Outputs go to ``<out>/<family>/``: ``ESDs/<model>.png``,
``plots/<STAT>/<model>_<STAT>_box.png``, ``taxonomy/*.png``, ``tables/*.csv``,
``index.md``.

Example::

  python analyze.py report --dataset ./qk-spectra --family Qwen3 --out analysis
  python analyze.py clusters --dataset user/qk-spectra --family Qwen3 --revision v1.0.0 --models Qwen3-0.6B,Qwen3-4B
"""

import sys
import warnings

from ..cli_util import call_cli, program_name, run_cli
from .cli_commands import COMMANDS
from .cli_flags import LIST_FLAGS, MINIMUMS


def _setup_warnings() -> None:
    """Warnings as one line each (``warning: ...``) on stderr; call inside ``warnings.catch_warnings()``."""

    def show(message, category, filename, lineno, file=None, line=None):
        print(f"warning: {message}", file=sys.stderr)

    warnings.showwarning = show
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI: flags are checked against the command's signature before any work, errors are one line."""

    def run() -> None:
        with warnings.catch_warnings():
            _setup_warnings()
            call_cli(
                COMMANDS,
                argv,
                name=program_name("analyze.py"),
                list_flags=LIST_FLAGS,
                minimums=MINIMUMS,
                output_dirs=("out",),
            )

    return run_cli(run)

"""Reproduce the DINO-QPM paper's table on CUB-200-2011 or Stanford Cars (see docs/datasets.md).

    python benchmarks/paper_table.py --dataset cub --root ~/datasets --cache-dir cache/ --device cuda

The harness is ``qpm_sklearn._paper_table`` (installed with the package, so ``qpm-sklearn table``
runs the same); this script writes its JSON to ``benchmarks/results/`` unless ``--out`` says
otherwise. ``--help`` lists the rows and options.
"""

from __future__ import annotations

import sys
from pathlib import Path

from qpm_sklearn import _paper_table
from qpm_sklearn._paper_table import *  # noqa: F403 -- the harness's names, for tests and scripts

RESULTS = Path(__file__).resolve().parent / "results"


def parse_args(argv=None):
    return _paper_table.parse_args(argv, default_out_dir=RESULTS)


def main(argv=None) -> int:
    return _paper_table.main(argv, default_out_dir=RESULTS)


if __name__ == "__main__":
    sys.exit(main())

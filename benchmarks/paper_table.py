"""Reproduce the DINO-QPM paper's table on CUB-200-2011 or Stanford Cars (see docs/datasets.md).

    python benchmarks/paper_table.py --dataset cub --root ~/datasets --embedding-cache cache/ --device cuda

The same as ``qpm-sklearn table`` (the harness behind that command), except that the JSON goes to
``benchmarks/results/`` unless ``--out`` says otherwise. ``--help`` lists the rows and options.
"""

from __future__ import annotations

import sys
from pathlib import Path

from qpm_sklearn.cli import _table

RESULTS = Path(__file__).resolve().parent / "results"


def parse_args(argv=None):
    """The harness's arguments, ``--out`` defaulting to ``benchmarks/results/paper_table-<dataset>.json``."""
    return _table.parse_args(argv, default_out_dir=RESULTS)


def main(argv=None) -> int:
    """Run the harness; returns its exit status."""
    return _table.main(argv, default_out_dir=RESULTS)


if __name__ == "__main__":
    sys.exit(main())

"""``circuitfind-report``'s command line: its arguments, parsed before anything heavy is imported.

The report itself (``report.py``) imports matplotlib, pandas and, through the ROC code, torch:
seconds on a shared machine.  ``--help`` and bad arguments are answered from here first, in a
fraction of a second, as ``circuitfind --help`` is.
"""

from __future__ import annotations

import argparse
from pathlib import Path

DESCRIPTION = "run folders -> ROC points, AUC table, plots (roc_points.csv, auc.csv, roc_<task>.png, ...)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="circuitfind-report", description=DESCRIPTION)
    parser.add_argument("dirs", nargs="+", type=Path, metavar="DIR", help="folders holding run folders")
    parser.add_argument("--out", type=Path, default=None, help="where to write (default: the first DIR)")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)  # --help and bad arguments end here, before the imports below
    from .report import command

    command(args.dirs, args.out)


if __name__ == "__main__":
    main()

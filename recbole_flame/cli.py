"""Command line: ``python run_recbole_flame.py --model=FLAME --dataset=ml-100k [--key=value ...]``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from recbole_flame.utils.errors import UserError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="run_recbole_flame.py",
        description="Train and test a recbole_flame or RecBole model with RecBole's pipeline. "
        "Any other --key=value sets a RecBole config key (e.g. --epochs=5 --data_path=DIR).",
        allow_abbrev=False,
    )
    parser.add_argument("--model", "-m", default="BPR", help="model name (ours or RecBole's)")
    parser.add_argument("--dataset", "-d", default="ml-100k", help="dataset name")
    parser.add_argument(
        "--config_files", default=None, help="config yaml files, separated by spaces"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, overrides = parser.parse_known_args(argv)
    config_files = args.config_files.split() if args.config_files else None
    try:
        from recbole_flame.quick_start import run

        run(args.model, args.dataset, config_files, cmd_args=overrides)
    except UserError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted", file=sys.stderr)
        return 130
    return 0

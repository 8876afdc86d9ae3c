"""The ``recommend`` and ``export`` verbs of the command line (see :mod:`recbole_flame.cli`).

recbole-flame recommend --checkpoint=PATH --users=196,305 --k=10 [--out=recs.csv]
recbole-flame recommend --checkpoint=PATH --sequence=50,172,133 --k=10
recbole-flame export --checkpoint=PATH --to=sasrec|onnx|torchscript [--out=PATH]
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from recbole_flame.cli import OneLineParser
from recbole_flame.utils.errors import UserError


def _program() -> str:
    from recbole_flame.cli import program_name

    return program_name()


def _comma_list(text: str, what: str) -> list[str]:
    values = [v.strip() for v in text.split(",") if v.strip()]
    if not values:
        raise UserError(f"{what} is empty; give comma-separated ids, e.g. {what}=196,305")
    return values


def build_recommend_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog=f"{_program()} recommend",
        description="Top-k items from a trained model (a checkpoint written by this package), "
        "for known users or for a new sequence of items: one row per (user, rank) with user, "
        "rank, item (external ids) and score. The items a user already has are ranked out.",
        allow_abbrev=False,
    )
    parser.add_argument("--checkpoint", required=True, metavar="PATH", help="a model file (.pth)")
    who = parser.add_argument_group("whom to recommend for (one of)")
    who.add_argument("--users", default=None, help="comma-separated user ids, e.g. 196,305")
    who.add_argument("--users_file", default=None, metavar="FILE", help="one user id a line")
    who.add_argument(
        "--sequence",
        default=None,
        help="a new user's items, oldest first, e.g. 50,172,133 (sequential models)",
    )
    parser.add_argument(
        "--timestamps",
        default=None,
        help="with --sequence, for a time-aware model (TiM4Rec): one time per item",
    )
    parser.add_argument("--k", type=int, default=10, help="items per user (default 10)")
    parser.add_argument(
        "--candidates", default=None, metavar="FILE", help="rank only these items (one id a line)"
    )
    parser.add_argument(
        "--keep_history",
        action="store_true",
        help="do not rank out the items the user (the sequence) already has",
    )
    parser.add_argument("--out", default=None, metavar="FILE", help="also write the rows as CSV")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:1, ...")
    parser.add_argument(
        "--data_path", default=None, help="the folder holding the dataset now (default: the run's)"
    )
    return parser


def recommend_main(argv: Sequence[str]) -> None:
    from recbole_flame.inference.recommendation import read_id_file, recommend

    args = build_recommend_parser().parse_args(argv)
    given = [o for o in ("users", "users_file", "sequence") if getattr(args, o) is not None]
    if len(given) != 1:
        raise UserError(
            "give exactly one of --users=ID,ID, --users_file=FILE or --sequence=ITEM,ITEM"
            + (f" (got {', '.join('--' + g for g in given)})" if given else "")
        )
    if args.timestamps is not None and args.sequence is None:
        raise UserError("--timestamps goes with --sequence (a known user's times are known)")
    users = sequences = timestamps = None
    if args.users is not None:
        users = _comma_list(args.users, "--users")
    elif args.users_file is not None:
        users = read_id_file(args.users_file, "--users_file")
    else:
        sequences = [_comma_list(args.sequence, "--sequence")]
        if args.timestamps is not None:
            try:
                timestamps = [[float(t) for t in _comma_list(args.timestamps, "--timestamps")]]
            except ValueError as exc:
                raise UserError(f"--timestamps must be numbers, got '{args.timestamps}'") from exc
    candidates = read_id_file(args.candidates, "--candidates") if args.candidates else None
    rows = recommend(
        args.checkpoint,
        users=users,
        sequences=sequences,
        k=args.k,
        candidates=candidates,
        keep_history=args.keep_history,
        timestamps=timestamps,
        device=args.device,
        data_path=args.data_path,
    )
    print(rows.to_string(index=False))
    if args.out:
        out = Path(args.out)
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            rows.to_csv(out, index=False)
        except OSError as exc:
            raise UserError(f"--out={args.out} cannot be written ({exc.strerror or exc})") from exc
        print(f"written: {out} ({len(rows)} rows)")


def build_export_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog=f"{_program()} export",
        description="Write a trained model for use outside this package: --to=sasrec writes "
        "FLAME's learnable network as a checkpoint RecBole's own SASRec loads; --to=onnx and "
        "--to=torchscript write the inference network (SASRec, FLAME, TiM4Rec) as item-id "
        "sequence + length -> user vector, with the item embedding table beside it.",
        allow_abbrev=False,
    )
    parser.add_argument("--checkpoint", required=True, metavar="PATH", help="a model file (.pth)")
    parser.add_argument("--to", required=True, help="sasrec, onnx or torchscript")
    parser.add_argument(
        "--out",
        default=None,
        metavar="PATH",
        help="the file to write (default: beside the checkpoint, with -sasrec.pth, .onnx or .pt)",
    )
    parser.add_argument(
        "--data_path", default=None, help="the folder holding the dataset now (default: the run's)"
    )
    return parser


def export_main(argv: Sequence[str]) -> None:
    from recbole_flame.inference.exporting import export

    args = build_export_parser().parse_args(argv)
    written = export(args.checkpoint, args.to, args.out, data_path=args.data_path)
    for path in written:
        print(f"written: {path}")

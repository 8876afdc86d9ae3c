"""Command line: verbs, each with its own options and ``--help``, and RecBole's flat form.

recbole-flame train --model=FLAME --dataset=ml-100k [--key=value ...]           # one run
recbole-flame compare --model=FLAME,SASRec,BERT4Rec --seeds=1,2,3               # compare
recbole-flame search --model=FLAME --hyper=FLAME --trials=8                     # Ray Tune
recbole-flame run-spec benchmarks/experiments/flame_ml100k.yaml [--summary]     # experiment
recbole-flame recommend --checkpoint=PATH --users=196,305 --k=10                # top-k
recbole-flame export --checkpoint=PATH --to=sasrec|onnx|torchscript             # export
recbole-flame convert events.csv --dataset=events --data_path=DIR               # own data

The flat form, as RecBole users type it, does the same without a verb:
python run_recbole_flame.py --model=FLAME --dataset=ml-100k [--key=value ...]
python run_recbole_flame.py --model=FLAME,SASRec --seeds=1,2,3 | --hyper=FLAME | --spec=FILE
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from recbole_flame.utils.errors import UserError


def program_name() -> str:
    """``recbole-flame`` for the console script and ``python -m recbole_flame``, else the
    script's name."""
    called = os.path.normpath(sys.argv[0]) if sys.argv else ""
    if os.path.basename(called) == "recbole-flame" or called.endswith(
        os.path.join("recbole_flame", "__main__.py")
    ):
        return "recbole-flame"
    return "run_recbole_flame.py"


class OneLineParser(argparse.ArgumentParser):
    """argparse, with a bad option reported in one line (what was wrong and where the options
    are) instead of the usage block."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}; see {self.prog} --help\n")


def _data_options(parser: argparse.ArgumentParser, models_help: str) -> None:
    parser.add_argument("--model", "-m", default="BPR", help=models_help)
    parser.add_argument("--dataset", "-d", default="ml-100k", help="dataset name")
    parser.add_argument("--config_files", default=None, help="config yaml files, space-separated")


def _search_options(group) -> None:
    group.add_argument(
        "--hyper",
        default=None,
        help="hyper file (RecBole format) to search over: a path, or a model name for the file "
        "shipped with this package (--hyper=SASRec)",
    )
    group.add_argument("--trials", type=int, default=8, help="number of trials")
    group.add_argument("--cpus_per_trial", type=float, default=None, help="default: all CPUs")
    group.add_argument(
        "--gpus_per_trial", type=float, default=None, help="default: 1 if CUDA is available, else 0"
    )
    group.add_argument("--max_concurrent", type=int, default=None, help="trials at once")
    group.add_argument("--ray_address", default=None, help="existing Ray cluster; default: local")
    group.add_argument("--name", default=None, help="experiment name (default: MODEL-DATASET)")


def _output_option(group, default: str) -> None:
    group.add_argument("--output_dir", default=None, help=f"default: {default}")


def _distributed_options(parser: argparse.ArgumentParser) -> None:
    ddp = parser.add_argument_group(
        "distributed training (a single run over several processes, as RecBole's run_recbole.py)"
    )
    ddp.add_argument(
        "--nproc", type=int, default=1, help="processes on this machine (one per GPU on CUDA)"
    )
    ddp.add_argument(
        "--world_size",
        type=int,
        default=-1,
        help="processes on all machines (default: --nproc, one machine)",
    )
    ddp.add_argument("--ip", default="localhost", help="address of the machine of rank 0")
    ddp.add_argument("--port", default="5678", help="port rank 0 listens on")
    ddp.add_argument(
        "--group_offset",
        type=int,
        default=0,
        help="rank of this machine's first process (the processes started on machines before it)",
    )


def _seeds_option(group, spec: bool = False) -> None:
    group.add_argument(
        "--seeds",
        default=None,
        help="comma-separated seeds, e.g. 1,2,3" + (" (instead of the spec's)" if spec else ""),
    )


def _spec_options(group) -> None:
    group.add_argument(
        "--only", nargs="+", default=None, metavar="LABEL", help="run only these labels of the spec"
    )
    group.add_argument("--threads", type=int, default=None, help="torch threads")
    group.add_argument(
        "--summary",
        action="store_true",
        help="train nothing: write and print summary.md from the finished runs, and stop",
    )
    group.add_argument(
        "--progress",
        action="store_true",
        help="write in_progress-<run>.md (learning curve so far) for each unfinished run, and stop",
    )
    group.add_argument(
        "--park",
        action="store_true",
        help="as --progress, and pack each unfinished run's state into parked/<run>.tar (to "
        "commit, so a fresh clone resumes it)",
    )
    group.add_argument("--out", default=None, help="default: benchmarks/results/<spec name>")


_SPEC_HELP = (
    "an experiment spec (benchmarks/experiments/*.yaml): train its unfinished runs to early "
    "stopping, resuming stopped ones, then write and print summary.md"
)
_KEYS_HELP = "Any other --key=value sets a RecBole config key (e.g. --epochs=5 --data_path=DIR)."


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog=program_name(),
        description="Train and test a recbole_flame or RecBole model with RecBole's pipeline, "
        "tune it with Ray Tune (--hyper), compare several (--model=A,B,C), or run an experiment "
        f"spec to early stopping (--spec). {_KEYS_HELP} The same as verbs, each with its own "
        "--help: train, compare, search, run-spec, recommend, export, convert.",
        allow_abbrev=False,
    )
    _data_options(parser, "model name (ours or RecBole's); A,B,C compares")
    tune = parser.add_argument_group("Ray Tune search (with --hyper)")
    _search_options(tune)
    _output_option(tune, "ray_results or comparison")
    parser.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=None,
        metavar="PATH",
        help="a single run: continue from its PATH-last.pth state (printed in the log); with "
        "--hyper: resume the interrupted search (no PATH)",
    )
    _distributed_options(parser)
    _seeds_option(parser.add_argument_group("comparison (with --model=A,B,...)"))
    experiment = parser.add_argument_group(
        "experiment (with --spec; run from the repository root: results go to "
        "benchmarks/results/<spec name>/ under the current directory)"
    )
    experiment.add_argument("--spec", default=None, metavar="FILE", help=_SPEC_HELP)
    _spec_options(experiment)
    return parser


# The options that only an experiment (--spec) reads, as the parser names them.
_EXPERIMENT_ONLY = ("only", "threads", "summary", "progress", "park", "out")
# The options of a distributed single run.
_DISTRIBUTED = ("nproc", "world_size", "ip", "port", "group_offset")


def _seeds(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError as exc:
        raise UserError(f"--seeds must be comma-separated integers, got '{text}'") from exc


def build_convert_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog=f"{program_name()} convert",
        description="Write RecBole atomic files (DATA_PATH/NAME/NAME.inter) from a sequence file "
        "(one line per user: user item item ...) or an interaction table (CSV, TSV, parquet).",
        allow_abbrev=False,
    )
    parser.add_argument("file", help="the file to convert")
    parser.add_argument(
        "--from",
        dest="source",
        default=None,
        help="sequences | csv | tsv | parquet (default: from the file's suffix)",
    )
    parser.add_argument("--dataset", required=True, help="the dataset's name (its folder)")
    parser.add_argument("--data_path", default="dataset", help="folder that will hold NAME/")
    parser.add_argument("--user", default=None, help="the user column (default: found by name)")
    parser.add_argument("--item", default=None, help="the item column (default: found by name)")
    parser.add_argument("--time", default=None, help="the time column (default: found by name)")
    return parser


def _convert(argv: Sequence[str]) -> None:
    from recbole_flame.data.convert import convert

    args = build_convert_parser().parse_args(argv)
    done = convert(
        args.file, args.dataset, args.data_path, args.source, args.user, args.item, args.time
    )
    print(done.summary())
    print(
        f"train on it: {program_name()} --model=SASRec --dataset={args.dataset} "
        f"--data_path={args.data_path}"
    )


def _recommend(argv: Sequence[str]) -> None:
    from recbole_flame.inference.commands import recommend_main

    recommend_main(argv)


def _export(argv: Sequence[str]) -> None:
    from recbole_flame.inference.commands import export_main

    export_main(argv)


def _verb_parser(verb: str, description: str) -> argparse.ArgumentParser:
    return OneLineParser(
        prog=f"{program_name()} {verb}", description=description, allow_abbrev=False
    )


def _train_verb(argv: Sequence[str]) -> None:
    parser = _verb_parser(
        "train", f"Train and test one model with RecBole's pipeline. {_KEYS_HELP}"
    )
    _data_options(parser, "model name (ours or RecBole's)")
    parser.add_argument(
        "--resume", default=None, metavar="PATH", help="continue from a run's -last.pth state"
    )
    _distributed_options(parser)
    args, overrides = parser.parse_known_args(argv)
    _train(args, overrides)


def _compare_verb(argv: Sequence[str]) -> None:
    parser = _verb_parser(
        "compare",
        "Train and test several models on the same split and seeds with the same training "
        f"settings, and write the comparison (table, pair tests, csv, json, plot). {_KEYS_HELP}",
    )
    _data_options(parser, "comma-separated models, e.g. FLAME,SASRec,GRU4Rec")
    _seeds_option(parser)
    _output_option(parser, "comparison")
    args, overrides = parser.parse_known_args(argv)
    models = [m.strip() for m in args.model.split(",") if m.strip()]
    _compare(args, models, _seeds(args.seeds), _config_files(args), overrides)


def _search_verb(argv: Sequence[str]) -> None:
    parser = _verb_parser(
        "search", f"A Ray Tune search over a hyper file, the best trial tested once. {_KEYS_HELP}"
    )
    _data_options(parser, "the model to tune")
    _search_options(parser)
    _output_option(parser, "ray_results")
    parser.add_argument("--resume", action="store_true", help="resume the interrupted search")
    args, overrides = parser.parse_known_args(argv)
    if not args.hyper:
        raise UserError("search needs --hyper=FILE (or a model name for its shipped file)")
    if "," in args.model:
        raise UserError("search tunes one model; give a single --model")
    _search(args, overrides)


def _run_spec_verb(argv: Sequence[str]) -> None:
    parser = _verb_parser(
        "run-spec",
        "Run an experiment spec (from the repository root: results go to "
        "benchmarks/results/<spec name>/ under the current directory).",
    )
    parser.add_argument("spec", metavar="SPEC", help=_SPEC_HELP)
    _seeds_option(parser, spec=True)
    _spec_options(parser)
    args = parser.parse_args(argv)  # a spec holds every setting: no --key=value
    _run_experiment(args, _seeds(args.seeds))


# Verbs with their own options; the flat form (--model=X --dataset=Y ...) is RecBole's and stays.
VERBS = {
    "train": _train_verb,
    "compare": _compare_verb,
    "search": _search_verb,
    "run-spec": _run_spec_verb,
    "recommend": _recommend,
    "export": _export,
    "convert": _convert,
}


def _config_files(args) -> list[str] | None:
    return args.config_files.split() if args.config_files else None


def _train(args, overrides: Sequence[str]) -> None:
    """One run (RecBole's ``run_recbole``), over several processes with ``--nproc``."""
    from recbole_flame.quick_start import run

    if args.resume is True:
        raise UserError(
            "--resume needs the run's state file for a single run: --resume=PATH "
            "(the file ending in -last.pth named in the run's log)"
        )
    run(
        args.model,
        args.dataset,
        _config_files(args),
        cmd_args=overrides,
        resume=args.resume,
        nproc=args.nproc,
        world_size=args.world_size,
        ip=args.ip,
        port=args.port,
        group_offset=args.group_offset,
    )


def _run(prog: str, action, *action_args) -> int:
    """Run ``action``; bad input is one line on stderr and exit code 2, Ctrl-C 130."""
    try:
        action(*action_args)
    except UserError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        print(f"{prog}: {exc or 'interrupted'}", file=sys.stderr)
        return 130
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in VERBS:
        return _run(f"{program_name()} {argv[0]}", VERBS[argv[0]], argv[1:])
    parser = build_parser()
    args, overrides = parser.parse_known_args(argv)
    return _run(parser.prog, _flat, parser, args, overrides)


def _flat(parser: argparse.ArgumentParser, args, overrides: Sequence[str]) -> None:
    """The flat form: which verb its options ask for, and the combinations it refuses."""
    models = [m.strip() for m in args.model.split(",") if m.strip()]
    seeds = _seeds(args.seeds)
    distributed = [f"--{k}" for k in _DISTRIBUTED if getattr(args, k) != parser.get_default(k)]
    if distributed and (args.spec is not None or args.hyper or len(models) > 1 or seeds):
        raise UserError(
            f"{', '.join(distributed)}: for a single run only (one --model, no --spec, "
            "--hyper or --seeds)"
        )
    if args.spec is not None:
        _experiment(parser, args, seeds, overrides)
    elif given := [f"--{k}" for k in _EXPERIMENT_ONLY if getattr(args, k) not in (None, False)]:
        raise UserError(f"{', '.join(given)}: only with --spec=FILE (an experiment spec)")
    elif args.hyper:
        if len(models) != 1:
            raise UserError("--hyper tunes one model; give a single --model")
        _search(args, overrides)
    elif len(models) > 1 or seeds:
        _compare(args, models, seeds, _config_files(args), overrides)
    else:
        if models:
            args.model = models[0]
        _train(args, overrides)


def resolve_hyper(value: str) -> str:
    """A hyper file's path: ``value`` itself when it is a file, else the file this package ships
    for that model name (``SASRec``, ``FLAME.hyper``, ``hyper/SASRec.hyper``)."""
    from recbole_flame.utils.paths import hyper_file, shipped_hyper_names

    if os.path.isfile(value):
        return value
    shipped = hyper_file(os.path.basename(value))
    if shipped is not None:
        return str(shipped)
    raise UserError(
        f"--hyper={value}: no such file, and no shipped hyper file of that name (shipped: "
        f"{', '.join(shipped_hyper_names())}); give a path or one of those names"
    )


def _search(args, overrides: Sequence[str]) -> None:
    from recbole_flame.tuning.search import run_search, settings_from_cli, trials_markdown

    args.hyper = resolve_hyper(args.hyper)
    if args.output_dir is None:
        args.output_dir = "ray_results"
    summary = run_search(settings_from_cli(args, overrides))
    print(trials_markdown(summary))
    print(f"\nbest config: {summary['best_config']} (valid {summary['best_valid_score']})")
    print(f"test result of the best config: {summary['test_result']}")
    print(f"written: {summary['experiment']}/search_results.json and trials.csv")


def _experiment(
    parser: argparse.ArgumentParser, args, seeds: list[int] | None, overrides: Sequence[str]
) -> None:
    """``--spec``: the experiment engine (:func:`recbole_flame.experiment.runs.run_experiment`)
    instead of a single run; a spec holds every setting, so other settings are refused."""
    mixed = [*overrides]
    for option in ("model", "dataset", "hyper", "config_files", "resume"):
        if getattr(args, option) != parser.get_default(option):
            mixed.append(f"--{option}")
    if mixed:
        raise UserError(
            f"--spec runs an experiment from its spec alone; {', '.join(mixed)} cannot be combined "
            "with it (put settings in the spec's base or a run's config)"
        )
    _run_experiment(args, seeds)


def _run_experiment(args, seeds: list[int] | None) -> None:
    from recbole_flame.experiment.runs import run_experiment

    run_experiment(
        args.spec,
        only=args.only,
        seeds=seeds,
        threads=args.threads,
        summary=args.summary,
        progress=args.progress,
        park_runs=args.park,
        out=args.out,
    )


def _compare(args, models, seeds, config_files, overrides: Sequence[str]) -> None:
    from recbole_flame.config import parse_cmd_args
    from recbole_flame.experiment.compare import markdown, run_comparison

    parsed = parse_cmd_args(overrides)
    if not seeds and "seed" in parsed:
        seeds = [int(parsed.pop("seed"))]
    output = args.output_dir or "comparison"
    summary = run_comparison(models, args.dataset, seeds, config_files or (), parsed, output)
    print(markdown(summary))
    print(f"\nwritten: {output}/comparison.md, .csv, .json and convergence.png")


if __name__ == "__main__":
    sys.exit(main())

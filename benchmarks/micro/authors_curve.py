"""The first epochs of FLAME's stage 2 in its authors' own code beside ours: their ``train.py``
(github.com/woo-joo/FLAME_SIGIR26, run from a checkout of it, its own data and seed) against
the per-epoch validation of our run in their recipe (experiment ``flame_beauty_authors_prefix``,
the same released frozen SASRec and seed), valid NDCG@20 and HR@20 epoch by epoch.

    python benchmarks/micro/authors_curve.py --authors PATH --python V/bin/python [--epochs=3] [--threads=1]

``--python`` is an interpreter with their scipy (1.11, their env.yml; their evaluator indexes a
sparse matrix with a torch tensor, which later scipy rejects): ``python -m venv V &&
V/bin/pip install torch==2.13.0 numpy==1.26.4 scipy==1.11.4``; the script checks it first.

Their script runs unchanged in a subprocess, from a temporary copy only where this Python is
older than 3.12 (their ``train.py`` nests the same quotes in an f-string, which 3.11 cannot
parse; that one quote is swapped). Their printed metrics are in percent; the table shows
fractions, as RecBole's. Our curve is read from the experiment's result file (the run must have
finished), so the two never share a process or a random stream. Train times are recorded but
not compared: the two runs need not have had the machine alone. Their log is kept beside the
result (``authors_train.log``); ``--authors_log FILE`` tabulates a saved log without running
their code again (when our run had not finished at the first call).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from recbole_flame.experiment.output import provenance, write_json
from recbole_flame.experiment.report import authors_curve_table
from recbole_flame.utils.errors import UserError

RESULTS = Path("benchmarks/results/flame_beauty_authors_prefix")
EPOCH = re.compile(r"\[Epoch\s+(\d+)\] Train \(\s*([\d.]+)s\) \| Loss\s*:\s*([-\d.]+)")
METRIC = re.compile(r"\|\s*((?:HR|NDCG)@\d+)\s*:\s*([\d.]+)")


def parse_authors_log(text: str) -> list[dict]:
    """Per epoch of their log: train seconds, loss and the validation metrics (fractions)."""
    epochs: list[dict] = []
    block = None  # the metrics being read: an epoch's validation, or None (the test's)
    for line in text.splitlines():
        if m := EPOCH.search(line):
            epochs.append(
                {"epoch": int(m[1]), "train_seconds": float(m[2]), "loss": float(m[3]), "valid": {}}
            )
            block = epochs[-1]["valid"]
        elif "Test" in line or "Loading best" in line:
            block = None
        if block is not None and (m := METRIC.search(line)):
            block[m[1].lower()] = float(m[2]) / 100
    return epochs


#: What their evaluator does with scipy (a CSR matrix indexed by a torch tensor): scipy 1.11,
#: their env.yml's, accepts it; later versions raise, but only after a whole training epoch.
PREFLIGHT = (
    "import scipy.sparse, torch; "
    "scipy.sparse.csr_matrix((3, 2))[torch.tensor([1, 2]) - 1].toarray()"
)


def run_authors(
    authors: Path, dataset: str, epochs: int, seed: int, threads: int, python: str, log: Path
) -> str:
    """Their train.py's stdout for ``epochs`` epochs, run by ``python`` and written to ``log``
    as it goes (raises with its stderr if it fails)."""
    script = authors / "train.py"
    if not script.is_file():
        raise UserError(f"--authors {authors}: no train.py there; give a FLAME_SIGIR26 checkout")
    check = subprocess.run([python, "-c", PREFLIGHT], capture_output=True, text=True)
    if check.returncode:
        raise UserError(
            f"--python {python} cannot run their evaluator (a scipy sparse matrix indexed by a "
            "torch tensor fails with its scipy); give --python an interpreter with their "
            "scipy 1.11 (env.yml): python -m venv V && V/bin/pip install torch==2.13.0 "
            "numpy==1.26.4 scipy==1.11.4"
        )
    with tempfile.TemporaryDirectory() as tmp:
        if sys.version_info < (3, 12):
            source = script.read_text().replace("{best['epoch']}", '{best["epoch"]}')
            script = Path(tmp) / "train.py"
            script.write_text(source)
        env = {
            **os.environ,
            "PYTHONPATH": str(authors),
            "OMP_NUM_THREADS": str(threads),
            "MKL_NUM_THREADS": str(threads),
        }
        cmd = [python, "-u", str(script), "--dataset", dataset]
        cmd += ["--num_epoch", str(epochs), "--seed", str(seed)]
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("w") as out:  # written as they print: an interrupted run keeps its epochs
            done = subprocess.run(
                cmd, cwd=authors, env=env, stdout=out, stderr=subprocess.PIPE, text=True
            )
    if done.returncode:
        raise RuntimeError(f"their train.py failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return log.read_text()


def our_curve(seed: int) -> tuple[list[dict], str]:
    """Our run's per-epoch validation (valid_history) and where it was read from."""
    path = RESULTS / f"FLAME-seed{seed}.json"
    if path.is_file():
        return json.loads(path.read_text())["result"]["valid_history"], str(path)
    raise UserError(
        f"{path} is missing: run the experiment flame_beauty_authors_prefix (seed {seed}) first"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--authors", type=Path, required=True, help="a FLAME_SIGIR26 checkout")
    parser.add_argument("--dataset", default="amazon-beauty")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--python", default=sys.executable, help="the interpreter for their code (their scipy)"
    )
    parser.add_argument(
        "--authors_log", type=Path, help="their log saved by an earlier call (not run again)"
    )
    parser.add_argument("--out", default="benchmarks/results/micro/authors_curve/result.json")
    args = parser.parse_args()
    start = time.perf_counter()
    saved = Path(args.out).with_name("authors_train.log")
    try:
        if args.authors_log is not None:
            log = args.authors_log.read_text()
        else:
            log = run_authors(
                args.authors.resolve(),
                args.dataset,
                args.epochs,
                args.seed,
                args.threads,
                args.python,
                saved,
            )
        ours, source = our_curve(args.seed)
    except (UserError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        if saved.is_file() and args.authors_log is None:
            print(f"their log is saved: rerun with --authors_log {saved}", file=sys.stderr)
        return 2
    report = {
        **provenance(),
        "dataset": args.dataset,
        "seed": args.seed,
        "threads": args.threads,
        "authors_python": args.python,
        "authors_commit": subprocess.run(
            ["git", "-C", str(args.authors), "rev-parse", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
        or "unknown",
        "authors": parse_authors_log(log),
        "authors_log": log,
        "ours_from": source,
        "ours": [
            {
                "epoch": h["epoch"],
                "valid": h["valid_result"],
                "cumulative_train_seconds": h["train_seconds"],
            }
            for h in ours[: args.epochs]
        ],
        "wall_seconds": time.perf_counter() - start,
    }
    write_json(args.out, report)
    print(authors_curve_table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())

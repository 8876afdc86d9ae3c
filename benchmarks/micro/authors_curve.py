"""The first epochs of FLAME's stage 2 in its authors' own code beside ours: their ``train.py``
(github.com/woo-joo/FLAME_SIGIR26, run from a checkout of it, its own data and seed) against
the per-epoch validation of our run in their recipe (experiment ``flame_beauty_authors_prefix``,
the same released frozen SASRec and seed), valid NDCG@20 and HR@20 epoch by epoch.

    python benchmarks/micro/authors_curve.py --authors PATH --python V/bin/python [--epochs=3] [--threads=1]

Their ``--num_epoch`` is also their annealing length R, so it is passed as the recipe's 200
(``--anneal_epochs``) and their process is stopped after ``--epochs`` validations; a first
version passed ``--num_epoch 3``, which annealed their ``lambda_r`` to 1e-5 within 3 epochs.

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

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from common import run

from recbole_flame.experiment.output import markdown_table
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
    authors: Path,
    dataset: str,
    epochs: int,
    anneal_epochs: int,
    seed: int,
    threads: int,
    python: str,
    log: Path,
) -> str:
    """Their train.py's stdout up to its ``epochs``-th validation, run by ``python`` and
    written to ``log`` as it goes (raises with its stderr if it fails).

    Their ``--num_epoch`` is both the epoch cap and the annealing length R of ``lambda_r``
    (``self.R = args.num_epoch`` in their FLAME), so it is given as ``anneal_epochs`` (the
    recipe's 200) and the process is stopped once ``epochs`` validations are in: a run capped
    at 3 epochs would anneal ``lambda_r`` to 1e-5 by its third."""
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
        cmd += ["--num_epoch", str(anneal_epochs), "--seed", str(seed)]
        return stream_until_validations(cmd, authors, env, log, epochs)


def stream_until_validations(
    cmd: list[str], cwd: Path, env: dict[str, str], log: Path, epochs: int
) -> str:
    """Run ``cmd``, writing its stdout to ``log`` line by line (an interrupted run keeps its
    epochs), and stop it once ``epochs`` validations are complete (their NDCG@20 line, the
    last metric they print, read); returns what it printed. Raises with its stderr if it
    fails before that."""
    log.parent.mkdir(parents=True, exist_ok=True)
    text = []
    with log.open("w") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(
            cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=err, text=True
        )
        stopped = False
        for line in proc.stdout:
            out.write(line)
            out.flush()
            text.append(line)
            done = [e for e in parse_authors_log("".join(text)) if "ndcg@20" in e["valid"]]
            if len(done) >= epochs:
                proc.terminate()
                stopped = True
                break
        proc.stdout.close()
        code = proc.wait()
        if code and not stopped:
            err.seek(0)
            raise RuntimeError(f"their train.py failed ({code}):\n{err.read()[-2000:]}")
    return "".join(text)


def our_curve(seed: int) -> tuple[list[dict], str]:
    """Our run's per-epoch validation (valid_history) and where it was read from."""
    path = RESULTS / f"FLAME-seed{seed}.json"
    if path.is_file():
        return json.loads(path.read_text())["result"]["valid_history"], str(path)
    raise UserError(
        f"{path} is missing: run the experiment flame_beauty_authors_prefix (seed {seed}) first"
    )


def table(report: dict[str, Any]) -> str:
    """The table of ``benchmarks/micro/authors_curve.py``'s result: per epoch, valid NDCG@20
    and HR@20 of the authors' train.py and of our run in their recipe."""
    theirs = {e["epoch"]: e for e in report["authors"]}
    rows = []
    for entry in report["ours"]:
        epoch = entry["epoch"]
        their = theirs.get(epoch, {"valid": {}, "loss": "-"})
        rows.append(
            [
                epoch,
                their["valid"].get("ndcg@20", "-"),
                entry["valid"].get("ndcg@20", "-"),
                their["valid"].get("hr@20", "-"),
                entry["valid"].get("hit@20", "-"),
                their["loss"],
            ]
        )
    headers = [
        "epoch",
        "authors' train.py: valid NDCG@20",
        "ours: valid NDCG@20",
        "authors': valid HR@20",
        "ours: valid HR@20",
        "authors': train loss",
    ]
    machine = report.get("machine") or {}
    note = (
        f"\n\n`{report.get('command', '?')}` at commit {str(report.get('commit', '?'))[:7]} "
        f"(theirs at {str(report.get('authors_commit', '?'))[:7]}), seed {report.get('seed')}, "
        f"{report.get('threads')} thread(s), {machine.get('cpus', '?')} CPUs, torch "
        f"{machine.get('torch', '?')}; ours from `{report.get('ours_from', '?')}`"
    )
    return markdown_table(headers, rows) + note


def arguments(parser) -> None:
    parser.add_argument("--authors", type=Path, required=True, help="a FLAME_SIGIR26 checkout")
    parser.add_argument("--dataset", default="amazon-beauty")
    parser.add_argument("--epochs", type=int, default=3, help="validations to compare")
    parser.add_argument(
        "--anneal_epochs",
        type=int,
        default=200,
        help="their --num_epoch, which is also their lambda_r annealing length R (the recipe's)",
    )
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument(
        "--python", default=sys.executable, help="the interpreter for their code (their scipy)"
    )
    parser.add_argument(
        "--authors_log", type=Path, help="their log saved by an earlier call (not run again)"
    )


def measure(args, save) -> dict[str, Any]:
    saved = Path(args.out or "authors_train.log").with_name("authors_train.log")
    try:
        if args.authors_log is not None:
            log = args.authors_log.read_text()
        else:
            log = run_authors(
                args.authors.resolve(),
                args.dataset,
                args.epochs,
                args.anneal_epochs,
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
        raise SystemExit(2) from None
    return {
        "dataset": args.dataset,
        "seed": args.seed,
        "anneal_epochs": args.anneal_epochs,
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
    }


if __name__ == "__main__":
    sys.exit(
        run(
            __doc__,
            measure,
            table,
            out="benchmarks/results/micro/authors_curve/result.json",
            arguments=arguments,
        )
    )

"""Data preparation, training and a validation pass as the data grows: prefix samples built on
the fly (``prefix_loader: onthefly``) against RecBole's materialised ones (``recbole``), on
synthetic data shaped like amazon-beauty, up to 100 million interactions.

    python benchmarks/micro/prefix_scaling.py --sizes=1e6,1e7,1e8 --loaders=onthefly,recbole \
        --steps=60 --epoch_to_end=1e8

The data. Users with lengths drawn from the bundled amazon-beauty's user lengths (5-core: 5 to
204, mean 8.9), items drawn from its 12,101 items by their popularity there, each user's
timestamps its positions 0, 1, 2, ... (as the bundled file's). Users grow with the size, the
item catalogue stays Beauty's, so a training step (CE over all items) is Beauty's step at any
size. The columns are generated in memory and handed to RecBole's ``SequentialDataset`` where
its file reader would (``_load_data``): from there on everything is RecBole's pipeline and this
package's (id remapping, sort, the split, the loaders, SASRec, the trainer's evaluation).
RecBole's reading of the atomic file itself is not part of it (its Python CSV engine and string
tokens are a cost of their own, the same for both loaders).

Each (size, loader) runs in a fresh process; the parent watches its memory and stops it if the
machine's available memory falls under ``--reserve_gb`` (the result then says so). In the child:

* preparation: RecBole's dataset processing of the columns, then the splits and the three
  loaders (``data_preparation``, or this package's ``prefix_data_preparation``): its wall time
  and its peak resident memory (VmHWM after ``5 > /proc/self/clear_refs`` before it starts, so
  the interpreter and the generated columns are in it, and said beside it);
* training: SASRec with the FLAME paper's settings (d 64, 2 blocks, 2 heads, dropout 0.5,
  L 50, batch 256, CE over all items, packed), ``--steps`` optimisation steps after 5 warm-up
  steps, each with the building of its batch: seconds per 1,000 steps from their mean; with
  ``--epoch_to_end`` at that size, every remaining batch of the epoch is then built (not
  trained), so the epoch's data runs to its end, and the epoch's time is estimated as its
  batches times the mean step; peak memory over all of it;
* a full-sort validation pass over the first ``--eval_users`` validation users (the trainer's
  ``evaluate``): its seconds and peak memory.

Timings depend on what else runs on the machine: the result records the load average before
each child.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
from common import child_command, run

ROOT = Path(__file__).resolve().parents[2]
BEAUTY = ROOT / "recbole_flame" / "datasets" / "amazon-beauty" / "amazon-beauty.inter.gz"
FIELDS = {"user_id": "token", "item_id": "token", "timestamp": "float"}
SETTINGS = {  # the FLAME paper's SASRec (recbole_flame/properties/model/FLAME.yaml)
    "MAX_ITEM_LIST_LENGTH": 50,
    "hidden_size": 64,
    "inner_size": 256,
    "n_layers": 2,
    "n_heads": 2,
    "hidden_dropout_prob": 0.5,
    "attn_dropout_prob": 0.5,
    "loss_type": "CE",
    "train_batch_size": 256,
    "eval_batch_size": 256,
    "learning_rate": 1e-3,
    "metrics": ["Hit", "NDCG"],
    "topk": [10, 20],
    "valid_metric": "NDCG@20",
    "user_inter_num_interval": None,
    "item_inter_num_interval": None,
    "seed": 42,
    "gpu_id": "",
    "use_gpu": False,
    "state": "ERROR",
    "show_progress": False,
}


# --- the synthetic data ----------------------------------------------------------------------------
def beauty_shape() -> tuple[np.ndarray, np.ndarray]:
    """The bundled amazon-beauty's user lengths and item popularity (probabilities)."""
    with gzip.open(BEAUTY, "rt") as f:
        frame = pd.read_csv(f, sep="\t")
    users = frame.iloc[:, 0].value_counts().to_numpy()
    items = frame.iloc[:, 1].value_counts().to_numpy()
    return users, items / items.sum()


def synthetic_columns(size: int, seed: int = 0) -> pd.DataFrame:
    """About ``size`` interactions shaped like amazon-beauty (module docstring), user by user."""
    lengths, popularity = beauty_shape()
    rng = np.random.default_rng(seed)
    user_len = rng.choice(lengths, size=max(1, round(size / lengths.mean())))
    total = int(user_len.sum())
    users = np.repeat(np.arange(1, len(user_len) + 1, dtype=np.int64), user_len)
    starts = np.repeat(np.cumsum(user_len) - user_len, user_len)
    times = (np.arange(total, dtype=np.int64) - starts).astype(np.float64)
    del starts
    items = rng.choice(len(popularity), size=total, p=popularity).astype(np.int64) + 1
    return pd.DataFrame({"user_id": users, "item_id": items, "timestamp": times}, copy=False)


# --- memory ------------------------------------------------------------------------------------------
def status_gb(key: str, pid: int | str = "self") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 2**20
    return 0.0


def available_gb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 2**20
    return 0.0


def reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # the kernel's peak RSS := current RSS


# --- one measurement, in its own process -----------------------------------------------------------
def stage(name: str) -> None:
    print(f"stage: {name}", file=sys.stderr, flush=True)


def child(payload: dict[str, Any]) -> dict:
    """One (size, loader) measurement (the module docstring), in a fresh process."""
    import torch
    from common import train_step
    from recbole.data import data_preparation
    from recbole.data.dataset import SequentialDataset
    from recbole.utils import FeatureSource, FeatureType, get_trainer, init_seed

    from recbole_flame.config import Config
    from recbole_flame.data.packed import lay_out_in_loader
    from recbole_flame.data.prefix import PrefixSamples, PrefixView, prefix_data_preparation
    from recbole_flame.utils.registry import get_model

    args = SimpleNamespace(**payload)
    torch.set_num_threads(args.threads)
    out: dict = {"size": args.size, "loader": args.loader}
    stage("generating")
    start = time.perf_counter()
    pending = [synthetic_columns(args.size)]
    out["generate_s"] = time.perf_counter() - start
    out["interactions"] = len(pending[0])
    out["users"] = int(pending[0]["user_id"].iloc[-1])

    class Columns(SequentialDataset):
        """RecBole's sequential dataset, its interactions handed over where its reader of the
        atomic file would leave them (a DataFrame of typed columns)."""

        def _load_data(self, token, dataset_path):
            for field, kind in FIELDS.items():
                self.field2source[field] = FeatureSource.INTERACTION
                self.field2type[field] = FeatureType(kind)
                self.field2seqlen[field] = 1
                if kind == "float":
                    self.field2bucketnum[field] = 2
            self.inter_feat = pending.pop()
            self.user_feat = self.item_feat = None

    work = Path(tempfile.mkdtemp(prefix="prefix_scaling_"))
    os.chdir(work)  # RecBole writes log_tensorboard/ and saved/ to the current directory
    settings = {
        **SETTINGS,
        "prefix_loader": args.loader,
        "data_path": str(work),
        "checkpoint_dir": str(work / "saved"),
    }
    config = Config("SASRec", "synthetic-beauty", config_dict=settings)
    out["rss_before_gb"] = status_gb("VmRSS")
    stage("preparing")
    reset_peak()
    start = time.perf_counter()
    init_seed(config["seed"], config["reproducibility"])
    dataset = Columns(config)
    out["dataset_s"] = time.perf_counter() - start
    if args.loader == "onthefly":
        train, valid, _ = prefix_data_preparation(config, dataset)
    else:
        train, valid, _ = data_preparation(config, dataset)
    out["prepare_s"] = time.perf_counter() - start
    out["splits_s"] = out["prepare_s"] - out["dataset_s"]
    out["prepare_peak_gb"] = status_gb("VmHWM")
    out["rss_prepared_gb"] = status_gb("VmRSS")
    out["items"] = dataset.item_num - 1
    out["train_samples"] = len(train._dataset)
    out["steps_per_epoch"] = len(train)

    stage("training")
    init_seed(config["seed"], config["reproducibility"])
    model = get_model("SASRec")(config, train._dataset)
    torch.autograd.set_detect_anomaly(False)  # importing RecBole's SINE switches it on
    if getattr(model, "packing", False):
        lay_out_in_loader(train, config)
    trainer = get_trainer(config["MODEL_TYPE"], "SASRec")(config, model)
    reset_peak()
    warmup, build, step = 5, [], []
    to_end = args.size >= args.epoch_to_end
    epoch_start = time.perf_counter()
    batches = iter(train)
    seen = 0
    while True:
        start = time.perf_counter()
        batch = next(batches, None)
        built = time.perf_counter() - start
        if batch is None:
            break
        seen += 1
        if seen <= warmup + args.steps:
            start = time.perf_counter()
            train_step(model, trainer.optimizer, batch)
            if seen > warmup:
                build.append(built)
                step.append(time.perf_counter() - start)
        elif not to_end:
            break
    per_step = float(np.mean(build) + np.mean(step))
    out["train"] = {
        "steps_timed": len(step),
        "per_1000_steps_s": 1000 * per_step,
        "build_per_1000_steps_s": 1000 * float(np.mean(build)),
        "epoch_batches_built": seen,
        "epoch_to_end": to_end and seen == len(train),
        "epoch_wall_s": time.perf_counter() - epoch_start,
        "epoch_estimate_s": per_step * len(train),
        "peak_gb": status_gb("VmHWM"),
    }

    stage("evaluating")
    users = min(args.eval_users, len(valid._dataset))
    view = valid._dataset.inter_feat
    if isinstance(view, PrefixView):
        first = PrefixView(
            view.sequences, PrefixSamples.explicit(view.samples.all_targets()[:users])
        )
    else:
        first = view[np.arange(users)]
    part = type(valid)(config, valid._dataset.copy(first), None, shuffle=False)
    reset_peak()
    start = time.perf_counter()
    result = trainer.evaluate(part, load_best_model=False)
    out["eval"] = {
        "users": users,
        "seconds": time.perf_counter() - start,
        "peak_gb": status_gb("VmHWM"),
        "ndcg@20": float(result["ndcg@20"]),
    }
    out["status"] = "done"
    return out


# --- the parent: one child per (size, loader), watched ---------------------------------------------
def run_child(size: int, loader: str, args) -> dict:
    payload = {
        "size": size,
        "loader": loader,
        "steps": args.steps,
        "eval_users": args.eval_users,
        "threads": args.threads,
        "epoch_to_end": args.epoch_to_end,
    }
    command = child_command(__file__, payload, args.threads)
    record = {"size": size, "loader": loader, "load_average_before": os.getloadavg()}
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    start = time.perf_counter()
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env
    )
    watch = {"max_rss_gb": 0.0, "stopped": None}

    def watchdog() -> None:
        while proc.poll() is None:
            try:
                watch["max_rss_gb"] = max(watch["max_rss_gb"], status_gb("VmRSS", proc.pid))
            except (FileNotFoundError, ProcessLookupError):
                return
            left = available_gb()
            if left < args.reserve_gb:
                watch["stopped"] = (
                    f"stopped at {watch['max_rss_gb']:.1f} GB resident: the machine had "
                    f"{left:.1f} GB available left (reserve {args.reserve_gb} GB)"
                )
                proc.send_signal(signal.SIGKILL)
                return
            time.sleep(0.2)

    thread = threading.Thread(target=watchdog, daemon=True)
    thread.start()
    stdout, stderr = proc.communicate()
    thread.join()
    record["wall_s"] = time.perf_counter() - start
    record["max_rss_seen_gb"] = watch["max_rss_gb"]
    stages = [line[7:] for line in stderr.splitlines() if line.startswith("stage: ")]
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    if proc.returncode == 0 and lines:
        record.update(json.loads(lines[-1]))
    else:
        tail = [line for line in stderr.splitlines() if line.strip()][-3:]
        memory = any("MemoryError" in line for line in tail) or proc.returncode == -9
        record["status"] = watch["stopped"] or (
            "out of memory" if memory else f"failed (exit {proc.returncode})"
        )
        record["stage"] = stages[-1] if stages else None
        record["error_tail"] = tail
    return record


def recbole_layout_note(size: int) -> str:
    """Why RecBole's loader is not started at ``size``: what its rows alone hold."""
    lengths, _ = beauty_shape()
    samples = size * (1 - 1 / lengths.mean())  # every interaction but each user's first
    # item ids (int64) and timestamps (float32) padded to L, in the whole set and in the splits
    need = 2 * samples * SETTINGS["MAX_ITEM_LIST_LENGTH"] * (8 + 4) / 2**30
    return f"not run: its padded item and time lists alone hold {need:.0f} GB"


def gb(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def table(report: dict) -> str:
    from recbole_flame.experiment.output import markdown_table

    rows = []
    for entry in report["runs"]:
        done = entry.get("status") == "done"
        train, evaluation = entry.get("train", {}), entry.get("eval", {})
        rows.append(
            [
                f"{entry['size']:.0e}".replace("e+0", "e"),
                entry["loader"],
                entry.get("interactions", "-"),
                entry.get("train_samples", "-"),
                gb(entry.get("prepare_s")) if done else "-",
                gb(entry.get("prepare_peak_gb")) if done else entry["status"],
                gb(train.get("per_1000_steps_s")),
                gb(train.get("build_per_1000_steps_s")),
                gb(train.get("peak_gb")),
                f"{train['epoch_wall_s']:.0f}" if train.get("epoch_to_end") else "-",
                f"{train['epoch_estimate_s'] / 3600:.2f}" if train.get("epoch_to_end") else "-",
                f"{evaluation['seconds']:.1f}" if evaluation else "-",
                gb(evaluation.get("peak_gb")),
            ]
        )
    headers = [
        "size",
        "loader",
        "interactions",
        "training samples",
        "preparation s",
        "preparation peak GB",
        "s per 1,000 steps",
        "of which batch building s",
        "training peak GB",
        "the epoch's batches built to its end, s",
        "epoch estimate h (batches x mean step)",
        "validation s (10,000 users)",
        "validation peak GB",
    ]
    return markdown_table(headers, rows)


def arguments(parser) -> None:
    parser.add_argument("--sizes", default="1e6,1e7,1e8")
    parser.add_argument("--loaders", default="onthefly,recbole")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--eval_users", type=int, default=10_000)
    parser.add_argument(
        "--epoch_to_end", type=float, default=math.inf, help="from this size on, build the epoch"
    )
    parser.add_argument("--reserve_gb", type=float, default=2.5)
    parser.add_argument(
        "--skip_recbole_from",
        type=float,
        default=math.inf,
        help="do not start RecBole's loader from this size on (its layout would not fit)",
    )


def measure(args, save) -> dict[str, Any]:
    report: dict[str, Any] = {"settings": SETTINGS, "runs": []}
    meminfo = Path("/proc/meminfo").read_text().splitlines()
    total = next(line for line in meminfo if line.startswith("MemTotal:"))
    report["memory_total_gb"] = int(total.split()[1]) / 2**20
    for size in (int(float(s)) for s in args.sizes.split(",")):
        for loader in args.loaders.split(","):
            if loader == "recbole" and size >= args.skip_recbole_from:
                report["runs"].append(
                    {"size": size, "loader": loader, "status": recbole_layout_note(size)}
                )
                continue
            record = run_child(size, loader, args)
            report["runs"].append(record)
            print(json.dumps(record), flush=True)
            save(report)
    return report


if __name__ == "__main__":
    sys.exit(
        run(
            __doc__,
            measure,
            table,
            out="benchmarks/results/micro/prefix_scaling/result.json",
            arguments=arguments,
            child=child,
        )
    )

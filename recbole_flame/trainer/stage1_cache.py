"""FLAME's stage-1 cache: a trained backbone SASRec is stored under a key of everything that
determines it, so another FLAME run with the same data, settings and seed (a Tune trial, a
second seed's stage 2, a resumed sitting) reuses it instead of training it again."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from recbole_flame.config.neutral import NEUTRAL_KEYS
from recbole_flame.utils.checkpoint import load_checkpoint, plain
from recbole_flame.utils.errors import CheckpointError

#: FLAME's keys that configure stage 2 only: its paths and alignment, where its frozen network
#: comes from, and where the stage-1 cache is. Written out rather than read from FLAME's rule
#: table: a new FLAME key that does change stage 1 must stay in the key (tests/test_flame.py
#: checks every FLAME key is placed on one side).
STAGE2_KEYS: frozenset[str] = frozenset(
    {
        "path_mixing",
        "module_split",
        "n_paths",
        "tau",
        "cl_normalize",
        "detach_pair_weights",
        "frozen_dropout",
        "lambda_0",
        "lambda_R",
        "anneal_epochs",
        "frozen_checkpoint",
        "stage1_cache_dir",
        # the stage-1 budget goes in as stage1_key's own entry, stage1_epochs or else epochs
        "stage1_epochs",
    }
)

#: Not part of the key: the keys of stage 2 alone, the keys no run learns from, and the model
#: name (stage 1 is a SASRec whatever the run).
NOT_STAGE1: frozenset[str] = STAGE2_KEYS | NEUTRAL_KEYS | {"model"}

# Package-wide keys added after stage-1 caches were first written, with the value every run had
# before the key existed: a cache whose stored key lacks one of them was trained with it.
_ADDED_LATER = {"dense_windows": "all", "dense_min_context": 1}


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Exclusive lock, so concurrent trials wait for one stage-1 run instead of each training."""
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        handle = open(path, "a+")  # noqa: SIM115 (closed below, after the unlink)
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:  # the holder before us may have removed the file: then lock the new one
            if os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino:
                break
        except FileNotFoundError:
            pass
        handle.close()
    try:
        yield
    finally:
        # removed while held, so no lock file is left behind and no waiter proceeds on it
        path.unlink(missing_ok=True)
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


def dataset_fingerprint(config) -> dict[str, str]:
    """sha1 of each of the dataset's atomic files, so edited data never reuses a stale stage 1."""
    folder = Path(config["data_path"])
    prints = {}
    for path in sorted(folder.glob(f"{config['dataset']}.*")):
        if path.is_file():
            digest = hashlib.sha1()
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
            prints[path.name] = digest.hexdigest()
    return prints


def stage1_epochs(config) -> int:
    """Stage 1's epoch budget: ``stage1_epochs``, else ``epochs``."""
    return int(config["stage1_epochs"] or config["epochs"])


def stage1_key(config) -> dict[str, Any]:
    """What determines the stage-1 model: every training and data setting but
    :data:`NOT_STAGE1`, the stage-1 epoch budget, and the data files' hashes."""
    settings = {k: plain(v) for k, v in config.final_config_dict.items() if k not in NOT_STAGE1}
    settings["stage1_epochs"] = stage1_epochs(config)
    settings["data_files"] = dataset_fingerprint(config)
    return settings


def cache_path(config) -> Path:
    """Where the stage 1 of ``config`` is cached: ``SASRec-<dataset>-<key digest>.pth`` under
    ``stage1_cache_dir`` (default ``<checkpoint_dir>/flame_stage1``)."""
    key = stage1_key(config)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    folder = config["stage1_cache_dir"] or os.path.join(config["checkpoint_dir"], "flame_stage1")
    return Path(folder).absolute() / f"SASRec-{config['dataset']}-{digest}.pth"


def compatible_cache(config, path: Path) -> Path | None:
    """A cached stage 1 beside ``path`` with the same settings under an older key: its stored
    key, less the keys that no longer count and with the later-added keys at the value they
    stand for, equals this run's (so upgrading the package does not retrain a stage 1 of
    hours)."""
    wanted = json.dumps(stage1_key(config), sort_keys=True, default=str)
    for candidate in sorted(path.parent.glob(f"SASRec-{config['dataset']}-*.pth")):
        if candidate == path:
            continue
        try:
            stored = load_checkpoint(candidate).get("stage1_key")
        except CheckpointError:  # an unreadable file is simply not a match
            continue
        if not isinstance(stored, dict):
            continue
        stored = {k: v for k, v in stored.items() if k not in NOT_STAGE1 or k == "stage1_epochs"}
        for key, value in _ADDED_LATER.items():
            stored.setdefault(key, value)
        if json.dumps(plain(stored), sort_keys=True, default=str) == wanted:
            return candidate
    return None

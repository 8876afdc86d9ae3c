"""What a checkpoint holds so that :func:`recbole_flame.inference.load_model` can rebuild its run:
the model and dataset names, the settings the run was given (not RecBole's derived ones, which a
new ``Config`` derives again) and a fingerprint of the dataset's id vocabulary, all plain data
that ``torch.load(weights_only=True)`` reads.

Kept free of heavy imports: the trainer calls it on every checkpoint it writes.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

from recbole_flame.config.neutral import MACHINE_KEYS
from recbole_flame.utils.checkpoint import plain

#: Version of the ``rebuild`` record; a reader refuses a newer one with one line.
REBUILD_VERSION = 1

#: Settings left out of the record: where and on what the run ran (a load happens on another
#: machine), where it wrote, and FLAME's stage-1 source (``frozen_checkpoint``: inference runs
#: FLAME's learnable network alone, so a load must not redo stage 1).
LEFT_OUT = MACHINE_KEYS | {
    "frozen_checkpoint",
    "stage1_cache_dir",
    "checkpoint_dir",
    "show_progress",
    "state",
}


def vocabulary_fingerprint(dataset: Any, field: str | None) -> dict[str, Any] | None:
    """The size and a hash of ``field``'s tokens in id order: a dataset that maps one token to
    another id than at training time is not the same data for the model."""
    if dataset is None or field is None:
        return None
    tokens = getattr(dataset, "field2id_token", {}).get(field)
    if tokens is None:
        return None
    digest = hashlib.sha256("\n".join(map(str, tokens)).encode("utf-8")).hexdigest()
    return {"field": str(field), "count": len(tokens), "sha256": digest}


def data_fingerprint(dataset: Any) -> dict[str, Any] | None:
    """:func:`vocabulary_fingerprint` of the user and item fields of ``dataset`` (a RecBole
    dataset after its id remapping), or None when it has neither."""
    if dataset is None:
        return None
    found = {
        "users": vocabulary_fingerprint(dataset, getattr(dataset, "uid_field", None)),
        "items": vocabulary_fingerprint(dataset, getattr(dataset, "iid_field", None)),
    }
    return found if any(found.values()) else None


def rebuild_record(config: Any, network: Any, fingerprint: dict[str, Any] | None) -> dict[str, Any]:
    """The ``rebuild`` entry of a checkpoint of ``network`` trained under ``config``.

    ``model`` is the run's model (its config's); ``network`` the class of the saved weights,
    which differs for FLAME's stage 1 (a SASRec under the FLAME config). ``settings`` are the
    keys the run was given (files, ``config_dict`` and command line merged), with path keys
    as the run resolved them (absolute)."""
    given = dict(getattr(config, "external_config_dict", {}) or {})
    final = getattr(config, "final_config_dict", {}) or {}
    if isinstance(final.get("data_path"), str):
        # RecBole's final data_path is <data_path>/<dataset>, made absolute by our Config.
        given["data_path"] = os.path.dirname(final["data_path"].rstrip("/\\"))
    settings = {k: v for k, v in given.items() if k not in LEFT_OUT}
    return {
        "version": REBUILD_VERSION,
        "model": str(config["model"]),
        "network": type(network).__name__,
        "dataset": str(config["dataset"]),
        "settings": plain(settings),
        "data": fingerprint,
    }

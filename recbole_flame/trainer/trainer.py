"""RecBole's Trainer with safe checkpoints and testing on the best-validation model."""

from __future__ import annotations

import functools
import os
import time
import uuid
from typing import Any

import torch
from recbole.trainer import Trainer as RecBoleTrainer
from recbole.utils import get_local_time

from recbole_flame.utils.checkpoint import (
    atomic_save,
    first_mismatch,
    load_checkpoint,
    plain,
    plain_config,
)
from recbole_flame.utils.errors import CheckpointError


class SafeCheckpointMixin:
    """Put before a RecBole trainer class in the bases.

    - Checkpoints hold model and optimizer state plus plain data (no pickled ``Config``), are
      read with ``weights_only=True`` and written atomically.
    - The file name is unique per run (RecBole's is per second, so parallel trials collide).
    - With ``saved=False`` the best-validation weights are kept in memory instead, so the test
      result is still that of the best-validation model, not of the last epoch.
    """

    def __init__(self, config, model) -> None:
        super().__init__(config, model)
        name = f"{config['model']}-{get_local_time()}-{uuid.uuid4().hex[:6]}.pth"
        self.saved_model_file = os.path.join(self.checkpoint_dir, name)
        self._persist = True
        self._best_in_memory: dict[str, Any] | None = None
        self.epoch_train_seconds: list[float] = []

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        start = time.perf_counter()
        losses = super()._train_epoch(train_data, epoch_idx, loss_func, show_progress)
        self.epoch_train_seconds.append(time.perf_counter() - start)
        return losses

    def checkpoint_state(self, epoch: int) -> dict[str, Any]:
        """Everything a checkpoint holds, as tensors and plain data."""
        return {
            "format": "recbole_flame/1",
            "config": plain_config(self.config),
            "epoch": int(epoch),
            "cur_step": int(self.cur_step),
            "best_valid_score": float(self.best_valid_score),
            "state_dict": self.model.state_dict(),
            "other_parameter": plain(self.model.other_parameter()),
            "optimizer": self.optimizer.state_dict(),
        }

    def _save_checkpoint(self, epoch, verbose=True, **kwargs):
        if not self.config["single_spec"] and self.config["local_rank"] != 0:
            return
        if not self._persist:
            self._best_in_memory = {
                k: v.detach().clone() for k, v in self.model.state_dict().items()
            }
            return
        path = kwargs.pop("saved_model_file", self.saved_model_file)
        atomic_save(self.checkpoint_state(epoch), path)
        if verbose:
            self.logger.info(f"Saving current: {path}")

    def save_pretrained_model(self, epoch, saved_model_file):
        atomic_save(self.checkpoint_state(epoch), saved_model_file)

    def load_weights(self, path: str | os.PathLike) -> dict[str, Any]:
        """Load a checkpoint's model weights into ``self.model``; returns the checkpoint."""
        checkpoint = load_checkpoint(path, map_location=self.device)
        problem = first_mismatch(self.model, checkpoint["state_dict"])
        if problem is not None:
            raise CheckpointError(f"checkpoint '{path}' does not fit the model: {problem}")
        self.model.load_state_dict(checkpoint["state_dict"])
        self.model.load_other_parameter(checkpoint.get("other_parameter"))
        return checkpoint

    def resume_checkpoint(self, resume_file):
        resume_file = str(resume_file)
        checkpoint = self.load_weights(resume_file)
        self.saved_model_file = resume_file
        self.start_epoch = checkpoint["epoch"] + 1
        self.cur_step = checkpoint["cur_step"]
        self.best_valid_score = checkpoint["best_valid_score"]
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.logger.info(f"Checkpoint loaded. Resume training from epoch {self.start_epoch}")

    def fit(
        self,
        train_data,
        valid_data=None,
        verbose=True,
        saved=True,
        show_progress=False,
        callback_fn=None,
    ):
        self._persist = bool(saved)
        self._best_in_memory = None
        # RecBole only records the best model when saved=True; we always record it (on disk
        # or in memory) so that testing uses the best-validation weights either way.
        return super().fit(
            train_data,
            valid_data,
            verbose=verbose,
            saved=True,
            show_progress=show_progress,
            callback_fn=callback_fn,
        )

    @torch.no_grad()
    def evaluate(self, eval_data, load_best_model=True, model_file=None, show_progress=False):
        if load_best_model:
            if model_file is not None or (self._persist and os.path.isfile(self.saved_model_file)):
                path = model_file or self.saved_model_file
                self.load_weights(path)
                self.logger.info(f"Loading model structure and parameters from {path}")
            elif self._best_in_memory is not None:
                self.model.load_state_dict(self._best_in_memory)
        return super().evaluate(
            eval_data, load_best_model=False, model_file=None, show_progress=show_progress
        )

    def result_extras(self) -> dict[str, Any]:
        """Model-specific entries for the run's final result (none by default)."""
        return {}


class Trainer(SafeCheckpointMixin, RecBoleTrainer):
    """The default trainer of this package: RecBole's, with safe checkpoints."""


@functools.cache
def with_safe_checkpoints(base: type) -> type:
    """``base`` (a RecBole trainer class) with :class:`SafeCheckpointMixin` in front."""
    if issubclass(base, SafeCheckpointMixin) or not issubclass(base, RecBoleTrainer):
        # RecBole's decision-tree trainers save library models, not torch state.
        return base
    if base is RecBoleTrainer:
        return Trainer
    return type(base.__name__, (SafeCheckpointMixin, base), {"__module__": __name__})

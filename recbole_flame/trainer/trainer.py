"""RecBole's Trainer with safe checkpoints, testing on the best-validation model, a learning
curve, and runs that resume where they were stopped."""

from __future__ import annotations

import functools
import os
import random
import time
import uuid
from typing import Any

import numpy as np
import torch
from recbole.trainer import Trainer as RecBoleTrainer
from recbole.utils import get_gpu_usage, get_local_time, set_color
from torch.nn.utils.clip_grad import clip_grad_norm_
from tqdm import tqdm

from recbole_flame.config.neutral import NEUTRAL_KEYS
from recbole_flame.inference.record import data_fingerprint, rebuild_record
from recbole_flame.inference.scoring import ChunkedRankingMixin
from recbole_flame.utils import amp, distributed
from recbole_flame.utils.checkpoint import (
    atomic_save,
    first_mismatch,
    load_checkpoint,
    plain,
    plain_config,
)
from recbole_flame.utils.errors import CheckpointError, ConfigError, TrainingDiverged


def rng_state(
    loader_generator: torch.Generator | None, device: torch.device | None = None
) -> dict[str, Any]:
    """Every random generator a training epoch draws from, as tensors and plain data. On CUDA,
    the generator of the run's own device only: a resume may see fewer GPUs (or another
    ordinal), and each distributed rank keeps its own."""
    keys, pos, has_gauss, cached = np.random.get_state()[1:]
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), cached],
        "python": random.getstate(),
        "loader": loader_generator.get_state() if loader_generator is not None else None,
    }
    if device is not None and device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(
    state: dict[str, Any],
    loader_generator: torch.Generator | None,
    device: torch.device | None = None,
) -> None:
    """Restore what :func:`rng_state` recorded. Generator states are CPU byte tensors whatever
    device the checkpoint was read onto (``torch.set_rng_state`` refuses any other)."""
    torch.set_rng_state(state["torch"].cpu())
    keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state(("MT19937", keys.cpu().numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if loader_generator is not None and state.get("loader") is not None:
        loader_generator.set_state(state["loader"].cpu())
    cuda = state.get("cuda")
    if cuda is None or device is None or device.type != "cuda":
        return
    if isinstance(cuda, (list, tuple)):  # files written before: every visible GPU's state
        index = device.index if device.index is not None else torch.cuda.current_device()
        cuda = cuda[index] if index < len(cuda) else None
    if cuda is not None:
        torch.cuda.set_rng_state(cuda.cpu(), device)


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training; ``resume_file`` holds the last completed (validated) epoch."""

    def __init__(self, resume_file: str | None, progress: str = "") -> None:
        self.resume_file = resume_file
        where = (
            f"; resume with --resume={resume_file}"
            if resume_file
            else ": nothing was saved, so there is nothing to resume; run the same command to "
            "start again"
        )
        # progress: how far it got (quick_start's train_and_test adds it), e.g. " after 52 s"
        super().__init__(f"interrupted during training{progress}{where}")


class HistoryExclusionMixin:
    """``eval_exclude_history``: full-sort evaluation ranks a sequential user's own history out,
    as the FLAME and SASRec authors' evaluators do (RecBole ranks it in)."""

    def _full_sort_batch_eval(self, batched_data):
        interaction, scores, positive_u, positive_i = super()._full_sort_batch_eval(batched_data)
        if self.config["eval_exclude_history"]:
            # Here: the items of the input sequence.
            seq = interaction[self.config["ITEM_ID_FIELD"] + self.config["LIST_SUFFIX"]]
            scores.scatter_(1, seq.to(scores.device), float("-inf"))
        return interaction, scores, positive_u, positive_i


class RunStateMixin:
    """A run's state, put before a RecBole trainer class in the bases: checkpoints, resuming,
    the learning curve and timings, and a one-line stop when the loss diverges.

    - Checkpoints hold model and optimizer state plus plain data (no pickled ``Config``), are
      read with ``weights_only=True`` and written atomically.
    - The file name is unique per run (RecBole's is per second, so parallel trials collide).
    - With ``saved=False`` the best-validation weights are kept in memory instead, so the test
      result is still that of the best-validation model, not of the last epoch.
    """

    def __init__(self, config, model) -> None:
        if config["single_spec"]:
            super().__init__(config, model)
        else:
            with distributed.as_single_process(config):
                super().__init__(config, model)
            self.model = distributed.sync_batch_norm(self.model, self.device)
            self.distributed_model = distributed.wrap_model(self.model, self.device)
            # metrics from every rank's rows at once: one process's, exactly (one process's
            # rows are already all of them)
            if distributed.world_size() > 1:
                self.eval_collector = distributed.GatheringCollector(self.eval_collector)
        # the file names of rank 0, which alone writes (the others keep the best in memory)
        name = distributed.broadcast_object(
            f"{config['model']}-{get_local_time()}-{uuid.uuid4().hex[:6]}.pth"
        )
        self.saved_model_file = os.path.join(self.checkpoint_dir, name)
        # The state to resume from: rewritten after every validation (model, optimizer,
        # early-stopping state, learning curve, random generators).
        self.resume_file = self.saved_model_file[: -len(".pth")] + "-last.pth"
        self.final_model_file: str | None = None  # where saved_model_file ends up, if moved
        self._persist = True
        self._best_in_memory: dict[str, Any] | None = None
        self.epoch_train_seconds: list[float] = []
        self.valid_history: list[dict[str, Any]] = []  # one entry per validation
        self.stopped_early = False  # patience ran out: a resumed run has nothing left to train
        self._elapsed_before = 0.0  # wall seconds spent in earlier sittings of a resumed run
        self._pending_rng: dict[str, Any] | None = None
        self._epoch_idx = 0
        self._last_valid_result: dict[str, float] | None = None

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        self._epoch_idx = epoch_idx
        start = time.perf_counter()
        base = super()._train_epoch
        if getattr(base, "__func__", None) is RecBoleTrainer._train_epoch:
            losses = self._step_loop(train_data, epoch_idx, loss_func, show_progress)
        else:  # a RecBole trainer with its own loop (knowledge graphs, pretraining, ...)
            losses = base(train_data, epoch_idx, loss_func, show_progress)
        self.epoch_train_seconds.append(time.perf_counter() - start)
        return losses

    def grad_scaler(self) -> torch.amp.GradScaler:
        """The run's one GradScaler (a pass-through unless float16 autocast): its loss scale
        carries over epochs, and over a resume."""
        if getattr(self, "_grad_scaler", None) is None:
            self._grad_scaler = amp.make_scaler(self.config, self.device)
        return self._grad_scaler

    def _step_loop(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        """RecBole's training loop (the same steps, losses and logging) with this package's
        mixed precision (:mod:`recbole_flame.utils.amp`): ``amp_dtype``, one GradScaler per
        run, gradients unscaled before clipping."""
        self.model.train()
        loss_func = loss_func or self.model.calculate_loss
        total_loss = None
        iter_data = (
            tqdm(
                train_data,
                total=len(train_data),
                ncols=100,
                desc=set_color(f"Train {epoch_idx:>5}", "pink"),
            )
            if show_progress
            else train_data
        )
        if not self.config["single_spec"] and train_data.shuffle:
            train_data.sampler.set_epoch(epoch_idx)
        scaler = self.grad_scaler()
        for interaction in iter_data:
            interaction = interaction.to(self.device)
            self.optimizer.zero_grad()
            sync_loss = 0
            if not self.config["single_spec"]:
                self.set_reduce_hook()
                sync_loss = self.sync_grad_loss()
            with amp.autocast(self.config, self.device):
                losses = loss_func(interaction)
            if isinstance(losses, tuple):
                loss = sum(losses)
                loss_tuple = tuple(per_loss.item() for per_loss in losses)
                total_loss = (
                    loss_tuple
                    if total_loss is None
                    else tuple(map(sum, zip(total_loss, loss_tuple, strict=True)))
                )
            else:
                loss = losses
                total_loss = losses.item() if total_loss is None else total_loss + losses.item()
            self._check_nan(loss)
            scaler.scale(loss + sync_loss).backward()
            if self.clip_grad_norm:
                scaler.unscale_(self.optimizer)  # clip the true gradients, not the scaled ones
                clip_grad_norm_(self.model.parameters(), **self.clip_grad_norm)
            scaler.step(self.optimizer)
            scaler.update()
            if self.gpu_available and show_progress:
                iter_data.set_postfix_str(
                    set_color("GPU RAM: " + get_gpu_usage(self.device), "yellow")
                )
        return total_loss

    def _check_nan(self, loss):
        if not torch.isfinite(loss).all():
            kept = (
                f"; the best model so far is {self.saved_model_file}"
                if self._persist and os.path.isfile(self.saved_model_file)
                else ""
            )
            raise TrainingDiverged(
                f"the training loss became {loss.item()} in epoch {self._epoch_idx + 1}: lower "
                f"learning_rate (now {self.config['learning_rate']}), or set enable_amp: False if "
                f"it is on{kept}"
            )

    def _valid_epoch(self, valid_data, show_progress=False):
        score, result = super()._valid_epoch(valid_data, show_progress=show_progress)
        self._last_valid_result = dict(result)
        return score, result

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
            # what recbole_flame.inference.load_model needs to rebuild config, model and data
            "rebuild": rebuild_record(
                self.config, self.model, getattr(self, "_data_fingerprint", None)
            ),
        }

    def _save_checkpoint(self, epoch, verbose=True, **kwargs):
        if not self._persist or not distributed.is_main():
            self._best_in_memory = {
                k: v.detach().clone() for k, v in self.model.state_dict().items()
            }
            return
        path = kwargs.pop("saved_model_file", self.saved_model_file)
        atomic_save(self.checkpoint_state(epoch), path)
        if verbose:
            # a file written under a temporary name says the name it will have
            self.logger.info(f"Saving current: {self.final_model_file or path}")

    def _add_hparam_to_tensorboard(self, best_valid_result):
        # SummaryWriter.add_hparams writes into a new sub-folder named by the time (a stray
        # run beside each real one); write the same summaries into this run's own folder.
        from torch.utils.tensorboard.summary import hparams

        if not distributed.is_main():  # rank 0 alone writes TensorBoard
            return
        writer = self.tensorboard

        def add_hparams(hparam_dict, metric_dict):
            for summary in hparams(hparam_dict, metric_dict):
                writer._get_file_writer().add_summary(summary)
            for key, value in metric_dict.items():
                writer.add_scalar(key, value)

        writer.add_hparams = add_hparams
        super()._add_hparam_to_tensorboard(best_valid_result)

    def save_pretrained_model(self, epoch, saved_model_file):
        atomic_save(self.checkpoint_state(epoch), saved_model_file)

    def load_weights(self, path: str | os.PathLike) -> dict[str, Any]:
        """Load a checkpoint's model weights into ``self.model``; returns the checkpoint. Read
        onto the CPU whatever device wrote it or runs now: ``load_state_dict`` copies weights
        (and the optimizer's state) to the model's device, and the random generators' states
        must stay CPU tensors."""
        checkpoint = load_checkpoint(path, map_location="cpu")
        problem = first_mismatch(self.model, checkpoint["state_dict"])
        if problem is not None:
            raise CheckpointError(f"checkpoint '{path}' does not fit the model: {problem}")
        self.model.load_state_dict(checkpoint["state_dict"])
        self.model.load_other_parameter(checkpoint.get("other_parameter"))
        return checkpoint

    def resume_state(self, epoch: int, train_data) -> dict[str, Any]:
        """:meth:`checkpoint_state` plus what a resumed run needs to go on exactly (in a
        distributed run, called on every rank: each rank's random generators are kept)."""
        rng = rng_state(getattr(train_data, "generator", None), self.device)
        return {
            **self.checkpoint_state(epoch),
            "best_valid_result": plain(self.best_valid_result),
            "best_model_file": self.saved_model_file,
            "valid_history": plain(self.valid_history),
            "epoch_train_seconds": list(self.epoch_train_seconds),
            "elapsed_seconds": self.elapsed_seconds(),
            "stopped_early": self.stopped_early,
            "grad_scaler": self.grad_scaler().state_dict(),
            "rng": rng,
            "rng_ranks": distributed.gather_objects(rng) if distributed.is_distributed() else None,
            "extras": plain(self.result_extras()),
        }

    def resume_checkpoint(self, resume_file, check_settings: bool = True):
        """Continue a run from its ``-last.pth`` state (written after every validation)."""
        resume_file = str(resume_file)
        checkpoint = self.load_weights(resume_file)
        if "rng" not in checkpoint:
            raise CheckpointError(
                f"checkpoint '{resume_file}' is a best-model file, not a run's resume state; "
                "give the file ending in -last.pth"
            )
        if check_settings:
            self._check_same_settings(checkpoint, resume_file)
        self.resume_file = resume_file
        self.saved_model_file = checkpoint["best_model_file"]
        self.start_epoch = checkpoint["epoch"] + 1
        self.cur_step = checkpoint["cur_step"]
        self.best_valid_score = checkpoint["best_valid_score"]
        self.best_valid_result = checkpoint["best_valid_result"]
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        if checkpoint.get("grad_scaler"):  # float16 runs: the loss scale it had reached
            self.grad_scaler().load_state_dict(checkpoint["grad_scaler"])
        self.valid_history = list(checkpoint["valid_history"])
        self.epoch_train_seconds = list(checkpoint["epoch_train_seconds"])
        self._elapsed_before = float(checkpoint["elapsed_seconds"])
        self.stopped_early = bool(checkpoint.get("stopped_early", False))
        ranks = checkpoint.get("rng_ranks")
        same_world = ranks is not None and len(ranks) == distributed.world_size()
        self._pending_rng = ranks[distributed.rank()] if same_world else checkpoint["rng"]
        self.restore_extras(checkpoint.get("extras") or {})
        self.logger.info(f"Checkpoint loaded. Resume training from epoch {self.start_epoch}")

    def _check_same_settings(self, checkpoint: dict[str, Any], path: str) -> None:
        then = checkpoint.get("config") or {}
        now = plain_config(self.config)
        for key in sorted(set(then) | set(now)):
            # A key the older run did not record (a setting added since) is not compared.
            if key in NEUTRAL_KEYS or key not in then or then[key] == now.get(key):
                continue
            raise ConfigError(
                f"--resume={path} was written with {key}={then.get(key)!r} but this run has "
                f"{key}={now.get(key)!r}; resume with the same settings"
            )

    def restore_extras(self, extras: dict[str, Any]) -> None:
        """Model-specific state saved by :meth:`result_extras` (nothing by default)."""

    def elapsed_seconds(self) -> float:
        """Wall seconds of this run so far, earlier sittings included."""
        start = getattr(self, "_fit_start", None)
        return self._elapsed_before + (time.perf_counter() - start if start else 0.0)

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
        self._data_fingerprint = data_fingerprint(getattr(train_data, "_dataset", None))
        self._fit_start = time.perf_counter()
        if self._pending_rng is not None:
            set_rng_state(self._pending_rng, getattr(train_data, "generator", None), self.device)
            self._pending_rng = None
        if self.stopped_early or (self.start_epoch and self.start_epoch >= self.epochs):
            # A resumed run with nothing left to train (RecBole's fit would overwrite the best
            # model file with the current weights here).
            return self.best_valid_score, self.best_valid_result

        def after_validation(epoch_idx: int, valid_score: float) -> None:
            self.valid_history.append(
                {
                    "epoch": epoch_idx + 1,
                    "valid_score": float(valid_score),
                    "valid_result": plain(self._last_valid_result),
                    "train_loss": plain(self.train_loss_dict.get(epoch_idx)),
                    "train_seconds": float(sum(self.epoch_train_seconds)),
                    "elapsed_seconds": self.elapsed_seconds(),
                    **self.validation_extras(),
                }
            )
            if self._persist:
                if len(self.valid_history) == 1:
                    self.logger.info(f"Run state after each validation: {self.resume_file}")
                self._save_resume_state(epoch_idx, train_data)
            if callback_fn is not None:
                callback_fn(epoch_idx, valid_score)

        # RecBole only records the best model when saved=True; we always record it (on disk
        # or in memory) so that testing uses the best-validation weights either way.
        try:
            result = super().fit(
                train_data,
                valid_data,
                verbose=verbose,
                saved=True,
                show_progress=show_progress,
                callback_fn=after_validation,
            )
        except KeyboardInterrupt as exc:
            if isinstance(exc, TrainingInterrupted):
                raise
            done = self._persist and os.path.isfile(self.resume_file)
            raise TrainingInterrupted(self.resume_file if done else None) from exc
        self.stopped_early = self.cur_step > self.stopping_step
        if self._persist and self.valid_history:
            self._save_resume_state(self.valid_history[-1]["epoch"] - 1, train_data)
        return result

    def _save_resume_state(self, epoch: int, train_data) -> None:
        state = self.resume_state(epoch, train_data)  # on every rank: it gathers their generators
        if distributed.is_main():
            atomic_save(state, self.resume_file)

    def learning_curve(self) -> dict[str, Any]:
        """The validation curve and when the best score was first reached (``best_epoch``).
        Scores are rounded to 4 digits, so ties happen: RecBole keeps the model of the last
        tie (its early stopping counts ``>=`` as better), and that model is the one tested."""
        if not self.valid_history:
            return {"valid_history": [], "best_epoch": None}
        bigger = self.config["valid_metric_bigger"]
        scores = [h["valid_score"] for h in self.valid_history]
        best = max(scores) if bigger else min(scores)
        at = self.valid_history[scores.index(best)]
        return {
            "valid_history": list(self.valid_history),
            "best_epoch": at["epoch"],
            "epochs_run": self.valid_history[-1]["epoch"],
            "train_seconds_to_best": at["train_seconds"],
            "elapsed_seconds_to_best": at["elapsed_seconds"],
            "elapsed_seconds": self.valid_history[-1]["elapsed_seconds"],
        }

    @torch.no_grad()
    def evaluate(self, eval_data, load_best_model=True, model_file=None, show_progress=False):
        if load_best_model:
            on_disk = self._persist and distributed.is_main()
            if model_file is not None or (on_disk and os.path.isfile(self.saved_model_file)):
                path = model_file or self.saved_model_file
                self.load_weights(path)
                self.logger.info(f"Loading model structure and parameters from {path}")
            elif self._best_in_memory is not None:
                self.model.load_state_dict(self._best_in_memory)
        if eval_data and isinstance(self.eval_collector, distributed.GatheringCollector):
            self.eval_collector.sampler = eval_data.sampler
        return super().evaluate(
            eval_data, load_best_model=False, model_file=None, show_progress=show_progress
        )

    def _map_reduce(self, result, num_sample):
        # RecBole averages the ranks' rounded metrics here; ours are already computed from all
        # ranks' rows (distributed.GatheringCollector).
        return result

    def validation_extras(self) -> dict[str, Any]:
        """Model-specific entries for each validation's learning-curve point (none by default)."""
        return {}

    def result_extras(self) -> dict[str, Any]:
        """Model-specific entries for the run's final result (none by default)."""
        return {}

    def after_test(self, valid_data, test_data) -> dict[str, Any]:
        """Model-specific results computed once the test is done (none by default)."""
        return {}


class Trainer(RunStateMixin, ChunkedRankingMixin, HistoryExclusionMixin, RecBoleTrainer):
    """The default trainer of this package: RecBole's, with this package's run state, evaluation
    protocol and chunked full-sort scorer."""


@functools.cache
def with_run_state(base: type) -> type:
    """``base`` (a RecBole trainer class) with :class:`RunStateMixin`,
    :class:`~recbole_flame.inference.scoring.ChunkedRankingMixin` and
    :class:`HistoryExclusionMixin` in front."""
    if issubclass(base, RunStateMixin) or not issubclass(base, RecBoleTrainer):
        # RecBole's decision-tree trainers save library models, not torch state.
        return base
    if base is RecBoleTrainer:
        return Trainer
    bases = (RunStateMixin, ChunkedRankingMixin, HistoryExclusionMixin, base)
    return type(base.__name__, bases, {"__module__": __name__})

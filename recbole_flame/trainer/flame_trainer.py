"""FLAME's two-stage trainer: pretrain and freeze a SASRec, then guided mutual learning."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

from recbole.utils import init_seed
from torch.utils.tensorboard import SummaryWriter

from recbole_flame.model.frozen import check_frozen_checkpoint
from recbole_flame.model.sasrec import SASRec
from recbole_flame.trainer import stage1_cache
from recbole_flame.trainer.trainer import Trainer
from recbole_flame.utils import distributed
from recbole_flame.utils.checkpoint import atomic_save, load_checkpoint, plain


class FLAMETrainer(Trainer):
    """Stage 1 trains the backbone SASRec with the FLAME config's settings on the same data and
    selects it on validation (or loads ``frozen_checkpoint``; or reuses a cached stage 1 with
    the same data, settings and seed). Stage 2 freezes it, trains the learnable network with
    ``lambda_r`` annealed by epoch, early-stops on validation; testing uses the best model."""

    def __init__(self, config, model) -> None:
        super().__init__(config, model)
        self.stage1_checkpoint: str | None = None
        self.stage1_source: str | None = None
        self.stage1_valid_result: dict[str, float] | None = None
        self.stage1_curve: dict[str, Any] | None = None

    def _build_optimizer(self, **kwargs):
        kwargs.setdefault("params", [p for p in self.model.parameters() if p.requires_grad])
        return super()._build_optimizer(**kwargs)

    # --- stage 1 --------------------------------------------------------------------------
    def stage1_path(self) -> Path:
        return stage1_cache.cache_path(self.config)

    def run_stage1(self, train_data, valid_data, show_progress: bool = False) -> str:
        """The stage-1 checkpoint's path: given, cached, or trained now."""
        given = self.config["frozen_checkpoint"]
        if given:
            self.stage1_source = "given"
            return str(given)
        path = self.stage1_path()
        # In a distributed run rank 0 alone holds the lock and looks for a cached stage 1; the
        # others follow its decision (and all train together if there is none).
        main = distributed.is_main()
        lock = stage1_cache.file_lock(path.with_name(path.name + ".lock"))
        with lock if main else contextlib.nullcontext():
            cached = self._cached_stage1(path) if main else None
            cached = distributed.broadcast_object(cached)
            if cached is not None:
                self.stage1_source = "cache"
                return cached
            self.stage1_source = "trained"
            self._train_backbone(path, train_data, valid_data, show_progress)
        return str(path)

    def _cached_stage1(self, path: Path) -> str | None:
        if path.is_file():
            self.logger.info(f"FLAME stage 1: reusing cached backbone {path}")
            return str(path)
        older = stage1_cache.compatible_cache(self.config, path)
        if older is not None:
            self.logger.info(
                f"FLAME stage 1: reusing cached backbone {older}, written by an earlier "
                "version of this package with the same settings"
            )
            return str(older)
        return None

    def _train_backbone(self, path: Path, train_data, valid_data, show_progress: bool) -> None:
        epochs = stage1_cache.stage1_epochs(self.config)
        self.logger.info(f"FLAME stage 1: training the backbone SASRec for up to {epochs} epochs")
        init_seed(self.config["seed"], self.config["reproducibility"])
        backbone = SASRec(self.config, train_data._dataset).to(self.device)
        trainer = Trainer(self.config, backbone)
        trainer.epochs = epochs
        trainer.eval_step = min(self.config["eval_step"], epochs)
        # Train into hidden files named after the cache key; only a finished stage 1 appears
        # under the cache name. An interrupted stage 1 resumes from its last validated epoch
        # when the same settings run again (the key guarantees the same data and settings).
        partial = path.with_name(f".{path.name}.partial")
        trainer.saved_model_file = str(partial)
        trainer.final_model_file = str(path)
        # stage 1 is a TensorBoard run of its own, beside stage 2's (the same name + -stage1)
        trainer.tensorboard.close()
        if distributed.is_main():
            trainer.tensorboard = SummaryWriter(f"{self.tensorboard.log_dir}-stage1")
        trainer.resume_file = str(path.with_name(f".{path.name}.last"))
        if distributed.broadcast_object(os.path.isfile(trainer.resume_file)):
            trainer.resume_checkpoint(trainer.resume_file, check_settings=False)
            self.logger.info(f"FLAME stage 1: resuming from epoch {trainer.start_epoch + 1}")
        try:
            _, best_valid = trainer.fit(
                train_data, valid_data, saved=True, show_progress=show_progress
            )
        finally:
            trainer.tensorboard.close()
        curve = plain(trainer.learning_curve())
        if distributed.is_main():
            state = load_checkpoint(partial)
            state["stage1_key"] = stage1_cache.stage1_key(self.config)
            state["best_valid_result"] = plain(best_valid)
            state["learning_curve"] = curve
            atomic_save(state, path)
            for leftover in (partial, Path(trainer.resume_file)):
                leftover.unlink(missing_ok=True)
        self.stage1_valid_result = dict(best_valid or {})
        self.stage1_curve = curve
        self.logger.info(f"FLAME stage 1: best valid {best_valid}; saved {path}")

    def load_frozen(self, path: str, dataset) -> None:
        n_items = self.model.learnable.item_embedding.num_embeddings
        tokens = dataset.field2id_token[dataset.iid_field]
        checkpoint = None
        if distributed.is_main():  # read once and handed to the other ranks
            checkpoint = check_frozen_checkpoint(
                self.config, path, n_items=n_items, id_tokens=tokens
            )
        checkpoint = distributed.broadcast_object(checkpoint)
        self.model.load_frozen(checkpoint["state_dict"])
        if self.stage1_valid_result is None and checkpoint.get("best_valid_result"):
            self.stage1_valid_result = dict(checkpoint["best_valid_result"])
        if self.stage1_curve is None and checkpoint.get("learning_curve"):
            self.stage1_curve = dict(checkpoint["learning_curve"])

    # --- stage 2 --------------------------------------------------------------------------
    def fit(
        self,
        train_data,
        valid_data=None,
        verbose=True,
        saved=True,
        show_progress=False,
        callback_fn=None,
    ):
        if self.start_epoch == 0:  # a resumed run already holds its frozen weights
            self.stage1_checkpoint = self.run_stage1(train_data, valid_data, show_progress)
            self.load_frozen(self.stage1_checkpoint, train_data._dataset)
            # Stage 2 starts from the same random state whether stage 1 ran or was reused:
            # the global generators, and the training loader's own shuffling generator.
            init_seed(
                self.config["seed"] + self.config["local_rank"], self.config["reproducibility"]
            )
            if getattr(train_data, "generator", None) is not None:
                train_data.generator.manual_seed(self.config["seed"])
        self.logger.info(
            f"FLAME stage 2: guided mutual learning against {self.stage1_checkpoint} "
            f"({self.stage1_source})"
        )
        return super().fit(
            train_data,
            valid_data,
            verbose=verbose,
            saved=saved,
            show_progress=show_progress,
            callback_fn=callback_fn,
        )

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        lambda_r = self.model.anneal(epoch_idx + 1)
        self.tensorboard.add_scalar("FLAME/lambda_r", lambda_r, epoch_idx)
        return super()._train_epoch(train_data, epoch_idx, loss_func, show_progress)

    def _generate_train_loss_output(self, epoch_idx, s_time, e_time, losses):
        line = super()._generate_train_loss_output(epoch_idx, s_time, e_time, losses)
        return f"{line} lambda_r={self.model.lambda_r:.4g}"

    def validation_extras(self) -> dict[str, Any]:
        """The alignment's parts, averaged over the steps since the last validation."""
        stats = self.model.pop_alignment_stats()
        if "weight" in stats:

            def fmt(group: str) -> str:
                return ", ".join(f"{k} {v:.3g}" for k, v in stats[group].items())

            self.logger.info(
                f"FLAME alignment: pair weights [{fmt('weight')}]; InfoNCE [{fmt('info_nce')}]; "
                f"output norms [{fmt('norm')}]"
            )
        return {"alignment": stats}

    def after_test(self, valid_data, test_data) -> dict[str, Any]:
        """The frozen (stage-1) SASRec's own results on the same splits, so a FLAME run is its
        own comparison, and how much faster stage 2 reached stage 1's best validation score."""
        with self.model.scoring_with("frozen"):
            if self.stage1_valid_result is None:  # given weights: score them here
                self.stage1_valid_result = dict(super().evaluate(valid_data, load_best_model=False))
            stage1_test = dict(super().evaluate(test_data, load_best_model=False))
        self.logger.info(f"FLAME stage 1 (frozen SASRec) test result: {stage1_test}")
        metric = self.config["valid_metric"].lower()
        target = self.stage1_valid_result.get(metric)
        curve = self.learning_curve()
        reached = next(
            (
                h["epoch"]
                for h in curve["valid_history"]
                if target is not None and h["valid_score"] >= target
            ),
            None,
        )
        stage1_best = (self.stage1_curve or {}).get("best_epoch")
        ratio = stage1_best / reached if stage1_best and reached else None
        self.logger.info(
            f"FLAME convergence: stage 1 best {metric} {target} at epoch {stage1_best}; stage 2 "
            f"reached it at epoch {reached}; ratio {ratio}"
        )
        return {
            "stage1_valid_result": self.stage1_valid_result,
            "stage1_test_result": stage1_test,
            "stage1_best_epoch": stage1_best,
            "stage1_learning_curve": self.stage1_curve,
            "stage2_epoch_reaching_stage1_best": reached,
            "convergence_ratio": ratio,
        }

    def result_extras(self) -> dict[str, Any]:
        return {
            "stage1_checkpoint": self.stage1_checkpoint,
            "stage1_source": self.stage1_source,
            "stage1_valid_result": self.stage1_valid_result,
            "stage1_learning_curve": self.stage1_curve,
        }

    def restore_extras(self, extras: dict[str, Any]) -> None:
        self.stage1_checkpoint = extras.get("stage1_checkpoint")
        self.stage1_source = extras.get("stage1_source")
        self.stage1_valid_result = extras.get("stage1_valid_result")
        self.stage1_curve = extras.get("stage1_learning_curve")

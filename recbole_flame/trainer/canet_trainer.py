"""CANet's trainer: the package Trainer, with the routes and the FLOPs they cost on record.

Each training epoch logs the routes the router sampled (histogram entropy, effective number of
routes, the most used ones, the router's mean per-row entropy) and each validation the routes
it chose; the run's result gets that history, the test split's route histogram and, after the
test, the measured inference time of routed scoring against the full route on the same batches.
"""

from __future__ import annotations

from typing import Any

import torch

from recbole_flame.model.canet import route_name, route_summary
from recbole_flame.trainer.trainer import Trainer
from recbole_flame.utils import distributed
from recbole_flame.utils.timing import interleaved_medians


class CANetTrainer(Trainer):
    """Adds ``flops_ratio`` (average FLOPs per evaluated user, router included, relative to the
    full supernet) to each validation and test result, a per-epoch route history, and the
    test's route histogram and inference timing to the final result. Model selection still
    reads only ``valid_metric``."""

    def __init__(self, config, model) -> None:
        super().__init__(config, model)
        self.last_routes: dict[str, int] = {}
        self.last_flops_ratio: float | None = None
        self.route_history: list[dict[str, Any]] = []

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        self.model.reset_train_route_stats()
        losses = super()._train_epoch(train_data, epoch_idx, loss_func, show_progress)
        self.model.merge_rank_route_stats()
        train = self.model.train_route_stats()
        self.route_history.append({"epoch": epoch_idx + 1, "train": train})
        if train["users"]:
            self.logger.info(
                f"epoch {epoch_idx + 1} training routes: entropy {train['entropy']} "
                f"(effective routes {train['perplexity']}, {train['routes_used']} used), "
                f"router entropy {train['router_entropy']}, top {train['top']}"
            )
        return losses

    def _valid_epoch(self, valid_data, show_progress=False):
        score, result = super()._valid_epoch(valid_data, show_progress=show_progress)
        valid = route_summary(self.last_routes)
        valid["counts"] = dict(self.last_routes)
        valid["flops_ratio"] = self.last_flops_ratio
        if self.route_history:
            self.route_history[-1]["valid"] = valid
        self.logger.info(
            f"validation routes: entropy {valid['entropy']} (effective routes "
            f"{valid['perplexity']}, {valid['routes_used']} used), top {valid['top']}"
        )
        return score, result

    @torch.no_grad()
    def evaluate(self, eval_data, load_best_model=True, model_file=None, show_progress=False):
        self.model.route_counts.clear()
        result = super().evaluate(
            eval_data,
            load_best_model=load_best_model,
            model_file=model_file,
            show_progress=show_progress,
        )
        if result is not None:
            if distributed.is_distributed():  # every rank's users (the sampler's padding too)
                merged = distributed.sum_counts(self.model.route_counts)
                self.model.route_counts.clear()
                self.model.route_counts.update(merged)
            ratio = self.model.flops_ratio()
            self.last_flops_ratio = ratio
            if ratio is not None:
                result["flops_ratio"] = round(ratio, 4)
            self.last_routes = {
                route_name(route): n for route, n in sorted(self.model.route_counts.items())
            }
        return result

    def result_extras(self) -> dict[str, Any]:
        summary = route_summary(self.last_routes)
        return {
            "flops_ratio": self.last_flops_ratio,
            "route_counts": dict(self.last_routes),
            "route_entropy": summary["entropy"],
            "route_perplexity": summary["perplexity"],
            "routes_used": summary["routes_used"],
            "top_routes": summary["top"],
            "route_history": list(self.route_history),
        }

    def restore_extras(self, extras: dict[str, Any]) -> None:
        self.route_history = list(extras.get("route_history") or [])

    @torch.no_grad()
    def after_test(self, valid_data, test_data) -> dict[str, Any]:
        """Median seconds per test batch of full-sort scoring, routed (router included) and
        with every user on the full route, interleaved, and their ratio."""
        n = self.config["inference_timing_batches"]
        if not n:
            return {}
        batches = []
        for batch in test_data:
            batches.append(batch[0].to(self.device))
            if len(batches) == n:
                break
        model = self.model.eval()
        counts = model.route_counts.copy()

        def routed(i: int) -> None:
            model.full_sort_predict(batches[i % len(batches)])

        def full(i: int) -> None:
            batch = batches[i % len(batches)]
            model.forward(batch[model.ITEM_SEQ], batch[model.ITEM_SEQ_LEN], model.full_route)

        times = interleaved_medians({"routed": routed, "full_route": full}, n)
        model.route_counts.clear()
        model.route_counts.update(counts)  # timing is not evaluation
        return {
            "inference_seconds_per_batch": times,
            "inference_time_ratio": round(times["routed"] / times["full_route"], 4),
            "inference_timing": {
                "batches": len(batches),
                "batch_size": self.config["eval_batch_size"],
                "threads": torch.get_num_threads(),
            },
        }

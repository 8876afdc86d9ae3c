"""CANet's trainer: RecBole's, with the routed FLOPs ratio reported beside every evaluation."""

from __future__ import annotations

from typing import Any

import torch

from recbole_flame.trainer.trainer import Trainer


class CANetTrainer(Trainer):
    """Adds ``flops_ratio`` (average FLOPs per evaluated user, router included, relative to the
    full supernet) to each validation and test result; the final result also gets the test
    split's route histogram. Model selection still reads only ``valid_metric``."""

    def __init__(self, config, model) -> None:
        super().__init__(config, model)
        self.last_routes: dict[str, int] = {}
        self.last_flops_ratio: float | None = None

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
            ratio = self.model.flops_ratio()
            self.last_flops_ratio = ratio
            if ratio is not None:
                result["flops_ratio"] = round(ratio, 4)
            self.last_routes = {
                "h{}-l{}-e{}".format(*route): n
                for route, n in sorted(self.model.route_counts.items())
            }
        return result

    def result_extras(self) -> dict[str, Any]:
        return {"flops_ratio": self.last_flops_ratio, "route_counts": dict(self.last_routes)}

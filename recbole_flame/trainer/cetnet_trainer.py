"""CETNet's trainer: RecBole's, with the ensemble's diagnostics in the final result."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from recbole_flame.trainer.trainer import Trainer


def labeled_batches(eval_data, device) -> Iterator:
    """The interactions of a labeled evaluation loader (RecBole yields tuples whose first entry
    is the interaction), on ``device``."""
    for batch in eval_data:
        interaction = batch[0] if isinstance(batch, tuple) else batch
        yield interaction.to(device)


class CETNetTrainer(Trainer):
    """Once the best-validation model is tested, adds ``cetnet_diagnostics``: for the
    validation and test splits, each base model's AUC and LogLoss inside the ensemble, the
    fusion weights' distribution, the plain average's metrics, and the loss parts (see
    :func:`recbole_flame.model.cetnet.ensemble_diagnostics`). Reported only: model selection
    still reads ``valid_metric`` alone."""

    def after_test(self, valid_data, test_data) -> dict[str, Any]:
        report = {}
        for split, data in (("valid", valid_data), ("test", test_data)):
            if data is not None:
                report[split] = self.model.diagnostics(labeled_batches(data, self.device))
        return {"cetnet_diagnostics": report}

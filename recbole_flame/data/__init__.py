from recbole_flame.data.dense import (
    DENSE_FIRST_STEP,
    dense_train_dataloader,
    dense_window_rows,
    dense_windows,
)
from recbole_flame.data.history import apply_history_limit
from recbole_flame.data.obd import write_open_bandit

__all__ = [
    "DENSE_FIRST_STEP",
    "apply_history_limit",
    "dense_train_dataloader",
    "dense_window_rows",
    "dense_windows",
    "write_open_bandit",
]

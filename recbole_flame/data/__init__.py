from recbole_flame.data.dense import dense_train_dataloader, dense_window_rows
from recbole_flame.data.history import apply_history_limit
from recbole_flame.data.obd import write_open_bandit

__all__ = [
    "apply_history_limit",
    "dense_train_dataloader",
    "dense_window_rows",
    "write_open_bandit",
]

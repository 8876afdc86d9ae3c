from recbole_flame.data.dense import dense_train_dataloader, dense_window_rows
from recbole_flame.data.history import apply_history_limit

__all__ = ["apply_history_limit", "dense_train_dataloader", "dense_window_rows"]

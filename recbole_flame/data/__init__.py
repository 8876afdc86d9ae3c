from recbole_flame.data.dense import dense_train_dataloader, dense_window_rows

__all__ = ["dense_train_dataloader", "dense_window_rows"]

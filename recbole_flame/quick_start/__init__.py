from recbole_flame.inference.load import LoadedModel, load_model
from recbole_flame.inference.recommendation import recommend
from recbole_flame.quick_start.quick_start import (
    check_dataset_on_disk,
    objective_function,
    prepare,
    run,
    train_and_test,
)

__all__ = [
    "LoadedModel",
    "check_dataset_on_disk",
    "load_model",
    "objective_function",
    "prepare",
    "recommend",
    "run",
    "train_and_test",
]

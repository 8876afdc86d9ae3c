from recbole_flame.quick_start.quick_start import (
    check_dataset_on_disk,
    objective_function,
    prepare,
    run,
    train_and_test,
)

__all__ = ["check_dataset_on_disk", "objective_function", "prepare", "run", "train_and_test"]

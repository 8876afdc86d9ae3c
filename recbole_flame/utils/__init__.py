from recbole_flame.utils.errors import (
    CheckpointError,
    ConfigError,
    DatasetNotFoundError,
    UnknownModelError,
    UserError,
)
from recbole_flame.utils.paths import properties_dir
from recbole_flame.utils.registry import (
    available_models,
    canonical_model_name,
    get_model,
    get_trainer,
)

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DatasetNotFoundError",
    "UnknownModelError",
    "UserError",
    "available_models",
    "canonical_model_name",
    "get_model",
    "get_trainer",
    "properties_dir",
]

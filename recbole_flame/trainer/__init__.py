from recbole_flame.trainer.checkpoint import atomic_save, load_checkpoint
from recbole_flame.trainer.trainer import SafeCheckpointMixin, Trainer, with_safe_checkpoints

__all__ = [
    "SafeCheckpointMixin",
    "Trainer",
    "atomic_save",
    "load_checkpoint",
    "with_safe_checkpoints",
]

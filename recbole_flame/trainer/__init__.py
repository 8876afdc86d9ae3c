from recbole_flame.trainer.canet_trainer import CANetTrainer
from recbole_flame.trainer.cetnet_trainer import CETNetTrainer
from recbole_flame.trainer.flame_trainer import FLAMETrainer
from recbole_flame.trainer.trainer import RunStateMixin, Trainer, with_run_state
from recbole_flame.utils.checkpoint import atomic_save, load_checkpoint

__all__ = [
    "CANetTrainer",
    "CETNetTrainer",
    "FLAMETrainer",
    "RunStateMixin",
    "Trainer",
    "atomic_save",
    "load_checkpoint",
    "with_run_state",
]

"""The keys that never change what a run learns: where it runs and writes, how verbosely, how
long it may go, and implementations with equal outputs. A resumed run may change them, and the
FLAME stage-1 cache leaves them out of its key (with FLAME's own stage-2 keys)."""

from __future__ import annotations

#: Where and on what a run runs: the device and the processes that train it (a loaded model runs
#: elsewhere, so its rebuild record leaves them out: inference/record.py).
MACHINE_KEYS: frozenset[str] = frozenset(
    {
        "gpu_id",
        "use_gpu",
        "device",
        "worker",
        "single_spec",
        "local_rank",
        # how many processes train it, and how they meet (the global batch is the same)
        "nproc",
        "world_size",
        "offset",
        "ip",
        "port",
        "ddp_backend",
        "ddp_timeout",
    }
)

NEUTRAL_KEYS: frozenset[str] = MACHINE_KEYS | frozenset(
    {
        # the budget: a resumed run may go on for longer; stage 1 counts its own, stage1_epochs
        "epochs",
        # where data, checkpoints, caches and logs are
        "data_path",
        "checkpoint_dir",
        "stage1_cache_dir",
        "config_files",
        "save_dataset",
        "save_dataloaders",
        "dataset_save_path",
        "dataloaders_save_path",
        "log_wandb",
        "wandb_project",
        # how verbosely it runs
        "state",
        "show_progress",
        # equal outputs (tests: 1e-5), chosen for speed as the device is
        "attention_impl",
        "eval_batch_size",
        "eval_item_chunk",
        # the same batches in the same order (tests: equal to RecBole's), built with less memory
        "prefix_loader",
    }
)

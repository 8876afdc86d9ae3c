"""A run over 2 processes (gloo on the CPU) against one process on the same data and weights:
one optimizer step leaves the same weights, an evaluation gives the same metrics, and the CLI
writes one result, one log and one checkpoint."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.multiprocessing as mp

from recbole_flame.utils import distributed
from recbole_flame.utils.errors import ConfigError, UserError
from tests.conftest import TINY, ctr_config, seq_config

ROOT = Path(__file__).resolve().parents[1]
WORLD = 2
NO_DROPOUT = {"hidden_dropout_prob": 0.0, "attn_dropout_prob": 0.0}
STEP_MODELS = {
    "SASRec": NO_DROPOUT,
    # the tiled paths and the global-batch InfoNCE: the gradient flows across ranks
    "FLAME": {**NO_DROPOUT, "n_layers": 2, "lambda_0": 1.0},
    "TiM4Rec": {
        "dropout_prob": 0.0,
        "time_drop_out": 0.0,
        "hidden_size": 16,
        "d_state": 8,
        "head_dim": 8,
        "chunk_size": 4,
        "n_layers": 1,
    },
}
# SGD, so a gradient off by any factor shows in the weights (Adam's first step would not).
STEP = {"learner": "sgd", "learning_rate": 1.0, "train_batch_size": 32}


def _ddp(port: int, local_rank: int | None = None) -> dict:
    keys = {"world_size": WORLD, "nproc": WORLD, "ip": "127.0.0.1", "port": port, "offset": 0}
    if local_rank is not None:
        keys["local_rank"] = local_rank
    return keys


class _Batches(list):
    """Batches given to a trainer's ``_train_epoch`` as its loader."""

    shuffle = False


def _frozen_state(config, dataset) -> dict:
    """A SASRec's weights of another seed, for FLAME's frozen network."""
    from recbole.utils import init_seed

    from recbole_flame.model.sasrec import SASRec

    init_seed(7, True)
    return SASRec(config, dataset).state_dict()


def _one_step(model: str, config_dict: dict, rows: slice | None) -> tuple[dict, dict]:
    """The weights before and after one training step on the first 32 training rows
    (``rows``: this rank's part of them)."""
    from recbole_flame.quick_start import prepare

    config, net, trainer, (train_data, _, _) = prepare(model, TINY, config_dict=config_dict)
    if model == "FLAME":
        net.load_frozen(_frozen_state(config, train_data._dataset))
    batch = train_data._dataset.inter_feat[: STEP["train_batch_size"]]
    if rows is not None:
        batch = batch[torch.arange(STEP["train_batch_size"])[rows]]
    before = {k: v.detach().clone() for k, v in net.state_dict().items()}
    trainer._train_epoch(_Batches([batch]), 0)
    return before, {k: v.detach().clone() for k, v in net.state_dict().items()}


def _step_worker(local_rank: int, model: str, config_dict: dict, port: int, out: str) -> None:
    torch.set_num_threads(1)
    half = STEP["train_batch_size"] // WORLD
    rows = slice(local_rank * half, (local_rank + 1) * half)
    _, after = _one_step(model, {**config_dict, **_ddp(port, local_rank)}, rows)
    torch.save(after, f"{out}-{local_rank}.pt")


def _spawn(worker, *args) -> None:
    mp.spawn(worker, args=args, nprocs=WORLD, join=True)


@pytest.mark.parametrize("model", sorted(STEP_MODELS))
def test_one_step_over_two_processes_equals_one_process_on_the_whole_batch(
    model, data_root, workdir
):
    config_dict = seq_config(data_root, **STEP_MODELS[model], **STEP)
    out = str(workdir / "step")
    _spawn(_step_worker, model, config_dict, distributed.free_port(), out)
    before, alone = _one_step(model, config_dict, None)
    ranks = [torch.load(f"{out}-{r}.pt") for r in range(WORLD)]
    for key, reference in alone.items():
        for state in ranks:
            torch.testing.assert_close(state[key], reference, rtol=1e-5, atol=1e-5, msg=key)
    trained = [k for k, v in alone.items() if v.is_floating_point() and not v.equal(before[k])]
    assert len(trained) > len(alone) // 3  # the step moved the weights


def _evaluate(config_dict: dict) -> dict:
    from recbole_flame.quick_start import prepare

    _, _, trainer, (_, valid_data, test_data) = prepare("SASRec", TINY, config_dict=config_dict)
    return {
        "valid": dict(trainer.evaluate(valid_data, load_best_model=False)),
        "test": dict(trainer.evaluate(test_data, load_best_model=False)),
    }


def _eval_worker(local_rank: int, config_dict: dict, port: int, out: str) -> None:
    torch.set_num_threads(1)
    result = _evaluate({**config_dict, **_ddp(port, local_rank)})
    torch.save(result, f"{out}-{local_rank}.pt")


def _odd_users(data_root: Path, tmp: Path) -> Path:
    """The tiny dataset less one user, so the sampler pads one rank with a repeated user."""
    folder = tmp / "odd" / TINY
    shutil.copytree(data_root / TINY, folder)
    inter = pd.read_csv(folder / f"{TINY}.inter", sep="\t", dtype=str)
    last = inter["user_id:token"].iloc[-1]
    inter[inter["user_id:token"] != last].to_csv(folder / f"{TINY}.inter", sep="\t", index=False)
    return folder.parent


def test_evaluation_over_two_processes_gives_the_metrics_of_one(data_root, workdir):
    root = _odd_users(data_root, workdir)
    config_dict = seq_config(
        root, metrics=["Hit", "NDCG", "MRR"], topk=[5, 100, 400], valid_metric="MRR@400"
    )
    out = str(workdir / "eval")
    _spawn(_eval_worker, config_dict, distributed.free_port(), out)
    alone = _evaluate(config_dict)
    for r in range(WORLD):
        assert torch.load(f"{out}-{r}.pt", weights_only=False) == alone
    # metrics that tell users apart (an untrained model ranks some targets in the top 400)
    assert 0 < alone["test"]["hit@400"] < 1 and 0 < alone["valid"]["hit@400"] < 1


def test_ctr_evaluation_over_two_processes_gives_the_metrics_of_one(data_root, workdir):
    """Labeled evaluation (AUC, LogLoss: one row per interaction) gathers exactly too."""
    config_dict = ctr_config(data_root, metrics=["AUC", "LogLoss"], valid_metric="AUC")
    out = str(workdir / "ctr")
    _spawn(_ctr_worker, config_dict, distributed.free_port(), out)
    alone = _ctr_evaluate(config_dict)
    for r in range(WORLD):
        assert torch.load(f"{out}-{r}.pt", weights_only=False) == alone


def _ctr_evaluate(config_dict: dict) -> dict:
    from recbole_flame.quick_start import prepare

    _, _, trainer, (_, _, test_data) = prepare("DeepFM", TINY, config_dict=config_dict)
    return dict(trainer.evaluate(test_data, load_best_model=False))


def _ctr_worker(local_rank: int, config_dict: dict, port: int, out: str) -> None:
    torch.set_num_threads(1)
    result = _ctr_evaluate({**config_dict, **_ddp(port, local_rank)})
    torch.save(result, f"{out}-{local_rank}.pt")


def test_two_process_flame_run_through_the_cli_writes_one_result_and_resumes(data_root, workdir):
    command = [
        sys.executable,
        str(ROOT / "run_recbole_flame.py"),
        "--model=FLAME",
        f"--dataset={TINY}",
        f"--data_path={data_root}",
        "--nproc=2",
        "--stage1_epochs=1",
        "--gpu_id=",
        "--show_progress=False",
        "--MAX_ITEM_LIST_LENGTH=10",
        "--hidden_size=16",
        "--inner_size=32",
        "--n_layers=2",
        "--n_heads=2",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = [*command, "--epochs=1", f"--port={distributed.free_port()}"]
    done = subprocess.run(first, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    output = done.stdout + done.stderr
    assert output.count("INFO  test result:") == 1
    assert output.count("FLAME stage 1 (frozen SASRec) test result") == 1
    assert len(list((workdir / "log").rglob("*.log"))) == 1
    assert len([p for p in (workdir / "log_tensorboard").iterdir() if p.is_dir()]) == 2
    saved = sorted(p.name for p in (workdir / "saved").glob("FLAME-*.pth"))
    state = [name for name in saved if name.endswith("-last.pth")]
    assert len(saved) == 2 and len(state) == 1  # the best model and the run state
    assert len(list((workdir / "saved" / "flame_stage1").glob("*.pth"))) == 1
    again = [
        *command,
        "--epochs=2",
        f"--port={distributed.free_port()}",
        f"--resume={workdir / 'saved' / state[0]}",
    ]
    done = subprocess.run(again, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Resume training from epoch 1" in done.stdout + done.stderr


def _failing(config_dict: dict) -> None:
    if config_dict["local_rank"] == 1:
        raise ConfigError("bad input on this rank")
    raise RuntimeError("never reached")  # rank 0 fails too; the first message is either


def test_a_process_that_fails_stops_the_run_with_one_line():
    with pytest.raises(UserError, match=r"^rank [01]"):
        distributed.launch(_failing, (), {}, 2, 2, "127.0.0.1", distributed.free_port(), 0)


def _dies(config_dict: dict) -> None:
    import time

    if config_dict["local_rank"] == 1:
        os._exit(9)
    time.sleep(60)  # would hang without the others being stopped


def test_a_process_that_dies_stops_the_others():
    import time

    start = time.monotonic()
    with pytest.raises(UserError, match="stopped"):
        distributed.launch(_dies, (), {}, 2, 2, "127.0.0.1", distributed.free_port(), 0)
    assert time.monotonic() - start < 50


@pytest.mark.parametrize(
    ("nproc", "world", "offset", "fragment"),
    [
        (0, -1, 0, "--nproc=0"),
        (2, 1, 0, "does not add up"),
        (2, 3, 2, "does not add up"),
        (2, 4, -1, "does not add up"),
    ],
)
def test_launch_settings_that_do_not_add_up_are_one_line(nproc, world, offset, fragment):
    with pytest.raises(ConfigError, match=fragment):
        distributed.check_launch(nproc, world, offset, "127.0.0.1", distributed.free_port())


def test_a_taken_port_is_one_line():
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=f"port {port} on 127.0.0.1 is taken"):
            distributed.check_launch(2, -1, 0, "127.0.0.1", port)


def test_more_processes_than_named_gpus_is_one_line(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(ConfigError, match="need 4 GPUs but gpu_id=0,1 names 2"):
        distributed.check_gpus("0,1", 4)
    distributed.check_gpus("0,1,2,3", 4)


def test_nccl_on_the_cpu_is_one_line():
    with pytest.raises(ConfigError, match="ddp_backend: gloo"):
        distributed.choose_backend("nccl", torch.device("cpu"))
    assert distributed.choose_backend(None, torch.device("cpu")) == "gloo"
    assert distributed.choose_backend(None, torch.device("cuda", 0)) == "nccl"


def test_bad_process_counts_through_the_cli_are_one_line(capsys):
    from recbole_flame.cli import main

    for argv, fragment in (
        (["--model=SASRec", "--nproc=0"], "--nproc=0: give 1 or more processes"),
        (["--model=SASRec", "--nproc=2", "--world_size=1"], "does not add up"),
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and fragment in err[0]


def test_the_cli_refuses_distributed_options_beside_a_comparison(capsys):
    from recbole_flame.cli import main

    assert main(["--model=SASRec,BPR", "--nproc=2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--nproc: for a single run only" in err[0]


def _sample_rows_worker(local_rank: int, port: int, n: int, out: str) -> None:
    import torch.distributed as dist
    from torch.utils.data.distributed import DistributedSampler

    dist.init_process_group(
        "gloo", rank=local_rank, world_size=WORLD, init_method=f"tcp://127.0.0.1:{port}"
    )
    sampler = DistributedSampler(list(range(n)), shuffle=False)
    rows = torch.tensor([[i, i * 10] for i in sampler])  # each sample's own row
    torch.save(distributed.gather_sample_rows(rows, sampler), f"{out}-{local_rank}.pt")
    dist.destroy_process_group()


@pytest.mark.parametrize("n", [7, 8])
def test_gathered_rows_are_in_one_process_order_without_padding(n, tmp_path):
    out = str(tmp_path / "rows")
    _spawn(_sample_rows_worker, distributed.free_port(), n, out)
    expected = torch.tensor([[i, i * 10] for i in range(n)])
    for r in range(WORLD):
        assert torch.equal(torch.load(f"{out}-{r}.pt"), expected)


def _gather_grad_worker(local_rank: int, port: int, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group(
        "gloo", rank=local_rank, world_size=WORLD, init_method=f"tcp://127.0.0.1:{port}"
    )
    full = torch.arange(15.0).view(5, 3) / 7
    mine = full[:2] if local_rank == 0 else full[2:]  # unequal counts: 2 and 3 rows
    x = mine.clone().requires_grad_(True)
    gathered = distributed.gather_rows(x)
    loss = (gathered.sin() * torch.arange(1.0, 6.0)[:, None]).sum()  # the same on both ranks
    loss.backward()
    torch.save((gathered.detach(), x.grad), f"{out}-{local_rank}.pt")
    dist.destroy_process_group()


def test_gather_rows_keeps_rank_order_and_sums_the_ranks_gradients(tmp_path):
    out = str(tmp_path / "g")
    _spawn(_gather_grad_worker, distributed.free_port(), out)
    full = torch.arange(15.0).view(5, 3) / 7
    # each rank computes the same loss; the gradient of its rows is the sum over the 2 ranks
    expected = 2 * full.cos() * torch.arange(1.0, 6.0)[:, None]
    for r, rows in ((0, slice(0, 2)), (1, slice(2, 5))):
        gathered, grad = torch.load(f"{out}-{r}.pt")
        torch.testing.assert_close(gathered, full)
        torch.testing.assert_close(grad, expected[rows])

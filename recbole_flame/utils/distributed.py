"""One training run over several processes, on RecBole's engine: ``torch.distributed``, its
Trainer's ``DistributedDataParallel`` and the ``DistributedSampler`` of its loaders.

RecBole 1.2.1 starts the processes (``run`` -> ``mp.spawn``) and sets up the process group in
``Config._init_device`` with the ``nccl`` backend only, wraps the model with
``device_ids=[local_rank]`` (which a CPU module refuses) and averages per-rank metrics that were
rounded first. What this module changes, and why:

- the backend is ``ddp_backend`` (nccl on CUDA, gloo on CPU, so the same command runs, and is
  tested, on a CPU), with a timeout (``ddp_timeout``) so a rank that dies stops the others;
- evaluation gathers every rank's per-user rows and evaluates them once, in the sampler's
  order with its padding removed: the metrics of one process, exactly;
- :func:`gather_rows` gathers a tensor across ranks with its gradient, for losses over the
  global batch (FLAME's InfoNCE negatives);
- only global rank 0 logs, writes checkpoints, TensorBoard and results.

Ranks here are global (``local_rank + offset``); RecBole's ``local_rank`` picks the GPU.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import socket
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
import torch.distributed as dist

from recbole_flame.utils.errors import ConfigError, UserError

BACKENDS = ("nccl", "gloo")
#: The rows RecBole's evaluation collector keeps per evaluated sample (user or interaction).
PER_SAMPLE_KEYS = ("rec.topk", "rec.meanrank", "rec.score", "rec.items", "data.label")


def is_distributed() -> bool:
    """Whether this process is one of several of a run (a process group of more than one)."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's global rank (0 when not distributed)."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """Whether this process logs and writes files: the only one, or global rank 0."""
    return rank() == 0


# --- the process group ---------------------------------------------------------------------------
def choose_backend(asked: str | None, device: torch.device) -> str:
    """``ddp_backend``, or by default nccl on CUDA and gloo on the CPU; nccl without CUDA is
    one line."""
    if asked is None:
        return "nccl" if device.type == "cuda" else "gloo"
    if asked == "nccl" and device.type != "cuda":
        raise ConfigError(
            "ddp_backend: nccl needs CUDA GPUs and this run is on the CPU; use ddp_backend: gloo "
            "(or leave it unset)"
        )
    return asked


def init_process(final: dict[str, Any]) -> None:
    """Set up the device and process group of one process of a distributed run, in place of
    RecBole's ``Config._init_device`` (``final``: the config dict, with ``local_rank``,
    ``offset``, ``world_size``, ``ip``, ``port`` set by :func:`launch`)."""
    local_rank = int(final["local_rank"])
    on_gpu = bool(final["gpu_id"]) and torch.cuda.is_available()
    device = torch.device("cuda", local_rank) if on_gpu else torch.device("cpu")
    backend = choose_backend(final.get("ddp_backend"), device)
    if on_gpu:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(
            backend=backend,
            rank=local_rank + int(final["offset"]),
            world_size=int(final["world_size"]),
            init_method=f"tcp://{final['ip']}:{final['port']}",
            timeout=datetime.timedelta(seconds=int(final.get("ddp_timeout") or 600)),
        )
    final["ddp_backend"] = backend
    final["device"] = device
    final["single_spec"] = False
    if rank() != 0:  # RecBole's convention: the other ranks print errors only
        final["state"] = "error"
        final["show_progress"] = False
        final["verbose"] = False


def check_launch(nproc: int, world: int, offset: int, ip: str, port: int | str) -> int:
    """The world size these settings mean (``-1``: ``nproc``), after one-line checks that they
    add up and that this machine can open the port when it hosts rank 0."""
    if nproc < 1:
        raise ConfigError(f"--nproc={nproc}: give 1 or more processes")
    world = nproc if world in (None, -1) else int(world)
    if offset < 0 or offset + nproc > world:
        raise ConfigError(
            f"--world_size={world} does not add up with --nproc={nproc} --group_offset={offset}: "
            f"this machine's processes would be ranks {offset}..{offset + nproc - 1}; the world "
            "size counts the processes of every machine (the sum of their --nproc), and each "
            "machine's --group_offset is the number of processes started before it"
        )
    try:
        port_number = int(port)
    except (TypeError, ValueError):
        raise ConfigError(f"--port={port}: give a TCP port number") from None
    if offset == 0 and not port_free(ip, port_number):
        raise ConfigError(
            f"port {port_number} on {ip} is taken (another run, or a process still closing); "
            "choose another with --port"
        )
    return world


def port_free(ip: str, port: int) -> bool:
    """Whether rank 0 can listen on ``ip:port`` now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((socket.gethostbyname(ip), port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A port the system says is free now (for tests and ``--port=0``)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def check_gpus(gpu_id: str, nproc: int) -> None:
    """On a CUDA machine, ``nproc`` processes need ``nproc`` GPUs named in ``gpu_id``."""
    named = [g for g in str(gpu_id).split(",") if g.strip()]
    if torch.cuda.is_available() and named and len(named) < nproc:
        raise ConfigError(
            f"--nproc={nproc} processes need {nproc} GPUs but gpu_id={gpu_id} names "
            f"{len(named)}; name more (gpu_id: 0,1,...) or start fewer processes"
        )


def launch(
    target: Callable[..., Any],
    args: Sequence[Any],
    config_dict: dict[str, Any],
    nproc: int,
    world: int,
    ip: str,
    port: int | str,
    offset: int,
) -> Any:
    """Run ``target(*args, config_dict=...)`` in ``nproc`` spawned processes (RecBole's ``run``
    with ``nproc > 1``); returns what global rank 0 returned (None on the other machines).

    A process that raises stops the run with one line (:class:`UserError`) naming its rank and
    its message; ``mp.spawn`` then ends the other processes of this machine, and the process
    group's timeout those of other machines."""
    import torch.multiprocessing as mp

    queue = mp.get_context("spawn").SimpleQueue()
    settings = {
        **config_dict,
        "world_size": world,
        "ip": ip,
        "port": int(port),
        "nproc": nproc,
        "offset": offset,
    }
    try:
        mp.spawn(_process_main, args=(target, tuple(args), settings, queue), nprocs=nproc)
    except (mp.ProcessRaisedException, mp.ProcessExitedException) as exc:
        messages = _drain(queue, "error")
        if messages:
            raise UserError(messages[0]) from None
        raise UserError(f"a process of the run stopped: {_last_line(str(exc))}") from None
    results = _drain(queue, "result")
    return results[0] if results else None


def _process_main(local_rank, target, args, settings, queue) -> None:
    settings = {**settings, "local_rank": local_rank}
    nproc = int(settings["nproc"])
    if "OMP_NUM_THREADS" not in os.environ:  # the processes share this machine's cores
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // nproc))
    global_rank = local_rank + int(settings["offset"])
    try:
        result = target(*args, config_dict=settings)
    except UserError as exc:
        queue.put(("error", f"rank {global_rank}: {exc}"))
        raise SystemExit(2) from None
    except Exception as exc:
        queue.put(
            ("error", f"rank {global_rank} failed: {type(exc).__name__}: {_last_line(str(exc))}")
        )
        raise
    finally:
        if dist.is_initialized():
            with contextlib.suppress(Exception):
                dist.destroy_process_group()
    if global_rank == 0:
        queue.put(("result", result))


def _drain(queue, kind: str) -> list[Any]:
    found = []
    while not queue.empty():
        what, value = queue.get()
        if what == kind:
            found.append(value)
    return found


def _last_line(text: str, limit: int = 300) -> str:
    """A traceback's last line (its exception), shortened to ``limit``."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    line = lines[-1] if lines else text
    return line if len(line) <= limit else line[: limit - 3] + "..."


# --- collectives -------------------------------------------------------------------------------
def collective_device() -> torch.device:
    """Where a collective's tensors must be: the rank's GPU under nccl (which moves CUDA
    tensors only), the CPU under gloo."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` of rank ``src`` on every rank (itself when not distributed)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src, device=collective_device())
    return box[0]


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_tensor(tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
    if is_distributed():
        dist.broadcast(tensor, src=src)
    return tensor


def sum_counts(counts: Counter) -> Counter:
    """The sum over ranks of a :class:`~collections.Counter`."""
    total: Counter = Counter()
    for part in gather_objects(dict(counts)):
        total.update(part)
    return total


class _GatherRows(torch.autograd.Function):
    """All ranks' rows (their counts may differ), concatenated in rank order; the gradient of
    each rank's rows is the sum over ranks of the gradients they received, so a loss computed
    on the gathered rows on every rank trains as one process on the whole batch would (the
    trainer averages the ranks' gradients)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        counts = [torch.zeros(1, dtype=torch.long, device=x.device) for _ in range(world_size())]
        dist.all_gather(counts, torch.tensor([x.size(0)], device=x.device))
        counts_list = [int(c.item()) for c in counts]
        most = max(counts_list)
        padded = x.new_zeros((most, *x.shape[1:]))
        padded[: x.size(0)] = x
        parts = [torch.empty_like(padded) for _ in counts_list]
        dist.all_gather(parts, padded.contiguous())
        ctx.counts = counts_list
        ctx.rank = rank()
        return torch.cat([p[:n] for p, n in zip(parts, counts_list, strict=True)])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        total = grad.contiguous().clone()
        dist.all_reduce(total)
        start = sum(ctx.counts[: ctx.rank])
        return total[start : start + ctx.counts[ctx.rank]]


def gather_rows(x: torch.Tensor) -> torch.Tensor:
    """Every rank's rows of ``x`` (first dimension), in rank order, with gradients; ``x``
    itself when not distributed."""
    return _GatherRows.apply(x) if is_distributed() else x


def gather_sample_rows(rows: torch.Tensor, sampler) -> torch.Tensor:
    """One evaluation's per-sample rows of every rank, in the order of one process.

    A ``DistributedSampler`` without shuffling hands rank r the samples at positions r, r + W,
    r + 2W, ... of ``range(N)`` padded to a multiple of W with its first samples again; so rank
    r's j-th row is position ``j W + r``, and the positions from N on are the padding."""
    per_rank = int(sampler.num_samples)
    if rows.size(0) != per_rank:
        raise RuntimeError(
            f"distributed evaluation: this rank collected {rows.size(0)} rows for its "
            f"{per_rank} samples; this evaluation's rows are not one per sample"
        )
    # RecBole's collector has already moved the rows to the CPU; nccl gathers on the GPU.
    local = rows.contiguous().to(collective_device())
    parts = [torch.empty_like(local) for _ in range(world_size())]
    dist.all_gather(parts, local)
    order = torch.stack(parts, dim=1).reshape(per_rank * world_size(), *rows.shape[1:])
    return order[: len(sampler.dataset)].to(rows.device)


class GatheringCollector:
    """RecBole's evaluation ``Collector`` whose data struct holds every rank's samples
    (:func:`gather_sample_rows`), so the metrics computed from it are one process's. Set
    ``sampler`` to the evaluated loader's sampler before each evaluation."""

    def __init__(self, collector) -> None:
        self._collector = collector
        self.sampler = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._collector, name)

    def get_data_struct(self):
        struct = self._collector.get_data_struct()
        for key in PER_SAMPLE_KEYS:
            if key in struct:
                struct.set(key, gather_sample_rows(struct.get(key), self.sampler))
        return struct


def sync_batch_norm(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """The model with its BatchNorm layers synchronised across ranks, as RecBole does (on
    CUDA; ``SyncBatchNorm`` has no CPU kernel)."""
    if device.type == "cuda":
        return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model


class NullWriter:
    """A TensorBoard ``SummaryWriter`` that writes nothing: the other ranks' writer."""

    log_dir = os.devnull

    def __getattr__(self, name: str) -> Callable[..., None]:
        return lambda *args, **kwargs: None


@contextlib.contextmanager
def as_single_process(config) -> Iterator[None]:
    """RecBole's ``Trainer.__init__`` without its distributed wrapping (which gives a CPU
    module ``device_ids`` and so fails; :func:`wrap_model` does it instead) and, on ranks
    other than 0, without a TensorBoard folder."""
    import recbole.trainer.trainer as recbole_trainer

    config["single_spec"] = True
    writer = recbole_trainer.get_tensorboard
    if not is_main():
        recbole_trainer.get_tensorboard = lambda logger: NullWriter()
    try:
        yield
    finally:
        config["single_spec"] = False
        recbole_trainer.get_tensorboard = writer


def wrap_model(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``DistributedDataParallel`` as RecBole's trainer uses it (its gradient hooks; the
    forward runs unwrapped), with ``device_ids`` only on CUDA. Call it on the model after
    :func:`sync_batch_norm`."""
    from torch.nn.parallel import DistributedDataParallel

    if device.type == "cuda":  # SyncBatchNorm runs on CUDA only
        return DistributedDataParallel(model, device_ids=[device.index])
    return DistributedDataParallel(model)

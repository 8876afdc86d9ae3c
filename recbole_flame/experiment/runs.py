"""Runs to early stopping, from a small spec per experiment; resumable across sittings.

    nice -n 5 python run_recbole_flame.py --spec=benchmarks/experiments/dense_sasrec_ml100k.yaml
    python run_recbole_flame.py --spec=benchmarks/experiments/dense_sasrec_ml100k.yaml --summary

Each (run, seed) of the spec (:mod:`recbole_flame.experiment.spec`) trains to early stopping with
RecBole's trainer through :func:`recbole_flame.quick_start.run` and writes
``benchmarks/results/<spec>/<label>-seed<k>.json`` with its command, commit, machine, wall time,
learning curve and test result. A finished (run, seed) is skipped; one that was stopped resumes
from its last validated epoch (its ``-last.pth`` under ``<spec>/ckpt/``), so a long experiment
can span several sittings. ``--park`` also packs that run state (and the best model it names)
into ``<spec>/parked/<label>-seed<k>.tar``, which is committed: on a fresh clone, where the
ignored ``ckpt/`` folder is empty, the same command unpacks it and goes on from the same epoch.
Seeds go in the outer loop, so a partial experiment still holds complete pairs.

The results folder is ``benchmarks/results/<spec name>/`` under the current directory (``--out``
to change it): run from the repository root to read and extend the committed results.
"""

from __future__ import annotations

import json
import os
import re
import tarfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from recbole_flame.experiment.output import markdown_table, provenance, shown, write_json
from recbole_flame.experiment.spec import (
    load_spec,
    parked_file,
    result_file,
    results_dir,
    run_config,
    slug,
)
from recbole_flame.experiment.summary import summarize
from recbole_flame.utils.errors import UserError
from recbole_flame.utils.files import atomic_write


def run_states(ckpt: Path) -> list[Path]:
    """The resume states of one run under its checkpoint folder, oldest first: the trainer's
    ``*-last.pth``, and FLAME stage 1's hidden ``.<cache>.pth.last`` while stage 1 trains."""
    states = [*ckpt.glob("*-last.pth"), *ckpt.glob("*/.*.pth.last")]
    return sorted(states, key=os.path.getmtime)


def finished_stage1(ckpt: Path) -> list[Path]:
    """FLAME's finished stage-1 checkpoints in the run's own cache folder (the default
    ``stage1_cache_dir``): the frozen network a stage-2 state was trained against."""
    return sorted(p for p in ckpt.glob("flame_stage1/*.pth") if not p.name.startswith("."))


def park(spec: dict, label: str, seed: int, out_dir: Path) -> Path | None:
    """Pack an unfinished run's newest state, the best-model file it names and, for FLAME in
    stage 2, its finished stage 1 (without which a fresh clone would train stage 1 again) into
    :func:`~recbole_flame.experiment.spec.parked_file` (a plain tar, paths relative to the run's
    checkpoint folder), so the run can go on from a fresh clone; None if the run has no state
    or has finished."""
    from recbole_flame.utils.checkpoint import load_checkpoint

    _, ckpt = run_config(spec, label, seed, out_dir)
    states = run_states(ckpt)
    if result_file(out_dir, label, seed).is_file() or not states:
        return None
    root = ckpt.absolute()
    state = states[-1].absolute()
    members = [state]
    best = Path(load_checkpoint(state)["best_model_file"]).absolute()
    if best.is_file() and best.is_relative_to(root):
        members.append(best)
    members += [p.absolute() for p in finished_stage1(ckpt) if p.absolute() not in members]

    def pack(f) -> None:
        with tarfile.open(fileobj=f, mode="w") as tar:
            for member in members:
                tar.add(member, arcname=str(member.relative_to(root)))

    target = parked_file(out_dir, label, seed)
    atomic_write(target, pack)
    return target


def unpark(spec: dict, label: str, seed: int, out_dir: Path) -> Path | None:
    """Unpack a run's parked tar into its (empty) checkpoint folder and point the state's
    best-model file at the unpacked copy, which lies wherever this clone is; returns the
    unpacked state, or None when there is nothing parked or the folder already holds a state
    (a state on disk is never newer in the tar than here)."""
    from recbole_flame.utils.checkpoint import atomic_save, load_checkpoint

    source = parked_file(out_dir, label, seed)
    _, ckpt = run_config(spec, label, seed, out_dir)
    if not source.is_file() or run_states(ckpt):
        return None
    root = ckpt.absolute()
    with tarfile.open(source) as tar:
        tar.extractall(root, filter="data")
    state_path = run_states(ckpt)[-1]
    state = load_checkpoint(state_path)
    then = Path(state["config"]["checkpoint_dir"]).absolute()
    best = Path(state["best_model_file"]).absolute()
    if best.is_relative_to(then) and then != root:
        state["best_model_file"] = str(root / best.relative_to(then))
        atomic_save(state, state_path)
    return state_path


def run_one(
    spec: dict,
    label: str,
    seed: int,
    out_dir: Path,
    after_test: Callable[..., dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Train one (run, seed) to early stopping (unparking or resuming its state first) and
    write its result record; returns the record. ``after_test``: what the run measures of its
    tested model besides RecBole's result (:func:`recbole_flame.quick_start.run`), kept in the
    record's result."""
    from recbole_flame.quick_start import run

    entry = spec["runs"][label]
    config, ckpt = run_config(spec, label, seed, out_dir)
    unpacked = unpark(spec, label, seed, out_dir)
    if unpacked is not None:
        print(f"== unpacked {shown(parked_file(out_dir, label, seed))} into {shown(ckpt)}")
    states = sorted(ckpt.glob("*-last.pth"), key=os.path.getmtime)
    resume = str(states[-1]) if states else None
    print(f"== {label} seed {seed}" + (f" (resuming {resume})" if resume else ""), flush=True)
    start = time.perf_counter()
    result = run(
        entry["model"],
        spec["dataset"],
        spec.get("config_files"),
        config_dict=config,
        resume=resume,
        after_test=after_test,
    )
    record = {
        **provenance(),
        "spec": spec["name"],
        "label": label,
        "seed": seed,
        "config": config,
        "resumed_from": resume,
        "sitting_wall_seconds": time.perf_counter() - start,
        "result": result,
    }
    write_json(result_file(out_dir, label, seed), record)
    return record


def resume_command(spec: dict, label: str, seed: int) -> str:
    """The command that resumes one (run, seed), with the environment variables its settings
    read (``$FLAME_WEIGHTS``) named."""
    settings = json.dumps([spec["base"], spec["runs"][label]])
    env = "".join(f"{var}=PATH " for var in sorted(set(re.findall(r"\$(\w+)", settings))))
    return (
        f"{env}python run_recbole_flame.py --spec={spec['path']} --threads 1 "
        f'--only "{label}" --seeds {seed}'
    )


def progress_report(spec: dict, label: str, seed: int, out_dir: Path) -> str | None:
    """Markdown learning curve of an unfinished run, read from its newest ``-last.pth`` run
    state (its validation history), with the command that resumes it; None if it has none
    or has finished."""
    from recbole_flame.utils.checkpoint import load_checkpoint

    if result_file(out_dir, label, seed).is_file():
        return None
    _, ckpt = run_config(spec, label, seed, out_dir)
    states = run_states(ckpt)
    if not states:
        return None
    state = load_checkpoint(states[-1])
    history = state.get("valid_history") or []
    if not history:
        return None
    best = max(history, key=lambda h: h["valid_score"])
    rows = [[h["epoch"], h["valid_score"], round(h["train_seconds"])] for h in history]
    name = f"{slug(label)}-seed{seed}"
    stage = " (FLAME stage 1, the backbone SASRec)" if states[-1].name.endswith(".last") else ""
    parked = parked_file(out_dir, label, seed)
    where = (
        f"parked (committed) in `{shown(parked)}`, which the command below unpacks on a fresh clone"
        if parked.is_file()
        else "not committed, under the ignored ckpt/ folder"
    )
    return "\n".join(
        [
            f"# {name}{stage}: in progress, not converged (stopped at the end of a sitting)",
            "",
            f"Validations so far: {len(history)}; best valid score {best['valid_score']} at epoch "
            f"{best['epoch']}; wall seconds so far {state.get('elapsed_seconds', 0):.0f}. Run "
            f"state ({where}): `{shown(states[-1])}`.",
            "",
            f"Resume (same command): `{resume_command(spec, label, seed)}`",
            "",
            markdown_table(["epoch", "valid score", "train seconds (cumulative)"], rows),
        ]
    )


def write_progress(spec: dict, out_dir: Path, park_runs: bool = False) -> None:
    """``--progress``: ``in_progress-<run>.md`` (the learning curve so far) for each unfinished
    run, removing a stale one where the run finished or never started; ``--park`` also packs
    each unfinished run's state into ``parked/<run>.tar`` first."""
    for seed in spec["seeds"]:
        for label in spec["runs"]:
            if park_runs and (packed := park(spec, label, seed, out_dir)) is not None:
                size = packed.stat().st_size / 2**20
                print(f"wrote {shown(packed)} ({size:.1f} MiB)")
            stale = out_dir / f"in_progress-{slug(label)}-seed{seed}.md"
            report = progress_report(spec, label, seed, out_dir)
            if report is None:
                stale.unlink(missing_ok=True)  # finished (or never started)
                continue
            stale.write_text(report + "\n")
            print(f"wrote {shown(stale)}")


def run_experiment(
    spec_path: str | os.PathLike,
    *,
    only: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
    threads: int | None = None,
    summary: bool = False,
    progress: bool = False,
    park_runs: bool = False,
    out: str | os.PathLike | None = None,
) -> None:
    """What ``run_recbole_flame.py --spec=FILE`` does: train every unfinished (run, seed) of
    the spec (``only``: these labels; ``seeds``: instead of the spec's), then write and print
    ``summary.md``. ``summary``: the summary alone; ``progress`` / ``park_runs``: progress
    reports (and parked states) of the unfinished runs, and stop. Results go to ``out``, by
    default :func:`~recbole_flame.experiment.spec.results_dir` (``benchmarks/results/<name>``
    under the current directory). Bad input raises :class:`UserError`."""
    spec = load_spec(spec_path)
    if seeds is not None:
        if not seeds:
            raise UserError("--seeds names no seed; give comma-separated integers, e.g. 1,2,3")
        spec["seeds"] = list(seeds)
    unknown = [label for label in only or () if label not in spec["runs"]]
    if unknown:
        raise UserError(
            f"--only: no run {', '.join(map(repr, unknown))} in {spec['path']}; its runs: "
            + ", ".join(map(repr, spec["runs"]))
        )
    out_dir = Path(out) if out else results_dir(spec)
    if threads:
        torch.set_num_threads(threads)
    if progress or park_runs:
        write_progress(spec, out_dir, park_runs)
        return
    if not summary:
        for seed in spec["seeds"]:
            for label in spec["runs"]:
                if only and label not in only:
                    continue
                if (result_file(out_dir, label, seed)).is_file():
                    print(f"== {label} seed {seed}: done", flush=True)
                    continue
                run_one(spec, label, seed, out_dir)
                # a curve or state written at an earlier stop is stale once the run has its result
                (out_dir / f"in_progress-{slug(label)}-seed{seed}.md").unlink(missing_ok=True)
                parked_file(out_dir, label, seed).unlink(missing_ok=True)
    table = summarize(spec, out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "summary.md").write_text(table + "\n")
    print(table)

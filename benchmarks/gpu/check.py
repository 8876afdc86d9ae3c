"""The GPU check: one short script for a machine with a GPU (benchmarks/gpu/README.md says what
to carry there), and its dry run on the CPU, which CI runs.

    python benchmarks/gpu/check.py --out DIR [--authors PATH]      # on a CUDA machine
    python benchmarks/gpu/check.py --device=cpu --tiny --out DIR    # every step, tiny, on the CPU

Steps, each timed and each failure recorded rather than fatal (the report says what ran):

1. versions: Python, torch, CUDA, Triton, RecBole, numpy, mamba-ssm, the device;
2. the CUDA test subset (``tests/test_cuda.py``): every model trains and evaluates an epoch with
   AMP off and on, TiM4Rec's SSD kernel against its PyTorch path, packed against unpacked, a
   resume on the device, a one-process nccl group gathering evaluation rows;
3. TiM4Rec's kernel parity as numbers: the largest relative difference of the output and of
   each input's gradient, float32 (Triton's dots in IEEE, then in its default TF32) and bfloat16;
4. epoch times in the FLAME authors' recipe (amazon-beauty, prefix samples, batch 256): SASRec and
   FLAME's stage 2, packed and unpacked, FLAME packed under bfloat16 autocast; and the authors'
   own ``train.py`` on the same card (``--authors``: a FLAME_SIGIR26 checkout), the ratio of our
   FLAME epoch to theirs.

Writes ``check.json`` and ``check.md`` to ``--out``. Exit status 0 when every step ran (a skipped
step, such as the kernel without CUDA, counts as ran), 1 otherwise. ``--tiny``: a 60-user slice
of ml-100k, tiny models and at most ``--max_steps`` steps an epoch (epoch times are then
extrapolated from the steps timed).
"""

from __future__ import annotations

import argparse
import copy
import importlib.metadata
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # run from anywhere: the checkout's package and tests

import torch  # noqa: E402

from recbole_flame.utils.timing import synchronize  # noqa: E402

# The FLAME authors' recipe (the package's FLAME defaults) for the epoch times.
RECIPE = {
    "train_mode": "prefix",
    "position_alignment": "end",
    "history_limit": 53,
    "train_batch_size": 256,
    "hidden_size": 64,
    "inner_size": 256,
    "n_layers": 2,
    "n_heads": 2,
    "MAX_ITEM_LIST_LENGTH": 50,
    "loss_type": "CE",
    "show_progress": False,
    "state": "ERROR",
    "epochs": 1,
}
TINY = {"hidden_size": 16, "inner_size": 32, "MAX_ITEM_LIST_LENGTH": 10, "history_limit": 13}
EPOCH = re.compile(r"\[Epoch\s+(\d+)\] Train \(\s*([\d.]+)s\)")


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def versions(device: torch.device) -> dict[str, Any]:
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": _version("triton"),
        "recbole": _version("recbole"),
        "numpy": _version("numpy"),
        "mamba_ssm": _version("mamba-ssm") or _version("mamba_ssm"),
        "device": str(device),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            gpu=props.name,
            capability=f"{props.major}.{props.minor}",
            memory_gib=round(props.total_memory / 2**30, 1),
            bf16=torch.cuda.is_bf16_supported(),
        )
    else:
        info["cpu"] = platform.processor() or platform.machine()
    return info


def test_subset(device: torch.device, out: Path) -> dict[str, Any]:
    """pytest on tests/test_cuda.py, each test's outcome and seconds from its JUnit XML."""
    xml = out / "test_cuda.xml"
    env = {**os.environ, "RECBOLE_FLAME_TEST_DEVICE": device.type}
    if device.type == "cpu":
        env["RECBOLE_FLAME_GPU_CHECK"] = "cpu"
    cmd = [sys.executable, "-m", "pytest", "-q", "tests/test_cuda.py", f"--junitxml={xml}"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    tests = []
    for case in ET.parse(xml).getroot().iter("testcase"):
        outcome = "passed"
        for kind in ("failure", "error", "skipped"):
            node = case.find(kind)
            if node is not None:
                outcome = kind
                outcome_text = (node.get("message") or "").splitlines()[:1]
                tests.append(
                    {
                        "test": case.get("name"),
                        "outcome": outcome,
                        "seconds": float(case.get("time") or 0),
                        "message": outcome_text[0][:160] if outcome_text else "",
                    }
                )
                break
        else:
            tests.append(
                {
                    "test": case.get("name"),
                    "outcome": outcome,
                    "seconds": float(case.get("time") or 0),
                }
            )
    failed = [t for t in tests if t["outcome"] in ("failure", "error")]
    return {
        "returncode": proc.returncode,
        "tests": tests,
        "passed": sum(t["outcome"] == "passed" for t in tests),
        "failed": len(failed),
        "skipped": sum(t["outcome"] == "skipped" for t in tests),
        "tail": proc.stdout[-1500:] if proc.returncode else "",
    }


def kernel_parity(device: torch.device) -> dict[str, Any]:
    """The SSD kernel against the PyTorch SSD on the same inputs: max |diff| / max |ref| of the
    output and of the gradients of x, dt, B and C."""
    from recbole_flame.model.layers import ssd

    if device.type != "cuda":
        return {"skipped": "the SSD kernel runs on CUDA only"}
    if ssd._kernel() is None:
        return {"skipped": "mamba-ssm's SSD kernel does not import (see README: carry it)"}
    rows = []
    for label, dtype, precision in (
        ("float32, IEEE dots", torch.float32, "ieee"),
        ("float32, TF32 dots", torch.float32, "tf32"),
        ("bfloat16", torch.bfloat16, None),
    ):
        if precision:
            os.environ["TRITON_F32_DEFAULT"] = precision
        else:
            os.environ.pop("TRITON_F32_DEFAULT", None)
        grads = {}
        for backend in ("torch", "kernel"):
            gen = torch.Generator().manual_seed(0)
            b, length, h, p, n = 4, 200, 8, 16, 16

            def rnd(*shape, scale=1.0, gen=gen, dtype=dtype):
                return (torch.randn(*shape, generator=gen) * scale).to(device, dtype)

            x = rnd(b, length, h, p).requires_grad_()
            dt = torch.nn.functional.softplus(rnd(b, length, h).float()).to(dtype).requires_grad_()
            A = (-torch.rand(h, generator=gen) - 0.5).to(device).requires_grad_()
            B = rnd(b, length, 1, n, scale=0.5).requires_grad_()
            C = rnd(b, length, 1, n, scale=0.5).requires_grad_()
            y = ssd.ssd(x, dt, A, B, C, chunk_size=64, backend=backend)
            w = torch.randn(y.shape, generator=torch.Generator().manual_seed(1)).to(device)
            (y.float() * w).sum().backward()
            grads[backend] = {"y": y, "dx": x.grad, "ddt": dt.grad, "dB": B.grad, "dC": C.grad}
        errors = {}
        for key, ref in grads["torch"].items():
            ref, got = ref.float(), grads["kernel"][key].float()
            errors[key] = float((got - ref).abs().max() / ref.abs().max().clamp_min(1e-12))
        rows.append({"precision": label, **errors})
    os.environ.pop("TRITON_F32_DEFAULT", None)
    return {"rows": rows}


def _tiny_data() -> tuple[str, str]:
    from tests.conftest import TINY as NAME
    from tests.conftest import _write_slice

    root = Path(tempfile.mkdtemp(prefix="gpu_check_data_"))
    _write_slice(root)
    return NAME, str(root)


def epoch_times(device: torch.device, tiny: bool, max_steps: int | None) -> dict[str, Any]:
    """One training epoch of each configuration, timed with the GPU synchronised; with
    ``max_steps`` the first steps are timed and the epoch extrapolated."""
    from recbole_flame.quick_start import prepare

    if tiny:
        dataset, data_path = _tiny_data()
        settings = {**RECIPE, **TINY, "data_path": data_path}
    else:
        dataset, data_path = "amazon-beauty", tempfile.mkdtemp(prefix="gpu_check_beauty_")
        settings = {**RECIPE, "data_path": data_path}
    settings.update(
        gpu_id="0" if device.type == "cuda" else "",
        checkpoint_dir=tempfile.mkdtemp(prefix="gpu_check_ckpt_"),
    )
    runs = [
        ("SASRec", "SASRec", True, False),
        ("SASRec", "SASRec", False, False),
        ("FLAME", "FLAME stage 2", True, False),
        ("FLAME", "FLAME stage 2", False, False),
        ("FLAME", "FLAME stage 2", True, True),
    ]
    rows = []
    for model, label, packing, amp in runs:
        config = {**settings, "sequence_packing": packing, "enable_amp": amp}
        _, net, trainer, (train_data, _, _) = prepare(model, dataset, config_dict=config)
        if model == "FLAME":  # stage 2 against a frozen copy: the same cost as trained weights
            net.load_frozen(copy.deepcopy(net.learnable.state_dict()))
        steps = len(train_data)
        loader = train_data
        if max_steps is not None and steps > max_steps:
            loader = [batch for _, batch in zip(range(max_steps), train_data, strict=False)]
        synchronize()
        start = time.perf_counter()
        trainer._train_epoch(loader, 0)
        synchronize()
        seconds = time.perf_counter() - start
        timed_steps = len(loader)
        rows.append(
            {
                "run": f"{label}, {'packed' if packing else 'unpacked'}"
                + (", bf16 autocast" if amp else ""),
                "steps": steps,
                "timed_steps": timed_steps,
                "epoch_seconds": seconds * steps / timed_steps,
                "peak_gib": (
                    torch.cuda.max_memory_allocated(device) / 2**30
                    if device.type == "cuda"
                    else None
                ),
            }
        )
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        del net, trainer, train_data
    return {"dataset": dataset, "rows": rows}


def authors_epoch(authors: Path | None, device: torch.device, timeout: float) -> dict[str, Any]:
    """The first training epoch of their train.py (its own timer), on the same device; their
    process is stopped once that line is printed (their evaluator is not needed for it)."""
    if authors is None:
        return {"skipped": "no --authors checkout given"}
    if not (authors / "train.py").is_file():
        return {"error": f"--authors {authors}: no train.py there"}
    cmd = [sys.executable, "-u", "train.py", "--dataset", "amazon-beauty", "--num_epoch", "200"]
    cmd += ["--gpu", "0" if device.type == "cuda" else "-1"]
    proc = subprocess.Popen(
        cmd, cwd=authors, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines, start = [], time.perf_counter()
    try:
        for line in proc.stdout:
            lines.append(line)
            if m := EPOCH.search(line):
                return {
                    "epoch_seconds": float(m[2]),
                    "wall_to_first_epoch": time.perf_counter() - start,
                }
            if time.perf_counter() - start > timeout:
                return {"error": f"no epoch within {timeout:.0f} s", "tail": "".join(lines[-5:])}
    finally:
        proc.kill()
        proc.wait()
    return {"error": "their train.py ended before an epoch", "tail": "".join(lines[-10:])}


def markdown(report: dict[str, Any]) -> str:
    v = report["versions"]
    lines = [
        f"# GPU check ({v.get('gpu', v['device'])})",
        "",
        f"`{report['command']}`, {report['date']}, {report['wall_seconds']:.0f} s in all.",
        "",
        "| | |",
        "|---|---|",
        *[f"| {k} | {val} |" for k, val in v.items()],
    ]
    t = report["test_subset"]
    if "tests" in t:
        lines += [
            "",
            f"## CUDA test subset: {t['passed']} passed, {t['failed']} failed, {t['skipped']} skipped",
            "",
            "| test | outcome | seconds |",
            "|---|---|---|",
            *[
                f"| {x['test']} | {x['outcome']} {x.get('message', '')} | {x['seconds']:.1f} |"
                for x in t["tests"]
            ],
        ]
    k = report["kernel_parity"]
    lines += ["", "## TiM4Rec SSD kernel against the PyTorch SSD (max rel. difference)", ""]
    if "rows" in k:
        keys = ["y", "dx", "ddt", "dB", "dC"]
        lines += ["| precision | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
        lines += [
            f"| {r['precision']} | " + " | ".join(f"{r[x]:.1e}" for x in keys) + " |"
            for r in k["rows"]
        ]
    else:
        lines.append(str(k.get("skipped") or k.get("error")))
    e = report["epoch_times"]
    if "rows" in e:
        lines += [
            "",
            f"## One training epoch, the FLAME authors' recipe ({e['dataset']})",
            "",
            "| run | steps | epoch s | peak GiB |",
            "|---|---|---|---|",
        ]
        for r in e["rows"]:
            peak = f"{r['peak_gib']:.2f}" if r["peak_gib"] is not None else "-"
            extrap = f" (from {r['timed_steps']})" if r["timed_steps"] < r["steps"] else ""
            lines.append(
                f"| {r['run']} | {r['steps']}{extrap} | {r['epoch_seconds']:.1f} | {peak} |"
            )
    a = report["authors"]
    lines += ["", "## The authors' train.py, first epoch", ""]
    if "epoch_seconds" in a:
        lines.append(
            f"{a['epoch_seconds']:.1f} s (their timer); ours / theirs (FLAME packed): "
            f"{report.get('ours_over_theirs', float('nan')):.2f}"
        )
    else:
        lines.append(str(a.get("skipped") or a.get("error")))
    failed = [name for name, step in report["steps"].items() if step != "ran"]
    lines += ["", f"Steps that did not run: {', '.join(failed) if failed else 'none'}."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--tiny", action="store_true", help="tiny data and models, capped steps")
    parser.add_argument("--max_steps", type=int, default=None, help="default: all; --tiny: 3")
    parser.add_argument("--out", type=Path, required=True, help="folder for check.json, check.md")
    parser.add_argument("--authors", type=Path, default=None, help="a FLAME_SIGIR26 checkout")
    parser.add_argument("--authors_timeout", type=float, default=150.0)
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.exit(
            2,
            f"{parser.prog}: error: --device=cuda but CUDA is not available here; "
            "use --device=cpu for the dry run\n",
        )
    device = torch.device(args.device, 0) if args.device == "cuda" else torch.device("cpu")
    max_steps = args.max_steps if args.max_steps is not None else (3 if args.tiny else None)
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    report: dict[str, Any] = {
        "command": " ".join(["python", *sys.argv]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "steps": {},
    }
    steps = {
        "versions": lambda: versions(device),
        "test_subset": lambda: test_subset(device, args.out),
        "kernel_parity": lambda: kernel_parity(device),
        "epoch_times": lambda: epoch_times(device, args.tiny, max_steps),
        "authors": lambda: authors_epoch(args.authors, device, args.authors_timeout),
    }
    for name, step in steps.items():
        t0 = time.perf_counter()
        try:
            report[name] = step()
            ok = "error" not in report[name] and not report[name].get("failed")
            report["steps"][name] = "ran" if ok else "failed"
        except Exception as exc:  # recorded, and the remaining steps still run
            report[name] = {
                "error": f"{type(exc).__name__}: {exc}",
                "traceback": traceback.format_exc()[-2000:],
            }
            report["steps"][name] = "failed"
        print(f"{name}: {report['steps'][name]} ({time.perf_counter() - t0:.0f} s)", flush=True)
    ours = next(
        (
            r
            for r in report.get("epoch_times", {}).get("rows", [])
            if r["run"] == "FLAME stage 2, packed"
        ),
        None,
    )
    if ours and "epoch_seconds" in report["authors"]:
        report["ours_over_theirs"] = ours["epoch_seconds"] / report["authors"]["epoch_seconds"]
    report["wall_seconds"] = time.perf_counter() - start
    (args.out / "check.json").write_text(json.dumps(report, indent=2, default=str))
    text = markdown(report)
    (args.out / "check.md").write_text(text)
    print(text)
    return 0 if all(s == "ran" for s in report["steps"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())

"""What the experiments and benchmark scripts write: Markdown tables, JSON records, and the
provenance (command, commit, machine) each record carries so a number can be traced back."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table; floats at 4 significant digits, anything else as ``str``."""

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_json(path: str | Path, payload: dict[str, Any]) -> None:
    """``payload`` as indented JSON at ``path`` (folders made; what JSON cannot hold, as str)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=str))


def shown(path: str | os.PathLike) -> str:
    """``path`` relative to the current directory where it lies inside it, else absolute: how
    messages and reports name a file (run from the repository root, a repository path)."""
    full = Path(os.path.abspath(path))
    here = Path.cwd()
    return str(full.relative_to(here)) if full.is_relative_to(here) else str(full)


def provenance() -> dict[str, Any]:
    """Command, commit and machine of this sitting. The commit (and whether tracked files
    differ from it) is that of the git checkout the command runs in, the repository root when
    run as documented."""

    def git(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", *args], cwd=Path.cwd(), capture_output=True, text=True, check=True
            ).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return "unknown"

    return {
        "command": " ".join([sys.executable.rsplit("/", 1)[-1], *sys.argv]),
        "commit": git("rev-parse", "HEAD"),
        "dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
        "machine": {
            "host": platform.node(),
            "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "device": "cuda" if torch.cuda.is_available() else "cpu",
        },
    }

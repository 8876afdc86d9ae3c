"""The micro-benchmarks' shared runner (``benchmarks/micro/common.py``) and interleaved timing:
what a result file holds, when it is written, the thread counts, a measurement in a fresh
process, and the order the timed calls run in."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch

from recbole_flame.utils.timing import interleaved_over, interleaved_samples
from tests.conftest import BENCHMARKS, load_benchmark

common = load_benchmark("micro/common.py")


def _table(report: dict) -> str:
    return f"rows: {report['rows']}"


def test_run_writes_provenance_measurement_and_table(tmp_path, capsys) -> None:
    out = tmp_path / "sub" / "result.json"
    seen = {}

    def arguments(parser) -> None:
        parser.add_argument("--rows", type=int, default=3)

    def measure(args, save) -> dict:
        seen["threads"] = torch.get_num_threads()
        save({"rows": -1})  # a partial result is on disk while measuring
        seen["partial"] = json.loads(out.read_text())
        return {"rows": args.rows}

    before = torch.get_num_threads()
    try:
        code = common.run(
            "A test benchmark.\n\nMore.",
            measure,
            _table,
            out=str(out),
            arguments=arguments,
            argv=["--rows=5", "--threads=1"],
        )
    finally:
        torch.set_num_threads(before)
    assert code == 0
    report = json.loads(out.read_text())
    assert report["rows"] == 5 and report["threads"] == 1 and seen["threads"] == 1
    assert {"command", "commit", "machine", "load_average_before"} <= set(report)
    assert report["wall_seconds"] >= 0
    assert seen["partial"]["rows"] == -1 and "wall_seconds" in seen["partial"]
    printed = capsys.readouterr().out
    assert "rows: 5" in printed and "written:" in printed


def test_run_with_empty_out_writes_nothing_and_keeps_thread_lists(tmp_path, capsys) -> None:
    got = {}

    def measure(args, save) -> dict:
        save({"rows": 0})
        got.update(counts=args.thread_counts, first=args.threads)
        return {"rows": 1}

    before = torch.get_num_threads()
    try:
        common.run(
            "Doc.", measure, _table, out=str(tmp_path / "x.json"), argv=["--out=", "--threads=1,2"]
        )
    finally:
        torch.set_num_threads(before)
    assert got == {"counts": [1, 2], "first": 1}
    assert not (tmp_path / "x.json").exists()
    assert "written" not in capsys.readouterr().out


def test_run_refuses_a_bad_thread_count(capsys) -> None:
    with pytest.raises(SystemExit) as stop:
        common.run("Doc.", lambda a, s: {}, _table, out="", argv=["--threads=0"])
    assert stop.value.code == 2
    assert "thread counts must be positive" in capsys.readouterr().err


def test_in_fresh_process_runs_the_scripts_child(tmp_path) -> None:
    """A script's child measurement runs in another process (its pid differs) on the payload
    handed to it, with the thread count asked for; a MemoryError there exits 3."""
    script = tmp_path / "bench.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import os, sys
            sys.path.insert(0, {str(BENCHMARKS / "micro")!r})
            import torch
            from common import run

            def child(payload):
                if payload.get("fail"):
                    raise MemoryError
                return {{"pid": os.getpid(), "twice": 2 * payload["n"],
                         "threads": torch.get_num_threads()}}

            sys.exit(run(__doc__ or "x", lambda a, s: {{}}, str, out="", child=child))
            """
        )
    )
    result = common.in_fresh_process(str(script), {"n": 21}, threads=1)
    assert result["twice"] == 42 and result["threads"] == 1
    assert result["pid"] != __import__("os").getpid()
    import subprocess

    failed = subprocess.run(
        common.child_command(str(script), {"fail": True}, threads=1),
        capture_output=True,
        text=True,
    )
    assert failed.returncode == 3 and "MemoryError" in failed.stderr


def test_interleaved_over_calls_in_turn_after_the_warm_up() -> None:
    calls = []
    samples = interleaved_over(
        {"a": lambda x: calls.append(("a", x)), "b": lambda x: calls.append(("b", x))},
        ["x0", "x1"],
        warmup=["w"],
    )
    assert calls == [("a", "w"), ("b", "w"), ("a", "x0"), ("b", "x0"), ("a", "x1"), ("b", "x1")]
    assert [len(v) for v in samples.values()] == [2, 2]
    assert all(s >= 0 for v in samples.values() for s in v)


def test_interleaved_samples_counts_warm_up_rounds_from_zero() -> None:
    calls = []
    interleaved_samples({"a": calls.append}, 3, warmup=2)
    assert calls == [0, 1, 0, 1, 2]


def test_every_micro_benchmark_goes_through_the_runner() -> None:
    """Each script under benchmarks/micro/ hands its measurement and table to ``run``."""
    scripts = sorted(p for p in (BENCHMARKS / "micro").glob("*.py") if p.name != "common.py")
    assert len(scripts) >= 9
    for path in scripts:
        module = load_benchmark(f"micro/{path.name}")
        assert callable(module.table), path.name
        text = Path(path).read_text()
        assert "run(\n" in text or "run(__doc__" in text, path.name
        assert "argparse.ArgumentParser" not in text, path.name

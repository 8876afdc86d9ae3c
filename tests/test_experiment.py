"""The experiment engine (``recbole_flame.experiment``): the summary's metrics, model
diagnostics (``extras``) and paired tests from result files, against hand-computed means,
deviations and t statistics; run configs, progress reports and parking."""

from __future__ import annotations

import json
import math
import os
import statistics
from pathlib import Path

import pytest

from recbole_flame.experiment.runs import park, progress_report, unpark
from recbole_flame.experiment.spec import dig, load_spec, parked_file, result_file, run_config, slug
from recbole_flame.experiment.summary import summarize
from tests.conftest import load_benchmark


def _record(auc: float, logloss: float, extra: float | None, epoch_s: float = 1.0) -> dict:
    result = {
        "test_result": {"auc": auc, "logloss": logloss},
        "best_epoch": 3,
        "epochs_run": 8,
        "epoch_train_seconds": [9.0 * epoch_s, epoch_s, 2.0 * epoch_s],  # median: 2 epoch_s
        "elapsed_seconds_to_best": 1.0,
        "elapsed_seconds": 2.0,
    }
    if extra is not None:
        result["diag"] = {"test": {"base": [{"auc": extra}]}}
    return {"result": result}


def test_summary_tabulates_extras_and_paired_differences(tmp_path):
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(
        "dataset: ml-100k\nseeds: [1, 2, 3]\n"
        "runs:\n  A B: {model: CETNet}\n  C: {model: DeepFM}\n"
        "compare: [[A B, C]]\n"
        "extras: {DCNV2 AUC inside: diag.test.base.0.auc}\n"
    )
    spec = load_spec(spec_file)
    a = [(0.78, 0.55, 0.70), (0.79, 0.54, 0.72), (0.77, 0.56, 0.71)]
    c = [(0.775, 0.551), (0.781, 0.547), (0.772, 0.559)]
    for seed, (auc, ll, extra) in zip(spec["seeds"], a, strict=True):
        (tmp_path / f"{slug('A B')}-seed{seed}.json").write_text(
            json.dumps(_record(auc, ll, extra, epoch_s=seed))
        )
    for seed, (auc, ll) in zip(spec["seeds"], c, strict=True):
        (tmp_path / f"C-seed{seed}.json").write_text(json.dumps(_record(auc, ll, None)))
    text = summarize(spec, tmp_path)
    extra_line = next(line for line in text.splitlines() if line.startswith("| A B | 3 | 0.7100"))
    assert f"± {statistics.stdev([0.70, 0.72, 0.71]):.4f}" in extra_line
    assert not any(line.startswith("| C | 3 | -") for line in text.splitlines())
    # train s / epoch: the median epoch of each seed (2 x seed), then mean ± sd over seeds
    row = next(line for line in text.splitlines() if line.startswith("| A B | 3 | 0.7800"))
    assert row.split(" | ")[6] == f"{4.0:.4f} ± {statistics.stdev([2.0, 4.0, 6.0]):.4f}"
    diffs = [x[0] - y[0] for x, y in zip(a, c, strict=True)]
    mean, sd = statistics.mean(diffs), statistics.stdev(diffs)
    t = mean / (sd / math.sqrt(3))
    auc_line = next(line for line in text.splitlines() if "test auc" in line)
    assert f"mean diff {mean:+.4f} (sd {sd:.4f}" in auc_line
    assert f"paired t = {t:.2f}" in auc_line


def test_dig_reads_dotted_paths():
    result = {"a": {"b": [{"x": 1.5}, {"x": 2.5}]}}
    assert dig(result, "a.b.0.x") == 1.5 and dig(result, "a.b.-1.x") == 2.5
    assert dig(result, "a.c") is None and dig(result, "a.b.2.x") is None
    assert dig(result, "a.b.0.x.d") is None


def test_derived_rows_pair_a_run_with_the_baseline_inside_it(tmp_path):
    """FLAME's result holds its frozen SASRec's test result: ``derived`` makes it a row, and
    ``compare`` pairs it with FLAME seed by seed."""
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(
        "dataset: ml-100k\nseeds: [1, 2]\nruns:\n  FLAME: {model: FLAME}\n"
        "derived:\n  SASRec (stage 1):\n    from: FLAME\n"
        "    result: {test_result: stage1_test_result, best_epoch: stage1.best}\n"
        "compare: [[FLAME, SASRec (stage 1)]]\ntest_metrics: [ndcg@20]\nreport: [ndcg@20]\n"
    )
    spec = load_spec(spec_file)
    flame, stage1 = [0.080, 0.084], [0.085, 0.086]
    for seed, f, s in zip(spec["seeds"], flame, stage1, strict=True):
        result = {
            "test_result": {"ndcg@20": f},
            "best_epoch": 40,
            "epochs_run": 70,
            "elapsed_seconds_to_best": 10.0,
            "elapsed_seconds": 20.0,
            "stage1_test_result": {"ndcg@20": s},
            "stage1": {"best": 100 + seed},
        }
        (tmp_path / f"FLAME-seed{seed}.json").write_text(json.dumps({"result": result}))
    text = summarize(spec, tmp_path)
    row = next(line for line in text.splitlines() if line.startswith("| SASRec (stage 1) |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == "2"
    assert cells[2] == f"{statistics.mean(stage1):.4f} ± {statistics.stdev(stage1):.4f}"
    assert cells[3] == f"{statistics.mean([101, 102]):.4f} ± {statistics.stdev([101, 102]):.4f}"
    assert cells[4:] == ["-", "-", "-", "-"]  # not in its derived result
    line = next(line for line in text.splitlines() if "test ndcg@20" in line)
    diffs = [f - s for f, s in zip(flame, stage1, strict=True)]
    assert f"mean diff {statistics.mean(diffs):+.4f}" in line


def test_run_config_fills_seed_and_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("WEIGHTS_DIR", "/w")
    spec = load_spec_text(
        tmp_path,
        "dataset: ml-100k\nseeds: [7]\nbase: {epochs: 3, frozen_checkpoint: $WEIGHTS_DIR/a.pt}\n"
        "runs:\n  F x: {model: FLAME, config: {stage1_cache_dir: 'r/F-seed{seed}/s1'}}\n",
    )
    config, ckpt = run_config(spec, "F x", 7, tmp_path)
    assert config["frozen_checkpoint"] == "/w/a.pt" and config["epochs"] == 3
    assert config["stage1_cache_dir"] == "r/F-seed7/s1" and config["seed"] == 7
    assert ckpt == tmp_path / "ckpt" / "F-x-seed7" and config["checkpoint_dir"] == str(ckpt)


def load_spec_text(folder: Path, text: str) -> dict:
    path = folder / "spec.yaml"
    path.write_text(text)
    return load_spec(path)


def test_time_to_accuracy_from_learning_curves(tmp_path):
    """Dense reaches prefix's best validation score (0.08) first at its third validation, at
    30 s; prefix took 200 s to its best: 0.15. A run that never gets there is said so."""

    def record(scores, seconds, best_seconds):
        history = [
            {"epoch": i + 1, "valid_score": v, "elapsed_seconds": t}
            for i, (v, t) in enumerate(zip(scores, seconds, strict=True))
        ]
        return {
            "result": {
                "test_result": {"ndcg@20": 0.1},
                "valid_history": history,
                "best_epoch": 1,
                "epochs_run": len(history),
                "elapsed_seconds_to_best": best_seconds,
                "elapsed_seconds": seconds[-1],
            }
        }

    spec = load_spec_text(
        tmp_path,
        "dataset: ml-100k\nseeds: [1, 2]\nruns:\n  D: {model: SASRec}\n  P: {model: SASRec}\n"
        "time_to_accuracy: [[D, P]]\n",
    )
    runs = {
        ("D", 1): record([0.05, 0.07, 0.081, 0.09], [10, 20, 30, 40], 40),
        ("P", 1): record([0.06, 0.08, 0.079], [100, 200, 300], 200),
        ("D", 2): record([0.05, 0.06], [10, 20], 20),
        ("P", 2): record([0.07], [100], 100),
    }
    for (label, seed), rec in runs.items():
        (tmp_path / f"{label}-seed{seed}.json").write_text(json.dumps(rec))
    line = next(line for line in summarize(spec, tmp_path).splitlines() if "Time to" in line)
    assert "mean 0.150" in line and "seed 1: 30 s (epoch 3) / 200 s = 0.150" in line
    assert "seed 2: never reached 0.0700" in line


def test_progress_report_reads_the_unfinished_runs_state(tmp_path):
    """``--progress``: the learning curve of a run that has a run state and no result, with its
    resume command (the environment variables its settings read named); none once finished."""
    import torch

    spec_file = tmp_path / "s.yaml"
    spec_file.write_text(
        "dataset: ml-100k\nseeds: [7]\n"
        "runs:\n  A b: {model: FLAME, config: {frozen_checkpoint: $WEIGHTS/x.pt}}\n"
    )
    spec = load_spec(spec_file)
    assert progress_report(spec, "A b", 7, tmp_path) is None  # never started
    _, ckpt = run_config(spec, "A b", 7, tmp_path)
    ckpt.mkdir(parents=True)
    history = [
        {"epoch": 1, "valid_score": 0.01, "train_seconds": 10.4},
        {"epoch": 2, "valid_score": 0.03, "train_seconds": 20.6},
        {"epoch": 3, "valid_score": 0.02, "train_seconds": 31.0},
    ]
    state = {"state_dict": {"w": torch.zeros(1)}, "valid_history": history, "elapsed_seconds": 40.0}
    torch.save(state, ckpt / "A-x-last.pth")
    text = progress_report(spec, "A b", 7, tmp_path)
    assert "Validations so far: 3; best valid score 0.03 at epoch 2; wall seconds so far 40" in text
    assert f"`WEIGHTS=PATH python run_recbole_flame.py --spec={spec_file} --threads 1" in text
    assert '--only "A b" --seeds 7`' in text
    assert "| 2 | 0.0300 | 21 |" in text or "| 2 | 0.03 | 21 |" in text
    result_file(tmp_path, "A b", 7).write_text("{}")
    assert progress_report(spec, "A b", 7, tmp_path) is None  # finished


def test_parked_state_resumes_in_another_clone(tmp_path):
    """``--park`` packs a run's newest state and the best model it names; in another clone
    (another folder) the run's first step unpacks them and the state names the new best-model
    path; a folder that already holds a state is left alone; the report says it is parked."""
    import torch

    from recbole_flame.utils.checkpoint import load_checkpoint

    spec_file = tmp_path / "s.yaml"
    spec_file.write_text("dataset: ml-100k\nseeds: [3]\nruns:\n  F: {model: FLAME}\n")
    spec = load_spec(spec_file)
    here, there = tmp_path / "clone1", tmp_path / "clone2"
    assert park(spec, "F", 3, here) is None  # nothing to park
    config, ckpt = run_config(spec, "F", 3, here)
    best = ckpt / "F-x.pth"
    ckpt.mkdir(parents=True)
    torch.save({"state_dict": {"w": torch.full((2,), 7.0)}}, best)
    torch.save({"state_dict": {"w": torch.ones(1)}, "valid_history": []}, ckpt / "F-old-last.pth")
    history = [{"epoch": 1, "valid_score": 0.5, "train_seconds": 3.0}]
    state = {
        "state_dict": {"w": torch.arange(3.0)},
        "config": {"checkpoint_dir": config["checkpoint_dir"]},
        "best_model_file": str(best),
        "valid_history": history,
    }
    torch.save(state, ckpt / "F-new-last.pth")
    os.utime(ckpt / "F-old-last.pth", (1, 1))  # older: not parked, only the newest state is
    packed = park(spec, "F", 3, here)
    assert packed == parked_file(here, "F", 3)
    assert "parked (committed)" in progress_report(spec, "F", 3, here)

    target = parked_file(there, "F", 3)
    target.parent.mkdir(parents=True)
    target.write_bytes(packed.read_bytes())
    unpacked = unpark(spec, "F", 3, there)
    _, ckpt2 = run_config(spec, "F", 3, there)
    assert unpacked == ckpt2 / "F-new-last.pth"
    assert sorted(p.name for p in ckpt2.iterdir()) == ["F-new-last.pth", "F-x.pth"]
    restored = load_checkpoint(unpacked)
    assert restored["best_model_file"] == str(ckpt2.absolute() / "F-x.pth")
    assert torch.equal(restored["state_dict"]["w"], torch.arange(3.0))
    assert restored["valid_history"] == history
    assert torch.equal(load_checkpoint(ckpt2 / "F-x.pth")["state_dict"]["w"], torch.full((2,), 7.0))
    assert unpark(spec, "F", 3, there) is None  # a state is already there


def test_parked_flame_stage2_carries_its_finished_stage1(tmp_path):
    """A FLAME run parked in stage 2 (both stages trained here) packs its finished stage-1
    checkpoint too: unpacked in another clone, stage 2 finds the frozen network it was trained
    against instead of training stage 1 again. Stage 1's hidden working files are not packed."""
    import torch

    from recbole_flame.utils.checkpoint import load_checkpoint

    spec_file = tmp_path / "s.yaml"
    spec_file.write_text("dataset: ml-100k\nseeds: [3]\nruns:\n  F: {model: FLAME}\n")
    spec = load_spec(spec_file)
    here, there = tmp_path / "clone1", tmp_path / "clone2"
    config, ckpt = run_config(spec, "F", 3, here)
    (ckpt / "flame_stage1").mkdir(parents=True)
    stage1 = ckpt / "flame_stage1" / "SASRec-ml-100k-abc.pth"
    torch.save({"state_dict": {"w": torch.full((2,), 5.0)}}, stage1)
    (ckpt / "flame_stage1" / ".SASRec-ml-100k-abc.pth.lock").write_text("")
    best = ckpt / "F-x.pth"
    torch.save({"state_dict": {"w": torch.ones(2)}}, best)
    state = {
        "state_dict": {"w": torch.arange(3.0)},
        "config": {"checkpoint_dir": config["checkpoint_dir"]},
        "best_model_file": str(best),
        "valid_history": [],
    }
    torch.save(state, ckpt / "F-x-last.pth")
    packed = park(spec, "F", 3, here)
    target = parked_file(there, "F", 3)
    target.parent.mkdir(parents=True)
    target.write_bytes(packed.read_bytes())
    unpark(spec, "F", 3, there)
    _, ckpt2 = run_config(spec, "F", 3, there)
    assert sorted(str(p.relative_to(ckpt2)) for p in ckpt2.rglob("*") if p.is_file()) == [
        "F-x-last.pth",
        "F-x.pth",
        "flame_stage1/SASRec-ml-100k-abc.pth",
    ]
    restored = load_checkpoint(ckpt2 / "flame_stage1" / "SASRec-ml-100k-abc.pth")
    assert torch.equal(restored["state_dict"]["w"], torch.full((2,), 5.0))


def test_per_user_paired_comparison_matches_hand_computed_values() -> None:
    """The per-user test matches users by id (rows come in different orders), scores NDCG@k
    from the rank, and its paired t over users equals the hand-computed one."""
    import torch

    from recbole_flame.experiment.per_user import paired_users

    k = 3
    # user: (rank under a, rank under b); rank >= k scores 0
    ranks = {10: (0, 1), 11: (2, 0), 12: (5, 2), 13: (1, 1), 14: (0, 4)}
    users_a = torch.tensor([10, 11, 12, 13, 14])
    users_b = torch.tensor([14, 13, 12, 11, 10])
    ranks_a = torch.tensor([ranks[int(u)][0] for u in users_a])
    ranks_b = torch.tensor([ranks[int(u)][1] for u in users_b])
    out = paired_users((ranks_a, users_a), (ranks_b, users_b), f"ndcg@{k}")

    def ndcg(r: int) -> float:
        return 1 / math.log2(r + 2) if r < k else 0.0

    diffs = [ndcg(a) - ndcg(b) for a, b in ranks.values()]
    mean = statistics.mean(diffs)
    t = mean / (statistics.stdev(diffs) / math.sqrt(len(diffs)))
    b_mean = statistics.mean(ndcg(b) for _, b in ranks.values())
    assert out["users"] == 5
    assert math.isclose(out["mean_diff"], mean, rel_tol=1e-9)
    assert math.isclose(out["relative_diff"], mean / b_mean, rel_tol=1e-9)
    assert math.isclose(out["t"], t, rel_tol=1e-9)
    assert (out["a_better_users"], out["b_better_users"]) == (2, 2)


def test_milestones_give_the_first_epoch_reaching_each_score(tmp_path):
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(
        "dataset: ml-100k\nseeds: [1]\nruns:\n  A: {model: SASRec}\nmilestones: [0.05, 0.06, 0.07]\n"
    )
    spec = load_spec(spec_file)
    curve = [0.03, 0.051, 0.049, 0.065, 0.06]  # epochs 0-4: 0.06 first at 3, 0.07 never
    result = {
        "test_result": {"ndcg@20": 0.06},
        "valid_history": [{"epoch": e, "valid_score": v} for e, v in enumerate(curve)],
    }
    (tmp_path / "A-seed1.json").write_text(json.dumps({"result": result}))
    lines = summarize(spec, tmp_path).splitlines()
    head = next(i for i, line in enumerate(lines) if "first epoch at valid 0.05" in line)
    row = lines[head + 2]
    assert [c.strip() for c in row.strip("|").split("|")][2:] == ["1", "3", "-"]


def test_authors_curve_reads_their_log_and_tabulates_both_curves() -> None:
    """Their train.py's log format (read from their print statements), percent to fractions,
    the test block ignored; the table pairs epochs of the two curves."""
    authors_curve_table = load_benchmark("micro/authors_curve.py").table

    module = load_benchmark("micro/authors_curve.py")
    log = "\n".join(
        [
            "[Epoch   1] Train ( 812.50s) | Loss    : 17.2500",
            "            Val   (  30.10s) | HR@1    :  0.40",
            "                            | HR@20   :  6.25",
            "                            | NDCG@20 :  1.50",
            "[Epoch   2] Train ( 800.00s) | Loss    : 15.0000",
            "            Val   (  30.00s) | HR@20   :  8.00",
            "                            | NDCG@20 :  2.25",
            "",
            "Loading best model from epoch 2...",
            "            Test  (  30.00s) | HR@20   :  9.99",
            "                            | NDCG@20 :  9.99",
        ]
    )
    epochs = module.parse_authors_log(log)
    assert [e["epoch"] for e in epochs] == [1, 2]
    assert epochs[0]["loss"] == 17.25 and epochs[0]["train_seconds"] == 812.5
    assert math.isclose(epochs[0]["valid"]["ndcg@20"], 0.015)
    assert math.isclose(epochs[0]["valid"]["hr@1"], 0.004)
    # the test block after the last epoch is not a validation
    assert math.isclose(epochs[1]["valid"]["ndcg@20"], 0.0225)
    assert math.isclose(epochs[1]["valid"]["hr@20"], 0.08)
    report = {
        "authors": epochs,
        "ours": [
            {"epoch": 1, "valid": {"ndcg@20": 0.0155, "hit@20": 0.05}},
            {"epoch": 2, "valid": {"ndcg@20": 0.0212, "hit@20": 0.06}},
        ],
        "seed": 42,
    }
    rows = [line for line in authors_curve_table(report).splitlines() if line.startswith("| 2 ")]
    assert rows == ["| 2 | 0.0225 | 0.0212 | 0.08 | 0.06 | 15 |"]


def test_authors_curve_stops_their_run_after_the_asked_validations(tmp_path) -> None:
    """Their --num_epoch is also their annealing length, so the harness gives it the recipe's R
    and stops the process itself: a stand-in train.py that prints an epoch block forever (and
    records its argv) is stopped after the 2nd validation, with both epochs in the log."""
    import sys

    fake = tmp_path / "train.py"
    fake.write_text(
        "import sys, time\n"
        "open(sys.argv[0] + '.argv', 'w').write(' '.join(sys.argv[1:]))\n"
        "e = 0\n"
        "while True:\n"
        "    e += 1\n"
        "    print(f'[Epoch {e:>3}] Train (  1.00s) | Loss    : {10 - e:>7.4f}', flush=True)\n"
        "    print('            Val   (  1.00s) | HR@20   :  5.00', flush=True)\n"
        "    print(f'                            | NDCG@20 :  {e:.2f}', flush=True)\n"
        "    time.sleep(0.05)\n"
    )
    module = load_benchmark("micro/authors_curve.py")
    log = tmp_path / "out" / "authors_train.log"
    cmd = [sys.executable, "-u", str(fake), "--num_epoch", "200"]
    text = module.stream_until_validations(cmd, tmp_path, {}, log, 2)
    epochs = module.parse_authors_log(text)
    assert [e["epoch"] for e in epochs] == [1, 2]
    assert math.isclose(epochs[1]["valid"]["ndcg@20"], 0.02)
    assert log.read_text() == text
    assert (tmp_path / "train.py.argv").read_text() == "--num_epoch 200"


def test_authors_curve_reports_a_failing_run_with_its_stderr(tmp_path) -> None:
    import sys

    fake = tmp_path / "train.py"
    fake.write_text("import sys\nprint('Preparing...')\nsys.exit('their error here')\n")
    module = load_benchmark("micro/authors_curve.py")
    with pytest.raises(RuntimeError, match="their error here"):
        module.stream_until_validations(
            [sys.executable, str(fake)], tmp_path, {}, tmp_path / "log.txt", 3
        )


def test_headline_by_hand_with_the_convergence_ratio(tmp_path) -> None:
    """The README's generated text for a spec's headline: mean test metrics of A and B, the
    relative gain, and with ``convergence: True`` A's convergence ratio per seed."""
    headline = load_benchmark("report.py").headline

    spec_file = tmp_path / "flame_x.yaml"
    spec_file.write_text(
        "dataset: ml-100k\nseeds: [1, 2]\nruns:\n  A: {model: FLAME}\n  B: {model: SASRec}\n"
        "headline: {run: A, against: B, against_as: its own stage 1, metric: ndcg@20,"
        " convergence: True}\n"
    )
    spec = load_spec(spec_file)
    out = tmp_path / "benchmarks" / "results" / spec["name"]
    out.mkdir(parents=True)
    for label, seed, ndcg, ratio in (("A", 1, 0.07, 1.5), ("A", 2, 0.05, None)):
        result = {"test_result": {"ndcg@20": ndcg}, "convergence_ratio": ratio}
        (out / f"{label}-seed{seed}.json").write_text(json.dumps({"result": result}))
    for seed, ndcg in ((1, 0.05), (2, 0.05)):
        result = {"test_result": {"ndcg@20": ndcg}}
        (out / f"B-seed{seed}.json").write_text(json.dumps({"result": result}))
    # A: mean 0.06, B: 0.05, +20%; 2 seeds (no p under 3)
    assert headline(spec, tmp_path) == (
        "test NDCG@20 0.0600 against its own stage 1's 0.0500 (+20.0%, 2 seeds; "
        "convergence ratio 1.50, none)"
    )


def _canet_results(tmp_path) -> None:
    """Two CANet experiments' result files on ml-100k (L default and 200) under ``tmp_path``."""
    experiments = tmp_path / "benchmarks" / "experiments"
    experiments.mkdir(parents=True)
    (experiments / "canet_x.yaml").write_text(
        "dataset: ml-100k\nseeds: [1, 2]\nruns:\n"
        "  small: {model: CANet, config: {fixed_route: h32-l1-e32}}\n"
        "  big: {model: CANet, config: {fixed_route: full}}\n"
        "  routed: {model: CANet}\n"
        "  cheap: {model: CANet, config: {flops_budget: 0.1}}\n"
        "  plain: {model: SASRec}\n"
    )
    (experiments / "other.yaml").write_text(  # no CANet run: not on the curve
        "dataset: ml-100k\nseeds: [1]\nruns:\n  plain: {model: SASRec}\n"
    )
    out = tmp_path / "benchmarks" / "results" / "canet_x"
    out.mkdir(parents=True)
    (tmp_path / "benchmarks" / "results" / "other").mkdir()
    results = {  # label -> seed -> (flops ratio or None, ndcg@10)
        "small": {1: (0.2, 0.02), 2: (0.2, 0.04)},  # mean 0.03 at 0.2
        "big": {1: (1.0, 0.05)},  # 0.05 at 1.0
        "routed": {1: (0.6, 0.045), 2: (0.6, 0.045)},  # line at 0.6: 0.03 + 0.02 / 2 = 0.04
        "cheap": {1: (0.1, 0.01)},  # left of the line
        "plain": {1: (None, 0.06)},  # drawn at 1, not routed
    }
    for label, seeds in results.items():
        for seed, (ratio, ndcg) in seeds.items():
            test = {"hit@10": 0.1, "hit@20": 0.2, "ndcg@10": ndcg, "ndcg@20": 0.07}
            if ratio is not None:
                test["flops_ratio"] = ratio
            (out / f"{label}-seed{seed}.json").write_text(
                json.dumps({"result": {"test_result": test}})
            )
    (tmp_path / "benchmarks" / "results" / "other" / "plain-seed1.json").write_text(
        json.dumps({"result": {"test_result": {"ndcg@10": 0.9}}})
    )
    # the same dataset at another sequence length: another static line, which must not bend
    # canet_x's (a point at 0.6 of 0.9 would put the routed run far below it)
    (experiments / "canet_y.yaml").write_text(
        "dataset: ml-100k\nseeds: [1]\nbase: {MAX_ITEM_LIST_LENGTH: 200}\nruns:\n"
        "  mid: {model: CANet, config: {fixed_route: h48-l2-e48}}\n"
    )
    (tmp_path / "benchmarks" / "results" / "canet_y").mkdir()
    (tmp_path / "benchmarks" / "results" / "canet_y" / "mid-seed1.json").write_text(
        json.dumps({"result": {"test_result": {"ndcg@10": 0.9, "flops_ratio": 0.6}}})
    )


def test_canet_table_puts_routed_runs_against_the_static_line_by_hand(tmp_path) -> None:
    """The accuracy-compute table gathers every CANet experiment's finished runs (seeds
    averaged), by FLOPs ratio, and gives each routed run its distance above the line through
    the static sub-networks, interpolated by hand; runs outside the line's range get none."""
    canet_table = load_benchmark("report.py").canet_table
    _canet_results(tmp_path)
    rows = [line.lstrip("| ").split(" | ") for line in canet_table(tmp_path).splitlines()[2:]]
    data = {row[1]: row[0] for row in rows}
    by_label = {row[1]: row[1:] for row in rows}
    assert [row[1] for row in rows] == ["cheap", "small", "routed", "big", "plain", "mid"]
    assert data["routed"] == "ml-100k, L = default" and data["mid"] == "ml-100k, L = 200"
    assert by_label["small"][1:4] == ["static sub-network", "canet_x", "2"]
    assert by_label["small"][7] == "0.0300"
    assert by_label["routed"][1] == "routed"
    assert by_label["routed"][-2:] == ["0.0400", "+0.0050 |"]
    assert by_label["cheap"][-2:] == ["-", "- |"]
    assert by_label["plain"][1] == "SASRec" and by_label["plain"][4] == "1.00"
    assert by_label["plain"][-2:] == ["-", "- |"]


def test_canet_plot_draws_one_panel_per_data_setting(tmp_path, monkeypatch) -> None:
    """One panel per dataset and length, each with its own static line (seed means by hand) and
    its other runs as points; a flat panel's y axis spans at least +-10% of its mean."""
    report = load_benchmark("report.py")
    _canet_results(tmp_path)
    figures = []
    monkeypatch.setattr(report, "_save", lambda fig, path: figures.append(fig))
    assert report.plot_canet(tmp_path, tmp_path / "plot.png")
    axes = [ax for ax in figures[0].axes if ax.get_visible()]
    assert [ax.get_title() for ax in axes] == [
        "ml-100k, L = default (1/2 seeds)",
        "ml-100k, L = 200 (1 seed)",
    ]
    (line,) = axes[0].get_lines()
    assert list(line.get_xdata()) == [0.2, 1.0] and list(line.get_ydata()) == [0.03, 0.05]
    points = sorted(tuple(c.get_offsets()[0]) for c in axes[0].collections)
    assert points == [(0.1, 0.01), (0.6, 0.045), (1.0, 0.06)]  # cheap, routed, plain (at 1)
    assert axes[1].get_lines()[0].get_xdata().tolist() == [0.6]  # its one static point
    low, high = axes[1].get_ylim()  # one point, 0.9: the span is the +-10%
    assert low <= 0.81 and high >= 0.99


def test_flame_datasets_table_by_hand(tmp_path) -> None:
    """The cross-dataset FLAME table takes each FLAME experiment in the authors' prefix recipe
    (and no other), its dataset file, FLAME's and the frozen network's test NDCG@20 (the gain
    worked by hand), the per-user p-value; before FLAME finishes, the frozen probe's score."""
    flame_dataset_rows = load_benchmark("report.py").flame_dataset_rows
    flame_datasets_table = load_benchmark("report.py").flame_datasets_table

    experiments = tmp_path / "benchmarks" / "experiments"
    experiments.mkdir(parents=True)
    recipe = "base: {train_mode: prefix, position_alignment: end%s}\n"
    (experiments / "flame_a.yaml").write_text(
        "dataset: toys\nseeds: [42]\n"
        + recipe % ", frozen_checkpoint: w.pt"
        + "runs:\n  FLAME: {model: FLAME}\n"
    )
    (experiments / "flame_b.yaml").write_text(
        "dataset: yelp\nseeds: [42]\n" + recipe % "" + "runs:\n  FLAME: {model: FLAME}\n"
    )
    (experiments / "flame_dense.yaml").write_text(  # another recipe: not in the table
        "dataset: toys\nseeds: [42]\nbase: {train_mode: dense, position_alignment: end}\n"
        "runs:\n  FLAME: {model: FLAME}\n"
    )
    results = tmp_path / "benchmarks" / "results"
    for name in ("flame_a", "flame_b", "flame_dense"):
        (results / name).mkdir(parents=True)
    (results / "flame_a" / "FLAME-seed42.json").write_text(
        json.dumps(
            {
                "result": {
                    "test_result": {"ndcg@20": 0.0750},
                    "stage1_test_result": {"ndcg@20": 0.0600},
                    "stage2_epoch_reaching_stage1_best": 7,
                    "best_epoch": 30,
                }
            }
        )
    )
    (results / "flame_a" / "dataset.json").write_text(
        json.dumps({"users": 1200, "items": 300, "mean_length": 8.5})
    )
    (results / "flame_a" / "per_user-seed42.json").write_text(
        json.dumps({"paired": {"FLAME - FLAME (frozen)": {"p": 0.004}}})
    )
    (results / "flame_b" / "frozen_score-seed42.json").write_text(
        json.dumps({"test_result": {"ndcg@20": 0.0500}})
    )
    rows = flame_dataset_rows(tmp_path)
    assert [r["experiment"] for r in rows] == ["flame_a", "flame_b"]
    lines = flame_datasets_table(tmp_path).splitlines()
    a = lines[2].split(" | ")
    assert a[:2] == ["| toys", "the authors' released SASRec"]
    assert a[2:5] == ["1,200", "300", "8.50"]
    assert a[5:8] == ["0.0600", "0.0750", "+25.0% (p = 0.004)"]  # (0.075 - 0.06) / 0.06
    assert a[8] == "7 (30)"
    b = lines[3].split(" | ")
    assert b[:2] == ["| yelp", "our stage 1"] and b[5:8] == ["0.0500", "-", "-"]
    # the README's range: one finished run so far (yelp's has only its frozen score)
    flame_gain_range = load_benchmark("report.py").flame_gain_range
    assert flame_gain_range(tmp_path) == (
        "test NDCG@20 +25.0% (toys, the authors' released SASRec) to +25.0% (toys, the authors' "
        "released SASRec) over the frozen SASRec, 1 run on 1 of the paper's datasets (toys)"
    )
    (results / "flame_b" / "FLAME-seed42.json").write_text(
        json.dumps(
            {
                "result": {
                    "test_result": {"ndcg@20": 0.0510},
                    "stage1_test_result": {"ndcg@20": 0.05},
                }
            }
        )
    )
    assert flame_gain_range(tmp_path) == (  # (0.051 - 0.05) / 0.05 = +2%
        "test NDCG@20 +2.0% (yelp, our stage 1) to +25.0% (toys, the authors' released SASRec) "
        "over the frozen SASRec, 2 runs on 2 of the paper's datasets (toys, yelp)"
    )


def test_a_docs_marker_naming_nothing_stops_with_one_line(tmp_path) -> None:
    """Generated spans are filled by name; a name no table or spec has stops the report with a
    line naming it, and known markers keep their tags around the new body."""
    with_headlines = load_benchmark("report.py").with_headlines
    with_micro_tables = load_benchmark("report.py").with_micro_tables
    with_result_tables = load_benchmark("report.py").with_result_tables
    from recbole_flame.utils.errors import UserError

    (tmp_path / "benchmarks" / "experiments").mkdir(parents=True)
    for fill, text in (
        (with_micro_tables, "a <!-- micro:no_such -->old<!-- /micro --> b"),
        (with_result_tables, "<!-- table:no_such -->\nold\n<!-- /table -->"),
        (with_headlines, "<!-- h:no_such -->old<!-- /h -->"),
    ):
        with pytest.raises(UserError, match="names no .*: no_such$"):
            fill(text, tmp_path)
    text = "a <!-- table:canet_accuracy_compute -->old<!-- /table --> b"
    assert with_result_tables(text, tmp_path) == (
        "a <!-- table:canet_accuracy_compute -->\nnot run yet\n<!-- /table --> b"
    )

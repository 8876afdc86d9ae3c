"""The comparison's report from hand-made runs (no training): the best model per metric, paired
tests between every pair with Holm's correction, the parameter line and the plot's title,
checked against values worked out here."""

from __future__ import annotations

import csv
import json
import math
import struct
import zlib
from pathlib import Path

import pytest
import torch

from recbole_flame.experiment.compare import markdown, summarize, write_outputs

# Test ndcg@10 per seed: B = A + (1, 2, 3)/100, C = A + (2, 2, 5)/100.
A_NDCG = [0.10, 0.20, 0.30]
B_MINUS_A = [0.01, 0.02, 0.03]
C_MINUS_A = [0.02, 0.02, 0.05]


def _p_two_dof(t: float) -> float:
    """Two-sided p of a t statistic on 2 degrees of freedom, whose CDF has the closed form
    1/2 + t / (2 sqrt(2 + t^2))."""
    return 1 - abs(t) / math.sqrt(2 + t * t)


def _ndcg10(rank: int) -> float:
    return 1 / math.log2(rank + 2) if rank < 10 else 0.0


# 0-based ranks of each of 8 test users' held-out item, per model and seed.
RANKS = {
    ("A", 1): [9, 9, 9, 9, 0, 4, 20, 9],
    ("B", 1): [0, 1, 0, 2, 0, 4, 20, 1],
    ("C", 1): [0, 0, 3, 9, 1, 4, 0, 9],
    ("A", 2): [5, 9, 9, 3, 0, 4, 20, 9],
    ("B", 2): [0, 1, 9, 2, 0, 4, 20, 1],
    ("C", 2): [0, 0, 0, 0, 1, 4, 0, 2],
    ("A", 3): [9, 9, 9, 9, 9, 9, 9, 9],
    ("B", 3): [0, 1, 0, 2, 0, 4, 20, 1],
    ("C", 3): [0, 0, 3, 9, 1, 4, 0, 9],
}


def _run(model: str, seed: int, ndcg: float, hit: float, parameters: int) -> dict:
    ranks = RANKS[(model, seed)]
    return {
        "model": model,
        "seed": seed,
        "valid_metric": "NDCG@10",
        "settings": {},
        "test_result": {"hit@10": hit, "ndcg@10": ndcg},
        "best_valid_result": {},
        "epoch_seconds": 1.0,
        "inference_seconds_per_batch": 0.01,
        "parameters": parameters,
        "curve": [(1, 0.1 * seed), (2, 0.2 * seed)],
        "best_epoch": 2,
        "seconds_to_best": 3.0,
        # users listed in another order for C: the tests must match them by id
        "ranks": (
            torch.tensor(ranks[::-1] if model == "C" else ranks),
            torch.arange(8).flip(0) if model == "C" else torch.arange(8),
        ),
    }


def _runs(seeds=(1, 2, 3)) -> list[dict]:
    runs = []
    for seed in seeds:
        k = seed - 1
        runs.append(_run("A", seed, A_NDCG[k], 0.5, 33_840))
        runs.append(_run("B", seed, A_NDCG[k] + B_MINUS_A[k], 0.6, 112_640))
        runs.append(_run("C", seed, A_NDCG[k] + C_MINUS_A[k], 0.6, 40_000))
    return runs


def _pair(summary: dict, a: str, b: str) -> dict:
    return next(p for p in summary["pairwise"] if (p["a"], p["b"]) == (a, b))


def _naive_paired_p(x: list[float], y: list[float]) -> float:
    """Paired t-test by its definition: t = mean(d) / (sd(d) / sqrt(n)), two-sided p from the t
    distribution with n - 1 degrees of freedom."""
    from scipy.stats import t as t_dist

    d = [a - b for a, b in zip(x, y, strict=True)]
    n = len(d)
    mean = sum(d) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in d) / (n - 1))
    return 2 * t_dist.sf(abs(mean / (sd / math.sqrt(n))), n - 1)


def _naive_holm(pvalues: list[float]) -> list[float]:
    order = sorted(range(len(pvalues)), key=lambda i: pvalues[i])
    out, running = [0.0] * len(pvalues), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(pvalues) - rank) * pvalues[i]))
        out[i] = running
    return out


def test_every_pair_is_tested_across_seeds_with_holms_correction():
    summary = summarize(_runs(), dataset="ml-tiny")
    pairs = [(p["a"], p["b"]) for p in summary["pairwise"]]
    assert pairs == [("B", "A"), ("C", "A"), ("C", "B")]  # the two baselines too
    # t of each pair's ndcg@10 differences: (1,2,3) -> sqrt(12); (2,2,5) -> 3; C - B = (1,0,2)
    # -> sqrt(3) (all /100, which t does not see)
    raw = {("B", "A"): _p_two_dof(math.sqrt(12)), ("C", "A"): _p_two_dof(3.0)}
    raw[("C", "B")] = _p_two_dof(math.sqrt(3))
    for pair, p in raw.items():
        assert math.isclose(_pair(summary, *pair)["metrics"]["ndcg@10"]["p"], p, rel_tol=1e-6)
    # Holm over the three pairs: 3 * 0.0742 = 0.2225; 2 * 0.0955 = 0.1909 -> raised to 0.2225;
    # 1 * 0.2254
    holm = {("B", "A"): 3 * raw[("B", "A")], ("C", "A"): 3 * raw[("B", "A")]}
    holm[("C", "B")] = raw[("C", "B")]
    for pair, p in holm.items():
        cell = _pair(summary, *pair)["metrics"]["ndcg@10"]
        assert math.isclose(cell["p_holm"], p, rel_tol=1e-6), pair
    cell = _pair(summary, "C", "B")["metrics"]["ndcg@10"]
    assert math.isclose(cell["mean_diff"], 0.01) and cell["a_better_seeds"] == 2
    # hit@10 differs by exactly 0.1 on every seed: no spread, so no t-test (not p = 0)
    hit = _pair(summary, "B", "A")["metrics"]["hit@10"]
    assert hit["p"] is None and hit["same_on_every_seed"] and hit["a_better_seeds"] == 3
    table = markdown(summary)
    assert "| C - B | +0.0000, 0/3 seeds, the same on every seed |" in table
    assert f"+0.0100, 2/3 seeds, p={holm[('C', 'B')]:.3g}" in table
    assert "Holm-corrected over the 3 pairs of each metric" in table


def test_per_user_tests_between_every_pair_are_corrected_per_seed():
    summary = summarize(_runs())
    for seed in (1, 2, 3):
        raws = []
        for a, b in (("B", "A"), ("C", "A"), ("C", "B")):
            x = [_ndcg10(r) for r in RANKS[(a, seed)]]
            y = [_ndcg10(r) for r in RANKS[(b, seed)]]
            test = _pair(summary, a, b)["per_user"][seed]
            assert test["users"] == 8 and test["metric"] == "ndcg@10"
            assert math.isclose(test["mean_diff"], (sum(x) - sum(y)) / 8, abs_tol=1e-12)
            raws.append(_naive_paired_p(x, y))
            assert math.isclose(test["p"], raws[-1], rel_tol=1e-9)
        corrected = [pr["per_user"][seed]["p_holm"] for pr in summary["pairwise"]]
        expected = _naive_holm(raws)
        assert all(
            math.isclose(c, e, rel_tol=1e-9) for c, e in zip(corrected, expected, strict=True)
        )
    table = markdown(summary)
    assert "C - B, seed 2, test ndcg@10 per user over 8 users" in table
    assert "Holm p corrected over the 3 pairs of that seed" in table


def test_the_best_model_per_metric_is_marked_and_the_verdict_names_it():
    summary = summarize(_runs())
    # means: ndcg@10 A 0.20, B 0.22, C 0.23; hit@10 B and C tie at 0.6
    assert summary["best"] == {"hit@10": ["B", "C"], "ndcg@10": ["C"]}
    rows = {row["model"]: row for row in summary["rows"]}
    assert rows["C"]["ndcg@10"]["best"] and not rows["B"]["ndcg@10"]["best"]
    table = markdown(summary)
    lines = {line.split(" | ")[0]: line for line in table.splitlines() if line.startswith("| ")}
    assert "| **0.2300 ± 0.1153** |" in lines["| C"]
    assert "**0.6000 ± 0.0000**" in lines["| B"] and "**" not in lines["| A"]
    assert "bold: the best model per metric" in table
    verdict = next(line for line in table.splitlines() if line.startswith("Best on test"))
    assert verdict.startswith("Best on test ndcg@10 (the validation metric): C (0.2300)")
    assert "over A by +0.0300 (not significant across seeds" in verdict
    assert "over B by +0.0100" in verdict


def test_a_smaller_is_better_metric_marks_the_lowest():
    runs = []
    for seed, (a, b) in enumerate([((0.40, 0.70), (0.50, 0.75)), ((0.42, 0.71), (0.52, 0.74))]):
        for model, (logloss, auc) in (("A", a), ("B", b)):
            run = _run(model if model == "A" else "B", 1 + seed, 0.0, 0.0, 10)
            run.update(test_result={"auc": auc, "logloss": logloss}, valid_metric="AUC", ranks=None)
            runs.append(run)
    summary = summarize(runs)
    # logloss: A 0.41 < B 0.51; auc: B 0.745 > A 0.705
    assert summary["best"] == {"auc": ["B"], "logloss": ["A"]}
    cell = _pair(summary, "B", "A")["metrics"]["logloss"]
    assert cell["a_better_seeds"] == 0  # B's logloss is higher on both seeds: worse
    assert "lowest for logloss" in markdown(summary)


def test_two_seeds_give_the_differences_and_every_pairs_per_user_test():
    summary = summarize(_runs(seeds=(1, 2)))
    table = markdown(summary)
    assert "no p-value across seeds (fewer than 3)" in table
    # B - A on ndcg@10: +0.01 and +0.02, mean +0.015, B better on both seeds
    assert "| B - A | +0.1000, 2/2 seeds, the same on every seed | +0.0150, 2/2 seeds |" in table
    for a, b in (("B", "A"), ("C", "A"), ("C", "B")):
        for seed in (1, 2):
            assert f"{a} - {b}, seed {seed}, test ndcg@10 per user over 8 users" in table
    assert "p=" not in table
    assert "With 2 seed(s) the seed-to-seed spread is untested" in table


def test_a_parameter_gap_over_2x_gets_a_line():
    table = markdown(summarize(_runs()))
    # B 112,640 / A 33,840 = 3.33; C 40,000 / A = 1.18 stays unnamed
    line = next(x for x in table.splitlines() if x.startswith("parameters differ"))
    assert "B has 112,640 (3.3x) against A's 33,840" in line and "C has" not in line
    runs = [dict(r, parameters=2 * 33_840 if r["model"] == "B" else 33_840) for r in _runs()]
    assert "parameters differ" not in markdown(summarize(runs))  # exactly 2x: no line


def _png_text_chunks(path: Path) -> dict[str, str]:
    """The tEXt chunks of a PNG, read by the format's definition: after the 8-byte signature,
    chunks of length, type, data and CRC."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, pos = {}, 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(kind + body)
        if kind == b"tEXt":
            key, _, value = body.partition(b"\0")
            chunks[key.decode("latin-1")] = value.decode("latin-1")
        pos += 12 + length
    return chunks


def test_outputs_keep_their_files_and_the_plot_names_dataset_and_metric(tmp_path):
    summary = summarize(_runs(), dataset="ml-tiny")
    write_outputs(summary, tmp_path)
    title = _png_text_chunks(tmp_path / "convergence.png")["Title"]
    assert title == "ml-tiny: validation NDCG@10 per epoch, mean over 3 seeds"
    saved = json.loads((tmp_path / "comparison.json").read_text())
    assert saved["best"]["ndcg@10"] == ["C"] and len(saved["pairwise"]) == 3
    with open(tmp_path / "comparison.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["ndcg@10_best"] for r in rows] == ["0", "0", "1"]
    assert [r["hit@10_best"] for r in rows] == ["0", "1", "1"]
    # the columns that were there before stay, with the same numbers
    assert float(rows[1]["ndcg@10_mean"]) == pytest.approx(0.22)
    assert float(rows[1]["ndcg@10_p_vs_first"]) == pytest.approx(_p_two_dof(math.sqrt(12)))
    assert (tmp_path / "comparison.md").read_text().startswith("| model |")

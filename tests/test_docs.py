"""The generated documentation is current: the configuration reference and each model page's key
table equal what the generator writes from the table of checks, the yaml files and a Config."""

from __future__ import annotations

from pathlib import Path

from recbole_flame.config.checks import rule_table
from recbole_flame.config.reference import BEGIN, END, generated, model_key_table

DOCS = Path(__file__).resolve().parent.parent / "docs"


def test_generated_pages_are_current():
    stale = [
        str(path.relative_to(DOCS))
        for path, text in generated(DOCS).items()
        if not path.is_file() or path.read_text(encoding="utf-8") != text
    ]
    assert not stale, f"stale: {stale}; run python -m recbole_flame.config.reference"


def test_the_reference_lists_every_checked_key():
    page = (DOCS / "configuration.md").read_text(encoding="utf-8")
    for entry in rule_table():
        assert f"| `{entry.key}` |" in page, entry.key


def test_a_model_table_holds_its_yaml_defaults_and_comments():
    # Written out from recbole_flame/properties/model/FLAME.yaml, not read from it.
    table = model_key_table("FLAME")
    assert "| `tau` | number | `1.0` | a positive number | InfoNCE temperature |" in table
    assert "| `n_paths` | int | ~ | an integer >= 2 or ~ |" in table
    for page in (DOCS / "models").glob("*.md"):
        text = page.read_text(encoding="utf-8")
        if BEGIN in text:
            assert text.index(BEGIN) < text.index(END), page


ROOT = DOCS.parent


def test_results_page_is_current_with_the_result_files():
    from tests.conftest import load_benchmark

    main = load_benchmark("report.py").main
    assert main(["--root", str(ROOT), "--check"]) == 0, "run python benchmarks/report.py"


def test_a_results_number_is_the_mean_of_its_result_files():
    import json
    import statistics

    # Recomputed here from the three JSON files, not through the engine's summary.
    values = [
        json.loads((ROOT / f"benchmarks/results/flame_ml100k/FLAME-seed{s}.json").read_text())[
            "result"
        ]["test_result"]["ndcg@20"]
        for s in (1, 2, 3)
    ]
    mean, sd = statistics.mean(values), statistics.stdev(values)
    page = (DOCS / "results.md").read_text(encoding="utf-8")
    section = page[page.index("## flame_ml100k") :]
    row = next(line for line in section.splitlines() if line.startswith("| FLAME |"))
    assert f"{mean:.4f} ± {sd:.4f}" in row, row
    for name in ("flame_curves.png", "dense_vs_prefix.png", "canet_accuracy_compute.png"):
        assert f"(img/{name})" in page and (DOCS / "img" / name).stat().st_size > 10_000

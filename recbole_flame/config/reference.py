"""The configuration reference, generated from the one table of checks.

``python -m recbole_flame.config.reference`` rewrites ``docs/configuration.md`` and the key table
of each ``docs/models/<model>.md`` (between ``<!-- keys:begin -->`` and ``<!-- keys:end -->``);
``--check`` only says whether they are current (the test suite runs it). Every fact comes from
its home: the allowed values from each key's rule (:func:`recbole_flame.config.checks.rule_table`),
the default from a :class:`~recbole_flame.config.Config` built for the model, the description
from the comment beside the key in the yaml file that sets its default.
"""

from __future__ import annotations

import argparse
import re
import sys
from functools import cache
from pathlib import Path
from typing import Any

from recbole_flame.config.checks import COMMON_RULES, Entry, rule_table, rules_for
from recbole_flame.config.rules import Rule
from recbole_flame.model.capabilities import capability
from recbole_flame.utils.paths import properties_dir

BEGIN, END = "<!-- keys:begin -->", "<!-- keys:end -->"
KINDS = {
    "int": "int",
    "number": "number",
    "bool": "bool",
    "choice": "choice",
    "text": "str",
    "int_list": "list of int",
    "structured": "structured",
    "fixed": "not settable",
}
_COMMENTED = re.compile(r"^(\w+):[^#]*#\s*(?:\([^)]*\)\s*)?(.*\S)\s*$")
RECBOLE_DOCS = "https://recbole.io/docs/user_guide/config_settings.html"


@cache
def _descriptions() -> dict[tuple[str, str | None], str]:
    """(key, model or None) -> the comment beside the key in its yaml (type prefix dropped)."""
    found: dict[tuple[str, str | None], str] = {}
    files = [(properties_dir() / "overall.yaml", None)]
    files += [(p, p.stem) for p in sorted((properties_dir() / "model").glob("*.yaml"))]
    for path, model in files:
        for line in path.read_text(encoding="utf-8").splitlines():
            match = _COMMENTED.match(line)
            if match:
                found.setdefault((match.group(1), model), match.group(2))
    return found


def describe(key: str, model: str | None) -> str:
    """What ``key`` does: its yaml comment (the model's, else the package's), else a pointer to
    RecBole's documentation for RecBole's own keys."""
    text = _descriptions().get((key, model)) or _descriptions().get((key, None))
    if not text:
        return f"RecBole's key: see [its documentation]({RECBOLE_DOCS})"
    # Markdown would read <checkpoint_dir> as an HTML tag and hide it.
    return text.replace("<", "&lt;").replace(">", "&gt;")


@cache
def _defaults(model: str) -> dict[str, Any]:
    from recbole_flame.config import Config
    from recbole_flame.config.configurator import PATH_KEYS

    # ml-100k ships with RecBole, so the defaults never need a download.
    config = Config(model, "ml-100k")
    values = dict(config.final_config_dict)
    # Paths are made absolute when a run starts; the page shows them as the files set them.
    for key in PATH_KEYS:
        if key in values:
            values[key] = config.internal_config_dict.get(key)
    return values


def _shown(value: Any) -> str:
    if value is None:
        return "~"
    text = str(value).replace("|", "\\|")
    return f"`{text}`" if text else "`''`"


def default(key: str, model: str) -> str:
    """``key``'s default under ``model`` (``-`` when no file sets one)."""
    values = _defaults(model)
    return _shown(values[key]) if key in values else "-"


def _allowed(rule: Rule) -> str:
    return rule.allowed.replace("|", "\\|")


def _row(key: str, rule: Rule, model: str, models: str | None = None) -> str:
    cells = [f"`{key}`", KINDS.get(rule.kind, rule.kind), default(key, model), _allowed(rule)]
    if models is not None:
        cells.append(models)
    cells.append(describe(key, None if model == "SASRec" else model).replace("|", "\\|"))
    return "| " + " | ".join(cells) + " |"


def model_key_table(model: str) -> str:
    """Every key ``model`` reads from this package's files or checks as its own, with its type,
    default, allowed values and what it does."""
    from recbole_flame.utils.registry import get_model

    rules = rules_for(get_model(model))
    own = set(capability(get_model(model), "key_rules"))
    path = properties_dir() / "model" / f"{model}.yaml"
    # a model without a yaml of its own (this package's SASRec): the package's keys it reads
    in_yaml = [k for k in _yaml_keys(path if path.is_file() else properties_dir() / "overall.yaml")]
    in_yaml = [k for k in in_yaml if k in rules]
    keys = in_yaml + sorted(own - set(in_yaml))
    lines = ["| key | type | default | allowed | what it does |", "|---|---|---|---|---|"]
    lines += [_row(key, rules[key], model) for key in keys]
    return "\n".join(lines)


def _yaml_keys(path: Path) -> list[str]:
    if not path.is_file():
        return []
    return [
        m.group(1)
        for m in (re.match(r"^(\w+):", line) for line in path.read_text().splitlines())
        if m
    ]


def _models_cell(entry: Entry) -> str:
    return "every model" if entry.models is None else ", ".join(entry.models)


def reference_page() -> str:
    """``docs/configuration.md``: every key this package checks."""
    table = rule_table()
    common = [e for e in table if e.models is None]
    own = [e for e in table if e.models is not None]
    ours = sorted(set(_descriptions()) & {(e.key, None) for e in common})
    lines = [
        "# Configuration reference",
        "",
        "<!-- generated by `python -m recbole_flame.config.reference`; do not edit -->",
        "",
        "Every key this package checks. A value a rule refuses stops the run with one line naming",
        "the key, the value and what is allowed, before any data is read; a misspelt key gets a",
        "*did you mean*. Keys are set as RecBole's are: `--key=value`, a config file",
        "(`--config_files=my.yaml`) or `config_dict` in Python. Defaults are those a run gets",
        "without setting the key (for the common keys: a RecBole SASRec run on ml-100k; each",
        "model's page lists that model's).",
        "",
        f"## This package's keys ({len(ours)})",
        "",
        "The `ddp_` keys apply to every model (a run over several processes: `--nproc`); the",
        "others to every sequential model, RecBole's own included.",
        "",
        "| key | type | default | allowed | what it does |",
        "|---|---|---|---|---|",
    ]
    lines += [_row(k, COMMON_RULES[k], "SASRec") for k, _ in ours]
    lines += [
        "",
        f"## Each model's own keys ({len(own)} rules)",
        "",
        "A model's rule for a key applies when that model runs (a common key a model narrows,",
        "such as `loss_type`, appears here too).",
        "",
        "| key | type | model default | allowed | models | what it does |",
        "|---|---|---|---|---|---|",
    ]
    lines += [_row(e.key, e.rule, e.models[0], _models_cell(e)) for e in own]
    recbole = [e for e in common if (e.key, None) not in _descriptions()]
    lines += [
        "",
        f"## RecBole's keys this package checks ({len(recbole)})",
        "",
        "RecBole reads them as it always does; this package only refuses values RecBole would",
        f"fail on later, or ignore. What each does: [RecBole's documentation]({RECBOLE_DOCS}).",
        "",
        "| key | type | default | allowed |",
        "|---|---|---|---|",
    ]
    for e in recbole:
        cells = [f"`{e.key}`", KINDS.get(e.rule.kind, e.rule.kind)]
        # device follows the machine (cpu or cuda); the page must not
        shown = "from gpu_id" if e.rule.kind == "fixed" else default(e.key, "SASRec")
        cells += [shown, _allowed(e.rule)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def with_key_table(page: str, model: str) -> str:
    """``page`` with the text between its key-table markers replaced by the current table."""
    start, end = page.find(BEGIN), page.find(END)
    if start < 0 or end < start:
        raise ValueError(f"the {model} page has no {BEGIN} ... {END} section")
    return page[: start + len(BEGIN)] + "\n" + model_key_table(model) + "\n" + page[end:]


def generated(docs: Path) -> dict[Path, str]:
    """Each generated page under ``docs`` and the text it should hold."""
    from recbole_flame.utils.registry import available_models

    pages = {docs / "configuration.md": reference_page()}
    for model in available_models()[0]:
        page = docs / "models" / f"{model.lower()}.md"
        if page.is_file():
            pages[page] = with_key_table(page.read_text(encoding="utf-8"), model)
    return pages


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--docs", default="docs", help="the docs folder (default: docs)")
    parser.add_argument("--check", action="store_true", help="only say whether pages are current")
    args = parser.parse_args(argv)
    stale = []
    for path, text in generated(Path(args.docs)).items():
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            stale.append(path)
            if not args.check:
                path.write_text(text, encoding="utf-8")
    verb = "stale" if args.check else "rewrote"
    for path in stale:
        print(f"{verb}: {path}")
    if args.check and stale:
        print("run: python -m recbole_flame.config.reference", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Fuzz: bad input through the CLI's config stage always ends in one line, never a traceback.

For every rule of the check table (every common key, and every key of every model of this
package, each under a model it applies to) and every kind of bad value (wrong type, out of range, empty,
huge, unicode, a list where a scalar is wanted, plus seeded random garbage), ``main`` runs
in-process with ``--key=value`` and must exit 2 with one stderr line naming the key, before the
run reaches its data. Files that exist but are not what they should be (frozen checkpoints,
config files, hyper files) must do the same, naming the file. Values are derived from each
rule's declared kind and range; what must happen is fixed here, not read from the checker.
"""

from __future__ import annotations

import pickle
import random
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from recbole_flame.config.checks import COMMON_RULES, Entry, Rule, known_keys, rule_table
from recbole_flame.utils.checkpoint import atomic_save
from tests.conftest import DataStageReached

SEED = 20260517
PROG = "run_recbole_flame.py: error: "
HUGE_INT = str(10**30)
GIANT_DIGITS = "9" * 5000  # past Python's int-from-text limit: stays a string
# Letters and marks from several scripts, zero-width and line-separating characters; no
# brackets, commas or digits, so the text never parses as a number or a list.
UNICODE_POOL = "aZéßçøñ中文字あア한글ش\u0301\u200b\u2028\u00a0\t🙂𝔘"


@dataclass(frozen=True)
class Case:
    key: str
    model: str  # the model the rule applies to, run with --model
    kind: str  # what is wrong with the value
    text: str  # as written after --key=

    @property
    def id(self) -> str:
        return f"{self.model}-{self.key}-{self.kind}"


def _garbage(rng: random.Random) -> str:
    body = "".join(rng.choice(UNICODE_POOL) for _ in range(rng.randint(1, 30)))
    return "ñ" + body  # a letter first: never a number, bool, None or list


def _empty(rule: Rule, other: str) -> list[str]:
    """Empty values: ``--key=`` reads as ~ (as an empty yaml value), bad where ~ is."""
    return [other, "''"] + ([] if rule.none else [""])


def _int_cases(rule: Rule, rng: random.Random) -> dict[str, list[str]]:
    lo, hi = int(rule.lo), int(rule.hi)
    out_of_range = [str(lo - 1), str(hi + 1), str(rng.randint(-(10**12), lo - 1))]
    return {
        "type": ["abc", "2.5", "True", "{'a': 1}"],
        "range": out_of_range,
        "empty": _empty(rule, "''"),
        "huge": [HUGE_INT, GIANT_DIGITS, "1e999"],
        "unicode": ["５", "三", "1٫5", _garbage(rng)],
        "list": [f"[{lo}]", f"[{lo}, {lo}]"],
        "random": [repr(rng.uniform(-1e6, 1e6) + 0.5), _garbage(rng)],
    }


def _number_cases(rule: Rule, rng: random.Random) -> dict[str, list[str]]:
    lo = float(rule.lo)
    out_of_range = [repr(lo - 1), "nan", "-inf", repr(lo - rng.uniform(1e-6, 1e9))]
    if rule.hi is not None:
        out_of_range.append(repr(float(rule.hi) + rng.uniform(1e-3, 10)))
    return {
        "type": ["abc", "True", "{}"] + ([] if rule.none else ["None"]),
        "range": out_of_range,
        "empty": _empty(rule, "'  '"),
        "huge": ["1e999", "-1e999"],
        "unicode": ["１e-3", "π", _garbage(rng)],
        "list": ["[0.5]", "[0.1, 0.2]"],
        "random": [_garbage(rng)],
    }


def _bool_cases(rule: Rule, rng: random.Random) -> dict[str, list[str]]:
    return {
        "type": ["yes", "1", "0.5", "None", "abc"],
        "range": ["2", "-1"],
        "empty": _empty(rule, "[]"),
        "huge": ["1e999", HUGE_INT],
        "unicode": ["Trüe", "真", _garbage(rng)],
        "list": ["[True]", "[False, True]"],
        "random": [str(rng.randint(-(10**6), 10**6))],
    }


def _choice_cases(rule: Rule, rng: random.Random) -> dict[str, list[str]]:
    first = rule.choices[0]
    types = ["5", "True", "{}"] + ([] if rule.none else ["None"])
    out_of_range = ["not_a_choice", first + "x", "x" + first, first.upper() + "Z"]
    return {
        "type": types,
        "range": out_of_range,
        "empty": _empty(rule, "'   '"),
        "huge": ["x" * 100_000, HUGE_INT],
        "unicode": [first + "\u0301", "é\u2028x", _garbage(rng)],
        "list": [f"[{first}]", f"[{first}, {first}]"],
        "random": [_garbage(rng)],
    }


def _text_cases(rule: Rule, rng: random.Random) -> dict[str, list[str]]:
    return {
        "type": ["5", "True", "{a: 1}", "2.5"] + ([] if rule.none else ["None"]),
        "range": ["'   '"],  # blank
        "empty": _empty(rule, "[]"),
        "huge": [HUGE_INT, "1e999"],
        "unicode": ["['données']", "{'名': 1}"],
        "list": ["[x, y]", "[a]"],
        "random": [str(rng.randint(-(10**9), 10**9))],
    }


def _int_list_cases(rule: Rule, rng: random.Random) -> dict[str, list[str]]:
    return {
        "type": ["abc", "[a]", "[1.5]", "{1: 2}", "[True]"],
        "range": ["[0]", "[-3, 5]", "0", f"[{rng.randint(-(10**6), 0)}]"],
        "empty": _empty(rule, "[]"),
        "huge": [f"[{HUGE_INT}]", HUGE_INT, "[1e999]"],
        "unicode": ["[１]", "５", _garbage(rng)],
        "list": ["[[1]]", "[[1, 2], [3]]"],
        "random": [_garbage(rng)],
    }


# Structured keys have no generic range; their bad values are written out here.
STRUCTURED_BAD: dict[str, dict[str, list[str]]] = {
    "gpu_id": {
        "type": ["cuda", "True", "{0: 1}"],
        "range": ["-1", "0,-2", "0;1"],
        "huge": [HUGE_INT, "1e999"],
        "unicode": ["０", "٣"],
        "list": ["[0]", "[0, 1]"],
    },
    "device": {"type": ["cpu", "5"], "range": ["cuda:99"], "empty": [""], "unicode": ["çpu"]},
    "train_neg_sample_args": {
        "type": ["5", "uniform", "[uniform]"],
        "range": [
            "{distribution: gaussian}",
            "{distribution: uniform, sample_num: 0}",
            "{distribution: uniform, alpha: -1}",
        ],
        "empty": ["''", "[]"],
        "huge": ["{distribution: uniform, sample_num: 1e999}"],
        "unicode": ["{distribution: ünïform}", "{uniform: 1}"],
        "list": ["[{distribution: uniform}]"],
    },
    "clip_grad_norm": {
        "type": ["5", "max_norm", "{norm_type: 2}"],
        "range": ["{max_norm: 0}", "{max_norm: -5}", "{max_norm: 5, norm_type: -1}"],
        "empty": ["''", "{}"],
        "huge": ["{max_norm: 1e999}"],
        "unicode": ["{mäx_norm: 5}"],
        "list": ["[5]", "[{max_norm: 5}]"],
    },
    "eval_args": {
        "type": ["5", "full", "[1, 2]"],
        "range": [
            "{split: {RS: [0.8, 0.2]}}",
            "{split: {RS: [0, 0, 0]}}",
            "{split: {LS: all}}",
            "{split: {XS: 1}}",
            "{order: random}",
            "{group_by: item}",
            "{mode: uni0}",
            "{mode: {train: full}}",
        ],
        "empty": ["", "{split: {}}", "{mode: ''}"],
        "huge": ["{mode: uni1e999}", "{split: {RS: [1e999, 0, 0]}}"],
        "unicode": ["{mode: fülle}", "{spłit: {RS: [1, 1, 1]}}"],
        "list": ["[{mode: full}]", "{mode: [full]}"],
    },
    "metrics": {
        "type": ["5", "True", "{Recall: 1}"],
        "range": ["Foo", "[Recall, Foo]", "[NDCG@10]"],
        "empty": ["", "[]"],
        "huge": ["x" * 100_000, HUGE_INT],
        "unicode": ["[Récall]", "ñDCG"],
        "list": ["[[Recall]]"],
    },
    "load_col": {
        "type": ["5", "inter", "[user_id, item_id]"],
        "range": ["{inter: user_id}", "{inter: [1, 2]}"],
        "empty": ["''", "{}"],
        "huge": [HUGE_INT],
        "unicode": ["ïnter"],
        "list": ["[{inter: [user_id]}]"],
    },
    "threshold": {
        "type": ["4", "rating", "[rating]"],
        "range": ["{rating: high}", "{rating: nan}"],
        "empty": ["''", "{rating: }"],
        "huge": ["{rating: 1e999}"],
        "unicode": ["{rating: ４}"],
        "list": ["{rating: [4]}"],
    },
    "user_inter_num_interval": {
        "type": ["5", "True", "{a: 1}"],
        "range": ["5,inf", "[5;inf)", "[a,b]", "(5,inf"],
        "empty": ["''", "'  '"],
        "huge": [HUGE_INT],
        "unicode": ["[５,inf)", "[5,∞)"],
        "list": ["[[5, 6]]"],
    },
    "benchmark_filename": {
        "type": ["5", "train", "{a: b}"],
        "range": ["[train, 5]", "[train, '']"],
        "empty": ["''", "[]"],
        "huge": [HUGE_INT],
        "unicode": ["ñtrain"],
        "list": ["[[train]]"],
    },
}
STRUCTURED_BAD["item_inter_num_interval"] = STRUCTURED_BAD["user_inter_num_interval"]
# CANet's fixed_route (its default space has no width 8), and CETNet's (its default
# base_models are two, so a list of another length is bad as well).
STRUCTURED_BAD.update(
    {
        "base_models": {
            "type": ["5", "DCNV2", "{DCNV2: 1}"],
            "range": ["[SASRec]", "[NoSuchModel]", "[CETNet]", "[DCNV2, 5]", "[BPR, DeepFM]"],
            "empty": ["''", "[]"],
            "huge": [HUGE_INT, "[" + "x" * 100_000 + "]"],
            "unicode": ["[DéepFM]", "[深度]"],
            "list": ["[[DCNV2]]", "[[DCNV2, DeepFM]]"],
        },
        "base_embedding_sizes": {
            "type": ["5", "abc", "{a: 1}", "[8, abc]"],
            "range": ["[0, 8]", "[-1, 8]", "[8, 2.5]", "[8]", "[8, 8, 8]"],
            "empty": ["''", "[]"],
            "huge": [f"[{HUGE_INT}, 8]", "[1e999, 8]"],
            "unicode": ["[８, 8]", "[π, 8]"],
            "list": ["[[8], [8]]"],
        },
        "fixed_route": {
            "type": ["5", "True", "{full: 1}"],
            "range": ["largest", "h0-l1-e8", "h8-l1-e8", "h64-l2", "h64-l2-e64-x"],
            "empty": ["''", "'  '"],
            "huge": [HUGE_INT, "h" + "9" * 100 + "-l2-e64"],
            "unicode": ["h６４-l2-e64", "fülle"],
            "list": ["[full]", "[h64-l2-e64]"],
        },
        "base_model_overrides": {
            "type": ["5", "abc", "[5, 6]", "{epochs: 3}"],
            "range": ["[{epochs: 3}, ~]", "[~, {learning_rate: 0.1}]", "[~]", "[~, ~, ~]"],
            "empty": ["''", "[]"],
            "huge": [HUGE_INT],
            "unicode": ["[ñ, ~]", "[{épochs: 3}]"],
            "list": ["[[{a: 1}], ~]"],
        },
    }
)

# Bad only together with the defaults of the key's model: caught by a check across keys.
SEMANTIC_BAD: dict[str, list[str]] = {
    "valid_metric": ["NDCG@99", "Foo@10", "MRR", "ndcg@"],
    "hidden_size": ["63"],  # SASRec's 2 heads
    "n_layers": ["0"],  # a transformer needs a block
    "repeatable": ["False"],  # sequential models
    "frozen_checkpoint": ["/no/such/file.pth"],
    "n_paths": ["5"],  # FLAME's default 2 modules: at most 4 paths
}

KIND_CASES = {
    "int": _int_cases,
    "number": _number_cases,
    "bool": _bool_cases,
    "choice": _choice_cases,
    "text": _text_cases,
    "int_list": _int_list_cases,
}


def _model(entry: Entry) -> str:
    return entry.models[0] if entry.models else "SASRec"


TABLE = rule_table()


def build_cases(seed: int = SEED) -> list[Case]:
    """Per rule, one value drawn from each kind of badness (random garbage included), and every
    semantic case of a key (under the key's first rule)."""
    rng = random.Random(seed)
    cases = []
    semantic_done = set()
    for entry in TABLE:
        key, rule, model = entry.key, entry.rule, _model(entry)
        if rule.kind in KIND_CASES:
            by_kind = KIND_CASES[rule.kind](rule, rng)
        else:
            by_kind = STRUCTURED_BAD[key]
        for kind, texts in by_kind.items():
            cases.append(Case(key, model, kind, rng.choice(texts)))
        if key not in semantic_done:
            semantic_done.add(key)
            cases += [Case(key, model, "semantic", t) for t in SEMANTIC_BAD.get(key, [])]
    return cases


CASES = build_cases()


def test_every_structured_key_has_written_out_bad_values():
    structured = {e.key for e in TABLE if e.rule.kind not in KIND_CASES}
    assert structured == set(STRUCTURED_BAD)


def test_the_fuzz_covers_every_rule_of_every_model_with_every_kind_of_badness():
    assert {(c.key, c.model) for c in CASES} == {(e.key, _model(e)) for e in TABLE}
    models = {m for e in TABLE for m in (e.models or ())}
    assert models == {"CANet", "CETNet", "FLAME", "TiM4Rec"}  # each has keys of its own
    assert 300 <= len(CASES) <= 2000
    kinds = {c.kind for c in CASES}
    assert {"type", "range", "empty", "huge", "unicode", "list", "random"} <= kinds


def _assert_one_line(code: int, lines: list[str], *names: str) -> None:
    assert code == 2, (code, lines)
    assert len(lines) == 1, lines
    assert lines[0].startswith(PROG), lines[0]
    assert "Traceback" not in lines[0]
    for name in names:
        assert name in lines[0], (name, lines[0])


@pytest.mark.parametrize("scope", sorted({(c.model, c.key) for c in CASES}), ids="-".join)
def test_bad_values_of_each_key_end_in_one_line(cli_config_stage, scope):
    model, key = scope
    failures = []
    for case in (c for c in CASES if (c.model, c.key) == scope):
        try:
            code, lines = cli_config_stage(f"--model={model}", "--gpu_id=", f"--{key}={case.text}")
            _assert_one_line(code, lines, key)
        except DataStageReached:
            failures.append(f"{case.kind} {case.text[:40]!r}: accepted")
        except AssertionError as exc:
            failures.append(f"{case.kind} {case.text[:40]!r}: {exc}")
    assert not failures, "\n".join(failures)


def _typos(key: str, rng: random.Random) -> list[str]:
    """Keys one edit (or a case change) from ``key``, none of them a real key."""
    i = rng.randrange(len(key) - 1)
    made = {
        key[:i] + key[i + 1 :],  # deletion
        key[:i] + key[i + 1] + key[i] + key[i + 2 :],  # swap
        key[:i] + "q" + key[i:],  # insertion
        key.swapcase(),  # case
    }
    return sorted(t for t in made if t not in known_keys() and t.isidentifier() and len(t) >= 4)


def test_misspelt_keys_end_in_one_line_with_did_you_mean(cli_config_stage):
    rng = random.Random(SEED)
    count = 0
    for key in sorted(k for k in COMMON_RULES if len(k) >= 5):
        for typo in _typos(key, rng):
            code, lines = cli_config_stage("--model=SASRec", "--gpu_id=", f"--{typo}=1")
            _assert_one_line(code, lines, f"'{typo}'", f"'{key}'", "did you mean")
            count += 1
    assert count >= 100


# --- files that exist but are not what they should be ---------------------------------------
def _checkpoint_files(folder: Path) -> list[Path]:
    good = folder / "sasrec.pth"
    atomic_save({"state_dict": {"item_embedding.weight": torch.zeros(10, 64)}}, good)
    data = good.read_bytes()
    raw = {
        "passwd.pth": b"root:x:0:0:root:/root:/bin/bash\n" * 30,
        "empty.pth": b"",
        "truncated.pth": data[: len(data) // 2],
        "random.pth": random.Random(SEED).randbytes(4096),
        "plain_pickle.pth": pickle.dumps({"state_dict": {}}, protocol=4),
    }
    for name, content in raw.items():
        (folder / name).write_bytes(content)
    with zipfile.ZipFile(folder / "zip.pth", "w") as archive:
        archive.writestr("model.txt", "weights")
    # weights_only refuses a pickled object (RecBole's own checkpoints pickle its Config).
    torch.save({"state_dict": {}, "config": Path("x")}, folder / "object.pth")
    torch.save({"weights": torch.ones(2)}, folder / "no_state_dict.pth")
    torch.save({"state_dict": [1, 2]}, folder / "list_state_dict.pth")
    # Another model's checkpoint: BPR's tables, in this package's format.
    bpr = {"user_embedding.weight": torch.zeros(5, 8), "item_embedding.weight": torch.zeros(9, 8)}
    atomic_save({"state_dict": bpr}, folder / "bpr.pth")
    # A SASRec of another width.
    atomic_save(
        {"state_dict": {"item_embedding.weight": torch.zeros(10, 32)}}, folder / "narrow.pth"
    )
    return sorted(p for p in folder.iterdir() if p.name != "sasrec.pth")


def test_frozen_checkpoints_that_are_not_checkpoints(cli_config_stage, tmp_path):
    paths = _checkpoint_files(tmp_path)
    assert len(paths) >= 10
    for path in paths:
        code, lines = cli_config_stage("--model=FLAME", "--gpu_id=", f"--frozen_checkpoint={path}")
        _assert_one_line(code, lines, str(path))
    folder = tmp_path / "a_folder.pth"
    folder.mkdir()
    code, lines = cli_config_stage("--model=FLAME", "--gpu_id=", f"--frozen_checkpoint={folder}")
    _assert_one_line(code, lines, str(folder))


CONFIG_FILES = {
    "binary.yaml": b"\x80\x04\x95\x00\xff\xfe binary",
    "pickle.yaml": pickle.dumps({"epochs": 5}),
    "truncated.yaml": b"eval_args: {split: {RS: [0.8,",
    "text.yaml": b"just some words, not a mapping",
    "list.yaml": b"- epochs\n- 5\n",
    "digits.yaml": b"epochs: " + GIANT_DIGITS.encode() + b"\n",
    "tag.yaml": b"epochs: !!python/object/apply:os.system ['echo pwned']\n",
    "tabs.yaml": b"epochs:\n\t- 5\n",
}
# Well-formed yaml whose content is wrong: the line names the key instead of the file.
CONFIG_CONTENT = {
    "bad_value.yaml": (b"epochs: abc\n", "epochs"),
    "typo.yaml": (b"learning_rat: 0.1\n", "learning_rate"),
    "int_key.yaml": (b"1: 2\n", "1"),
}


def test_config_files_that_are_not_config_files(cli_config_stage, tmp_path):
    for name, content in CONFIG_FILES.items():
        path = tmp_path / name
        path.write_bytes(content)
        code, lines = cli_config_stage("--model=SASRec", "--gpu_id=", f"--config_files={path}")
        _assert_one_line(code, lines, str(path))
    for name, (content, word) in CONFIG_CONTENT.items():
        path = tmp_path / name
        path.write_bytes(content)
        code, lines = cli_config_stage("--model=SASRec", "--gpu_id=", f"--config_files={path}")
        _assert_one_line(code, lines, word)
    code, lines = cli_config_stage("--model=SASRec", "--gpu_id=", f"--config_files={tmp_path}")
    _assert_one_line(code, lines, str(tmp_path))


HYPER_FILES = {
    "binary.hyper": b"\x80\x04\x95\x00\xff\xfe",
    "passwd.hyper": b"root:x:0:0:root:/root:/bin/bash\n",
    "truncated.hyper": b"learning_rate loguniform -8",
    "empty.hyper": b"",
    "comments.hyper": b"# nothing here\n\n",
    "kind.hyper": b"learning_rate normal 0,1\n",
    "value.hyper": b"learning_rate choice [0.01, -1]\n",
    "typo.hyper": b"learning_rat choice [0.01]\n",
    "float_layers.hyper": b"n_layers uniform 1,3\n",
}


def test_hyper_files_that_are_not_hyper_files(cli_config_stage, tmp_path, monkeypatch):
    import ray

    def no_ray(*args, **kwargs):
        raise DataStageReached("the search would start Ray")

    monkeypatch.setattr(ray, "init", no_ray)
    for name, content in HYPER_FILES.items():
        path = tmp_path / name
        path.write_bytes(content)
        code, lines = cli_config_stage("--model=SASRec", "--gpu_id=", f"--hyper={path}")
        _assert_one_line(code, lines, str(path))

"""Typed config checks: valid defaults pass, bad values and misspelt keys stop with one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from recbole_flame.config import Config
from recbole_flame.config.checks import COMMON_RULES, known_keys, rule_table, rules_for
from recbole_flame.utils.errors import ConfigError, UnknownModelError
from recbole_flame.utils.registry import available_models
from tests.conftest import DataStageReached

ROOT = Path(__file__).resolve().parent.parent
CPU = {"gpu_id": ""}


def _config(model: str = "SASRec", dataset: str = "ml-100k", **settings) -> Config:
    return Config(model, dataset, config_dict={**CPU, **settings})


def _refused(model: str = "SASRec", **settings) -> str:
    with pytest.raises(ConfigError) as info:
        _config(model, **settings)
    message = str(info.value)
    assert "\n" not in message
    return message


# --- valid input passes ---------------------------------------------------------------------
def test_defaults_of_every_model_pass_on_ml_100k():
    ours, recboles = available_models()
    checked = []
    for model in [*ours, *recboles]:
        try:
            _config(model)
        except UnknownModelError:
            continue  # LightGBM/XGBoost without their package: not a config question
        checked.append(model)
    # This package's four models, SASRec, and RecBole's other families all built.
    for model in ("FLAME", "CANet", "TiM4Rec", "CETNet", "SASRec", "BERT4Rec", "GRU4Rec"):
        assert model in checked
    for model in ("BPR", "LightGCN", "DCNV2", "DeepFM", "KGAT"):
        assert model in checked
    assert len(checked) > 80


@pytest.mark.parametrize("model", ["FLAME", "CANet", "TiM4Rec", "SASRec", "BERT4Rec"])
def test_defaults_pass_with_this_packages_dataset_yaml(model):
    _config(model, "amazon-beauty")


def test_valid_values_of_structured_keys_pass(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # gpu_id 0,1 below sets it
    _config(eval_args={"split": {"LS": "valid_and_test"}, "order": "TO", "mode": "full"})
    _config(eval_args={"split": {"RS": [8, 1, 1]}, "group_by": None, "mode": {"valid": "uni100"}})
    _config(eval_args={"mode": {"valid": "pop50", "test": "full"}})
    _config("BPR", train_neg_sample_args={"distribution": "popularity", "sample_num": 3})
    _config(clip_grad_norm={"max_norm": 5, "norm_type": 2}, gpu_id="0,1")
    _config(topk=5, metrics="NDCG", valid_metric="ndcg@5")
    _config(user_inter_num_interval="[5,inf);(0,2]", item_inter_num_interval=None)
    _config(state="warning", learner="AdamW", history_limit=None, position_alignment="end")
    _config("DeepFM", metrics=["AUC", "LogLoss"], valid_metric="AUC", threshold={"rating": 4})


# --- bad values -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("settings", "words"),
    [
        ({"epochs": "abc"}, ["epochs", "'abc'", "integer >= 0"]),
        ({"epochs": -1}, ["epochs", "-1", "integer >= 0"]),
        ({"learning_rate": -1}, ["learning_rate", "-1", "positive number"]),
        ({"train_batch_size": 2.5}, ["train_batch_size", "2.5"]),
        ({"stopping_step": -1}, ["stopping_step", ">= 0"]),
        ({"seed": True}, ["seed", "True"]),
        ({"topk": [10, 0]}, ["topk", "[10, 0]"]),
        ({"metrics": ["Recall", "Foo"]}, ["metrics", "'Foo'", "NDCG"]),
        ({"valid_metric": "NDCG@20"}, ["valid_metric", "NDCG@10", "'NDCG@20'"]),
        ({"metrics": ["AUC"], "valid_metric": "AUC"}, ["metrics", "labeled"]),
        ({"metrics": ["AUC", "NDCG"]}, ["metrics", "ranking", "value"]),
        ({"eval_args": {"split": {"RS": [0.8, 0.2]}}}, ["eval_args", "RS", "3 ratios"]),
        ({"eval_args": {"split": {"LS": "all"}}}, ["eval_args", "valid_and_test"]),
        ({"eval_args": {"order": "random"}}, ["eval_args", "RO", "'random'"]),
        ({"eval_args": {"mode": "uni0"}}, ["eval_args", "uniN", "'uni0'"]),
        ({"eval_args": {"spilt": {"RS": [1, 1, 1]}}}, ["eval_args", "'spilt'"]),
        ({"train_neg_sample_args": {"uniform": 1}}, ["train_neg_sample_args", "'uniform'"]),
        ({"clip_grad_norm": {"max_norm": -1}}, ["clip_grad_norm", "max_norm"]),
        ({"gpu_id": "cuda"}, ["gpu_id", "'cuda'"]),
        ({"device": "cpu"}, ["device", "gpu_id"]),
        ({"MAX_ITEM_LIST_LENGTH": 0}, ["MAX_ITEM_LIST_LENGTH", "0"]),
        ({"hidden_size": 65}, ["hidden_size", "n_heads"]),
        ({"repeatable": False}, ["repeatable", "sequential"]),
        ({"train_mode": "all"}, ["train_mode", "prefix, dense"]),
        ({"position_alignment": "middle"}, ["position_alignment", "start, end"]),
        ({"history_limit": 0}, ["history_limit", "~"]),
        ({"user_inter_num_interval": "5,inf"}, ["user_inter_num_interval", "[5,inf)"]),
        ({"learner": "adamx"}, ["learner", "sgd"]),
    ],
)
def test_bad_value_names_key_value_and_what_is_allowed(settings, words):
    message = _refused(**settings)
    for word in words:
        assert word in message, (word, message)


def test_sequential_ce_refuses_negative_sampling_in_one_line():
    message = _refused(train_neg_sample_args={"distribution": "uniform", "sample_num": 1})
    assert "train_neg_sample_args" in message and "CE" in message


def test_model_keys_are_checked_only_for_their_model():
    _config("SASRec", tau=0, path_mixing="anything")  # not SASRec's keys: RecBole's behaviour
    assert "tau" in _refused("FLAME", tau=0)
    assert "tau" in _refused("CETNet", tau=0)
    assert "path_mixing" in _refused("FLAME", path_mixing="anything")
    assert "gumbel_tau" in _refused("CANet", gumbel_tau=-1.0)


def test_every_rule_refuses_something():
    # A rule that accepts everything would make its fuzz cases pass vacuously.
    for entry in rule_table():
        assert not entry.rule.ok(object()), entry.key


@pytest.mark.parametrize("model", ["FLAME", "TiM4Rec", "CANet", "CETNet", "SASRec"])
def test_every_key_of_a_models_yaml_has_a_rule_for_that_model(model):
    import yaml

    from recbole_flame.utils.paths import properties_dir
    from recbole_flame.utils.registry import get_model

    path = properties_dir() / "model" / f"{model}.yaml"
    keys = set(yaml.safe_load(path.read_text())) if path.is_file() else set()
    assert model == "SASRec" or len(keys) >= 8, keys
    missing = keys - set(rules_for(get_model(model)))
    assert not missing, f"{model}.yaml keys without a rule: {sorted(missing)}"


def test_a_models_own_rule_narrows_a_common_key_only_for_that_model():
    from recbole_flame.utils.registry import get_model

    # RecBole's n_layers may be 0 (LightGCN without propagation); an SSD stack needs a layer.
    assert COMMON_RULES["n_layers"].ok(0)
    assert not rules_for(get_model("TiM4Rec"))["n_layers"].ok(0)
    assert "loss_type" not in COMMON_RULES  # RecBole's models each pick theirs
    assert "CE" in _refused("FLAME", loss_type="BPR")
    _config("SASRec", loss_type="BPR", train_neg_sample_args={"distribution": "uniform"})


def test_the_table_lists_each_key_once_per_scope_and_names_its_models():
    table = rule_table()
    scopes = [(e.key, e.models) for e in table]
    assert len(scopes) == len(set(scopes))
    tau = [e.models for e in table if e.key == "tau"]
    assert tau == [("CETNet", "FLAME")]  # declared alike by both: one row
    assert {e.key for e in table if e.models is None} == set(COMMON_RULES)


# --- misspelt keys --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("typo", "meant"),
    [
        ("epoch", "epochs"),  # deletion
        ("Epochs", "epochs"),  # case
        ("eopchs", "epochs"),  # swap
        ("learning_rte", "learning_rate"),
        ("hiden_size", "hidden_size"),  # a model-yaml key
        ("max_item_list_length", "MAX_ITEM_LIST_LENGTH"),
        ("stopping_stepp", "stopping_step"),  # insertion
        ("trails", "trials"),  # a CLI option
        ("frozen_chekpoint", "frozen_checkpoint"),  # this package's key
    ],
)
def test_misspelt_key_gets_did_you_mean(typo, meant):
    message = _refused(**{typo: 5})
    assert f"'{typo}'" in message and f"'{meant}'" in message and "did you mean" in message


def test_real_keys_and_far_unknown_keys_are_allowed():
    # Model-yaml keys (not in overall.yaml), another model's keys, custom and short keys.
    _config(hidden_size=32, n_layers=1, inner_size=64, hidden_dropout_prob=0.1)
    _config(mlp_hidden_size=[64], reg_weight=0.1, my_custom_flag=True, lr=3)
    _config("DCNV2", cross_layer_num=2, mlp_hidden_size=[32])
    _config("FLAME", stage1_epochs=3, frozen_dropout=False)


def test_keys_from_config_files_and_the_command_line_are_checked(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("epcohs: 5\n")
    with pytest.raises(ConfigError, match="epcohs.*epochs"):
        Config("SASRec", "ml-100k", config_file_list=[str(path)], config_dict=CPU)
    with pytest.raises(ConfigError, match="lerning_rate.*learning_rate"):
        Config("SASRec", "ml-100k", config_dict=CPU, cmd_args=["--lerning_rate=0.1"])
    with pytest.raises(ConfigError, match="did you mean 'hidden_size'.*underscores"):
        Config("SASRec", "ml-100k", config_dict=CPU, cmd_args=["--hidden-size=8"])
    with pytest.raises(ConfigError, match="not a key name"):
        Config("SASRec", "ml-100k", config_dict=CPU, cmd_args=["--no-such-key=8"])


def test_known_keys_hold_recbole_model_keys_but_not_dataset_names():
    known = known_keys()
    assert {
        "hidden_size",
        "n_layers",
        "mlp_hidden_size",
        "reg_weight",
        "kg_embedding_size",
    } <= known
    assert "ml-1m" not in known and "amazon-beauty" not in known  # url.yaml's names


# --- the issue's three commands -------------------------------------------------------------
@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (
            ["--model=FLAME", "--frozen_checkpoint=/etc/passwd"],
            ["/etc/passwd", "saved by recbole_flame", "'state_dict'"],
        ),
        (["--model=SASRec", "--epochs=abc"], ["epochs", "'abc'"]),
        (["--model=SASRec", "--learning_rate=-1"], ["learning_rate", "-1"]),
    ],
)
def test_issue_commands_print_one_line_before_data(cli_config_stage, argv, words):
    if not Path("/etc/passwd").is_file():
        pytest.skip("no /etc/passwd here")
    try:
        code, lines = cli_config_stage(*argv, "--gpu_id=")
    except DataStageReached:
        pytest.fail(f"{argv} reached the data stage")
    assert code == 2 and len(lines) == 1
    assert lines[0].startswith("run_recbole_flame.py: error: ")
    for word in words:
        assert word in lines[0]


def test_not_a_checkpoint_is_one_line_from_a_real_process(tmp_path):
    text_file = tmp_path / "notes.pth"
    text_file.write_text("root:x:0:0:root:/root:/bin/bash\n" * 20)
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "run_recbole_flame.py"),
            "--model=FLAME",
            f"--frozen_checkpoint={text_file}",
            "--gpu_id=",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(lines) == 1 and str(text_file) in lines[0], proc.stderr
    assert not (tmp_path / "log").exists()  # stopped before logging and data

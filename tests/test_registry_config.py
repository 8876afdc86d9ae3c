"""Registry lookup and config precedence."""

from __future__ import annotations

import pytest
import recbole.trainer
from recbole.model.sequential_recommender.gru4rec import GRU4Rec
from recbole.model.sequential_recommender.sasrec import SASRec
from recbole.utils import ModelType

from recbole_flame.config import Config, parse_cmd_args, parse_value
from recbole_flame.trainer import RunStateMixin, Trainer
from recbole_flame.utils import ConfigError, available_models, get_model, get_trainer


def test_recbole_models_resolve_to_recbole_classes():
    assert get_model("GRU4Rec") is GRU4Rec
    assert get_model("gru4rec") is GRU4Rec  # matching ignores case, as users type it


def test_our_sasrec_shadows_recboles_with_the_same_weights():
    ours = get_model("SASRec")
    assert ours is not SASRec and issubclass(ours, SASRec)
    assert get_model("sasrec") is ours
    assert "SASRec" in available_models()[0] and "SASRec" not in available_models()[1]


def test_unknown_model_lists_ours_and_recboles():
    with pytest.raises(ValueError) as info:
        get_model("NoSuchModel")
    message = str(info.value)
    assert "NoSuchModel" in message and "SASRec" in message and "BPR" in message
    ours, _ = available_models()
    for name in ours:
        assert name in message


def test_model_with_missing_library_is_a_value_error_not_module_error():
    # RecBole's LightGBM imports lightgbm, which is not a dependency.
    pytest.importorskip("recbole")
    try:
        import lightgbm  # noqa: F401
    except ImportError:
        with pytest.raises(ValueError, match="LightGBM"):
            get_model("LightGBM")


def test_trainers_have_safe_checkpoints():
    assert get_trainer(ModelType.SEQUENTIAL, "SASRec") is Trainer
    kgat = get_trainer(ModelType.KNOWLEDGE, "KGAT")
    assert issubclass(kgat, recbole.trainer.KGATTrainer)
    assert issubclass(kgat, RunStateMixin)
    kg = get_trainer(ModelType.KNOWLEDGE, "CKE")
    assert issubclass(kg, recbole.trainer.KGTrainer) and issubclass(kg, RunStateMixin)


def test_values_are_parsed_literally_never_evaluated():
    assert parse_value("0.001") == 0.001
    assert parse_value("[10, 20]") == [10, 20]
    assert parse_value("True") is True and parse_value("false") is False
    assert parse_value("None") is None
    assert parse_value("[DCNV2, DeepFM]") == ["DCNV2", "DeepFM"]
    evil = "__import__('os').getcwd()"
    assert parse_value(evil) == evil
    assert parse_cmd_args(["--epochs=5", "--eval_args={'mode': 'full'}"]) == {
        "epochs": 5,
        "eval_args": {"mode": "full"},
    }
    with pytest.raises(ConfigError, match="--key=value"):
        parse_cmd_args(["--epochs"])  # a key without a value
    with pytest.raises(ConfigError, match="--key=value"):
        parse_cmd_args(["--epochs", "--learning_rate=0.1"])


def test_precedence_recbole_then_ours_then_file_dict_cmd(tmp_path):
    key = "user_inter_num_interval"  # RecBole default: None; our amazon-beauty.yaml: [5,inf)
    assert Config("SASRec", "ml-100k")[key] is None
    assert Config("SASRec", "amazon-beauty")[key] == "[5,inf)"
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(f'{key}: "[3,inf)"\nn_layers: 3\n')
    cfg = Config("SASRec", "amazon-beauty", config_file_list=[str(cfg_file)])
    assert cfg[key] == "[3,inf)" and cfg["n_layers"] == 3
    cfg = Config(
        "SASRec", "amazon-beauty", config_file_list=[str(cfg_file)], config_dict={key: "[4,inf)"}
    )
    assert cfg[key] == "[4,inf)"
    cfg = Config(
        "SASRec",
        "amazon-beauty",
        config_file_list=[str(cfg_file)],
        config_dict={key: "[4,inf)"},
        cmd_args=[f"--{key}=[6,inf)"],
    )
    assert cfg[key] == "[6,inf)" and cfg["n_layers"] == 3


def test_sequential_ce_models_run_without_negative_sampling_by_default():
    cfg = Config("SASRec", "ml-100k")
    assert cfg["train_neg_sample_args"]["distribution"] == "none"
    cfg = Config("SASRec", "ml-100k", config_dict={"loss_type": "BPR"})
    assert cfg["train_neg_sample_args"]["distribution"] == "uniform"


def test_paths_become_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = Config(
        "SASRec", "amazon-beauty", config_dict={"data_path": "data", "checkpoint_dir": "ck"}
    )
    assert cfg["data_path"] == str(tmp_path / "data" / "amazon-beauty")
    assert cfg["checkpoint_dir"] == str(tmp_path / "ck")


def test_missing_config_file_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        Config("SASRec", "ml-100k", config_file_list=[str(tmp_path / "nope.yaml")])

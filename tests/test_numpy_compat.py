"""The numpy-2 shim and the Ray API picker, on the stack installed (numpy 1 and Ray 2.6.3 on
Python 3.11; numpy 2 and current Ray on 3.13, where .ci/py313 runs this file)."""

import types

import numpy as np
import pytest

import recbole_flame  # noqa: F401  (applies the shim)
from recbole_flame.numpy_compat import restore_removed_aliases


class _Numpy2Like(types.ModuleType):
    """A module that, like numpy 2, raises AttributeError for the removed aliases."""

    float64 = np.float64
    complex128 = np.complex128
    str_ = np.str_


def test_removed_aliases_are_given_back_as_numpys_own_replacements():
    fake = _Numpy2Like("numpy")
    assert restore_removed_aliases(fake) == ["float_", "complex_", "unicode_"]
    assert fake.float_ is np.float64 and fake.complex_ is np.complex128 and fake.unicode_ is np.str_


def test_names_that_exist_are_left_alone():
    fake = _Numpy2Like("numpy")
    sentinel = object()
    fake.float_ = sentinel
    assert "float_" not in restore_removed_aliases(fake)
    assert fake.float_ is sentinel


def test_recbole_config_builds_on_the_installed_numpy():
    # RecBole's Config.compatibility_settings reads np.float_, np.complex_ and np.unicode_.
    from recbole_flame.config import Config

    config = Config("SASRec", "ml-100k", config_dict={"gpu_id": "", "epochs": 1})
    assert np.float_ is np.float64 and np.unicode_ is np.str_
    assert config["model"] == "SASRec"


def test_ray_api_matches_the_installed_ray():
    ray = pytest.importorskip("ray")
    from ray import tune

    from recbole_flame.tuning.ray_api import tune_api

    run_config, failure_config, report = tune_api()
    major, minor = (int(p) for p in ray.__version__.split(".")[:2])
    # The two Ray versions tested: 2.6.3 (RecBole's pin) and 2.60 (current, Python 3.13).
    if (major, minor) >= (2, 60):
        assert run_config is tune.RunConfig and report is tune.report
    elif (major, minor) <= (2, 6):
        from ray import air
        from ray.air import session

        assert run_config is air.RunConfig and report is session.report
    run_config(name="x", failure_config=failure_config(max_failures=0))

"""The three Ray Tune names whose home moved between the Ray versions this package supports.

Ray 2.6.3 (what RecBole 1.2.1 pins, Python <= 3.11) has them under ``ray.air``; current Ray
(2.40+, the only Ray with wheels for Python 3.12 and 3.13) has them under ``ray.tune`` and warns
on the old names (``ray.air.session`` there only forwards to ``ray.tune.report``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def tune_api() -> tuple[type, type, Callable[[dict[str, Any]], None]]:
    """``(RunConfig, FailureConfig, report)`` for the installed Ray."""
    from ray import tune

    if hasattr(tune, "RunConfig"):
        return tune.RunConfig, tune.FailureConfig, tune.report
    from ray import air
    from ray.air import session

    return air.RunConfig, air.FailureConfig, session.report

"""recbole_flame: FLAME, CANet, TiM4Rec and CETNet as RecBole models."""

import warnings

import numpy

from recbole_flame.numpy_compat import restore_removed_aliases

# Ray 2.6 (pinned by RecBole 1.2.1) imports the deprecated pkg_resources; the warning is noise.
warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
# RecBole 1.2.1's docstrings hold regex escapes that Python 3.12+ flags when compiling them.
warnings.filterwarnings("ignore", message="invalid escape sequence", category=SyntaxWarning)
# pandas 2.2+ warns at each of RecBole's `feat[field].fillna(..., inplace=True)` (one warning per
# field, per dataset load) that pandas 3 will ignore it; under pandas 2, which setup.cfg keeps,
# the fill works. Silenced for RecBole's modules only.
warnings.filterwarnings(
    "ignore",
    message="A value is trying to be set on a copy of a DataFrame or Series through chained",
    category=FutureWarning,
    module=r"recbole\.",
)
# RecBole's trainer builds torch.cuda.amp.GradScaler, which torch 2.4+ calls deprecated, at every
# fit (each FLAME stage, each trial).
warnings.filterwarnings(
    "ignore", message=r"`torch.cuda.amp.GradScaler\(args...\)` is deprecated", category=FutureWarning
)
restore_removed_aliases(numpy)

import recbole.model.sequential_recommender  # noqa: E402, F401  (for its side effect, undone below)
import torch  # noqa: E402

# RecBole 1.2.1's SINE module calls torch.autograd.set_detect_anomaly(True) when it is imported,
# and importing any RecBole sequential model imports it: every training step then scans each
# gradient for NaN (a debugging aid that changes no result and costs ~30% of a CPU step).
torch.autograd.set_detect_anomaly(False)

__version__ = "0.1.0"

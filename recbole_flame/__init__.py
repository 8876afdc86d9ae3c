"""recbole_flame: FLAME, CANet, TiM4Rec and CETNet as RecBole models."""

import warnings

# Ray 2.6 (pinned by RecBole 1.2.1) imports the deprecated pkg_resources; the warning is noise.
warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)

import recbole.model.sequential_recommender  # noqa: E402, F401  (for its side effect, undone below)
import torch  # noqa: E402

# RecBole 1.2.1's SINE module calls torch.autograd.set_detect_anomaly(True) when it is imported,
# and importing any RecBole sequential model imports it: every training step then scans each
# gradient for NaN (a debugging aid that changes no result and costs ~30% of a CPU step).
torch.autograd.set_detect_anomaly(False)

__version__ = "0.1.0"

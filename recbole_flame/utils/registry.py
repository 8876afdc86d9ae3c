"""Model and trainer lookup: this package's classes first, then RecBole's."""

from __future__ import annotations

import difflib
import functools
import importlib
import re
from pathlib import Path

import recbole
from recbole.utils import ModelType

from recbole_flame.utils.errors import UnknownModelError

# Our models: class name -> module under recbole_flame.model. Explicit, so listing them
# imports nothing and a typo in a module name fails loudly in the registry test.
_OUR_MODELS: dict[str, str] = {
    "FLAME": "recbole_flame.model.flame",
    "TiM4Rec": "recbole_flame.model.tim4rec",
    "CANet": "recbole_flame.model.canet",
    "CETNet": "recbole_flame.model.cetnet",
    # RecBole's SASRec plus dense training and padding trim; the same weights and inference.
    "SASRec": "recbole_flame.model.sasrec",
}

_RECBOLE_SUBMODULES = (
    "general_recommender",
    "context_aware_recommender",
    "sequential_recommender",
    "knowledge_aware_recommender",
    "exlib_recommender",
)


def _our_models() -> dict[str, str]:
    """The registered models whose module exists in this installation."""
    return {
        name: module
        for name, module in _OUR_MODELS.items()
        if importlib.util.find_spec(module) is not None
    }


@functools.cache
def _recbole_models() -> dict[str, str]:
    """RecBole's model class names -> module path, read from source text (no imports: the
    exlib models import lightgbm/xgboost, which are not installed)."""
    root = Path(recbole.__file__).parent / "model"
    found: dict[str, str] = {}
    for sub in _RECBOLE_SUBMODULES:
        for path in sorted((root / sub).glob("*.py")):
            if path.stem.startswith("__"):
                continue
            text = path.read_text(encoding="utf-8", errors="replace")
            for cls in re.findall(r"^class (\w+)\(", text, flags=re.M):
                if cls.lower() == path.stem:
                    found[cls] = f"recbole.model.{sub}.{path.stem}"
    return found


def available_models() -> tuple[list[str], list[str]]:
    """(this package's model names, RecBole's model names), each sorted."""
    ours = sorted(_our_models())
    theirs = sorted(n for n in _recbole_models() if n not in ours)
    return ours, theirs


def canonical_model_name(name: str) -> str:
    """The registered spelling of ``name`` (matching ignores case); raises UnknownModelError."""
    ours, theirs = available_models()
    for candidates in (ours, theirs):
        if name in candidates:
            return name
        for cand in candidates:
            if cand.lower() == name.lower():
                return cand
    close = difflib.get_close_matches(
        name.lower(), [c.lower() for c in ours + theirs], n=3, cutoff=0.6
    )
    spelled = {c.lower(): c for c in ours + theirs}
    hint = f"did you mean {' or '.join(repr(spelled[c]) for c in close)}? " if close else ""
    raise UnknownModelError(
        f"unknown model '{name}': {hint}this package has {', '.join(ours) or 'none'}; "
        f"RecBole has {', '.join(theirs)}"
    )


def get_model(name: str) -> type:
    """The model class called ``name``: this package's first, then RecBole's."""
    name = canonical_model_name(name)
    module_path = _our_models().get(name) or _recbole_models()[name]
    try:
        module = importlib.import_module(module_path)
    except ImportError as exc:
        raise UnknownModelError(
            f"model '{name}' needs a package that is not installed ({exc}); "
            "install it or pick another model"
        ) from exc
    return getattr(module, name)


def get_trainer(model_type: ModelType, model_name: str) -> type:
    """The trainer class for ``model_name``: ``recbole_flame.trainer.<Name>Trainer`` if it
    exists, else RecBole's trainer for that model or type, with this package's run state (safe checkpoints, resume, learning curve)
    mixed in (RecBole's own pickle its Config and do not load under torch>=2.6)."""
    from recbole_flame import trainer as our_trainers

    ours = getattr(our_trainers, f"{model_name}Trainer", None)
    if ours is not None:
        return ours
    rb_trainers = importlib.import_module("recbole.trainer")
    base = getattr(rb_trainers, f"{model_name}Trainer", None)
    if base is None:
        if model_type == ModelType.KNOWLEDGE:
            base = rb_trainers.KGTrainer
        elif model_type == ModelType.TRADITIONAL:
            base = rb_trainers.TraditionalTrainer
        else:
            return our_trainers.Trainer
    return our_trainers.with_run_state(base)

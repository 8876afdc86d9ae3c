"""What this package asks of a model class beyond RecBole's interface, declared once with its
defaults: this package's models inherit :class:`ModelCapabilities` and set what they support;
RecBole's own classes, which declare none of it, answer with the defaults. Every reader goes
through :func:`capability`, so a capability's default lives here alone."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from recbole_flame.config.rules import Rule


class ModelCapabilities:
    """The capabilities a model class declares, at their defaults (what RecBole's own models
    get). A mixin of class attributes and class methods only: it adds no state and no
    ``__init__``."""

    #: Selected and reported with the evaluation profile (properties/profile/evaluation.yaml)
    #: unless the run says otherwise.
    uses_evaluation_profile: ClassVar[bool] = False
    #: ``train_mode: dense`` trains it (a loss term at every real step of a window).
    supports_dense_training: ClassVar[bool] = False
    #: ``sequence_packing`` gives it the same prefix loss as unpacked rows
    #: (model/layers/packing.py); ``sequence_packing: ~`` turns packing on for it.
    supports_packing: ClassVar[bool] = False
    #: Cutting a batch to its longest sequence leaves every row's output unchanged, so a
    #: caller may trim the padding before calling it.
    trim_safe: ClassVar[bool] = False
    #: Its own keys, and the common keys it narrows, each checked when the config is built.
    key_rules: ClassVar[Mapping[str, Rule]] = {}

    @classmethod
    def check_config(cls, config: Any) -> None:
        """Stop on settings the model cannot use together, before any data loads (each key on
        its own is checked by :attr:`key_rules`). Nothing to relate by default."""

    @classmethod
    def dense_training_error(cls, config: Any) -> str | None:
        """Why ``train_mode: dense`` cannot train it with ``config`` (one line), or None."""
        return None


#: The names :func:`capability` answers for.
CAPABILITIES: frozenset[str] = frozenset(
    name for name in vars(ModelCapabilities) if not name.startswith("_")
)


def capability(model: type | object, name: str) -> Any:
    """``name`` (one of :data:`CAPABILITIES`) as the model class ``model`` (or an instance of
    it) declares it: its own value for this package's models, the default of
    :class:`ModelCapabilities` for a class that does not inherit it (RecBole's)."""
    if name not in CAPABILITIES:
        raise AttributeError(f"no model capability {name!r}; they are {sorted(CAPABILITIES)}")
    cls = model if isinstance(model, type) else type(model)
    return getattr(cls if issubclass(cls, ModelCapabilities) else ModelCapabilities, name)

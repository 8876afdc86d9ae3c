"""Lets RecBole 1.2.1 run under numpy 2 without editing the installed RecBole.

RecBole's ``Config.compatibility_settings`` assigns ``np.float = np.float_``,
``np.complex = np.complex_`` and ``np.unicode = np.unicode_``; numpy 2 removed the three
right-hand names, so building any Config raises AttributeError. Giving them back as the
aliases numpy 2 names in its migration guide (float64, complex128, str_) is all RecBole needs;
under numpy 1 the names exist and nothing is touched. ``recbole_flame/__init__.py`` applies this
before anything imports RecBole.
"""

from __future__ import annotations

from types import ModuleType

# The removed name and the numpy 2 name it stood for.
REMOVED_ALIASES = {"float_": "float64", "complex_": "complex128", "unicode_": "str_"}


def restore_removed_aliases(np: ModuleType) -> list[str]:
    """Give ``np`` each removed alias it lacks; returns the names added (none under numpy 1)."""
    added = []
    for old, new in REMOVED_ALIASES.items():
        try:
            getattr(np, old)
        except AttributeError:  # numpy 2 raises AttributeError from its module __getattr__
            setattr(np, old, getattr(np, new))
            added.append(old)
    return added

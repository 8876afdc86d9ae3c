"""What a config key may hold: :class:`Rule` and the small factories every rule table is built
from (RecBole's common keys in :mod:`recbole_flame.config.checks`, each model's own keys beside
the model as its ``key_rules``)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# Ints past this are never meaningful here and overflow int32 fields in numpy/torch.
INT_MAX = 2**31 - 1
SEED_MAX = 2**32 - 1  # numpy's seed range


@dataclass(frozen=True)
class Rule:
    """What one key may hold.

    ``kind`` names the family of values (``int``, ``number``, ``bool``, ``choice``, ``text``,
    ``int_list``, ``structured``, ``fixed``) and ``lo``/``hi``/``choices``/``none`` its range,
    so tests and the configuration reference can derive bad values; ``allowed`` is the phrase
    the error line uses; ``ok`` says whether a value is allowed; ``explain``, for structured
    values, says what is wrong (a whole message) or None. Where a rule applies is where it is
    declared: :data:`recbole_flame.config.checks.COMMON_RULES` for every model, a model
    class's ``key_rules`` for that model.
    """

    kind: str
    allowed: str
    ok: Callable[[Any], bool]
    explain: Callable[[str, Any], str | None] | None = None
    choices: tuple[Any, ...] = ()
    lo: float | None = None
    hi: float | None = None
    none: bool = False  # whether ~ (None) is allowed

    def problem(self, key: str, value: Any) -> str | None:
        """The one-line error for ``value`` under ``key``, or None if it is allowed."""
        if self.explain is not None:
            return self.explain(key, value)
        if self.ok(value):
            return None
        return f"{key} must be {self.allowed}, not {show(value)}"


def show(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters, always on one line (repr escapes newlines)."""
    try:
        text = repr(value)
    except ValueError:  # an int past Python's 4300-digit str limit
        return f"an integer of {value.bit_length()} bits"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    # bool is an int subclass, but True is never meant as a learning rate.
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def finite(value: Any) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float
        return False


# --- rule factories -------------------------------------------------------------------------
def integer(lo: int = 1, hi: int = INT_MAX, none: bool = False) -> Rule:
    if lo == 1 and hi == INT_MAX:
        allowed = "a positive integer"
    elif hi == INT_MAX:
        allowed = f"an integer >= {lo}"
    else:
        allowed = f"an integer from {lo} to {hi}"
    if none:
        allowed += " or ~"
    return Rule(
        "int",
        allowed,
        lambda v: (none and v is None) or (is_int(v) and lo <= v <= hi),
        lo=lo,
        hi=hi,
        none=none,
    )


def number(
    lo: float = 0.0,
    *,
    strict: bool = True,
    hi: float | None = None,
    hi_strict: bool = False,
    none: bool = False,
) -> Rule:
    """A finite int or float ``> lo`` (``>= lo`` if not ``strict``), and ``<= hi`` (``< hi``);
    with ``none``, ``~`` too."""
    if hi is not None:
        left, right = ("(" if strict else "["), (")" if hi_strict else "]")
        allowed = f"a number in {left}{lo:g}, {hi:g}{right}"
    elif lo == 0 and strict:
        allowed = "a positive number"
    else:
        allowed = f"a number {'>' if strict else '>='} {lo:g}"
    if none:
        allowed += " or ~"

    def ok(v: Any) -> bool:
        if none and v is None:
            return True
        if not is_number(v) or not finite(v):
            return False
        if v < lo or (strict and v == lo):
            return False
        return hi is None or v < hi or (not hi_strict and v == hi)

    return Rule("number", allowed, ok, lo=lo, hi=hi, none=none)


def boolean(none: bool = False) -> Rule:
    return Rule(
        "bool",
        "True, False or ~" if none else "True or False",
        lambda v: isinstance(v, bool) or (none and v is None),
        none=none,
    )


def one_of(
    *choices: str,
    none: bool = False,
    ignore_case: bool = False,
    why: str = "",
) -> Rule:
    """One of ``choices`` (``why``, if given, is said after them: why the others are not)."""
    allowed = "one of " + ", ".join(choices) + (" or ~" if none else "")
    if why:
        allowed += f" ({why})"
    folded = {c.lower() for c in choices} if ignore_case else set(choices)

    def ok(v: Any) -> bool:
        if v is None:
            return none
        if not isinstance(v, str):
            return False
        return (v.lower() if ignore_case else v) in folded

    return Rule("choice", allowed, ok, choices=choices, none=none)


def text(none: bool = False) -> Rule:
    allowed = "a non-empty string" + (" or ~" if none else "")
    return Rule(
        "text",
        allowed,
        lambda v: (none and v is None) or (isinstance(v, str) and v.strip() != ""),
        none=none,
    )


def int_list(scalar: bool = False) -> Rule:
    """A non-empty list of positive integers (or, with ``scalar``, one positive integer)."""
    allowed = "a non-empty list of positive integers" + (
        " or one positive integer" if scalar else ""
    )

    def ok(v: Any) -> bool:
        if scalar and is_int(v):
            return 1 <= v <= INT_MAX
        return isinstance(v, list) and bool(v) and all(is_int(x) and 1 <= x <= INT_MAX for x in v)

    return Rule("int_list", allowed, ok, lo=1, hi=INT_MAX)


def structured(allowed: str, explain: Callable[[str, Any], str | None]) -> Rule:
    return Rule("structured", allowed, lambda v: explain("", v) is None, explain=explain)


def probability() -> Rule:
    """A number in [0, 1]: a dropout rate."""
    return number(0.0, strict=False, hi=1.0)

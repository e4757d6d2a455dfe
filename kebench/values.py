"""Typed values from the command line and YAML: one conversion every setting, plugin parameter and
data option goes through (kept apart from config.py so datasets can use it without a cycle)."""
from __future__ import annotations

import math

from kebench.errors import UserError

SCALARS = (str, int, float, bool)


def coerce(key: str, value, like, where: str):
    """Convert a CLI/YAML value to the type of its default (`like`): the one schema every setting,
    plugin parameter and data option is checked against. Wrong shapes (a list where a name is
    expected, a mapping where a number is) and non-finite numbers are refused with one message."""
    if like is None:
        return value
    expected = {bool: "true/false", int: "an integer", float: "a finite number", str: "a name (text)",
                dict: "a mapping of KEY: VALUE", list: "a list (or comma-separated text)",
                tuple: "a list (or comma-separated text)"}.get(type(like), type(like).__name__)
    try:
        if value is None:
            raise ValueError(value)
        if isinstance(like, bool):
            if isinstance(value, str):
                low = value.lower()
                if low in ("1", "true", "yes", "on"):
                    return True
                if low in ("0", "false", "no", "off"):
                    return False
            if isinstance(value, bool) or (isinstance(value, int) and value in (0, 1)):
                return bool(value)
            raise ValueError(value)
        if isinstance(like, int):
            if isinstance(value, bool) or not isinstance(value, (int, float, str)):
                raise ValueError(value)
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if isinstance(like, float):
            if isinstance(value, bool) or not isinstance(value, (int, float, str)):
                raise ValueError(value)
            number = float(value)
            if not math.isfinite(number):
                raise ValueError(value)
            return number
        if isinstance(like, str):
            if not isinstance(value, str):
                raise ValueError(value)
            return value
        if isinstance(like, dict):
            if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, SCALARS)
                                                      for k, v in value.items()):
                raise ValueError(value)
            return dict(value)
        if isinstance(like, (list, tuple)):
            items = value.split(",") if isinstance(value, str) else value
            if not isinstance(items, (list, tuple)) or not all(isinstance(v, SCALARS) for v in items):
                raise ValueError(value)
            return [coerce(key, v, like[0], where) for v in items] if like else list(items)
    except (TypeError, ValueError, OverflowError):
        raise UserError(
            f"{where}: '{key}' expects {expected} (like {like!r}), got {value!r}."
        ) from None
    return value


def optional_epochs(value, name: str, plugin: str) -> int | None:
    """A phase length from registry/CLI: None (derive it) or a positive whole number of epochs."""
    if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
        return None
    try:
        number = float(value)
        if number != int(number) or number < 1:
            raise ValueError
        return int(number)
    except (TypeError, ValueError):
        raise UserError(f"{plugin}: {name} must be a positive whole number of epochs (or null to derive it "
                        f"from --epochs), got {value!r}.") from None


def check_fraction(value, name: str, plugin: str) -> float:
    """A plugin's fraction parameter (a pruning ratio, a drop rate): a number in [0, 1)."""
    if not 0 <= float(value) < 1:
        raise UserError(f"{plugin}: {name} must be a fraction in [0, 1), got {value}.")
    return float(value)

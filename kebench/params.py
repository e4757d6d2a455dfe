"""Typed settings: the one routine that converts a CLI/YAML value to a declared type, and setting
declarations (`param(...)` fields: a plugin's nested `Params` dataclass, and `RunConfig`'s engine
settings) with their checks. config.py checks both with them; the CLI's flags are made from them."""
from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing

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



def param(help: str, *, choices: tuple | None = None, ge=None, gt=None, le=None, lt=None, tiny=None,
          default=dataclasses.MISSING, rule: str | None = None, flag: bool = True):
    """One declared setting. A plugin parameter's value comes from registry.yaml (the paper default),
    so it has no default here; an engine setting (`RunConfig`) gives its `default`. choices: allowed
    text values; ge/gt/le/lt: bounds on a number (on each item of a list); rule: how an error states
    the bounds (default: from them, e.g. '> 0'); tiny: the value the conformance test trains with (a
    small search); flag: False for an engine setting whose CLI flag is not made from the declaration."""
    meta = {"help": help, "choices": choices, "ge": ge, "gt": gt, "le": le, "lt": lt, "tiny": tiny, "rule": rule,
            "flag": flag}
    if isinstance(default, (dict, list)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def declared(cls) -> dict[str, tuple[object, dataclasses.Field]] | None:
    """{name: (type, field)} of a plugin class's `Params`, or None for an undeclared (legacy) plugin."""
    params = getattr(cls, "Params", None)
    if params is None:
        return None
    if not dataclasses.is_dataclass(params):
        raise TypeError(f"{cls.__name__}.Params must be a @dataclass of param(...) fields")
    hints = typing.get_type_hints(params)
    return {f.name: (hints[f.name], f) for f in dataclasses.fields(params)}


def type_text(tp) -> str:
    """How --help names a declared type: INTEGER, FLOAT|none, FLOAT|TEXT, LIST of FLOAT, ..."""
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        return "|".join("none" if t is type(None) else type_text(t) for t in typing.get_args(tp))
    origin = typing.get_origin(tp)
    if origin is list:
        return f"LIST of {type_text(typing.get_args(tp)[0])}"
    if origin is dict or tp is dict:
        return "MAPPING"
    return {bool: "BOOL", int: "INTEGER", float: "FLOAT", str: "TEXT"}.get(tp, getattr(tp, "__name__", str(tp)))


def range_text(meta: dict) -> str:
    """The declared bounds as text, e.g. 'in (0, 1]' or '>= 1'; '' when unbounded."""
    low = ("[", meta["ge"]) if meta["ge"] is not None else ("(", meta["gt"]) if meta["gt"] is not None else None
    high = ("]", meta["le"]) if meta["le"] is not None else (")", meta["lt"]) if meta["lt"] is not None else None
    if low and high:
        return f"in {low[0]}{low[1]}, {high[1]}{high[0]}"
    if low:
        return f"{'>=' if low[0] == '[' else '>'} {low[1]}"
    if high:
        return f"{'<=' if high[0] == ']' else '<'} {high[1]}"
    return ""


def _like(tp):
    """A sample value of a plain declared type, for config's one coercion routine."""
    origin = typing.get_origin(tp)
    if origin is list:
        return [_like(typing.get_args(tp)[0])]
    if origin is dict or tp is dict:
        return {}
    return {bool: True, int: 0, float: 0.0, str: ""}[tp]


def _convert(key: str, value, tp, where: str):
    members = typing.get_args(tp) if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union else (tp,)
    if type(None) in members and (value is None or (isinstance(value, str) and value.lower() in ("", "none", "null"))):
        return None
    plain = [t for t in members if t is not type(None)]
    for t in plain[:-1]:  # 'float | str': a number if it reads as one, else the text
        try:
            return coerce(key, value, _like(t), where)
        except UserError:
            pass
    if isinstance(value, (int, float)) and not isinstance(value, bool) and plain[-1] is str and len(plain) == 1:
        value = str(value)  # a path or name given as a number in YAML
    value = coerce(key, value, _like(plain[-1]), where)
    if typing.get_origin(plain[-1]) is dict:  # dict[str, float]: each value typed too
        value = {k: coerce(f"{key}.{k}", v, _like(typing.get_args(plain[-1])[1]), where) for k, v in value.items()}
    return value


def check_value(key: str, value, meta: dict, numeric: bool = False) -> str | None:
    """What is wrong with one typed value against its declared choices and bounds, or None."""
    flag = "--" + key.replace("_", "-")
    items = list(value.values()) if isinstance(value, dict) else value if isinstance(value, list) else [value]
    for v in items:
        if isinstance(v, str) and meta["choices"] is not None and v not in meta["choices"]:
            named = ", ".join(map(str, meta["choices"]))
            if numeric:  # 'float | str': the text did not read as a number either
                return f"{flag} expects a number{' ' + range_text(meta) if range_text(meta) else ''} or {named}, got {v!r}"
            close = difflib.get_close_matches(v, list(map(str, meta["choices"])), n=1, cutoff=0.5)
            return f"{flag} must be one of {named}, got {v!r}" + (f" (did you mean {close[0]}?)" if close else "")
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            bad = ((meta["ge"] is not None and not v >= meta["ge"]) or (meta["gt"] is not None and not v > meta["gt"])
                   or (meta["le"] is not None and not v <= meta["le"]) or (meta["lt"] is not None and not v < meta["lt"]))
            if bad or (isinstance(v, float) and not math.isfinite(v)):
                return f"{flag} must be {meta.get('rule') or range_text(meta)}, got {v}"
    return None


def parse_params(cls, raw: dict, who: str, where: str = "settings"):
    """`raw` typed and checked against `cls.Params` (types, choices, ranges, then its check()):
    the Params instance, or one UserError naming the plugin and the parameter."""
    fields = declared(cls)
    unknown = sorted(set(raw) - set(fields))
    missing = [k for k in fields if k not in raw]
    if unknown or missing:
        parts = ([f"unknown parameter(s) {', '.join(unknown)}"] if unknown else []) + \
                ([f"no value for {', '.join(missing)}"] if missing else [])
        raise UserError(f"Plugin '{who}' ({where}): {'; '.join(parts)}. It declares: "
                        f"{', '.join(fields) or 'no parameters'}.")
    values = {}
    for key, (tp, f) in fields.items():
        values[key] = _convert(key, raw[key], tp, f"{who} ({where})")
        members = typing.get_args(tp) or (tp,)
        problem = check_value(key, values[key], f.metadata, numeric=float in members or int in members)
        if problem:
            raise UserError(f"{who}: {problem} ({f.metadata['help']}).")
    params = cls.Params(**values)
    check = getattr(params, "check", None)
    if check is not None:
        try:
            check()
        except UserError as exc:
            raise UserError(f"{who}: {exc}") from None
    return params


def check_defaults(cls, who: str, defaults: dict, engine_keys: set, source: str) -> None:
    """A registry entry against its class's declaration: every parameter has a paper default of the
    declared type, and no default names something the plugin does not declare (nor an engine setting)."""
    fields = declared(cls)
    if fields is None:
        return
    own = {k: v for k, v in defaults.items() if k not in engine_keys or k in fields}
    unknown = sorted(set(own) - set(fields))
    if unknown:
        raise UserError(f"Plugin '{who}' in {source}: defaults name {', '.join(unknown)}, which "
                        f"{cls.__module__}.{cls.__name__}.Params does not declare (it declares "
                        f"{', '.join(fields) or 'nothing'}). Fix the key or declare it with param(...).")
    missing = [k for k in fields if k not in own]
    if missing:
        raise UserError(f"Plugin '{who}' in {source}: no paper default for {', '.join(missing)} (declared by "
                        f"{cls.__module__}.{cls.__name__}.Params); add it under 'defaults'.")
    parse_params(cls, own, who, f"paper defaults in {source}")

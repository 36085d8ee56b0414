"""Flag values from YAML (a ``--config`` file, a sweep file) converted and checked as the parser would
convert the same flags on the command line."""
from __future__ import annotations

import argparse
import difflib
from typing import Any

from config.base import ConfigError
from config.parser import actions_by_dest, flag_name
from config.shared import finite_float
from config.yaml_tree import read_config_tree


def _expected(action: argparse.Action) -> str:
    """What a flag's YAML value must be, as an error message says it: "a number", "a list of 2 integers", ..."""
    noun = {int: "integer", finite_float: "number", None: "string", str: "string"}.get(action.type, "single value")
    if action.choices is not None:
        noun = "one of " + ", ".join(map(str, action.choices))
    if action.nargs in (None, "?"):
        return noun if noun.startswith("one of") else ("an " if noun[0] in "aeiou" else "a ") + noun
    count = f"{action.nargs} " if isinstance(action.nargs, int) else ""
    return f"a list of {count}values ({noun})" if noun.startswith("one of") else f"a list of {count}{noun}s"


def _coerce_yaml_value(action: argparse.Action, key: str, value: Any, source: str) -> Any:
    """Convert a YAML value as the parser would convert the same flag, then check its choices. A null is
    the value only of a flag that is unset by default (leaving the key out gives every other its default)."""
    flag = flag_name(action)

    def fail(why: str) -> ConfigError:
        return ConfigError(f"{source}: key {key!r} (flag {flag}) has invalid value {value!r}: {why}")

    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        if not isinstance(value, bool):
            raise fail("expected true or false")
        return value
    if isinstance(action, argparse._StoreConstAction):
        value = action.const if value is True else value
    if value is None:
        if action.default is not None:
            default = action.default
            default = " ".join(map(str, default)) if isinstance(default, (list, tuple)) else default
            raise fail(f"expected {_expected(action)}, or leave the key out for the default ({default})")
        return None
    nargs = action.nargs
    if nargs in (None, "?"):
        items, single = [value], True
    else:
        if not isinstance(value, (list, tuple)):
            raise fail(f"expected {_expected(action)}")
        if isinstance(nargs, int) and len(value) != nargs:
            raise fail(f"expected {nargs} values, got {len(value)}")
        items, single = list(value), False
    converted = []
    for item in items:
        if item is None or isinstance(item, (list, tuple, dict)) or \
                (action.type in (int, finite_float) and isinstance(item, bool)) or \
                (action.type is int and isinstance(item, float)):
            raise fail(f"expected {_expected(action)}")
        try:
            if action.type is int:
                item = int(item)
            elif action.type is finite_float:
                float(item)  # not a number at all: the expected type; else finite_float's own reason (inf, nan)
                item = finite_float(item)
            elif action.type in (None, str):
                item = str(item)
            else:
                item = action.type(str(item))
        except (argparse.ArgumentTypeError, TypeError, ValueError) as e:
            numeric = action.type in (int, finite_float) and not isinstance(e, argparse.ArgumentTypeError)
            raise fail(f"expected {_expected(action)}" if numeric else str(e)) from None
        if action.choices is not None and item not in action.choices:
            raise fail("choose from " + ", ".join(map(str, action.choices)))
        converted.append(item)
    return converted[0] if single else converted


def load_yaml_defaults(parser: argparse.ArgumentParser, path: str) -> dict[str, Any]:
    """Read a YAML config (and the ``base:`` files it builds on) with the safe loader and return parser
    defaults; an unknown key or a bad value is an error naming the file it came from."""
    data, origin = read_config_tree(path)
    values = {}
    for key, value in data.items():
        where = str(origin[key])
        values.update(coerce_flag_values(parser, {key: value}, f"--config: {where}", where))
    return values


def flag_dest(parser: argparse.ArgumentParser, key: Any, where: str) -> str:
    """The config key (dest) of a YAML key such as ``lr`` or ``--image-size``; unknown keys are errors
    with the closest names."""
    actions = actions_by_dest(parser)
    dest = str(key).lstrip("-").replace("-", "_")
    if dest not in actions or dest == "config":
        close = difflib.get_close_matches(dest, list(actions), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ConfigError(f"{where}: unknown key {key!r}{hint}")
    return dest


def coerce_flag_values(parser: argparse.ArgumentParser, data: dict, where: str,
                       source: str | None = None) -> dict[str, Any]:
    """Flag values from YAML (``{flag: value}``) converted and checked as the parser would convert the
    same flags; ``where`` prefixes the error of an unknown key, ``source`` that of a bad value."""
    actions = actions_by_dest(parser)
    values = {}
    for key, value in data.items():
        dest = flag_dest(parser, key, where)
        values[dest] = _coerce_yaml_value(actions[dest], str(key), value, source or where)
    return values

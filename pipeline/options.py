"""Typed configuration: dataclasses <- YAML file <- CLI flags (flags win), with generated ``--help``.

A config is a dataclass whose fields are declared with :func:`option` (a default and its help); nested dataclasses become
flag groups (``face.detector`` -> ``--face-detector``). Its ``__post_init__`` lists its checks
(``at_least``, ``at_least_each``, or ``(holds, what was expected)`` pairs) and ``raise_failed``
names the first that fails.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration file or flag that does not fit the config's fields."""


#: ``(holds, what was expected)`` pairs a config's ``__post_init__`` checks.
Checks = list[tuple[bool, str]]


def raise_failed(checks: Checks, owner: str) -> None:
    """Raise ``ValueError`` naming ``owner`` and the first check that does not hold."""
    for ok, expected in checks:
        if not ok:
            raise ValueError(f"{owner}: expected {expected}")


def at_least(
    name: str, value: float | None, low: float, optional: bool = False
) -> tuple[bool, str]:
    """``value >= low`` (or ``None`` when ``optional``), as a check."""
    ok = (optional and value is None) or (value is not None and value >= low)
    return ok, f"{name} >= {low}, got {value}"


def at_least_each(config: object, **lows: float) -> Checks:
    """``at_least`` for each field of ``config`` named in ``lows``, against its lower bound."""
    return [at_least(name, getattr(config, name), low) for name, low in lows.items()]


def option(default: Any = None, help: str = "", *, factory: Callable[[], Any] | None = None) -> Any:
    """A config field and its ``--help`` text: ``folds: int = option(3, "cross-validation folds")``;
    ``factory`` makes a mutable default (``option(factory=list, help=...)``)."""
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata={"help": help})
    return dataclasses.field(default=default, metadata={"help": help})


def _flag(name: str) -> str:
    return "--" + name.replace(".", "-").replace("_", "-")


def _dest(name: str) -> str:
    return "cfg__" + name.replace(".", "__")


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0], True
    return tp, False


def _parser_for(tp: Any):
    tp, optional = _unwrap_optional(tp)
    origin = typing.get_origin(tp)
    if tp is bool:
        return None  # handled as a BooleanOptionalAction
    if origin in (list, tuple):
        inner = typing.get_args(tp)[0] if typing.get_args(tp) else str

        def parse_list(text: str) -> list:
            return [inner(item) for item in text.split(",") if item.strip()]

        return parse_list
    if origin is typing.Literal:
        return str
    if optional:

        def parse_optional(text: str):
            return None if text.lower() in ("none", "null", "") else tp(text)

        return parse_optional
    return tp


def add_config_arguments(parser: argparse.ArgumentParser, cls: type, prefix: str = "") -> None:
    """Add one flag per (nested) field of ``cls``, documented from the field's ``help`` metadata."""
    hints = _field_types(cls)
    group = parser.add_argument_group(prefix.rstrip(".") or None) if prefix else parser
    for field in dataclasses.fields(cls):
        name = prefix + field.name
        tp = hints[field.name]
        if dataclasses.is_dataclass(tp):
            add_config_arguments(parser, tp, name + ".")
            continue
        help_text = field.metadata.get("help", "")
        default = (
            field.default
            if field.default is not dataclasses.MISSING
            else (
                field.default_factory()
                if field.default_factory is not dataclasses.MISSING
                else None
            )
        )
        choices = None
        bare, _ = _unwrap_optional(tp)
        if typing.get_origin(bare) is typing.Literal:
            choices = list(typing.get_args(bare))
        shown = ",".join(map(str, default)) if isinstance(default, list | tuple) else default
        help_text = f"{help_text} (default: {shown})"
        kwargs: dict[str, Any] = {
            "dest": _dest(name),
            "default": argparse.SUPPRESS,
            "help": help_text,
        }
        if bare is bool:
            group.add_argument(_flag(name), action=argparse.BooleanOptionalAction, **kwargs)
        else:
            group.add_argument(
                _flag(name),
                type=_parser_for(tp),
                choices=choices,
                metavar=name.split(".")[-1].upper(),
                **kwargs,
            )


def _set_path(data: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    for key in keys[:-1]:
        data = data.setdefault(key, {})
    data[keys[-1]] = value


def overrides_from_args(args: argparse.Namespace) -> dict:
    """The nested dict of the config flags the user actually gave."""
    out: dict = {}
    for dest, value in vars(args).items():
        if dest.startswith("cfg__"):
            _set_path(out, dest[len("cfg__") :].replace("__", "."), value)
    return out


def merge_dicts(base: dict, extra: dict) -> dict:
    """``extra`` over ``base``, nested mappings merged key by key."""
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_dicts(merged[key], value)
        else:
            merged[key] = value
    return merged


def from_dict(cls: type[T], data: dict, where: str = "config") -> T:
    """Build a dataclass from a nested dict, rejecting unknown keys with the key's name."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = _field_types(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; expected some of {sorted(names)}")
    kwargs = {}
    for key, value in data.items():
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = from_dict(tp, value, f"{where}.{key}")
        else:
            bare, _ = _unwrap_optional(tp)
            if typing.get_origin(bare) is typing.Literal and value not in typing.get_args(bare):
                raise ConfigError(f"{where}.{key}: {value!r} is not one of {typing.get_args(bare)}")
            kwargs[key] = value
    return cls(**kwargs)


def read_yaml_mapping(yaml_path: str | Path) -> dict:
    """A YAML file whose top level must be a mapping (an empty file is an empty one)."""
    loaded = yaml.safe_load(Path(yaml_path).read_text()) or {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{yaml_path}: expected a YAML mapping at the top level")
    return loaded


def stage_section(data: dict, cls: type, section: str | None) -> dict:
    """A recipe file holds several stages' settings under their names (``pretrain:``,
    ``finetune:``, e.g. configs/paper.yaml); a stage reads its own section of such a file."""
    names = {f.name for f in dataclasses.fields(cls)}
    if section and section in data and section not in names:
        inner = data[section] or {}
        if not isinstance(inner, dict):
            raise ConfigError(f"{section}: expected a mapping of {cls.__name__} settings")
        return inner
    return data


def load_config(
    cls: type[T],
    yaml_path: str | Path | None = None,
    overrides: dict | None = None,
    section: str | None = None,
) -> T:
    """Defaults <- YAML file (its ``section`` in a recipe file) <- overrides (CLI flags)."""
    data = stage_section(read_yaml_mapping(yaml_path), cls, section) if yaml_path else {}
    data = merge_dicts(data, overrides or {})
    return from_dict(cls, data, where=str(yaml_path) if yaml_path else cls.__name__)


#: What a sub-command runs: parsed arguments in, exit status out.
Command = Callable[[argparse.Namespace], int]


def config_parser(
    sub, name: str, cls: type, help_text: str, run: Command
) -> argparse.ArgumentParser:
    """The sub-command ``name`` of ``sub``: ``--config YAML``, ``--ray-address``, and one flag per
    field of the dataclass ``cls`` (nested ones prefixed); ``run`` is called with the result."""
    parser = sub.add_parser(name, help=help_text, description=help_text)
    parser.add_argument(
        "--config", metavar="YAML", help="YAML file with these options (flags override it)"
    )
    parser.add_argument(
        "--ray-address", default=None, help="Ray cluster to join (default: RAY_ADDRESS or local)"
    )
    add_config_arguments(parser, cls)
    parser.set_defaults(run=run, config_class=cls, config_section=name)
    return parser

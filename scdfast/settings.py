"""Config values from outside the curated flags: a file (`--config FILE`: a run's own
config.json, or TOML/YAML with the same sections) and `--set section.field=value`, so every
field of every config can be set from the command line.

Sections: model (SCDConfig), pretrain (PretrainConfig), linear (LinearConfig), finetune
(FinetuneConfig). A value given with --set is read by its field's type: `8`, `0.05`, `true`,
`none`, `50,70` (a tuple), `joint` (a choice, checked by the config).
"""
from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from typing import Literal

from scdfast.config import FinetuneConfig, LinearConfig, PretrainConfig, SCDConfig
from scdfast.errors import ScdError

SECTIONS = {"model": SCDConfig, "pretrain": PretrainConfig, "linear": LinearConfig, "finetune": FinetuneConfig}
_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def _set_value(value) -> str:
    """`value` as `--set` reads it back."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return "none" if value is None else str(value)


def tiny_overrides() -> str:
    """What the tiny preset changes, as the `--set` items that would make it from the paper's:
    the help text is built from the `_TINY` dicts, so it cannot drift from them."""
    return " ".join(f"{section}.{name}={_set_value(value)}"
                    for section, kind in SECTIONS.items() for name, value in kind._TINY.items())


def _field_names(kind: type) -> list[str]:
    return [f.name for f in dataclasses.fields(kind)]


def _check_field(where: str, section: str, name: str) -> None:
    if section not in SECTIONS:
        raise ScdError(f"{where}: unknown section {section!r}; the sections are {', '.join(SECTIONS)}")
    if name not in _field_names(SECTIONS[section]):
        raise ScdError(f"{where}: {SECTIONS[section].__name__} has no field {name!r} "
                       f"(its fields: {', '.join(_field_names(SECTIONS[section]))})")


# What a pretraining run's config.json records besides its sections: read past, not settings.
RUN_RECORD_KEYS = ("command", "data", "device", "train_samples", "dataset")


def read_config_file(path: str) -> dict[str, dict]:
    """{section: {field: value}} from a JSON, TOML or YAML file. Any other top-level key is an
    error, but for what a run's config.json records besides (RUN_RECORD_KEYS)."""
    extension = os.path.splitext(path)[1].lower()
    if extension not in (".json", ".toml", ".yaml", ".yml"):
        raise ScdError(f"--config {path}: expected a .json, .toml or .yaml file")
    with open(path, "rb") as f:
        text = f.read()
    try:
        if extension == ".json":
            values = json.loads(text)
        elif extension == ".toml":
            import tomllib
            values = tomllib.loads(text.decode())
        else:
            values = _load_yaml(path, text)
    except (ValueError, UnicodeDecodeError) as e:  # every format's parse errors are ValueErrors
        raise ScdError(f"--config {path}: not valid {extension[1:].upper()}: {str(e).splitlines()[0]}") from None
    except RecursionError:
        raise ScdError(f"--config {path}: nested too deeply to be read (a config is sections of fields)") from None
    if not isinstance(values, dict):
        raise ScdError(f"--config {path}: expected sections ({', '.join(SECTIONS)}) at the top level")
    out = {}
    for section, fields in values.items():
        if section in RUN_RECORD_KEYS and extension == ".json":
            continue
        if section not in SECTIONS:
            raise ScdError(f"--config {path}: unknown section {section!r}; the sections are {', '.join(SECTIONS)}")
        if not isinstance(fields, dict):
            raise ScdError(f"--config {path}: [{section}] must hold field = value pairs")
        for name in fields:
            _check_field(f"--config {path}", section, name)
        out[section] = {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}
    return out


def _load_yaml(path: str, text: bytes):
    """PyYAML's safe load, its parse errors as ValueErrors, or a one-line error naming it."""
    try:
        import yaml
    except ImportError:
        raise ScdError(f"--config {path}: reading YAML needs PyYAML (pip install pyyaml); "
                       "or give the same sections as JSON or TOML") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ValueError(str(e)) from None


def _convert(text: str, kind, where: str):
    """`text` as a value of type `kind` (a field's type hint)."""
    origin = typing.get_origin(kind)
    if origin is Literal or kind is str:
        return text
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(kind)
        if type(None) in options and text.lower() in ("none", "null"):
            return None
        for option in options:
            if option is not type(None) and option is not dict:
                return _convert(text, option, where)
    if origin is tuple:
        parts = [p for p in text.split(",") if p.strip()]
        item = typing.get_args(kind)[0]
        return tuple(_convert(p.strip(), item, where) for p in parts)
    if kind is bool:
        if text.lower() in _TRUE + _FALSE:
            return text.lower() in _TRUE
        raise ScdError(f"{where}: expected true or false, got {text!r}")
    try:
        return kind(text)
    except (TypeError, ValueError):
        raise ScdError(f"{where}: expected {getattr(kind, '__name__', kind)}, got {text!r}") from None


def parse_sets(items: list[str] | None) -> dict[str, dict]:
    """{section: {field: value}} from `--set section.field=value` items."""
    out: dict[str, dict] = {}
    for item in items or ():
        where = f"--set {item}"
        target, sep, text = item.partition("=")
        section, dot, name = target.strip().partition(".")
        if not sep or not dot:
            raise ScdError(f"{where}: expected section.field=value, e.g. pretrain.lr=0.05")
        _check_field(where, section, name)
        hint = typing.get_type_hints(SECTIONS[section])[name]
        out.setdefault(section, {})[name] = _convert(text.strip(), hint, where)
    return out


def merged(section: str, *sources: dict[str, dict]) -> dict:
    """The section's values, later sources over earlier ones."""
    values: dict = {}
    for source in sources:
        values.update(source.get(section, {}))
    return values


def refuse_sections(command: str, taken: tuple[str, ...], *sources: dict[str, dict]) -> None:
    """A section the command does not read is an error, not silently dropped."""
    for source in sources:
        for section in source:
            if section not in taken:
                takes = f"takes {', '.join(taken)}" if taken else "takes no config section"
                raise ScdError(f"{command}: settings for [{section}] do not apply; this command {takes}")

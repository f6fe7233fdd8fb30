"""Typed configs: YAML -> frozen dataclasses, unknown keys rejected by name, `key=value` overrides.

Every concern (model, training, data) has its own dataclass; this module only knows how to fill one
from plain data and how to say clearly where a value is wrong.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from vlm.errors import UserError

T = TypeVar("T")


class ConfigError(UserError):
    """A config file or override that cannot be turned into its dataclass."""


class _Loader(yaml.SafeLoader):
    """YAML with 1.2's booleans (only true/false) and floats (`5e-4`). PyYAML's 1.1 default turns the VQA answers
    `yes`, `no`, `on` and `off` into booleans, so `vqa_answers: [yes, no]` would silently lose them."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                              list("tTfF"))
# YAML 1.2 floats without a dot (`lr: 5e-4`); PyYAML's 1.1 resolver reads them as strings.
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9]+[eE][-+]?[0-9]+$"),
                              list("-+0123456789"))


def parse_yaml(text: str) -> Any:
    """`yaml.safe_load` with YAML 1.2 booleans (`yes` and `no` stay strings) and floats (`5e-4`)."""
    return yaml.load(text, Loader=_Loader)


def shipped_configs() -> Path:
    """The configs/ folder vlm ships: `vlm/configs` (a link to the checkout's configs/, copied into a wheel as
    package data), else the checkout's configs/ next to the package."""
    here = Path(__file__).resolve().parent
    packaged = here / "configs"
    return packaged if packaged.is_dir() else here.parent / "configs"


def resolve_config(value: str | Path, kind: str) -> Path:
    """A config file from any working directory: a path that exists; a path the docs write (`configs/train/
    clip.yaml`), found among the shipped configs; or a name (`clip`: configs/<kind>/clip.yaml)."""
    path = Path(value)
    if path.is_file():
        return path
    root = shipped_configs()
    candidates = [root.joinpath(*path.parts[1:])] if path.parts[:1] == ("configs",) and len(path.parts) > 1 else []
    if len(path.parts) == 1 and path.suffix not in (".yaml", ".yml"):
        candidates.append(root / kind / f"{path.name}.yaml")
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    names = ", ".join(sorted(p.stem for p in (root / kind).glob("*.yaml")))
    raise ConfigError(f"{value}: no such config file, nor a shipped {kind} config; names: {names or 'none'}")


def read_yaml(path: str | Path) -> dict:
    """A YAML mapping; a `configs/...` path that is not here is read from the shipped configs (`resolve_config`)."""
    path = Path(path)
    if not path.is_file() and path.parts[:1] == ("configs",):
        path = resolve_config(path, path.parts[1] if len(path.parts) > 2 else "train")
    try:
        data = parse_yaml(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def from_dict(cls: type[T], data: dict, where: str = "config") -> T:
    """Build dataclass `cls` from `data`, recursing into nested dataclasses.

    `where` names the source (a file, a key path) so every error points at the field.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping for {cls.__name__}, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown} for {cls.__name__}; known: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {name: _convert(hints[name], value, _field_path(where, name)) for name, value in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as e:  # a required field is missing
        raise ConfigError(f"{where}: {e}") from None


def _field_path(where: str, name: str) -> str:
    """`file.yaml` + `image` -> `file.yaml: image`; `file.yaml: image` + `depth` -> `file.yaml: image.depth`."""
    return f"{where}.{name}" if ": " in where else f"{where}: {name}"


def _convert(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _convert(args[0], value, where) if len(args) == 1 else value
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:  # tuple[X, ...]: every item an X
            return tuple(_convert(args[0], item, f"{where}[{i}]") for i, item in enumerate(value))
        return tuple(value)
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is float and numeric:
        return float(value)
    if tp is str and numeric:  # `vqa_answers: [yes, 2]`: YAML reads the bare 2 as a number
        return str(value)
    if tp in (int, float, str, bool) and (not isinstance(value, tp) or (tp is int and isinstance(value, bool))):
        raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}")
    return value


def to_dict(config: Any) -> dict:
    """Plain-data form of a config (tuples as lists) for YAML, JSON and checkpoints."""

    def plain(v: Any) -> Any:
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(config))


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply `a.b.c=value` strings to nested plain data; values are parsed as YAML (`3`, `true`, `[1,2]`)."""
    data = _deep_copy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r}: expected key=value")
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section")
        node[leaf] = parse_yaml(raw)
    return data


def _deep_copy(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _deep_copy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_deep_copy(v) for v in data]
    return data

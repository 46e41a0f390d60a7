"""Loading, overriding, validating and saving the project's dataclass configs.

One config system for the whole project: every config is a tree of dataclasses with one documented
field per hyperparameter. YAML files and ``key=value`` command-line overrides only change fields; an
unknown key or a value of the wrong type is refused at load time with the dotted field name.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, Callable, Mapping, TypeVar

import yaml

T = TypeVar("T")

KeyedClasses = Mapping[type, Callable[[str], type]]
"""For a mapping whose values are annotated with a base class: the class of the value under each key. The layer
that knows the subclasses passes it in (``unip2.tasks.OPTION_CLASSES``: each task's own options class under
``ModelConfig.tasks``); without it such values are read as the base class."""


class ConfigError(ValueError):
    """A config value or key is invalid; the message starts with the dotted field name."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value: Any, annotation: Any, path: str, keyed: KeyedClasses) -> Any:
    """Convert a YAML/JSON value to ``annotation``, or raise ConfigError naming ``path``."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if dataclasses.is_dataclass(annotation):
        if isinstance(value, annotation):
            return value
        if not isinstance(value, dict):
            raise ConfigError(path, f"expected a mapping for {annotation.__name__}, got {value!r}")
        return from_dict(annotation, value, prefix=path, keyed_classes=keyed)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, path, keyed)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(path, f"{value!r} matches none of {annotation}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(path, f"must be one of {list(args)}, got {value!r}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(path, f"expected a list, got {value!r}")
        item_type = args[0] if args else Any
        items = [_coerce(v, item_type, f"{path}[{i}]", keyed) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(path, f"expected a mapping, got {value!r}")
        key_type, value_type = args if args else (Any, Any)
        class_of = keyed.get(value_type)  # a value class that depends on the key
        out = {}
        for key, item in value.items():
            item_type = value_type
            if class_of is not None:
                try:
                    item_type = class_of(key)
                except KeyError as err:
                    raise ConfigError(f"{path}.{key}", err.args[0]) from None
            if key_type is int and isinstance(key, str) and key.isdigit():  # JSON keys are strings
                key = int(key)
            out[_coerce(key, key_type, path, keyed)] = _coerce(item, item_type, f"{path}.{key}", keyed)
        return out
    if annotation is Any:
        return value
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(path, f"expected true/false, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(path, f"expected a number, got {value!r}")
        return float(value)
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(path, f"expected an integer, got {value!r}")
        return value
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(path, f"expected a string, got {value!r}")
        return value
    raise ConfigError(path, f"unsupported field type {annotation}")


def from_dict(cls: type[T], data: dict[str, Any], *, prefix: str = "", keyed_classes: KeyedClasses = {}) -> T:
    """Build dataclass ``cls`` from a (nested) mapping; unknown keys are refused, missing keys default."""
    hints = _field_types(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        path = f"{prefix}.{key}" if prefix else key
        if key not in names:
            raise ConfigError(path, f"unknown key (valid keys: {', '.join(sorted(names))})")
        kwargs[key] = _coerce(value, hints[key], path, keyed_classes)
    config = cls(**kwargs)
    return config


def to_dict(config: Any) -> dict[str, Any]:
    """A plain, JSON/YAML-serialisable mapping of a dataclass config (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` strings to a nested mapping; values are parsed as YAML (``1e-4``, ``[1,2]``)."""
    data = json.loads(json.dumps(data))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(item, "override must look like key=value")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw) if raw != "" else ""
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(key, f"{part} is not a section")
            node = child
        node[parts[-1]] = value
    return data


def load(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None,
         base: T | None = None, keyed_classes: KeyedClasses = {}) -> T:
    """Load ``cls`` from defaults (or ``base``), then a YAML/JSON file, then ``key=value`` overrides.

    The result is validated (``validate()`` on every dataclass that defines it).
    """
    data: dict[str, Any] = to_dict(base) if base is not None else {}
    if path is not None:
        data = merge(data, read_mapping(path))
    data = apply_overrides(data, overrides or [])
    config = from_dict(cls, data, keyed_classes=keyed_classes)
    validate(config)
    return config


EXTENDS = "extends"
"""Top-level key of a config file naming the file it starts from (relative to its own folder): the file then
states only what differs."""


def read_mapping(path: str | Path, *, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A YAML (or JSON) config file's top-level mapping, merged over the file it ``extends`` (if any); a missing
    file, a non-mapping or a circle of ``extends`` is refused."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    loaded = yaml.safe_load(path.read_text()) or {}
    if not isinstance(loaded, dict):
        raise ConfigError(str(path), "a config file must hold a mapping")
    parent = loaded.pop(EXTENDS, None)
    if parent is None:
        return loaded
    if not isinstance(parent, str):
        raise ConfigError(f"{path}: {EXTENDS}", "must name a config file")
    parent_path = (path.parent / parent).resolve()
    if parent_path in _seen or parent_path == path.resolve():
        raise ConfigError(f"{path}: {EXTENDS}", f"{parent} extends back to this file")
    return merge(read_mapping(parent_path, _seen=(*_seen, path.resolve())), loaded)


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict update: mappings merge, everything else is replaced."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def validate(config: Any, prefix: str = "") -> None:
    """Call ``validate(prefix)`` on every nested dataclass, children first."""
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if dataclasses.is_dataclass(value):
            validate(value, f"{prefix}{field.name}.")
    check = getattr(config, "validate", None)
    if callable(check):
        check(prefix)


def save(config: Any, path: str | Path) -> None:
    """Write a config as YAML (``.yaml``/``.yml``) or JSON (anything else)."""
    path = Path(path)
    data = to_dict(config)
    if path.suffix in (".yaml", ".yml"):
        path.write_text(yaml.safe_dump(data, sort_keys=False))
    else:
        path.write_text(json.dumps(data, indent=2))


def require(condition: bool, field: str, message: str) -> None:
    """Raise ConfigError(field, message) unless ``condition``: the one-liner validators use."""
    if not condition:
        raise ConfigError(field, message)

"""One source of parameters: ``params.yaml`` read into typed, frozen dataclasses.

Each module declares the dataclass for its own section beside the code that uses it (the CAE
config lives in ``rgops/models/cae.py``); this module only knows how to read YAML and build a
dataclass from a mapping strictly: unknown keys, missing required keys and values of the wrong
type are :class:`~rgops.errors.ConfigError` with the dotted key in the message.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from rgops.errors import ConfigError

T = TypeVar("T")

DEFAULT_PARAMS = Path("params.yaml")

#: Every top-level section of params.yaml and what reads it (``module:attribute``: a dataclass with
#: ``from_params`` or a function of the whole mapping), imported only when a file is checked.
SECTIONS = {
    "synth": "rgops.data.synth:check_params",
    "ingest": "rgops.data.ingest:IngestConfig",
    "validate": "rgops.validation.suites:ValidateConfig",
    "train": "rgops.training.presets:check_params",
    "evaluate": "rgops.evaluation.evaluate:EvaluateConfig",
    "promote": "rgops.promotion:PromoteConfig",
    "serve": "rgops.serving:ServeConfig",
}


def check_params(params: dict[str, Any], source: str = "params") -> None:
    """Read every section of a params mapping with its own reader, numbers included, so that a bad
    value anywhere fails before any work starts (not after training, when the section is first read).

    Raises:
        ConfigError: an unknown section, or the first bad key of a section (the dotted key named).
    """
    import importlib

    unknown = sorted(set(params) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"{source}: unknown section(s) {unknown}; params.yaml has the sections {sorted(SECTIONS)}")
    for name, target in SECTIONS.items():
        if name not in params:
            continue
        module, _, attr = target.partition(":")
        reader = getattr(importlib.import_module(module), attr)
        try:
            reader.from_params(params) if hasattr(reader, "from_params") else reader(params)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None


def load_params(path: str | Path = DEFAULT_PARAMS, check: bool = True) -> dict[str, Any]:
    """Read a params YAML file into a plain mapping; with ``check`` (the default) every section is
    read with its own reader first (:func:`check_params`), numbers included.

    Raises:
        ConfigError: the file is missing, is not a YAML mapping, or a value does not fit.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(
            f"params file {str(p)!r} not found; run from the repository root or pass --params PATH"
        )
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"params file {str(p)!r} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"params file {str(p)!r} must hold a mapping at top level, got {type(data).__name__}")
    if check:
        check_params(data, f"params file {str(p)!r}")
    return data


def _not_a_number(value: Any, where: str, expected: str) -> ConfigError:
    hint = ""
    if isinstance(value, str):
        try:
            float(value)
            hint = (" (text, not a number: YAML reads an exponent without a sign, such as 1.0e9, as a string; "
                    "write 1.0e+9 or the plain number)")
        except ValueError:
            pass
    return ConfigError(f"{where}: expected {expected}, got {value!r}{hint}")


def section(params: dict[str, Any], dotted: str) -> dict[str, Any]:
    """Return ``params['a']['b']`` for ``dotted='a.b'``, with a clear error when absent."""
    node: Any = params
    walked: list[str] = []
    for part in dotted.split("."):
        walked.append(part)
        if not isinstance(node, dict) or part not in node:
            raise ConfigError(f"params has no section {'.'.join(walked)!r}; expected it in params.yaml")
        node = node[part]
    if not isinstance(node, dict):
        raise ConfigError(f"params section {dotted!r} must be a mapping, got {type(node).__name__}")
    return node


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{where}: cannot read {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: got {value!r}, expected one of {list(args)}")
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return from_dict(tp, value, where)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{where}: expected {len(args)} items, got {len(value)}")
            return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        seq = [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(seq) if origin is tuple else seq
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        item = args[1] if len(args) == 2 else Any
        return {k: _coerce(v, item, f"{where}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _not_a_number(value, where, "an integer")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _not_a_number(value, where, "a number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def from_dict(cls: type[T], data: dict[str, Any], where: str = "") -> T:
    """Build dataclass ``cls`` from ``data``, rejecting unknown keys and wrong types.

    Args:
        cls: a (usually frozen) dataclass type.
        data: the mapping read from params.yaml.
        where: dotted location used in error messages, e.g. ``"train.cae"``.
    """
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"{where or cls.__name__}: unknown key(s) {unknown}; allowed keys are {sorted(fields)}"
        )
    kwargs = {}
    for name, f in fields.items():
        key = f"{where}.{name}" if where else name
        if name in data:
            kwargs[name] = _coerce(data[name], hints[name], key)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{key}: required key missing from params")
    return cls(**kwargs)


def to_dict(obj: Any) -> dict[str, Any]:
    """A dataclass as a plain mapping (tuples as lists), for MLflow params and checkpoints."""
    def conv(v: Any) -> Any:
        if isinstance(v, tuple):
            return [conv(x) for x in v]
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        return v
    return {k: conv(v) for k, v in dataclasses.asdict(obj).items()}

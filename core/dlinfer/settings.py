"""Build frozen attrs classes from TOML tables, with errors that name file and key.

Both ``node.toml`` and each model's ``config.toml`` go through :func:`build`, so
every configuration error reads the same way::

    node.toml: server.http_port: expected an integer from 0 to 65535, got 'abc' (str)
"""

from __future__ import annotations

import tomllib
import types
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import attrs

from .errors import ConfigError

if TYPE_CHECKING:
    from .config import NodeConfig

_MISSING = object()


class _Invalid(Exception):
    """Raised by validators and converters; :func:`build` adds file and key."""

    def __init__(self, expected: str, value: Any = _MISSING, key: str | None = None, kind: str = "invalid") -> None:
        super().__init__(expected)
        self.expected = expected
        self.value = value
        self.key = key
        self.kind = kind  # "invalid", "missing" or "unknown"


def _describe(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def in_range(lo: float | None = None, hi: float | None = None, kind: str = "an integer"):
    """attrs validator: a number within ``[lo, hi]`` (either bound optional)."""

    def check(_inst: Any, attribute: attrs.Attribute, value: Any) -> None:
        if value is None:
            return
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            if lo is not None and hi is not None:
                expected = f"{kind} from {lo} to {hi}"
            elif lo is not None:
                expected = f"{kind} >= {lo}"
            else:
                expected = f"{kind} <= {hi}"
            raise _Invalid(expected, value, attribute.name)

    return check


def one_of(*choices: str):
    """attrs validator: the value is one of ``choices``."""

    def check(_inst: Any, attribute: attrs.Attribute, value: Any) -> None:
        if value not in choices:
            raise _Invalid("one of " + ", ".join(repr(c) for c in choices), value, attribute.name)

    return check


def setting(default: Any = attrs.NOTHING, help: str = "", **kwargs: Any) -> Any:
    """An attrs field with its documentation; ``dlinfer.docgen`` builds the
    configuration reference from these, so docs and code cannot drift."""
    metadata = {**kwargs.pop("metadata", {}), "help": help}
    return attrs.field(default=default, metadata=metadata, **kwargs)


def _convert(tp: Any, value: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and convert TOML data to it."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        real = [a for a in args if a is not type(None)]
        if len(real) == 1:
            return _convert(real[0], value, key)
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, key)
            except _Invalid as exc:
                errors.append(exc.expected)
        raise _Invalid(" or ".join(errors), value)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise _Invalid("one of " + ", ".join(repr(c) for c in choices), value)
        return value
    if attrs.has(tp):
        if not isinstance(value, dict):
            raise _Invalid("a table", value)
        return _build(tp, value, key)
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, list):
            raise _Invalid(f"an array of {_type_word(args[0])}", value)
        return tuple(_convert_item(args[0], v, f"{key}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise _Invalid("a table", value)
        _, vt = typing.get_args(tp)
        return {k: _convert_item(vt, v, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise _Invalid("true or false", value)
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Invalid("an integer", value)
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _Invalid("a number", value)
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise _Invalid("a string", value)
        return value
    raise TypeError(f"settings: unsupported annotation {tp!r}")  # a bug in dlinfer, not the user


def _convert_item(tp: Any, value: Any, key: str) -> Any:
    """Convert one element of an array or table, naming it in errors."""
    try:
        return _convert(tp, value, key)
    except _Invalid as exc:
        if exc.key is None:
            exc.key = key
        raise


def _type_word(tp: Any) -> str:
    return {int: "integers", str: "strings", float: "numbers", bool: "booleans"}.get(
        tp, "tables" if attrs.has(tp) else str(tp)
    )


def _build(cls: type, data: dict[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in attrs.fields(cls) if f.metadata.get("toml", True)}
    dotted = (prefix + ".") if prefix else ""
    for key in data:
        if key not in fields:
            raise _Invalid("one of " + ", ".join(sorted(fields)), key=f"{dotted}{key}", kind="unknown")
    kwargs = {}
    for name in fields:
        if name in data:
            try:
                kwargs[name] = _convert(hints[name], data[name], f"{dotted}{name}")
            except _Invalid as exc:
                if exc.key is None:
                    exc.key = f"{dotted}{name}"
                raise
        elif fields[name].default is attrs.NOTHING:
            raise _Invalid("a value", key=f"{dotted}{name}", kind="missing")
    try:
        return cls(**kwargs)
    except _Invalid as exc:
        exc.key = f"{dotted}{exc.key}" if exc.key else prefix
        raise


def build(cls: type, data: dict[str, Any], source: str | Path, prefix: str = "") -> Any:
    """Build ``cls`` from a TOML table, raising :class:`ConfigError` that names
    ``source``, the dotted key, what was expected and what was found."""
    try:
        return _build(cls, data, prefix)
    except _Invalid as exc:
        where = f"{source}: {exc.key}: " if exc.key else f"{source}: "
        if exc.kind == "unknown":
            raise ConfigError(f"{where}unknown key; expected {exc.expected}") from None
        if exc.kind == "missing":
            raise ConfigError(f"{where}required key is missing; expected {exc.expected}") from None
        if exc.value is _MISSING:
            raise ConfigError(f"{where}expected {exc.expected}") from None
        raise ConfigError(f"{where}expected {exc.expected}, got {_describe(exc.value)}") from None


def read_toml(path: Path) -> dict[str, Any]:
    """Read a TOML file, turning I/O and syntax errors into :class:`ConfigError`."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, expected a TOML file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: invalid TOML: not UTF-8 text") from None


def read_config_file(config: NodeConfig, key: str, name: str) -> tuple[bytes, Path]:
    """A file named by setting ``key`` (relative to the config's folder): its bytes and path."""
    path = (Path(config.base_dir) / name).resolve()
    try:
        return path.read_bytes(), path
    except OSError as exc:
        raise ConfigError(f"{config.source}: {key}: cannot read {path}: {exc.strerror}") from None

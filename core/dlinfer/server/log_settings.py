"""The logging extension: read and change the node's log verbosity while it runs
(HTTP ``GET``/``POST /v2/logging``, gRPC ``LogSettings``), with Triton's setting names.

The settings are a view of the root logger's level: ``log_verbose_level`` > 0 is
DEBUG, else the lowest enabled of ``log_info``, ``log_warning``, ``log_error``.
``log_file`` cannot be changed by a request (a client must not choose files the
server writes); it comes from how the node was started.
"""

from __future__ import annotations

import logging
from typing import Any

from ..errors import InvalidInput

#: Setting name -> the type its value must have.
FIELDS: dict[str, type] = {
    "log_file": str,
    "log_info": bool,
    "log_warning": bool,
    "log_error": bool,
    "log_verbose_level": int,
    "log_format": str,
}
FORMATS = ("default", "ISO8601")
ISO8601 = "%Y-%m-%dT%H:%M:%S"

_format = "default"


def current() -> dict[str, Any]:
    """The settings as they are now."""
    level = logging.getLogger().getEffectiveLevel()
    return {
        "log_file": "",
        "log_info": level <= logging.INFO,
        "log_warning": level <= logging.WARNING,
        "log_error": level <= logging.ERROR,
        "log_verbose_level": 1 if level <= logging.DEBUG else 0,
        "log_format": _format,
    }


def update(changes: dict[str, Any]) -> dict[str, Any]:
    """Apply ``changes`` (any subset of :data:`FIELDS`) and return the settings; nothing changes
    when one of them is invalid."""
    global _format
    settings = current()
    for key, value in changes.items():
        kind = FIELDS.get(key)
        if kind is None:
            raise InvalidInput(f"unknown log setting {key!r}; known: {', '.join(FIELDS)}")
        if kind is int:
            valid = isinstance(value, int) and not isinstance(value, bool) and value >= 0
        else:
            valid = isinstance(value, kind) and (kind is bool) == isinstance(value, bool)
        if not valid:
            expected = "a non-negative integer" if kind is int else f"a {kind.__name__}"
            raise InvalidInput(f"log setting {key!r} must be {expected}")
        settings[key] = value
    if settings["log_file"]:
        raise InvalidInput("log_file cannot be set by a request; the node logs where it was started to")
    if settings["log_format"] not in FORMATS:
        raise InvalidInput(f"log_format must be one of {', '.join(FORMATS)}")
    if settings["log_verbose_level"] > 0:
        level = logging.DEBUG
    elif settings["log_info"]:
        level = logging.INFO
    elif settings["log_warning"]:
        level = logging.WARNING
    elif settings["log_error"]:
        level = logging.ERROR
    else:
        level = logging.CRITICAL + 1
    root = logging.getLogger()
    root.setLevel(level)
    _format = settings["log_format"]
    for handler in root.handlers:
        if handler.formatter is not None:
            handler.formatter.datefmt = ISO8601 if _format == "ISO8601" else None
    return current()

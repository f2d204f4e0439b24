"""The trace extension: per-request timestamps, sampled, with Triton's trace settings.

``trace_level`` ``TIMESTAMPS`` records, for one request in every ``trace_rate``
(at most ``trace_count`` of them; ``-1``: no limit), when it was admitted
(``REQUEST_START``), handed to the model's scheduler (``QUEUE_START``) and
answered (``REQUEST_END``), as one JSON object per line in the node's
``server.trace_file``, written every ``log_frequency`` traces (``0``: each one at
once). Settings change at run time for the node and per model (HTTP
``/v2/trace/setting``, ``/v2/models/{m}/trace/setting``; gRPC ``TraceSetting``);
a model setting set to ``null`` goes back to the node's. The file itself is
fixed at start: a request must not choose where the server writes.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from pathlib import Path
from typing import Any

import attrs
import orjson

from .config import NodeConfig
from .errors import InvalidInput

log = logging.getLogger(__name__)

LEVELS = ("OFF", "TIMESTAMPS")
#: Setting name -> how a value is read (Triton sends numbers as strings).
_SETTINGS = ("trace_level", "trace_rate", "trace_count", "log_frequency", "trace_file", "trace_mode")


@attrs.frozen
class TraceSettings:
    level: tuple[str, ...] = ("OFF",)
    rate: int = 1000
    count: int = -1
    log_frequency: int = 0

    def to_json(self, file: str) -> dict[str, Any]:
        return {
            "trace_level": list(self.level),
            "trace_rate": str(self.rate),
            "trace_count": str(self.count),
            "log_frequency": str(self.log_frequency),
            "trace_file": file,
            "trace_mode": "triton",
        }

    @property
    def on(self) -> bool:
        return "TIMESTAMPS" in self.level and self.count != 0


class Trace:
    """The timestamps of one sampled request."""

    __slots__ = ("id", "model", "request_id", "stamps", "version")

    def __init__(self, trace_id: int, model: str, version: int) -> None:
        self.id = trace_id
        self.model = model
        self.version = version
        self.request_id = ""
        self.stamps: list[tuple[str, int]] = [("REQUEST_START", time.monotonic_ns())]

    def mark(self, name: str) -> None:
        self.stamps.append((name, time.monotonic_ns()))

    def record(self) -> bytes:
        doc = {
            "id": self.id,
            "model_name": self.model,
            "model_version": self.version,
            "request_id": self.request_id,
            "timestamps": [{"name": n, "ns": ns} for n, ns in self.stamps],
        }
        return orjson.dumps(doc) + b"\n"


class Tracer:
    """The node's trace settings (node-wide and per model), sampling and the trace file."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.node = TraceSettings()
        self.models: dict[str, dict[str, Any]] = {}
        self._effective: dict[str, TraceSettings] = {}
        #: True when some setting traces: the per-request cost otherwise is reading this flag.
        self.active = False
        self._seen: dict[str, itertools.count[int]] = {}
        self._ids = itertools.count(1)
        self._left: dict[str, int] = {}
        self._pending: list[bytes] = []
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ settings

    def settings(self, model: str = "") -> dict[str, Any]:
        return self._settings_of(model).to_json(self.file)

    def update(self, changes: dict[str, Any], model: str = "") -> dict[str, Any]:
        """Apply ``changes`` (Triton's names; values as strings, numbers or lists) and return the
        settings now; nothing changes when one is invalid."""
        parsed: dict[str, Any] = {}
        for key, value in changes.items():
            if key not in _SETTINGS:
                raise InvalidInput(f"unknown trace setting {key!r}; known: {', '.join(_SETTINGS)}")
            if value is None:
                # A model's setting falls back to the node's; the node's to its value at start.
                parsed[key] = None if model or key not in _FIELD else getattr(TraceSettings(), _FIELD[key])
            elif key == "trace_file":
                if _one(value) != self.file:
                    raise InvalidInput("trace_file cannot be set by a request; it is server.trace_file in node.toml")
            elif key == "trace_mode":
                if _one(value) != "triton":
                    raise InvalidInput("trace_mode must be 'triton' (OpenTelemetry export is not supported)")
            elif key == "trace_level":
                levels = tuple(str(v).upper() for v in (value if isinstance(value, list) else [value]))
                if not levels or any(level not in LEVELS for level in levels):
                    raise InvalidInput(f"trace_level must be a list of {', '.join(LEVELS)}")
                parsed[key] = levels
            else:
                parsed[key] = _integer(key, value, minimum=-1 if key == "trace_count" else 0)
        if "TIMESTAMPS" in (parsed.get("trace_level") or ()) and not self.file:
            raise InvalidInput("tracing needs server.trace_file in node.toml, the file traces are written to")
        with self._lock:
            if model:
                table = self.models.setdefault(model, {})
                for key, value in parsed.items():
                    if value is None:
                        table.pop(key, None)
                    else:
                        table[key] = value
            else:
                self.node = attrs.evolve(self.node, **{_FIELD[k]: v for k, v in parsed.items() if k in _FIELD})
            self._effective.clear()
            self._left.clear()
            self.active = self.node.on or any(self._settings_of(m).on for m in self.models)
        return self.settings(model)

    def _settings_of(self, model: str) -> TraceSettings:
        table = self.models.get(model) if model else None
        if not table:
            return self.node
        return attrs.evolve(self.node, **{_FIELD[k]: v for k, v in table.items()})

    # ------------------------------------------------------------------- tracing

    def start(self, model: str, version: int) -> Trace | None:
        """A trace for this request of ``model`` when the settings sample it, else None."""
        settings = self._effective.get(model)
        if settings is None:
            settings = self._effective[model] = self._settings_of(model)
        if not settings.on:
            return None
        if next(self._seen.setdefault(model, itertools.count())) % max(settings.rate, 1):
            return None
        left = self._left.get(model, settings.count)
        if left == 0:
            return None
        self._left[model] = left - 1 if left > 0 else left
        return Trace(next(self._ids), model, version)

    def finish(self, trace: Trace) -> None:
        trace.mark("REQUEST_END")
        settings = self._effective.get(trace.model, self.node)
        with self._lock:
            self._pending.append(trace.record())
            if len(self._pending) >= max(settings.log_frequency, 1):
                self._flush()

    def close(self) -> None:
        with self._lock:
            self._flush()

    def _flush(self) -> None:
        # A trace file that cannot be written loses these traces; it must not fail the request
        # that finished them, nor keep them for a retry that would grow without bound.
        try:
            if self._pending and self.file:
                with Path(self.file).open("ab") as f:
                    f.write(b"".join(self._pending))
        except OSError as exc:
            log.error("cannot write %d traces to %s: %s", len(self._pending), self.file, exc.strerror or exc)
        finally:
            self._pending.clear()


def trace_file(config: NodeConfig) -> str:
    """``server.trace_file`` resolved against the node config's folder; empty when unset."""
    file = config.server.trace_file
    return str((Path(config.base_dir) / file).resolve()) if file else ""


_FIELD = {"trace_level": "level", "trace_rate": "rate", "trace_count": "count", "log_frequency": "log_frequency"}


def _one(value: Any) -> str:
    return str(value[0]) if isinstance(value, list) and len(value) == 1 else str(value)


def _integer(key: str, value: Any, minimum: int) -> int:
    try:
        number = int(_one(value))
    except ValueError:
        raise InvalidInput(f"trace setting {key!r} must be an integer, got {value!r}") from None
    if number < minimum:
        raise InvalidInput(f"trace setting {key!r} must be at least {minimum}")
    return number

"""Logging setup for the node: plain text or one JSON object per line."""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import orjson


class JsonFormatter(logging.Formatter):
    """One JSON object per record; a record's ``http`` extra (the access log) becomes a field."""

    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "time": self.formatTime(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        http = getattr(record, "http", None)
        if http is not None:
            doc["http"] = http
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(doc).decode()


class StderrHandler(logging.StreamHandler):
    """Writes to ``sys.stderr`` as it is when a record is emitted, not as it was at setup:
    a process that swaps it (a test runner capturing output, a daemon redirecting it) keeps
    its log instead of writing to a closed stream."""

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _: object) -> None:
        pass


def setup_logging(level: str = "info", fmt: str = "text") -> None:
    handler = StderrHandler()
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())

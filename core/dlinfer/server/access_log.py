"""The HTTP access log (``server.access_log``): one record per request on ``dlinfer.access``.

The text line reads like a web server's; with ``logging.format = "json"`` the same facts
are fields under ``http``, for log pipelines that index them.
"""

from __future__ import annotations

import logging

from aiohttp.abc import AbstractAccessLogger
from aiohttp.web import BaseRequest, StreamResponse

LOGGER = logging.getLogger("dlinfer.access")


class AccessLog(AbstractAccessLogger):
    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        http = {
            "remote": request.remote or "",
            "method": request.method,
            "path": request.path_qs,
            "status": response.status,
            "bytes_sent": response.body_length,  # status line, headers and body, as written
            "duration_ms": round(time * 1e3, 3),
            "user_agent": request.headers.get("User-Agent", ""),
        }
        self.logger.info(
            '%s "%s %s" %d %d %.2fms',
            http["remote"],
            http["method"],
            http["path"],
            http["status"],
            http["bytes_sent"],
            http["duration_ms"],
            extra={"http": http},
        )

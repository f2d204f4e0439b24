"""The HTTP listener's own log, with clients' malformed requests kept out of ERROR.

aiohttp logs every request it cannot parse (a bad Content-Length, a broken chunk,
a header longer than ``limits.max_header_bytes``) as "Error handling request" with
a traceback at ERROR. Those are the client's mistakes, answered with a 400; a
client sending them in a loop would flood the log. They become one DEBUG line
(the access log, when on, records the 400 too); anything else aiohttp logs, such
as a fault in a handler, keeps its level and traceback.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from aiohttp.http_exceptions import HttpProcessingError

LOGGER = logging.getLogger("aiohttp.server")


class ProtocolLog(logging.LoggerAdapter[logging.Logger]):
    """The logger handed to aiohttp's request handler (``AppRunner(logger=...)``)."""

    def __init__(self, logger: logging.Logger = LOGGER) -> None:
        super().__init__(logger, {})

    def exception(self, msg: Any, *args: Any, exc_info: Any = True, **kwargs: Any) -> None:
        exc = exc_info if isinstance(exc_info, BaseException) else sys.exc_info()[1]
        if isinstance(exc, HttpProcessingError) and 400 <= exc.code < 500:
            self.debug("%s: %d %s", msg % args if args else msg, exc.code, exc.message.splitlines()[0])
            return
        super().exception(msg, *args, exc_info=exc_info, **kwargs)

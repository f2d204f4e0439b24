"""Request bodies sent with ``Content-Encoding: gzip`` or ``deflate``, as Triton takes them.

aiohttp decompresses such a body as it arrives, a bounded piece at a time, so
Content-Length counts the compressed bytes and says nothing of what reaches the
codecs. The decoded body is read to its end and cut off at
``limits.max_body_bytes``: a few kilobytes that would expand to gigabytes (a
"zip bomb") are refused with 413 after at most the limit is held in memory.
"""

from __future__ import annotations

from collections.abc import Mapping

from aiohttp import StreamReader
from aiohttp.web_protocol import RequestPayloadError

from ..errors import InvalidInput, PayloadTooLarge

#: The content codings a request body may have (aiohttp decodes them).
SUPPORTED = ("gzip", "deflate")


def content_encoding(headers: Mapping[str, str]) -> str | None:
    """The body's content coding, None when it is sent as is; an unsupported one is refused."""
    coding = headers.get("Content-Encoding", "").strip().lower()
    if coding in ("", "identity"):
        return None
    if coding not in SUPPORTED:
        raise InvalidInput(
            f"Content-Encoding {coding[:40]!r} is not supported: send {' or '.join(SUPPORTED)}, or no Content-Encoding"
        )
    return coding


async def read_decoded(content: StreamReader, coding: str, limit: int) -> bytes:
    """The decompressed body, refused once it grows past ``limit`` bytes."""
    chunks = []
    got = 0
    try:
        while chunk := await content.readany():
            got += len(chunk)
            if got > limit:
                raise PayloadTooLarge(
                    f"request body is larger than the limit of {limit} bytes once decompressed ({coding})"
                )
            chunks.append(chunk)
    except RequestPayloadError:
        raise InvalidInput(f"the request body is not valid {coding} data, as its Content-Encoding says") from None
    return b"".join(chunks)

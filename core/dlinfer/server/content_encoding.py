"""Content codings: request bodies sent with ``Content-Encoding: gzip`` or ``deflate``, and
inference responses compressed when the client's ``Accept-Encoding`` asks, as Triton does.

aiohttp decompresses such a body as it arrives, a bounded piece at a time, so
Content-Length counts the compressed bytes and says nothing of what reaches the
codecs. The decoded body is read to its end and cut off at
``limits.max_body_bytes``: a few kilobytes that would expand to gigabytes (a
"zip bomb") are refused with 413 after at most the limit is held in memory.
"""

from __future__ import annotations

import asyncio
import zlib
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


#: Smaller response bodies are sent as they are: compressing them saves less than it costs.
COMPRESS_MIN_BYTES = 1024
#: Larger ones are compressed in a worker thread, off the event loop.
COMPRESS_IN_THREAD_BYTES = 256 * 1024


def accepted_coding(accept_encoding: str) -> str | None:
    """The coding to answer in for an ``Accept-Encoding`` header: gzip, else deflate, else None
    (``q=0`` refuses a coding; ``*`` stands for any not named)."""
    weights: dict[str, float] = {}
    for item in accept_encoding.lower().split(","):
        name, _, params = item.strip().partition(";")
        q = 1.0
        key, _, value = params.strip().partition("=")
        if key.strip() == "q":
            try:
                q = float(value)
            except ValueError:
                q = 0.0
        weights[name.strip()] = q
    for coding in SUPPORTED:
        if weights.get(coding, weights.get("*", 0.0)) > 0:
            return coding
    return None


def _compress(body: bytes, coding: str) -> bytes:
    # Level 1: most of the size saving of the default level at a fraction of the CPU.
    wbits = 16 + zlib.MAX_WBITS if coding == "gzip" else zlib.MAX_WBITS
    compressor = zlib.compressobj(1, zlib.DEFLATED, wbits)
    return compressor.compress(body) + compressor.flush()


async def encode_response(body: bytes, headers: dict[str, str], accept_encoding: str) -> bytes:
    """``body`` compressed in the coding ``accept_encoding`` asks for (``Content-Encoding`` and
    ``Vary`` set in ``headers``), or unchanged when it asks for none or the body is small."""
    if len(body) < COMPRESS_MIN_BYTES or not accept_encoding:
        return body
    coding = accepted_coding(accept_encoding)
    if coding is None:
        return body
    if len(body) >= COMPRESS_IN_THREAD_BYTES:
        data = await asyncio.to_thread(_compress, body, coding)
    else:
        data = _compress(body, coding)
    headers["Content-Encoding"] = coding
    headers["Vary"] = "Accept-Encoding"
    return data

"""Stateful models behind the gateway: every request of a sequence goes to one node.

A node keeps a sequence's state (``[sequence_batching]``), so the gateway routes
by the request's ``sequence_id`` parameter instead of the model's strategy: a
sequence's first request (``sequence_start``) goes to the node that rendezvous
hashing on the id picks among the nodes ready for the model, and the gateway
pins the sequence to that node until its ``sequence_end``. The id is read off the
request without decoding tensors: over HTTP from the JSON body (or the JSON part
of a binary-tensor body), over gRPC from the ``parameters`` map of the raw
``ModelInferRequest``. A sequence never moves: its requests are not retried on
another node, and when its node stops taking traffic its later requests are
refused (the client starts the sequence again), since another node would not
have its state.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import orjson
from attrs import frozen

from dlinfer.api import Unavailable


@frozen
class SequenceRef:
    """The sequence parameters of one request, as the gateway needs them."""

    id: int | str
    start: bool
    end: bool


def sequence_ref(parameters: Mapping[str, Any]) -> SequenceRef | None:
    """The request's sequence, or None when it names none (the node answers any misuse)."""
    sid = parameters.get("sequence_id")
    if isinstance(sid, bool) or not isinstance(sid, int | str) or sid in (0, ""):
        return None
    return SequenceRef(sid, parameters.get("sequence_start") is True, parameters.get("sequence_end") is True)


def http_sequence(headers: Mapping[str, str], body: bytes | None) -> SequenceRef | None:
    """The sequence of a V2 HTTP inference body; the JSON is parsed only when it mentions one."""
    if not body:
        return None
    length = headers.get("Inference-Header-Content-Length")
    try:
        head = body[: int(length)] if length else body
    except ValueError:
        return None
    if b'"sequence_id"' not in head:
        return None
    try:
        doc = orjson.loads(head)
    except orjson.JSONDecodeError:
        return None
    params = doc.get("parameters") if isinstance(doc, dict) else None
    return sequence_ref(params) if isinstance(params, dict) else None


def _score(url: str, key: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{url}|{key}".encode(), digest_size=8).digest(), "big")


class SequenceRouter:
    """Which node holds each live sequence, per model (event loop only)."""

    def __init__(self, max_sequences: int = 100_000) -> None:
        #: (model, id type, id) -> node url; least recently used first, bounded.
        self._pins: OrderedDict[tuple[str, str, int | str], str] = OrderedDict()
        self.max_sequences = max_sequences

    @staticmethod
    def _key(model: str, seq: SequenceRef) -> tuple[str, str, int | str]:
        return model, type(seq.id).__name__, seq.id

    def pick(self, model: str, seq: SequenceRef, candidates: Sequence[Any]) -> Any:
        """The node for this request: the sequence's own node once it has one; for a new
        sequence (or one not seen by this gateway), the node rendezvous hashing picks."""
        url = self._pins.get(self._key(model, seq))
        if url is not None and not seq.start:
            node = next((n for n in candidates if n.url == url), None)
            if node is None:
                raise Unavailable(
                    f"sequence {seq.id!r} of model {model!r} is held by node {url}, which is not taking traffic: "
                    "its state is lost; start the sequence again (sequence_start)"
                )
            return node
        key = f"{model}|{type(seq.id).__name__}|{seq.id}"
        return max(candidates, key=lambda n: _score(n.url, key))

    def answered(self, model: str, seq: SequenceRef, node: Any, ok: bool) -> None:
        """Pin the sequence to ``node`` after a successful request; forget it after its last."""
        key = self._key(model, seq)
        if seq.end:
            self._pins.pop(key, None)
        elif ok:
            self._pins[key] = node.url
            self._pins.move_to_end(key)
            while len(self._pins) > self.max_sequences:
                self._pins.popitem(last=False)

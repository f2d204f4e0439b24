"""The public API for describing HTTP routes in the node's OpenAPI document (``dlinfer_openapi``).

    - ``ref`` — ``{"$ref": ...}`` to a schema in ``components.schemas``.
    - ``json_content`` — an ``application/json`` content object for a schema.
    - ``json_response`` / ``error_response`` / ``not_found`` — response objects: a JSON answer,
      the core's ``{"error": ...}`` shape, a 404.
    - ``registered_routes`` — every ``(method, path)`` an application answers.
    - ``describe_v2`` — add the V2 API's operations (for a frontend that answers V2 itself).
"""

from __future__ import annotations

from ..server.openapi import error_response, json_content, json_response, not_found, ref, registered_routes
from ..server.v2_openapi import describe as describe_v2

__all__ = [
    "describe_v2",
    "error_response",
    "json_content",
    "json_response",
    "not_found",
    "ref",
    "registered_routes",
]

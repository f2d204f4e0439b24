"""OpenAPI description of the TF-Serving-compatible REST routes of :mod:`.rest`."""

from __future__ import annotations

from typing import Any

from dlinfer.api.openapi import error_response, json_content, json_response, not_found, ref

_MODEL = {"name": "model", "in": "path", "required": True, "schema": {"type": "string", "pattern": "^[^/:]+$"}}
_VERSION = {"name": "version", "in": "path", "required": True, "schema": {"type": "string", "pattern": "^[0-9]+$"}}
_VERB = {
    "name": "verb",
    "in": "path",
    "required": True,
    "description": "TF-Serving's method: the model's signature must be of that kind for classify and regress",
    "schema": {"enum": ["predict", "classify", "regress"]},
}

SCHEMAS: dict[str, Any] = {
    "TFServingRequest": {
        "type": "object",
        "description": "`instances` (row format) or `inputs` (columnar) for predict; `examples` for classify/regress.",
        "properties": {
            "signature_name": {"type": "string"},
            "instances": {"type": "array"},
            "inputs": {},
            "examples": {"type": "array", "items": {"type": "object"}},
            "context": {"type": "object"},
        },
    },
    "TFServingResponse": {
        "type": "object",
        "description": "`predictions` (row format), `outputs` (columnar) or `result` (classify/regress).",
        "properties": {"predictions": {}, "outputs": {}, "result": {"type": "array"}},
    },
    "TFServingModelStatus": {
        "type": "object",
        "required": ["model_version_status"],
        "properties": {
            "model_version_status": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["version", "state", "status"],
                    "properties": {
                        "version": {"type": "string"},
                        "state": {"type": "string"},
                        "status": {
                            "type": "object",
                            "properties": {"error_code": {"type": "string"}, "error_message": {"type": "string"}},
                        },
                    },
                },
            }
        },
    },
    "TFServingMetadata": {
        "type": "object",
        "required": ["model_spec", "metadata"],
        "properties": {"model_spec": {"type": "object"}, "metadata": {"type": "object"}},
    },
}


def describe(spec: dict[str, Any]) -> None:
    """Add the ``/v1/models/...`` routes and their schemas to ``spec``."""
    spec["components"]["schemas"].update(SCHEMAS)
    call = {
        "summary": "TF-Serving predict, classify or regress",
        "tags": ["tf-serving"],
        "requestBody": {"required": True, "content": json_content(ref("TFServingRequest"))},
        "responses": {
            "200": json_response("the result", ref("TFServingResponse")),
            "400": error_response("malformed request, or a signature of another kind"),
            "404": not_found("model or version"),
            "408": error_response("the body did not arrive in time"),
            "413": error_response("body too large"),
            "429": error_response("the model's queue is full"),
            "503": error_response("the model is not ready, or the server is draining"),
            "504": error_response("the deadline passed"),
        },
    }
    status = {
        "summary": "TF-Serving model status",
        "tags": ["tf-serving"],
        "responses": {"200": json_response("version states", ref("TFServingModelStatus")), "404": not_found("model")},
    }
    metadata = {
        "summary": "TF-Serving model metadata (signature defs)",
        "tags": ["tf-serving"],
        "responses": {
            "200": json_response("the signature defs", ref("TFServingMetadata")),
            "404": not_found("model or version"),
            "503": error_response("the model is not ready"),
        },
    }
    for prefix, params, suffix in (
        ("/v1/models/{model}", [_MODEL], ""),
        ("/v1/models/{model}/versions/{version}", [_MODEL, _VERSION], "Version"),
    ):
        paths = spec["paths"]
        paths[prefix + ":{verb}"] = {
            "post": {**call, "operationId": "tfServingCall" + suffix, "parameters": [*params, _VERB]}
        }
        paths[prefix] = {"get": {**status, "operationId": "tfServingStatus" + suffix, "parameters": params}}
        paths[prefix + "/metadata"] = {
            "get": {**metadata, "operationId": "tfServingMetadata" + suffix, "parameters": params}
        }

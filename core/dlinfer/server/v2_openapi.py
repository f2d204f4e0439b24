"""OpenAPI description of the V2 REST endpoints that :mod:`dlinfer.server.v2_http` adds.

Schemas follow the KServe V2 (Open Inference Protocol) REST definitions, with
dlinfer's own fields (the repository index ``reason``, ``/v2/-/plugins``).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from .app import CONFIG
from .openapi import error_response, json_content, json_response, not_found, ref

DATATYPES = [
    "BOOL",
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "FP16",
    "FP32",
    "FP64",
    "BYTES",
]

_PARAMETERS = {"type": "object", "description": "Free-form parameters (`timeout` in microseconds, ...)."}


def _tensor(data: dict[str, Any]) -> dict[str, Any]:
    """A V2 request input or response output: name, shape, datatype, parameters, ``data``."""
    return {
        "type": "object",
        "required": ["name", "shape", "datatype"],
        "properties": {
            "name": {"type": "string"},
            "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
            "datatype": ref("Datatype"),
            "parameters": _PARAMETERS,
            "data": data,
        },
    }


SCHEMAS: dict[str, Any] = {
    "ServerMetadata": {
        "type": "object",
        "required": ["name", "version", "extensions"],
        "properties": {
            "name": {"type": "string"},
            "version": {"type": "string"},
            "extensions": {"type": "array", "items": {"type": "string"}},
        },
    },
    "Live": {"type": "object", "required": ["live"], "properties": {"live": {"type": "boolean"}}},
    "Ready": {"type": "object", "required": ["ready"], "properties": {"ready": {"type": "boolean"}}},
    "Datatype": {"type": "string", "enum": DATATYPES},
    "TensorMetadata": {
        "type": "object",
        "required": ["name", "datatype", "shape"],
        "properties": {
            "name": {"type": "string"},
            "datatype": ref("Datatype"),
            "shape": {"type": "array", "items": {"type": "integer"}, "description": "-1 for a dynamic dimension"},
        },
    },
    "ModelMetadata": {
        "type": "object",
        "required": ["name", "platform", "inputs", "outputs"],
        "properties": {
            "name": {"type": "string"},
            "versions": {"type": "array", "items": {"type": "string"}},
            "platform": {"type": "string"},
            "inputs": {"type": "array", "items": ref("TensorMetadata")},
            "outputs": {"type": "array", "items": ref("TensorMetadata")},
        },
    },
    "ModelReady": {
        "type": "object",
        "required": ["name", "ready"],
        "properties": {
            "name": {"type": "string"},
            "ready": {"type": "boolean"},
            "error": {"type": "string", "description": "why the model is not ready"},
        },
    },
    "ModelConfigTensor": {
        "type": "object",
        "required": ["name", "data_type", "dims"],
        "properties": {
            "name": {"type": "string"},
            "data_type": {"type": "string", "description": "TYPE_FP32, TYPE_INT64, TYPE_STRING, ..."},
            "dims": {"type": "array", "items": {"type": "integer"}, "description": "without the batch dimension"},
        },
    },
    "ModelConfig": {
        "type": "object",
        "description": "The model configuration extension's fields (Triton's JSON shape) and, under "
        "`dlinfer`, the model's effective config.toml.",
        "required": ["name", "platform", "max_batch_size", "input", "output", "dlinfer", "optimized"],
        "properties": {
            "name": {"type": "string"},
            "platform": {"type": "string"},
            "backend": {"type": "string"},
            "version_policy": {"type": "object"},
            "max_batch_size": {"type": "integer", "minimum": 0},
            "input": {"type": "array", "items": ref("ModelConfigTensor")},
            "output": {"type": "array", "items": ref("ModelConfigTensor")},
            "instance_group": {"type": "array", "items": {"type": "object"}},
            "dynamic_batching": {"type": "object"},
            "dlinfer": {"type": "object", "description": "the effective config.toml as JSON"},
            "optimized": {
                "type": "array",
                "description": "each `optimize` step: applied, or refused with the reason",
                "items": {
                    "type": "object",
                    "required": ["optimizer", "applied", "reason"],
                    "properties": {
                        "optimizer": {"type": "string"},
                        "applied": {"type": "boolean"},
                        "reason": {"type": "string"},
                    },
                },
            },
        },
    },
    "StatisticDuration": {
        "type": "object",
        "required": ["count", "ns"],
        "properties": {"count": {"type": "integer", "minimum": 0}, "ns": {"type": "integer", "minimum": 0}},
    },
    "ModelStatistics": {
        "type": "object",
        "description": "The statistics extension: outcomes, queue and compute time, executions per batch size.",
        "required": ["name", "version", "inference_count", "execution_count", "inference_stats", "batch_stats"],
        "properties": {
            "name": {"type": "string"},
            "version": {"type": "string"},
            "last_inference": {"type": "integer", "description": "ms since the epoch; 0: none yet"},
            "inference_count": {"type": "integer", "minimum": 0},
            "execution_count": {"type": "integer", "minimum": 0},
            "inference_stats": {
                "type": "object",
                "additionalProperties": ref("StatisticDuration"),
                "description": "success, fail, queue, compute_input, compute_infer, compute_output",
            },
            "batch_stats": {"type": "array", "items": {"type": "object"}},
        },
    },
    "ModelStatisticsList": {
        "type": "object",
        "required": ["model_stats"],
        "properties": {"model_stats": {"type": "array", "items": ref("ModelStatistics")}},
    },
    "RequestInput": _tensor({"description": "Row-major tensor data, flat or nested; strings for BYTES."}),
    "RequestOutput": {
        "type": "object",
        "required": ["name"],
        "properties": {"name": {"type": "string"}, "parameters": _PARAMETERS},
    },
    "InferenceRequest": {
        "type": "object",
        "required": ["inputs"],
        "properties": {
            "id": {"type": "string"},
            "parameters": _PARAMETERS,
            "inputs": {"type": "array", "items": ref("RequestInput")},
            "outputs": {"type": "array", "items": ref("RequestOutput")},
        },
    },
    "ResponseOutput": _tensor({"type": "array", "description": "Row-major tensor data (absent when sent as binary)."}),
    "InferenceResponse": {
        "type": "object",
        "required": ["model_name", "outputs"],
        "properties": {
            "model_name": {"type": "string"},
            "model_version": {"type": "string"},
            "id": {"type": "string"},
            "parameters": _PARAMETERS,
            "outputs": {"type": "array", "items": ref("ResponseOutput")},
        },
    },
    "RepositoryIndexRequest": {
        "type": "object",
        "properties": {"ready": {"type": "boolean", "description": "list only ready models"}},
    },
    "RepositoryModel": {
        "type": "object",
        "required": ["name", "state", "reason"],
        "properties": {
            "name": {"type": "string"},
            "version": {"type": "string"},
            "state": {"type": "string", "enum": ["READY", "UNAVAILABLE", "LOADING", "UNLOADING"]},
            "reason": {"type": "string", "description": "why the version is not ready (empty when it is)"},
        },
    },
    "TraceSettings": {
        "type": "object",
        "properties": {
            "trace_level": {"type": "array", "items": {"type": "string", "enum": ["OFF", "TIMESTAMPS"]}},
            "trace_rate": {"type": "string", "description": "trace one request in this many"},
            "trace_count": {"type": "string", "description": "traces left to take; -1: no limit"},
            "log_frequency": {"type": "string", "description": "write every this many traces; 0: each at once"},
            "trace_file": {"type": "string", "description": "server.trace_file; cannot be set by a request"},
            "trace_mode": {"type": "string", "enum": ["triton"]},
        },
    },
    "LogSettings": {
        "type": "object",
        "properties": {
            "log_file": {"type": "string", "description": "always empty in answers; cannot be set by a request"},
            "log_info": {"type": "boolean"},
            "log_warning": {"type": "boolean"},
            "log_error": {"type": "boolean"},
            "log_verbose_level": {"type": "integer", "minimum": 0, "description": "> 0: DEBUG"},
            "log_format": {"type": "string", "enum": ["default", "ISO8601"]},
        },
    },
    "PluginInfo": {
        "type": "object",
        "required": ["name", "distribution", "version", "status", "hooks", "error", "provides"],
        "properties": {
            "name": {"type": "string"},
            "distribution": {"type": "string"},
            "version": {"type": "string"},
            "status": {
                "type": "string",
                "enum": ["loaded", "unavailable", "disabled", "failed"],
                "description": "unavailable: loaded, but cannot work on this machine (`error` says why)",
            },
            "hooks": {"type": "array", "items": {"type": "string"}},
            "error": {"type": "string"},
            "provides": {
                "type": "object",
                "additionalProperties": {"type": "array", "items": {"type": "string"}},
                "description": "what the plugin contributes, by catalogue: `model_formats` (the formats its "
                "loaders claim), `optimizers`, `converters`, `codecs`, `processors`, catalogues other plugins "
                "declare (`balancers`, `trt_plugins`), and `hookspecs`, the hooks it declares",
            },
        },
    },
}

_MODEL = {
    "name": "model",
    "in": "path",
    "required": True,
    "description": "model name: letters, digits, '_', '-', '.'",
    "schema": {"type": "string", "minLength": 1},
}
_VERSION = {
    "name": "version",
    "in": "path",
    "required": True,
    "description": "a positive integer",
    "schema": {"type": "string", "minLength": 1},
}
_MODEL_ERRORS = {
    "400": error_response("the model exists but failed to load"),
    "404": not_found("model or version"),
    "503": error_response("the model is not ready (the reason is given)"),
}


def _op(op_id: str, summary: str, tag: str, responses: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"operationId": op_id, "summary": summary, "tags": [tag], **extra, "responses": responses}


def _per_version(spec: dict[str, Any], suffix: str, method: str, op: dict[str, Any]) -> None:
    """Describe ``/v2/models/{model}<suffix>`` and its ``/versions/{version}`` twin."""
    paths = spec["paths"]
    paths.setdefault(f"/v2/models/{{model}}{suffix}", {})[method] = {**op, "parameters": [_MODEL]}
    versioned = {**op, "operationId": op["operationId"] + "Version", "parameters": [_MODEL, _VERSION]}
    paths.setdefault(f"/v2/models/{{model}}/versions/{{version}}{suffix}", {})[method] = versioned


def describe(spec: dict[str, Any], app: web.Application) -> None:
    """Add the V2 endpoints and their schemas to ``spec``."""
    spec["components"]["schemas"].update(SCHEMAS)
    config = app[CONFIG]
    # The spec tells clients (and the console) whether model control needs the token.
    security: list[dict[str, list[str]]] = [{"controlToken": []}] if config.repository.control_token else []
    paths = spec["paths"]
    paths["/v2"] = {
        "get": _op("serverMetadata", "Server metadata", "v2", {"200": json_response("metadata", ref("ServerMetadata"))})
    }
    trace_ops = {
        "get": _op(
            "getTraceSettings", "Trace settings", "v2", {"200": json_response("the settings", ref("TraceSettings"))}
        ),
        "post": _op(
            "updateTraceSettings",
            "Change trace settings (a model's: null values go back to the node's)",
            "v2",
            {
                "200": json_response("the settings now", ref("TraceSettings")),
                "400": error_response("unknown setting, bad value, trace_file, or no server.trace_file"),
                "401": error_response("the node's control token is missing or wrong"),
            },
            requestBody={"required": False, "content": json_content(ref("TraceSettings"))},
            security=security,
        ),
    }
    paths["/v2/trace/setting"] = trace_ops
    paths["/v2/models/{model}/trace/setting"] = {
        method: {
            **op,
            "operationId": op["operationId"] + "OfModel",
            "parameters": [_MODEL],
            "responses": {**op["responses"], "404": not_found("model")},
        }
        for method, op in trace_ops.items()
    }
    paths["/v2/logging"] = {
        "get": _op("getLogSettings", "Log settings", "v2", {"200": json_response("the settings", ref("LogSettings"))}),
        "post": _op(
            "updateLogSettings",
            "Change log settings",
            "v2",
            {
                "200": json_response("the settings now", ref("LogSettings")),
                "400": error_response("unknown setting, wrong type, or log_file"),
                "401": error_response("the node's control token is missing or wrong"),
            },
            requestBody={"required": False, "content": json_content(ref("LogSettings"))},
            security=security,
        ),
    }
    paths["/v2/health/live"] = {
        "get": _op("serverLive", "Liveness", "health", {"200": json_response("the process runs", ref("Live"))})
    }
    paths["/v2/health/ready"] = {
        "get": _op(
            "serverReady",
            "Readiness",
            "health",
            {
                "200": json_response("started and not draining", ref("Ready")),
                "503": json_response("starting or draining", ref("Ready")),
            },
        )
    }
    _per_version(
        spec,
        "",
        "get",
        _op(
            "modelMetadata",
            "Model metadata",
            "v2",
            {"200": json_response("metadata", ref("ModelMetadata")), **_MODEL_ERRORS},
        ),
    )
    _per_version(
        spec,
        "/ready",
        "get",
        _op(
            "modelReady",
            "Model readiness",
            "health",
            {
                "200": json_response("ready", ref("ModelReady")),
                "400": json_response("known but not ready; `error` says why", ref("ModelReady")),
                "404": not_found("model or version"),
            },
        ),
    )
    _per_version(
        spec,
        "/config",
        "get",
        _op(
            "modelConfig",
            "Effective model configuration",
            "v2",
            {"200": json_response("config", ref("ModelConfig")), **_MODEL_ERRORS},
        ),
    )
    stats = {"200": json_response("statistics", ref("ModelStatisticsList"))}
    paths["/v2/models/stats"] = {"get": _op("modelStatisticsAll", "Statistics of every loaded model", "v2", stats)}
    _per_version(spec, "/stats", "get", _op("modelStatistics", "Model statistics", "v2", {**stats, **_MODEL_ERRORS}))
    binary = {
        "schema": {
            "type": "string",
            "contentMediaType": "application/octet-stream",
            "description": "binary tensor extension: a JSON header of `Inference-Header-Content-Length` bytes, "
            "then the raw tensors",
        }
    }
    _per_version(
        spec,
        "/infer",
        "post",
        _op(
            "modelInfer",
            "Run an inference",
            "v2",
            {
                "200": {
                    "description": "the outputs",
                    "content": {**json_content(ref("InferenceResponse")), "application/octet-stream": binary},
                },
                "400": error_response("malformed request or tensors that do not match the model"),
                "404": not_found("model or version"),
                "408": error_response("the body did not arrive within `limits.body_timeout_s`"),
                "413": error_response("body larger than `limits.max_body_bytes`"),
                "429": error_response("the model's queue is full"),
                "500": error_response("the framework failed while running the model"),
                "503": error_response("the model is not ready, or the server is draining"),
                "504": error_response("the deadline passed"),
            },
            requestBody={
                "required": True,
                "content": {**json_content(ref("InferenceRequest")), "application/octet-stream": binary},
            },
        ),
    )
    paths["/v2/repository/index"] = {
        "post": _op(
            "repositoryIndex",
            "Every model with state and reason",
            "repository",
            {
                "200": json_response("the index", {"type": "array", "items": ref("RepositoryModel")}),
                "400": error_response("malformed JSON"),
                "408": error_response("the body did not arrive within `limits.body_timeout_s`"),
                "413": error_response("body too large"),
            },
            requestBody={"required": False, "content": json_content(ref("RepositoryIndexRequest"))},
        )
    }
    control_errors = {
        "400": error_response("model control is disabled, or the model failed to load"),
        "401": error_response("the control token is configured and was not given"),
        "404": not_found("model"),
    }
    for action, summary in (("load", "(Re)load a model"), ("unload", "Unload a model and free its memory")):
        paths[f"/v2/repository/models/{{model}}/{action}"] = {
            "post": _op(
                f"repository{action.title()}",
                summary,
                "repository",
                {"200": json_response("done", {"type": "object"}), **control_errors},
                parameters=[_MODEL],
                security=security,
            )
        }
    paths["/v2/-/plugins"] = {
        "get": _op(
            "plugins",
            "Plugins with distribution, version and hooks",
            "meta",
            {"200": json_response("the plugins", {"type": "array", "items": ref("PluginInfo")})},
        )
    }
    _describe_shared_memory(spec)


_REGION = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}

SHARED_MEMORY_SCHEMAS: dict[str, Any] = {
    "SharedMemoryRegion": {
        "type": "object",
        "required": ["name", "key", "offset", "byte_size"],
        "properties": {
            "name": {"type": "string"},
            "key": {"type": "string", "description": "the POSIX shared memory object, `/name`"},
            "offset": {"type": "integer", "minimum": 0},
            "byte_size": {"type": "integer", "minimum": 1},
        },
    },
    "SharedMemoryRegisterRequest": {
        "type": "object",
        "required": ["key", "byte_size"],
        "properties": {
            "key": {"type": "string", "description": "the POSIX shared memory object, `/name`"},
            "offset": {"type": "integer", "minimum": 0, "default": 0},
            "byte_size": {"type": "integer", "minimum": 1},
        },
    },
}


def _describe_shared_memory(spec: dict[str, Any]) -> None:
    """The system shared memory extension, and the CUDA one this server refuses."""
    spec["components"]["schemas"].update(SHARED_MEMORY_SCHEMAS)
    paths = spec["paths"]
    off = "the extension is off (`server.shared_memory = false`)"
    status = _op(
        "sharedMemoryStatus",
        "Registered system shared memory regions",
        "shared memory",
        {
            "200": json_response("the regions", {"type": "array", "items": ref("SharedMemoryRegion")}),
            "400": error_response(f"{off}, or the region is not registered"),
        },
    )
    paths["/v2/systemsharedmemory/status"] = {"get": status}
    paths["/v2/systemsharedmemory/region/{name}/status"] = {
        "get": {**status, "operationId": "sharedMemoryRegionStatus", "parameters": [_REGION]}
    }
    paths["/v2/systemsharedmemory/region/{name}/register"] = {
        "post": _op(
            "sharedMemoryRegister",
            "Register a region of a POSIX shared memory object",
            "shared memory",
            {
                "200": json_response("registered", {"type": "object"}),
                "400": error_response(
                    f"{off}, the name is taken, the region limit is reached, the object cannot be opened, "
                    "or offset + byte_size is beyond its end"
                ),
            },
            parameters=[_REGION],
            requestBody={"required": True, "content": json_content(ref("SharedMemoryRegisterRequest"))},
        )
    }
    unregister = _op(
        "sharedMemoryUnregister",
        "Unregister every region (an unknown name is no error)",
        "shared memory",
        {"200": json_response("unregistered", {"type": "object"}), "400": error_response(off)},
    )
    paths["/v2/systemsharedmemory/unregister"] = {"post": unregister}
    paths["/v2/systemsharedmemory/region/{name}/unregister"] = {
        "post": {
            **unregister,
            "operationId": "sharedMemoryRegionUnregister",
            "summary": "Unregister a region (an unknown name is no error)",
            "parameters": [_REGION],
        }
    }
    refused = {"400": error_response("CUDA shared memory is not supported on this server")}
    for suffix, method in (
        ("status", "get"),
        ("region/{name}/status", "get"),
        ("region/{name}/register", "post"),
        ("unregister", "post"),
        ("region/{name}/unregister", "post"),
    ):
        op_id = "cudaSharedMemory" + "".join(w.title() for w in suffix.replace("{name}", "").split("/") if w)
        op = _op(op_id, "CUDA shared memory: not supported", "shared memory", refused)
        if "{name}" in suffix:
            op["parameters"] = [_REGION]
        paths[f"/v2/cudasharedmemory/{suffix}"] = {method: op}

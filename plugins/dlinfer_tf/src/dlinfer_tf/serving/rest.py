"""TF-Serving's REST API on the node's HTTP port.

``POST /v1/models/{m}[/versions/{v}]:predict|:classify|:regress`` and
``GET /v1/models/{m}[/versions/{v}][/metadata]``. Errors are TF-Serving's
``{"error": "..."}`` with the status of the dlinfer error class (400 for bad
input, 404 for an unknown model or version, 429/503/504 for load).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
from aiohttp import web

from dlinfer.api import InferenceRequest
from dlinfer.api.frontend import STATE, ModelRepository, json_floats, read_body

from . import common
from .rest_json import decode_tensors, encode_predictions, examples_from_json, parse_body

MODEL = "/v1/models/{model:[^/:]+}"
VERSION = MODEL + "/versions/{version:[0-9]+}"
VERB = ":{verb:predict|classify|regress}"

routes = web.RouteTableDef()


def _json(doc: Any) -> web.Response:
    return web.Response(body=orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY), content_type="application/json")


def _model_args(request: web.Request) -> tuple[str, str | None]:
    return request.match_info["model"], request.match_info.get("version")


@routes.post(MODEL + VERB)
@routes.post(VERSION + VERB)
async def call(request: web.Request) -> web.Response:
    plane = request.app[STATE]
    # Draining, unknown model or full queue: refused before the body is read.
    with plane.admit(*_model_args(request)) as lease:
        doc = parse_body(await read_body(request))
        model = common.for_signature(plane.repository, lease.model, doc.get("signature_name", ""))
        verb = request.match_info["verb"]
        if verb == "predict":
            inputs, row = decode_tensors(doc, model.inputs)
            response = await lease.infer(InferenceRequest(inputs), model=model)
            return web.Response(body=encode_predictions(response.outputs, row), content_type="application/json")
        await common.import_protos()
        examples = examples_from_json(doc)
        # Scores and values through json_floats: NaN and infinities as tokens, not null.
        if verb == "classify":
            rows = await common.classify(lease, model, examples)
            scored = [[[label, json_floats(np.asarray(score))] for label, score in row] for row in rows]
            return _json({"result": scored})
        return _json({"result": json_floats(np.asarray(await common.regress(lease, model, examples)))})


@routes.get(MODEL)
@routes.get(VERSION)
async def status(request: web.Request) -> web.Response:
    statuses = common.version_status(request.app[STATE].repository, *_model_args(request))
    return _json({"model_version_status": statuses})


@routes.get(MODEL + "/metadata")
@routes.get(VERSION + "/metadata")
async def metadata(request: web.Request) -> web.Response:
    from google.protobuf import json_format

    model = request.app[STATE].model(*_model_args(request))
    await common.import_protos()
    defs = {
        name: json_format.MessageToDict(d, preserving_proto_field_name=True)
        for name, d in common.signature_defs(model).items()
    }
    return _json(
        {
            "model_spec": {"name": model.name, "signature_name": "", "version": str(model.version)},
            "metadata": {"signature_def": {"signature_def": defs}},
        }
    )


def add_routes(app: web.Application, repository: ModelRepository) -> None:
    app.add_routes(routes)

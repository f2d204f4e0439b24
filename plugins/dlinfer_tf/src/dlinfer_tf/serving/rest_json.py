"""TF-Serving's REST JSON: request tensors in row ("instances") or columnar
("inputs") form, ``{"b64": ...}`` binary strings, and the matching responses."""

from __future__ import annotations

import base64
import binascii
from typing import Any

import numpy as np
import orjson

from dlinfer.api import InferInput, InferOutput, InvalidInput, TensorSpec
from dlinfer.api.frontend import json_floats, load_object, tensor_from_json


def parse_body(body: bytes) -> dict[str, Any]:
    doc = load_object(body)
    name = doc.get("signature_name", "")
    if not isinstance(name, str):
        raise InvalidInput("'signature_name' must be a string")
    return doc


def _is_b64(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {"b64"}


def _leaf_bytes(value: Any, where: str) -> bytes:
    if isinstance(value, str):
        return value.encode()
    if _is_b64(value) and isinstance(value["b64"], str):
        try:
            return base64.b64decode(value["b64"], validate=True)
        except binascii.Error as exc:
            raise InvalidInput(f"{where}: invalid base64 in 'b64': {exc}") from None
    raise InvalidInput(f"{where}: a string tensor needs strings or {{'b64': ...}} objects, got {type(value).__name__}")


def _bytes_nested(value: Any, where: str) -> Any:
    if isinstance(value, list):
        return [_bytes_nested(v, where) for v in value]
    return _leaf_bytes(value, where)


def to_array(spec: TensorSpec, data: Any) -> np.ndarray:
    """The value of one input as a numpy array of the signature's dtype (strictly checked)."""
    where = f"input {spec.name!r}"
    if spec.datatype == "BYTES":
        nested = _bytes_nested(data, where)
        try:
            arr = np.array(nested, dtype=object)
        except ValueError:
            arr = None
        if arr is None or not all(isinstance(v, bytes) for v in arr.reshape(-1)):
            raise InvalidInput(f"{where}: the values do not form a regular (rectangular) array")
        return arr
    try:
        probe = np.asarray(data)
    except ValueError:
        raise InvalidInput(f"{where}: the values do not form a regular (rectangular) array") from None
    if probe.dtype.kind not in "biuf":
        got = "strings" if probe.dtype.kind == "U" else "values that are not all numbers"
        raise InvalidInput(f"{where}: a {spec.datatype} tensor needs numbers, got {got}")
    # The parsed array goes in (not the lists): the strict dtype checks run without a second pass.
    return tensor_from_json(spec.name, spec.datatype, list(probe.shape), probe)


def _columns(value: Any, specs: list[TensorSpec], key: str) -> dict[str, Any]:
    if isinstance(value, dict) and not _is_b64(value):
        return value
    if len(specs) == 1:
        return {specs[0].name: value}
    names = ", ".join(s.name for s in specs)
    raise InvalidInput(f"the signature has inputs {names}: '{key}' must name each of them")


def decode_tensors(doc: dict[str, Any], specs: list[TensorSpec]) -> tuple[list[InferInput], bool]:
    """The request's input tensors, and whether it used the row ("instances") form."""
    if ("instances" in doc) == ("inputs" in doc):
        raise InvalidInput("the request must have exactly one of 'instances' (row format) or 'inputs' (columnar)")
    row = "instances" in doc
    if row:
        instances = doc["instances"]
        if not isinstance(instances, list) or not instances:
            raise InvalidInput("'instances' must be a non-empty array")
        if all(isinstance(r, dict) and not _is_b64(r) for r in instances):
            keys = list(instances[0])
            for i, r in enumerate(instances):
                if set(r) != set(keys):
                    raise InvalidInput(f"instances[{i}] names inputs {sorted(r)}, instances[0] names {sorted(keys)}")
            columns = {k: [r[k] for r in instances] for k in keys}
        else:
            columns = _columns(instances, specs, "instances")
    else:
        columns = _columns(doc["inputs"], specs, "inputs")
    by_name = {s.name: s for s in specs}
    tensors = []
    for name, value in columns.items():
        spec = by_name.get(name)
        if spec is None:
            raise InvalidInput(f"the signature has no input {name!r}; its inputs are {', '.join(sorted(by_name))}")
        arr = to_array(spec, value)
        tensors.append(InferInput(name, spec.datatype, arr.shape, arr))
    return tensors, row


def _json_value(name: str, arr: np.ndarray) -> Any:
    if arr.dtype.kind == "f":  # NaN and infinities as TF-Serving writes them, not null
        if arr.dtype == np.float16:
            arr = arr.astype(np.float32)
        return json_floats(np.ascontiguousarray(arr) if arr.ndim else arr)
    if arr.dtype.kind in "biu":
        return np.ascontiguousarray(arr) if arr.ndim else arr.item()
    # String outputs: text, or base64 when the output's name ends in "_bytes" (TF-Serving's rule).
    binary = name.endswith("_bytes")

    def convert(v: Any) -> Any:
        if not isinstance(v, bytes):
            v = str(v).encode()
        return {"b64": base64.b64encode(v).decode()} if binary else v.decode("utf-8", "replace")

    out = np.frompyfunc(convert, 1, 1)(arr)
    return out.tolist() if isinstance(out, np.ndarray) else out


def encode_predictions(outputs: list[InferOutput], row: bool) -> bytes:
    """``{"predictions": ...}`` for row requests, ``{"outputs": ...}`` for columnar ones."""
    if not row:
        if len(outputs) == 1:
            doc: dict[str, Any] = {"outputs": _json_value(outputs[0].name, outputs[0].data)}
        else:
            doc = {"outputs": {o.name: _json_value(o.name, o.data) for o in outputs}}
    elif len(outputs) == 1:
        doc = {"predictions": _json_value(outputs[0].name, outputs[0].data)}
    else:
        sizes = {o.data.shape[0] if o.data.ndim else None for o in outputs}
        if len(sizes) != 1 or None in sizes:
            raise InvalidInput(
                "the outputs do not share a batch dimension, so they cannot be returned as rows; "
                "use the columnar 'inputs' format"
            )
        n = sizes.pop()
        assert n is not None  # refused above
        doc = {"predictions": [{o.name: _json_value(o.name, o.data[i, ...]) for o in outputs} for i in range(n)]}
    return orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)


def example_from_json(features: Any, context: dict[str, Any], where: str) -> bytes:
    """A serialized ``tf.train.Example`` from a JSON object of features.

    As in TF-Serving: integers become int64_list, other numbers float_list,
    strings and ``{"b64": ...}`` bytes_list; ``context`` features are added to
    every example.
    """
    from tensorflow.core.example import example_pb2

    if not isinstance(features, dict):
        raise InvalidInput(f"{where}: an example must be an object of features")
    example = example_pb2.Example()
    for key, value in {**context, **features}.items():
        values = value if isinstance(value, list) else [value]
        feature = example.features.feature[key]
        if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            feature.int64_list.value.extend(values)
        elif all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
            feature.float_list.value.extend(values)
        elif all(isinstance(v, str) or _is_b64(v) for v in values):
            feature.bytes_list.value.extend(_leaf_bytes(v, f"{where}: feature {key!r}") for v in values)
        else:
            raise InvalidInput(f"{where}: feature {key!r} must hold only numbers or only strings")
    return example.SerializeToString()


def examples_from_json(doc: dict[str, Any]) -> list[bytes]:
    """The serialized examples of a ``:classify``/``:regress`` request body."""
    examples = doc.get("examples")
    if not isinstance(examples, list) or not examples:
        raise InvalidInput("'examples' must be a non-empty array of objects")
    context = doc.get("context", {})
    if not isinstance(context, dict):
        raise InvalidInput("'context' must be an object of features")
    return [example_from_json(e, context, f"examples[{i}]") for i, e in enumerate(examples)]

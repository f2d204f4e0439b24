"""A Triton model repository (``config.pbtxt``, Triton's file names) served unchanged, seen through
tritonclient over HTTP and gRPC; and the classification extension (top-K classes with labels)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from dlinfer.errors import ModelLoadError
from dlinfer.server.app import REPOSITORY
from dlinfer.testing import RunningNode, node_config, onnx_identity_model, onnx_linear_model, wait_for, write_model
from dlinfer.triton.config import read_triton_config

LABELS = ["cat", "dog", "bird"]

LINEAR = """
name: "linear"
platform: "onnxruntime_onnx"
max_batch_size: 8
version_policy: { specific: { versions: [ 1, 3 ] } }
input [ { name: "x", data_type: TYPE_FP32, dims: [ 4 ] } ]
output [
  { name: "probs", data_type: TYPE_FP32, dims: [ 3 ], label_filename: "labels.txt" },
  { name: "logits", data_type: TYPE_FP32, dims: [ 3 ] }
]
instance_group [ { name: "cpus", count: 2, kind: KIND_CPU } ]
dynamic_batching {
  preferred_batch_size: [ 2, 4 ]
  max_queue_delay_microseconds: 100
  default_queue_policy { max_queue_size: 7, default_timeout_microseconds: 2500000 }
}
parameters { key: "graph_optimization_level" value: { string_value: "basic" } }
model_warmup [ {
  name: "zeros", batch_size: 1, count: 2
  inputs { key: "x" value: { data_type: TYPE_FP32, dims: [ 4 ], zero_data: true } }
} ]
"""

# Triton's image-classifier example shape: no batching, the model's own [1, ...] shapes hidden by reshape.
RESHAPED = """
platform: "onnxruntime_onnx"
max_batch_size: 0
input [ {
  name: "x", data_type: TYPE_FP32, format: FORMAT_NCHW, dims: [ 3, 2, 2 ], reshape: { shape: [ 1, 3, 2, 2 ] }
} ]
output [ { name: "y", data_type: TYPE_FP32, dims: [ 12 ], reshape: { shape: [ 1, 3, 2, 2 ] } } ]
"""

# No platform: the backend names it; the model file is not Triton's default name.
RENAMED = """
backend: "onnxruntime"
max_batch_size: 4
default_model_filename: "net.onnx"
input [ { name: "x", data_type: TYPE_FP32, dims: [ 4 ] } ]
output [ { name: "probs", data_type: TYPE_FP32, dims: [ 3 ] } ]
version_policy: { all: {} }
"""

# A Triton ensemble over the model above, its version folder empty.
ENSEMBLE = """
platform: "ensemble"
max_batch_size: 8
input [ { name: "IN", data_type: TYPE_FP32, dims: [ 4 ] } ]
output [ { name: "OUT", data_type: TYPE_FP32, dims: [ 3 ] } ]
ensemble_scheduling { step [ {
  model_name: "linear", model_version: -1,
  input_map { key: "x" value: "IN" }, output_map { key: "probs" value: "OUT" }
} ] }
"""

#: Models whose config.pbtxt dlinfer must refuse, and what the reason must say.
REFUSED = {
    "optimized": (
        'platform: "onnxruntime_onnx"\noptimization { execution_accelerators { '
        'gpu_execution_accelerator: [ { name: "tensorrt" } ] } }',
        "optimization: dlinfer optimises with its own pipeline",
    ),
    "optional_input": (
        'platform: "onnxruntime_onnx"\nmax_batch_size: 8\ninput [ { name: "x", data_type: TYPE_FP32, dims: [4], '
        "optional: true } ]",
        "input[0].optional: optional inputs are not supported",
    ),
    "graphdef": ('platform: "tensorflow_graphdef"', "dlinfer has no loader for frozen TensorFlow GraphDefs"),
    "openvino": ('backend: "openvino"', "no dlinfer loader serves Triton's 'openvino' backend"),
    "decoupled": (
        'platform: "onnxruntime_onnx"\nmodel_transaction_policy { decoupled: true }',
        "model_transaction_policy.decoupled: decoupled models",
    ),
    "two_groups": (
        'platform: "onnxruntime_onnx"\ninstance_group [ { kind: KIND_CPU }, { kind: KIND_GPU } ]',
        "instance_group: dlinfer runs all instances of a model on one device",
    ),
    "queue_delay": (
        'platform: "onnxruntime_onnx"\nmax_batch_size: 8\n'
        "dynamic_batching { default_queue_policy { timeout_action: DELAY } }",
        "dynamic_batching.default_queue_policy.timeout_action: DELAY is not supported",
    ),
    "warmup_file": (
        'platform: "onnxruntime_onnx"\nmax_batch_size: 8\nmodel_warmup [ { name: "w", batch_size: 1, '
        'inputs { key: "x" value: { data_type: TYPE_FP32, dims: [4], input_data_file: "raw" } } } ]',
        "model_warmup[0].inputs['x'].input_data_file: warm-up data files are not read",
    ),
    "python_file": ('backend: "python"\ndefault_model_filename: "main.py"', "dlinfer's python loader reads model.py"),
    "cache": ('platform: "onnxruntime_onnx"\nresponse_cache { enable: true }', "response_cache.enable"),
    "wrong_name": ('name: "other"\nplatform: "onnxruntime_onnx"', "name: 'other' does not match the model's folder"),
    "malformed": ('platform: "onnxruntime_onnx"\nmax_batch_size: [', "not a valid Triton model configuration"),
    "unknown_field": ('platform: "onnxruntime_onnx"\nbatch_size: 4', "not a valid Triton model configuration"),
    "reshape_size": (
        'platform: "onnxruntime_onnx"\nmax_batch_size: 8\n'
        'input [ { name: "x", data_type: TYPE_FP32, dims: [ 4 ], reshape: { shape: [ 3 ] } } ]',
        "input 'x': shape [4] and reshape [3] hold different numbers of elements",
    ),
    "missing_labels": (
        'platform: "onnxruntime_onnx"\nmax_batch_size: 8\n'
        'output [ { name: "probs", data_type: TYPE_FP32, dims: [ 3 ], label_filename: "nowhere.txt" } ]',
        "labels file 'nowhere.txt' of output 'probs'",
    ),
}


def write_triton_model(
    root: Path, name: str, pbtxt: str, files: dict[str, bytes], versions: tuple[int, ...] = (1,)
) -> None:
    """A model folder as Triton has it: config.pbtxt beside numbered version folders."""
    for v in versions:
        write_model(root, name, v, files)
    (root / name / "config.pbtxt").write_text(pbtxt)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningNode]:
    root = tmp_path_factory.mktemp("triton") / "models"
    write_triton_model(root, "linear", LINEAR, {"model.onnx": onnx_linear_model(seed=4)}, versions=(1, 2, 3))
    (root / "linear" / "labels.txt").write_text("\n".join(LABELS) + "\n")
    write_triton_model(root, "reshaped", RESHAPED, {"model.onnx": onnx_identity_model("FP32", [1, 3, 2, 2])})
    write_triton_model(root, "renamed", RENAMED, {"net.onnx": onnx_linear_model(seed=5)})
    write_triton_model(root, "pipeline", ENSEMBLE, {})
    write_triton_model(root, "minimal", 'platform: "onnxruntime_onnx"\n', {"model.onnx": onnx_linear_model(seed=5)})
    for name, (pbtxt, _why) in REFUSED.items():
        write_triton_model(root, name, pbtxt, {"model.onnx": onnx_linear_model()})
    write_triton_model(root, "both", 'platform: "onnxruntime_onnx"', {"model.onnx": onnx_linear_model()})
    (root / "both" / "config.toml").write_text("max_batch_size = 8\n")
    config = node_config(root)
    with RunningNode(config) as n:
        yield n


@pytest.fixture
def http(node: RunningNode) -> httpclient.InferenceServerClient:
    return httpclient.InferenceServerClient(node.url.removeprefix("http://"))


@pytest.fixture
def grpc(node: RunningNode) -> Iterator[grpcclient.InferenceServerClient]:
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{node.config.server.grpc_port}")
    yield client
    client.close()


def _expected(seed: int, x: np.ndarray) -> dict[str, np.ndarray]:
    sess = ort.InferenceSession(onnx_linear_model(seed=seed), providers=["CPUExecutionProvider"])
    return dict(zip(["logits", "probs"], sess.run(None, {"x": x}), strict=True))


def _top(scores: np.ndarray, k: int, labels: list[str] | None) -> list[list[bytes]]:
    """Triton's strings for the top ``k`` of each row, computed independently of the server."""
    rows = []
    for row in scores:
        best = sorted(range(len(row)), key=lambda i: -row[i])[:k]
        rows.append([(f"{row[i]:f}:{i}" + (f":{labels[i]}" if labels else "")).encode() for i in best])
    return rows


def _as_bytes(arr: np.ndarray) -> list[list[bytes]]:
    """tritonclient gives JSON strings as str and binary ones as bytes."""
    return [[v if isinstance(v, bytes) else v.encode() for v in row] for row in arr.tolist()]


def test_served_unchanged(http: httpclient.InferenceServerClient) -> None:
    assert http.is_model_ready("linear", "1") and http.is_model_ready("linear", "3")
    assert not http.is_model_ready("linear", "2")  # version_policy specific [1, 3]
    meta = http.get_model_metadata("linear")
    assert meta["platform"] == "onnxruntime_onnx" and meta["inputs"] == [
        {"name": "x", "datatype": "FP32", "shape": [-1, 4]}
    ]
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    inp = httpclient.InferInput("x", [3, 4], "FP32")
    inp.set_data_from_numpy(x)
    result = http.infer("linear", [inp])
    np.testing.assert_allclose(result.as_numpy("probs"), _expected(4, x)["probs"], rtol=1e-5)
    assert http.is_model_ready("renamed")  # backend only, default_model_filename "net.onnx"
    result = http.infer("renamed", [inp])
    np.testing.assert_allclose(result.as_numpy("probs"), _expected(5, x)["probs"], rtol=1e-5)


def test_ensemble(http: httpclient.InferenceServerClient) -> None:
    x = np.random.default_rng(3).standard_normal((2, 4)).astype(np.float32)
    inp = httpclient.InferInput("IN", [2, 4], "FP32")
    inp.set_data_from_numpy(x)
    result = http.infer("pipeline", [inp])
    np.testing.assert_allclose(result.as_numpy("OUT"), _expected(4, x)["probs"], rtol=1e-5)


def test_mapped_settings(node: RunningNode) -> None:
    """What each mapped field turned into, on the served model itself."""
    model = node.app[REPOSITORY].get("linear")
    cfg = model.config
    assert cfg.format == "onnx" and cfg.max_batch_size == 8 and model.max_batch_size == 8
    assert cfg.instance_count == 2 and cfg.device == "cpu"
    assert cfg.dynamic_batching is not None and cfg.dynamic_batching.preferred_batch_size == (2, 4)
    assert cfg.dynamic_batching.max_queue_delay_us == 100
    assert cfg.max_queue_size == 7 and cfg.timeout_ms == 2500
    assert cfg.parameters == {"graph_optimization_level": "basic"} and cfg.warmup == 2
    assert cfg.version_policy.specific == (1, 3)
    assert cfg.output[0].labels_file == "labels.txt" and model.labels == {"probs": LABELS}
    assert type(model.scheduler).__name__ == "DynamicBatcher"
    # Without max_batch_size the model's own dynamic first dimension decides, as Triton completes it.
    minimal = node.app[REPOSITORY].get("minimal")
    assert minimal.config.max_batch_size is None and minimal.max_batch_size == node.config.limits.max_batch_size
    renamed = node.app[REPOSITORY].get("renamed")
    assert renamed.config.parameters == {"filename": "net.onnx"} and renamed.config.version_policy.all


def test_config_endpoint_http(http: httpclient.InferenceServerClient) -> None:
    cfg = http.get_model_config("linear")
    assert cfg["max_batch_size"] == 8 and cfg["version_policy"] == {"specific": {"versions": [1, 3]}}
    assert cfg["input"] == [{"name": "x", "data_type": "TYPE_FP32", "dims": [4]}]
    outputs = {o["name"]: o for o in cfg["output"]}
    assert outputs["probs"] == {"name": "probs", "data_type": "TYPE_FP32", "dims": [3], "label_filename": "labels.txt"}
    assert cfg["instance_group"] == [{"name": "linear", "kind": "KIND_CPU", "count": 2}]
    batching = cfg["dynamic_batching"]
    assert batching["preferred_batch_size"] == [2, 4] and batching["max_queue_delay_microseconds"] == 100
    assert batching["default_queue_policy"] == {
        "max_queue_size": 7,
        "default_timeout_microseconds": 2500000,
        "allow_timeout_override": True,
    }
    assert cfg["parameters"] == {"graph_optimization_level": {"string_value": "basic"}}
    reshaped = http.get_model_config("reshaped")
    assert reshaped["input"] == [
        {
            "name": "x",
            "data_type": "TYPE_FP32",
            "dims": [3, 2, 2],
            "reshape": {"shape": [1, 3, 2, 2]},
            "format": "FORMAT_NCHW",
        }
    ]
    assert reshaped["output"] == [
        {"name": "y", "data_type": "TYPE_FP32", "dims": [12], "reshape": {"shape": [1, 3, 2, 2]}}
    ]


def test_config_endpoint_grpc(grpc: grpcclient.InferenceServerClient) -> None:
    cfg = grpc.get_model_config("linear", as_json=True)["config"]
    assert {o["name"]: o.get("label_filename") for o in cfg["output"]} == {"probs": "labels.txt", "logits": None}
    assert cfg["instance_group"][0]["count"] == 2
    assert cfg["dynamic_batching"]["default_queue_policy"]["max_queue_size"] == 7
    assert cfg["parameters"] == {"graph_optimization_level": {"string_value": "basic"}}
    reshaped = grpc.get_model_config("reshaped", as_json=True)["config"]
    assert reshaped["input"][0]["reshape"] == {"shape": ["1", "3", "2", "2"]}  # int64 as JSON strings
    assert reshaped["input"][0]["format"] == "FORMAT_NCHW"


def test_reshape(http: httpclient.InferenceServerClient, grpc: grpcclient.InferenceServerClient) -> None:
    """Clients send and receive the config's dims; the model sees its own [1, 3, 2, 2]."""
    meta = http.get_model_metadata("reshaped")
    assert meta["inputs"][0]["shape"] == [3, 2, 2] and meta["outputs"][0]["shape"] == [12]
    x = np.arange(12, dtype=np.float32).reshape(3, 2, 2)
    inp = httpclient.InferInput("x", [3, 2, 2], "FP32")
    inp.set_data_from_numpy(x)
    np.testing.assert_array_equal(http.infer("reshaped", [inp]).as_numpy("y"), x.ravel())
    ginp = grpcclient.InferInput("x", [3, 2, 2], "FP32")
    ginp.set_data_from_numpy(x)
    np.testing.assert_array_equal(grpc.infer("reshaped", [ginp]).as_numpy("y"), x.ravel())


def test_refused_configs_in_index(http: httpclient.InferenceServerClient) -> None:
    index = {m["name"]: m for m in http.get_model_repository_index()}
    for name, (_pbtxt, why) in REFUSED.items():
        entry = index[name]
        assert entry["state"] == "UNAVAILABLE", name
        assert why in entry["reason"], (name, entry["reason"])
        assert f"{name}/config.pbtxt" in entry["reason"] or name == "reshape_size" or name == "missing_labels"
        assert "/tmp" not in entry["reason"]  # the server's paths stay on the server
    assert "has both config.toml and config.pbtxt" in index["both"]["reason"]
    with pytest.raises(InferenceServerException, match="not ready"):
        http.get_model_metadata("optimized")


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_classification_http(http: httpclient.InferenceServerClient, binary: bool) -> None:
    x = np.random.default_rng(1).standard_normal((2, 4)).astype(np.float32)
    inp = httpclient.InferInput("x", [2, 4], "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    outputs = [
        httpclient.InferRequestedOutput("probs", binary_data=binary, class_count=2),
        httpclient.InferRequestedOutput("logits", binary_data=binary, class_count=5),  # more than there are
    ]
    result = http.infer("linear", [inp], outputs=outputs)
    expected = _expected(4, x)
    probs = result.as_numpy("probs")
    assert probs.shape == (2, 2) and result.get_output("probs")["datatype"] == "BYTES"
    assert _as_bytes(probs) == _top(expected["probs"], 2, LABELS)
    assert _as_bytes(result.as_numpy("logits")) == _top(expected["logits"], 3, None)  # no labels file


def test_classification_grpc(grpc: grpcclient.InferenceServerClient) -> None:
    x = np.random.default_rng(2).standard_normal((3, 4)).astype(np.float32)
    inp = grpcclient.InferInput("x", [3, 4], "FP32")
    inp.set_data_from_numpy(x)
    result = grpc.infer("linear", [inp], outputs=[grpcclient.InferRequestedOutput("probs", class_count=1)])
    assert result.as_numpy("probs").tolist() == _top(_expected(4, x)["probs"], 1, LABELS)
    # Without batching the whole output is one row: a [K] tensor.
    y = np.array([[[3, 1], [2, 9]], [[0, 5], [4, 8]], [[7, 6], [11, 10]]], dtype=np.float32)
    ginp = grpcclient.InferInput("x", [3, 2, 2], "FP32")
    ginp.set_data_from_numpy(y)
    result = grpc.infer("reshaped", [ginp], outputs=[grpcclient.InferRequestedOutput("y", class_count=3)])
    assert result.as_numpy("y").tolist() == [b"11.000000:10", b"10.000000:11", b"9.000000:3"]


def test_classification_bad_count(http: httpclient.InferenceServerClient) -> None:
    inp = httpclient.InferInput("x", [1, 4], "FP32")
    inp.set_data_from_numpy(np.ones((1, 4), np.float32))
    out = httpclient.InferRequestedOutput("probs", class_count=1)
    out._parameters["classification"] = 0
    with pytest.raises(InferenceServerException, match="'classification' must be a positive integer"):
        http.infer("linear", [inp], outputs=[out])


def test_labels_file_in_config_toml(tmp_path: Path) -> None:
    """config.toml users get labels too: ``labels_file`` on an output."""
    root = tmp_path / "models"
    config = {
        "max_batch_size": 4,
        "output": [{"name": "probs", "datatype": "FP32", "shape": [3], "labels_file": "classes.txt"}],
    }
    write_model(root, "clf", 1, {"model.onnx": onnx_linear_model(seed=6)}, config=config)
    (root / "clf" / "classes.txt").write_text("a\nb\nc\n")
    with RunningNode(node_config(root)) as n:
        client = httpclient.InferenceServerClient(n.url.removeprefix("http://"))
        x = np.ones((1, 4), np.float32)
        inp = httpclient.InferInput("x", [1, 4], "FP32")
        inp.set_data_from_numpy(x)
        result = client.infer("clf", [inp], outputs=[httpclient.InferRequestedOutput("probs", class_count=3)])
        assert result.as_numpy("probs").tolist() == _top(_expected(6, x)["probs"], 3, ["a", "b", "c"])


def test_sequence_and_ensemble_mapping(tmp_path: Path) -> None:
    """Triton's sequence_batching and ensemble_scheduling become dlinfer's [sequence_batching] and [ensemble]."""
    seq = tmp_path / "seq.pbtxt"
    seq.write_text(
        """
        backend: "onnxruntime"
        max_batch_size: 2
        sequence_batching {
          max_sequence_idle_microseconds: 5000000
          oldest { max_candidate_sequences: 4 }
          control_input [
            { name: "START", control [ { kind: CONTROL_SEQUENCE_START, int32_false_true: [ 0, 1 ] } ] },
            { name: "CORRID", control [ { kind: CONTROL_SEQUENCE_CORRID, data_type: TYPE_UINT64 } ] }
          ]
        }
        """
    )
    cfg = read_triton_config(seq, "seq")
    s = cfg.sequence_batching
    assert s is not None and s.strategy == "oldest" and s.max_candidate_sequences == 4
    assert s.max_sequence_idle_microseconds == 5000000
    assert [(c.name, c.kind, c.datatype) for c in s.control_input] == [
        ("START", "CONTROL_SEQUENCE_START", "INT32"),
        ("CORRID", "CONTROL_SEQUENCE_CORRID", "UINT64"),
    ]
    ens = tmp_path / "ens.pbtxt"
    ens.write_text(
        """
        platform: "ensemble"
        max_batch_size: 8
        input [ { name: "IN", data_type: TYPE_FP32, dims: [ 4 ] } ]
        output [ { name: "OUT", data_type: TYPE_FP32, dims: [ 3 ] } ]
        ensemble_scheduling { step [ {
          model_name: "linear", model_version: -1,
          input_map { key: "x" value: "IN" }, output_map { key: "probs" value: "OUT" }
        } ] }
        """
    )
    cfg = read_triton_config(ens, "ens")
    assert cfg.format == "ensemble" and cfg.ensemble is not None
    step = cfg.ensemble.step[0]
    assert (step.model, step.version, step.input_map, step.output_map) == ("linear", -1, {"x": "IN"}, {"probs": "OUT"})
    state = tmp_path / "state.pbtxt"
    state.write_text('backend: "onnxruntime"\nsequence_batching { state [ { input_name: "a", output_name: "b" } ] }')
    with pytest.raises(ModelLoadError, match=r"sequence_batching\.state: implicit sequence state is not supported"):
        read_triton_config(state, "state")


def test_poll_mode_reloads_on_config_pbtxt_change(tmp_path: Path) -> None:
    """Poll mode watches config.pbtxt as it watches config.toml."""
    root = tmp_path / "models"
    write_triton_model(
        root, "linear", 'platform: "onnxruntime_onnx"\nmax_batch_size: 2\n', {"model.onnx": onnx_linear_model()}
    )
    config = node_config(root, repository={"control_mode": "poll", "poll_interval_s": 0.1})
    with RunningNode(config) as n:
        client = httpclient.InferenceServerClient(n.url.removeprefix("http://"))
        assert client.get_model_config("linear")["max_batch_size"] == 2
        (root / "linear" / "config.pbtxt").write_text('platform: "onnxruntime_onnx"\nmax_batch_size: 5\n')
        wait_for(lambda: client.get_model_config("linear")["max_batch_size"] == 5, "the reload", timeout_s=20)

"""A TorchScript model as a Triton repository has it (config.pbtxt, 1/model.pt) serves unchanged."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import tritonclient.http as httpclient

from dlinfer.api.testing import RunningNode, node_config, write_model
from dlinfer_torch import testing as tt

CONFIG = """
name: "cnn"
platform: "pytorch_libtorch"
max_batch_size: 8
input [ { name: "image", data_type: TYPE_FP32, dims: [ 3, 16, 16 ] } ]
output [ { name: "output", data_type: TYPE_FP32, dims: [ 5 ] } ]
instance_group [ { count: 1, kind: KIND_CPU } ]
"""


def test_torchscript_from_a_triton_repository(tmp_path: Path) -> None:
    cnn = tt.make(tt.TinyCNN, seed=1)
    root = tmp_path / "models"
    write_model(root, "cnn", files={"model.pt": tt.save_torchscript(cnn, tmp_path / "cnn.pt").read_bytes()})
    (root / "cnn" / "config.pbtxt").write_text(CONFIG)
    with RunningNode(node_config(root)) as node:
        client = httpclient.InferenceServerClient(node.url.removeprefix("http://"))
        meta = client.get_model_metadata("cnn")
        assert meta["platform"] == "pytorch_libtorch"
        assert client.get_model_config("cnn")["output"] == [{"name": "output", "data_type": "TYPE_FP32", "dims": [5]}]
        x = np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32)
        inp = httpclient.InferInput("image", [2, 3, 16, 16], "FP32")
        inp.set_data_from_numpy(x)
        got = client.infer("cnn", [inp]).as_numpy("output")
    with torch.inference_mode():
        expected = cnn(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)

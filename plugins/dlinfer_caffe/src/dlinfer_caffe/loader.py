"""Serve Caffe models: ``deploy.prototxt`` + one ``*.caffemodel`` in a version folder.

The model is converted to ONNX in memory when it loads and runs in dlinfer-onnx's
ONNX Runtime runner; nothing is written into the model repository. Model config
``[parameters]`` are those of dlinfer-onnx (``graph_optimization_level``,
``providers``, ``allow_spinning``) plus:

- ``opset``: the ONNX opset to convert to (13 to 21, default 13).
- ``transform``: Caffe's input preparation (mean, scale, crop, BGR order, image layout),
  run inside the graph; see :mod:`dlinfer_caffe.transform`.
"""

from __future__ import annotations

import logging
from pathlib import Path

from dlinfer.api import Loader, ModelConfig, ModelLoadError, Runner
from dlinfer_onnx.loader import OnnxLoader, OnnxRunner

from .reader import PROTOTXT, find_model_files

log = logging.getLogger("dlinfer.caffe")


class CaffeRunner(OnnxRunner):
    """A Caffe model converted to ONNX, in an ONNX Runtime session."""

    platform = "caffe"


class CaffeLoader(Loader):
    """Caffe models, converted to ONNX on load."""

    name = "caffe"
    formats = ("caffe",)

    @classmethod
    def detect(cls, path: Path) -> str | None:
        return "caffe" if (path / PROTOTXT).is_file() and any(path.glob("*.caffemodel")) else None

    def load(self, config: ModelConfig, path: Path) -> Runner:
        import onnxruntime as ort

        from .converter import convert_files

        prototxt, caffemodel = find_model_files(path)
        opset = config.parameters.get("opset")
        if opset is not None and (not isinstance(opset, int) or not 13 <= opset <= 21):
            raise ModelLoadError(f"parameters.opset must be an integer from 13 to 21, got {opset!r}")
        model = convert_files(prototxt, caffemodel, opset=opset)
        if "transform" in config.parameters:
            from .transform import parse_transform, prepend_transform

            model = prepend_transform(model, parse_transform(config.parameters["transform"], path))
        log.info("converted %s + %s to ONNX (%d nodes)", prototxt.name, caffemodel.name, len(model.graph.node))
        onnx_loader = OnnxLoader(self.node_config)
        providers = config.parameters.get("providers", ["CPUExecutionProvider"])
        try:
            session = ort.InferenceSession(
                model.SerializeToString(), onnx_loader.session_options(config), providers=providers
            )
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise ModelLoadError(f"ONNX Runtime cannot run the converted model: {exc}") from exc
        return CaffeRunner(session)

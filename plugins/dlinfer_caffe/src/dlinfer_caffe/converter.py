"""``dlinfer-core convert --from caffe --to onnx``: Caffe files -> an ONNX file.

Validation runs the converted model in ONNX Runtime and, where OpenCV is
installed, compares it with OpenCV DNN's own reading of the Caffe files (the
only independent Caffe implementation that installs today).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from dlinfer.api import ConfigError, Converter, ConvertOptions, ConvertResult, ModelLoadError

from .reader import PROTOTXT, find_caffemodel, find_model_files, read_caffemodel, read_prototxt, weights_by_layer


def convert_files(
    prototxt: Path,
    caffemodel: Path,
    *,
    opset: int | None = None,
    dynamic_batch: bool = True,
    progress: Callable[[int, str], None] | None = None,
) -> Any:
    """Read a Caffe model's two files and convert them to an ``onnx.ModelProto``."""
    from .to_onnx import caffemodel_blobs, convert_net

    net = read_prototxt(prototxt)
    weights = weights_by_layer(read_caffemodel(caffemodel))
    blobs = caffemodel_blobs(weights, caffemodel.name)
    return convert_net(net, blobs, opset=opset, dynamic_batch=dynamic_batch, progress=progress)


class _ProgressBar:
    """A tqdm bar over the layers (shown on a terminal only)."""

    def __init__(self, desc: str) -> None:
        self.desc = desc
        self.bar: Any = None

    def __call__(self, total: int, layer: str) -> None:
        from tqdm import tqdm

        if self.bar is None:
            self.bar = tqdm(total=total, desc=self.desc, unit="layer", file=sys.stderr, disable=None, leave=False)
        self.bar.set_postfix_str(layer, refresh=False)
        self.bar.update()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def model_files(src: Path, extra: dict[str, Any]) -> tuple[Path, Path]:
    """The prototxt and caffemodel of ``src``: a version folder, or either file
    (the other one beside it, or named by ``--option prototxt=`` / ``caffemodel=``)."""
    if "prototxt" in extra or "caffemodel" in extra or src.is_file():
        folder = src if src.is_dir() else src.parent
        prototxt = Path(extra.get("prototxt") or (src if src.suffix == ".prototxt" else folder / PROTOTXT))
        if "caffemodel" in extra:
            caffemodel = Path(extra["caffemodel"])
        elif src.suffix == ".caffemodel":
            caffemodel = src
        else:
            caffemodel = find_caffemodel(folder)
        return prototxt, caffemodel
    return find_model_files(src)


def opencv_outputs(
    prototxt: Path, caffemodel: Path, inputs: dict[str, np.ndarray], blobs: list[str]
) -> dict[str, np.ndarray]:
    """Run the Caffe files in OpenCV DNN and return the named blobs.

    OpenCV names results by the layer that produced them, so each blob is
    looked up through the last layer writing it (and that layer's top index).
    """
    import cv2

    from .reader import inference_layers

    last: dict[str, tuple[str, int]] = {}
    for layer in inference_layers(read_prototxt(prototxt)):
        for i, top in enumerate(layer.top):
            last[top] = (layer.name, i)
    layers = sorted({last[b][0] for b in blobs})
    net = cv2.dnn.readNetFromCaffe(str(prototxt), str(caffemodel))
    for name, value in inputs.items():
        net.setInput(value, name)
    results = dict(zip(layers, net.forwardAndRetrieve(layers), strict=True))
    return {b: results[last[b][0]][last[b][1]] for b in blobs}


def opencv_differences(net: Any) -> str:
    """Why OpenCV DNN would compute something else than Caffe for this net ('' if it would not)."""
    from .proto import caffe_pb2
    from .reader import inference_layers

    for layer in inference_layers(net):
        if layer.type == "LRN" and layer.lrn_param.k != 1:
            return f"layer {layer.name!r}: OpenCV ignores LRN's k"
        if layer.type == "Pooling" and layer.pooling_param.round_mode == caffe_pb2.PoolingParameter.FLOOR:
            return f"layer {layer.name!r}: OpenCV reads round_mode FLOOR as ceil mode"
    return ""


class CaffeToOnnx(Converter):
    """Caffe deploy.prototxt + .caffemodel -> ONNX."""

    name = "caffe-onnx"
    source_formats = ("caffe",)
    target_format = "onnx"

    def convert(self, src: Path, dst: Path, options: ConvertOptions) -> ConvertResult:
        # The model as the node serves it: its config's opset and input transform apply too.
        params = options.model_config.parameters
        try:
            prototxt, caffemodel = model_files(src, options.extra)
            bar = _ProgressBar(f"converting {prototxt.name}")
            try:
                model = convert_files(
                    prototxt,
                    caffemodel,
                    opset=options.opset or params.get("opset"),
                    dynamic_batch=options.dynamic_batch,
                    progress=bar,
                )
            finally:
                bar.close()
            if "transform" in params:
                from .transform import parse_transform, prepend_transform

                model = prepend_transform(model, parse_transform(params["transform"], prototxt.parent))
        except ModelLoadError as exc:
            raise ConfigError(f"{src}: {exc}") from None
        dst.write_bytes(model.SerializeToString())
        if not options.validate:
            return ConvertResult(dst, notes=("not validated (--no-validate)",))
        if "transform" in params:
            return ConvertResult(dst, notes=("not compared with OpenCV DNN: the input transform is part of the graph",))
        return self._validate(prototxt, caffemodel, dst, model, options)

    def _validate(
        self, prototxt: Path, caffemodel: Path, dst: Path, model: Any, options: ConvertOptions
    ) -> ConvertResult:
        import onnxruntime as ort

        from dlinfer.api import compare_outputs

        session = ort.InferenceSession(str(dst), providers=["CPUExecutionProvider"])
        rng = np.random.default_rng(0)
        feed = {
            i.name: rng.standard_normal([d if isinstance(d, int) else 1 for d in i.shape]).astype(np.float32)
            for i in session.get_inputs()
        }
        names = [o.name for o in session.get_outputs()]
        ours = dict(zip(names, session.run(names, feed), strict=True))
        try:
            import cv2
        except ImportError:
            return ConvertResult(
                dst, notes=("ran in ONNX Runtime; install opencv-python-headless<5 to compare with OpenCV DNN",)
            )
        differs = opencv_differences(read_prototxt(prototxt))
        if differs:
            return ConvertResult(dst, notes=(f"ran in ONNX Runtime; not compared with OpenCV DNN: {differs}",))
        try:
            theirs = opencv_outputs(prototxt, caffemodel, feed, names)
        except cv2.error as exc:
            return ConvertResult(dst, notes=(f"ran in ONNX Runtime; OpenCV DNN could not run the model: {exc}",))
        expected = {n: theirs[n].reshape(ours[n].shape) for n in names}
        cmp = compare_outputs(expected, ours, options.atol, options.rtol)
        note = f"compared with OpenCV DNN {cv2.__version__}: {cmp.describe()}"
        return ConvertResult(dst, cmp.max_abs_error, cmp.max_rel_error, (note,))

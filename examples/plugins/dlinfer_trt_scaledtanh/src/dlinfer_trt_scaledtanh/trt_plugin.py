"""``ScaledTanh`` as a Python TensorRT plugin (TensorRT 10's V3 plugin interfaces), its
elementwise kernel compiled by CuPy and launched on TensorRT's stream.

Imports tensorrt at module top, so only :meth:`ScaledTanhOp.creator` imports this
module, when dlinfer-trt registers plugins before it parses a graph.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import tensorrt as trt

from .op import ATTRIBUTES, OP_TYPE, PLUGIN_VERSION, read_attributes

#: Element types the kernel reads and writes, in TensorRT's dense (linear) format.
SUPPORTED_TYPES = (trt.DataType.FLOAT, trt.DataType.HALF)


@functools.cache
def _kernel() -> Any:
    """The CUDA kernel, compiled once per process (CuPy specialises ``T`` per dtype)."""
    import cupy as cp

    # Arithmetic in float for both float and half tensors, as the numpy reference does.
    return cp.ElementwiseKernel(
        "T x, float32 alpha, float32 beta",
        "T y",
        "y = (T)(alpha * tanhf(beta * (float)x))",
        "dlinfer_scaled_tanh",
    )


def _device_array(pointer: int, count: int, dtype: np.dtype, owner: Any) -> Any:
    """A 1-D CuPy view of ``count`` elements of device memory that TensorRT owns."""
    import cupy as cp

    memory = cp.cuda.UnownedMemory(pointer, count * dtype.itemsize, owner)
    return cp.ndarray((count,), dtype, cp.cuda.MemoryPointer(memory, 0))


def _float_fields(values: dict[str, float]) -> Any:
    return trt.PluginFieldCollection(
        [trt.PluginField(name, np.array([v], np.float32), trt.PluginFieldType.FLOAT32) for name, v in values.items()]
    )


class ScaledTanhPlugin(trt.IPluginV3, trt.IPluginV3OneCore, trt.IPluginV3OneBuild, trt.IPluginV3OneRuntime):
    """One ``ScaledTanh`` layer: one input, one output of the same shape and type.

    A single object provides the core, build and runtime capabilities.
    """

    def __init__(self, alpha: float, beta: float) -> None:
        trt.IPluginV3.__init__(self)
        trt.IPluginV3OneCore.__init__(self)
        trt.IPluginV3OneBuild.__init__(self)
        trt.IPluginV3OneRuntime.__init__(self)
        # TensorRT reads these through its C++ side; a Python plugin must set every one.
        self.plugin_name = OP_TYPE
        self.plugin_version = PLUGIN_VERSION
        self.plugin_namespace = ""
        self.num_outputs = 1
        self.alpha = float(alpha)
        self.beta = float(beta)
        # Held by the plugin: TensorRT reads the fields' data after get_fields_to_serialize returns.
        self._fields = _float_fields({"alpha": self.alpha, "beta": self.beta})

    # ---------------------------------------------------------------- IPluginV3

    def get_capability_interface(self, type: Any) -> Any:
        return self

    def clone(self) -> ScaledTanhPlugin:
        return ScaledTanhPlugin(self.alpha, self.beta)

    # -------------------------------------------------------- IPluginV3OneBuild

    def get_output_data_types(self, input_types: list[Any]) -> list[Any]:
        return [input_types[0]]

    def get_output_shapes(self, inputs: list[Any], shape_inputs: list[Any], expr_builder: Any) -> list[Any]:
        return [trt.DimsExprs(inputs[0])]

    def supports_format_combination(self, pos: int, in_out: list[Any], num_inputs: int) -> bool:
        desc = in_out[pos].desc
        if desc.format != trt.TensorFormat.LINEAR or desc.type not in SUPPORTED_TYPES:
            return False
        # pos 0 is the input; the output (pos 1) must have the input's type.
        return pos == 0 or desc.type == in_out[0].desc.type

    def configure_plugin(self, inputs: list[Any], outputs: list[Any]) -> None:
        """Nothing to choose: one kernel serves every shape and both types."""

    def get_valid_tactics(self) -> list[int]:
        return []  # no custom tactics: TensorRT uses the default one (0)

    # ------------------------------------------------------ IPluginV3OneRuntime

    def set_tactic(self, tactic: int) -> None:
        """Only the default tactic exists."""

    def on_shape_change(self, inputs: list[Any], outputs: list[Any]) -> None:
        """Nothing to prepare: enqueue reads the element count from its descriptors."""

    def attach_to_context(self, resource_context: Any) -> ScaledTanhPlugin:
        return self.clone()

    def get_fields_to_serialize(self) -> Any:
        return self._fields

    def enqueue(
        self,
        input_desc: list[Any],
        output_desc: list[Any],
        inputs: list[int],
        outputs: list[int],
        workspace: int,
        stream: int,
    ) -> None:
        import cupy as cp

        count = int(np.prod(tuple(input_desc[0].dims), dtype=np.int64))
        if count == 0:
            return
        dtype = np.dtype(trt.nptype(input_desc[0].type))
        x = _device_array(inputs[0], count, dtype, self)
        y = _device_array(outputs[0], count, dtype, self)
        with cp.cuda.ExternalStream(stream):
            _kernel()(x, np.float32(self.alpha), np.float32(self.beta), y)


class ScaledTanhCreator(trt.IPluginCreatorV3One):
    """Makes ``ScaledTanh`` plugins from a node's attributes (build) or serialized fields (runtime)."""

    def __init__(self) -> None:
        trt.IPluginCreatorV3One.__init__(self)
        # Set on the instance: these are properties TensorRT reads from its C++ side
        # (a class attribute named ``name`` would hide the property from it).
        self.name = OP_TYPE
        self.plugin_version = PLUGIN_VERSION
        self.plugin_namespace = ""
        self.field_names = _float_fields(ATTRIBUTES)

    def create_plugin(self, name: str, fc: Any, phase: Any) -> ScaledTanhPlugin:
        values = read_attributes((field.name, field.data) for field in fc)
        return ScaledTanhPlugin(values["alpha"], values["beta"])


@functools.cache
def shared_creator() -> ScaledTanhCreator:
    """The process's one creator: TensorRT's registry keeps a pointer to it, so it lives as long
    as the process, and registering it again finds it already there."""
    return ScaledTanhCreator()

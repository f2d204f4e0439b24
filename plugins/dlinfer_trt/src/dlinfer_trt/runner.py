"""Running a TensorRT engine: a context and a CUDA stream per runner, pinned host
buffers, asynchronous copies, input shapes set per batch."""

from __future__ import annotations

import ctypes
import threading
from typing import Any

import numpy as np

from dlinfer.api import InvalidInput, ModelLoadError, Runner, TensorSpec, v2_datatype

from .availability import check, cuda_runtime


class _Buffer:
    """A pinned host buffer and a device buffer of the same size, grown on demand."""

    def __init__(self, cudart: Any) -> None:
        self.cudart = cudart
        self.size = 0
        self.host = 0
        self.device = 0

    def ensure(self, nbytes: int) -> None:
        if nbytes <= self.size:
            return
        self.free()
        err, self.host = self.cudart.cudaMallocHost(nbytes)
        check(err, "cudaMallocHost")
        err, self.device = self.cudart.cudaMalloc(nbytes)
        check(err, "cudaMalloc")
        self.size = nbytes

    def host_view(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        nbytes = int(np.prod(shape)) * dtype.itemsize
        raw = (ctypes.c_byte * nbytes).from_address(self.host)
        return np.frombuffer(memoryview(raw), dtype=dtype).reshape(shape)

    def free(self) -> None:
        if self.host:
            self.cudart.cudaFreeHost(self.host)
        if self.device:
            self.cudart.cudaFree(self.device)
        self.host = self.device = self.size = 0


class TrtRunner(Runner):
    """One deserialized engine with its own execution context and stream.

    The scheduler runs at most ``instance_count`` predictions at once; a lock
    keeps this runner's single context and stream used by one thread at a time,
    and each instance (loaded separately) gets its own.
    """

    platform = "tensorrt_plan"

    def __init__(self, engine_bytes: bytes) -> None:
        import tensorrt as trt

        self._trt = trt
        self._cudart = cuda_runtime()
        self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self._runtime.deserialize_cuda_engine(engine_bytes)
        if self.engine is None:
            raise ModelLoadError(
                "TensorRT could not deserialize the engine: it was built for another TensorRT version or GPU, "
                "is corrupt, or uses an operator plugin that is not registered"
            )
        self.context = self.engine.create_execution_context()
        err, self.stream = self._cudart.cudaStreamCreate()
        check(err, "cudaStreamCreate")
        self._lock = threading.Lock()
        self.inputs, self.outputs = [], []
        self._dtypes: dict[str, np.dtype] = {}
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(name)))
            self._dtypes[name] = dtype
            spec = TensorSpec(name, v2_datatype(dtype), tuple(self.engine.get_tensor_shape(name)))
            is_input = self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            (self.inputs if is_input else self.outputs).append(spec)
        self._buffers = {name: _Buffer(self._cudart) for name in self._dtypes}

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        cudart = self._cudart
        h2d = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        d2h = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        with self._lock:
            for spec in self.inputs:
                arr = np.ascontiguousarray(inputs[spec.name], dtype=self._dtypes[spec.name])
                buf = self._buffers[spec.name]
                buf.ensure(arr.nbytes)
                buf.host_view(arr.shape, arr.dtype)[...] = arr
                (err,) = cudart.cudaMemcpyAsync(buf.device, buf.host, arr.nbytes, h2d, self.stream)
                check(err, "cudaMemcpyAsync")
                if not self.context.set_input_shape(spec.name, arr.shape):
                    raise InvalidInput(f"input {spec.name!r}: shape {list(arr.shape)} is outside the engine's profile")
                self.context.set_tensor_address(spec.name, buf.device)
            shapes = {}
            for spec in self.outputs:
                shape = tuple(self.context.get_tensor_shape(spec.name))
                buf = self._buffers[spec.name]
                buf.ensure(max(int(np.prod(shape)), 1) * self._dtypes[spec.name].itemsize)
                self.context.set_tensor_address(spec.name, buf.device)
                shapes[spec.name] = shape
            if not self.context.execute_async_v3(self.stream):
                raise RuntimeError("TensorRT execution failed")
            for spec in self.outputs:
                buf = self._buffers[spec.name]
                nbytes = int(np.prod(shapes[spec.name])) * self._dtypes[spec.name].itemsize
                (err,) = cudart.cudaMemcpyAsync(buf.host, buf.device, nbytes, d2h, self.stream)
                check(err, "cudaMemcpyAsync")
            (err,) = cudart.cudaStreamSynchronize(self.stream)
            check(err, "cudaStreamSynchronize")
            return {
                spec.name: self._buffers[spec.name].host_view(shapes[spec.name], self._dtypes[spec.name]).copy()
                for spec in self.outputs
            }

    def close(self) -> None:
        for buf in self._buffers.values():
            buf.free()
        if getattr(self, "stream", None):
            self._cudart.cudaStreamDestroy(self.stream)
            self.stream = None
        self.context = self.engine = None

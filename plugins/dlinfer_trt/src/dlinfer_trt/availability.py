"""Whether TensorRT can run here, and why not: checked once, without side effects."""

from __future__ import annotations

import functools

import attrs


@attrs.frozen
class GpuInfo:
    """The GPU an engine is built for; engines only run on the same model and TensorRT."""

    name: str
    compute_capability: str
    trt_version: str


@functools.cache
def status() -> tuple[GpuInfo | None, str]:
    """``(gpu, "")`` when TensorRT and a CUDA GPU are usable, else ``(None, reason)``."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        return None, f"the tensorrt package is not installed ({exc}); pip install 'dlinfer[trt]'"
    try:
        cudart = cuda_runtime()
    except ImportError as exc:
        return None, f"cuda-python is not installed ({exc}); pip install 'dlinfer[trt]'"
    err, count = cudart.cudaGetDeviceCount()
    if int(err) != 0 or count == 0:
        return None, f"no CUDA GPU is visible (cudaGetDeviceCount: {err}, {count if int(err) == 0 else 0} devices)"
    err, props = cudart.cudaGetDeviceProperties(0)
    if int(err) != 0:
        return None, f"cannot read the GPU's properties: {err}"
    name = props.name.decode(errors="replace").rstrip("\0") if isinstance(props.name, bytes) else str(props.name)
    return GpuInfo(name, f"{props.major}.{props.minor}", trt.__version__), ""


def cuda_runtime():
    """cuda-python's runtime API module (its location moved in cuda-python 12.6)."""
    try:
        from cuda.bindings import runtime
    except ImportError:
        from cuda import cudart as runtime
    return runtime


def check(err: object, what: str) -> None:
    """Raise with the CUDA error name when a cuda-python call failed."""
    if int(err) != 0:  # type: ignore[call-overload]
        raise RuntimeError(f"CUDA {what} failed: {err}")

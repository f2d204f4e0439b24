"""INT8 calibration data: fixed-size batches from a samples folder, and the calibrator.

Samples are ``*.npz`` files (arrays named like the model's inputs) or ``*.npy``
files (single-input models), each holding one or more rows along the batch axis.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from dlinfer.api import ModelLoadError, TensorSpec, numpy_dtype


def read_calibration_rows(folder: Path, inputs: Sequence[TensorSpec]) -> dict[str, np.ndarray]:
    """All sample rows of a folder, concatenated per input along the batch axis."""
    files = sorted(p for p in folder.iterdir() if p.suffix in (".npz", ".npy")) if folder.is_dir() else []
    if not files:
        raise ModelLoadError(f"INT8 calibration needs samples: no *.npz or *.npy files in {folder}")
    names = [s.name for s in inputs]
    rows: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for f in files:
        if f.suffix == ".npy":
            if len(names) != 1:
                raise ModelLoadError(f"{f.name}: .npy samples only fit single-input models; use .npz with {names}")
            arrays = {names[0]: np.load(f, allow_pickle=False)}
        else:
            with np.load(f, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files}
        missing = [n for n in names if n not in arrays]
        if missing:
            raise ModelLoadError(f"{f.name}: sample lacks inputs {missing}")
        for spec in inputs:
            arr = np.asarray(arrays[spec.name], dtype=numpy_dtype(spec.datatype))
            if arr.ndim == len(spec.shape) - 1:
                arr = arr[None]  # one row without its batch axis
            rows[spec.name].append(arr)
    return {n: np.concatenate(r) for n, r in rows.items()}


def calibration_batches(rows: dict[str, np.ndarray], batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    """Full batches of ``batch_size`` rows; a short last batch is padded by repeating rows,
    because TensorRT's calibrator always reads whole batches."""
    total = len(next(iter(rows.values())))
    if any(len(r) != total for r in rows.values()):
        raise ModelLoadError(f"calibration inputs have different row counts: { {k: len(v) for k, v in rows.items()} }")
    for start in range(0, total, batch_size):
        idx = np.arange(start, start + batch_size) % total
        yield {n: np.ascontiguousarray(r[idx]) for n, r in rows.items()}


def make_calibrator(batches: list[dict[str, np.ndarray]], cache_file: Path):
    """An ``IInt8EntropyCalibrator2`` feeding ``batches`` from device buffers; the
    calibration cache is read from and written to ``cache_file``."""
    import tensorrt as trt

    from .availability import check, cuda_runtime

    cudart = cuda_runtime()

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            super().__init__()
            self._batches = iter(batches)
            self._size = len(next(iter(batches[0].values()))) if batches else 1
            self._device: dict[str, int] = {}
            for name, arr in (batches[0] if batches else {}).items():
                err, ptr = cudart.cudaMalloc(arr.nbytes)
                check(err, "cudaMalloc")
                self._device[name] = ptr

        def get_batch_size(self) -> int:
            return self._size

        def get_batch(self, names: list[str]) -> list[int] | None:
            batch = next(self._batches, None)
            if batch is None:
                return None
            for name in names:
                arr = batch[name]
                (err,) = cudart.cudaMemcpy(
                    self._device[name], arr.ctypes.data, arr.nbytes, cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
                )
                check(err, "cudaMemcpy")
            return [self._device[n] for n in names]

        def read_calibration_cache(self) -> bytes | None:
            return cache_file.read_bytes() if cache_file.is_file() else None

        def write_calibration_cache(self, cache: bytes) -> None:
            try:
                cache_file.parent.mkdir(parents=True, exist_ok=True)
                cache_file.write_bytes(bytes(cache))
            except OSError:
                pass  # a read-only repository only costs a recalibration next time

        def __del__(self) -> None:
            for ptr in self._device.values():
                cudart.cudaFree(ptr)

    return EntropyCalibrator()

"""System shared memory: tensors passed through POSIX shared memory instead of the request body.

The V2 system shared memory extension (Triton's, which ``tritonclient.utils.shared_memory``
speaks): a client creates a POSIX shared memory object, registers a region of it under a
name, and then names that region in an input's or requested output's parameters
(``shared_memory_region``, ``shared_memory_byte_size``, optional ``shared_memory_offset``).
The input is read from the region (zero-copy for fixed-size datatypes); the output is
written into it and the response carries its metadata without data.

Codecs only mark such tensors (:attr:`InferenceRequest.shared_memory`); the data plane
reads and writes the regions through :class:`SharedMemoryRegions`, so every frontend
behaves alike and requests without regions do no extra work.

A registered region lets a client make the server read and write that memory, so any
client that can reach the ports can read and overwrite POSIX shared memory objects the
server's user can open: the extension is off unless ``server.shared_memory`` is set.
"""

from __future__ import annotations

import mmap
import os
import stat
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from .datatypes import check_shape, numpy_dtype
from .errors import InvalidInput, Unsupported
from .inference import InferenceRequest, InferenceResponse

REGION = "shared_memory_region"
OFFSET = "shared_memory_offset"
BYTE_SIZE = "shared_memory_byte_size"

#: Where Linux keeps POSIX shared memory objects: ``shm_open("/key")`` opens ``/dev/shm/key``.
SHM_ROOT = Path("/dev/shm")

DISABLED = "system shared memory is disabled on this server (server.shared_memory = false)"
CUDA_UNSUPPORTED = "CUDA shared memory is not supported on this server; use system shared memory"

#: What an input in shared memory holds until the data plane reads its region.
PENDING = np.empty(0, dtype=np.uint8)


def names_region(parameters: dict[str, Any]) -> bool:
    """Whether a tensor's parameters put its data in a shared memory region: on a request's
    input or output, where to read or write it; on a response's output, that it was written
    there (codecs then send no data for it)."""
    return bool(parameters) and REGION in parameters


@attrs.define(eq=False)
class Region:
    """One registered region: ``byte_size`` bytes at ``offset`` of the shared memory object ``key``."""

    name: str
    key: str
    offset: int
    byte_size: int
    #: The object mapped from ``offset`` rounded down to the page size.
    mapping: mmap.mmap
    #: Where the region starts in :attr:`map`.
    start: int
    #: The object, kept open to see its size before each access (see :meth:`check_size`).
    fd: int = -1

    def status(self) -> dict[str, Any]:
        return {"name": self.name, "key": self.key, "offset": self.offset, "byte_size": self.byte_size}

    def span(self, tensor: str, offset: int, size: int) -> memoryview:
        """``size`` bytes at ``offset`` into the region, bounds-checked.

        The view holds the mapping open: a region unregistered while a request
        still reads or writes it is unmapped when that request is done.
        """
        if offset + size > self.byte_size:
            raise InvalidInput(
                f"{tensor}: shared_memory_offset {offset} + shared_memory_byte_size {size} is beyond "
                f"the {self.byte_size} bytes of shared memory region {self.name!r}"
            )
        self.check_size(tensor)
        at = self.start + offset
        return memoryview(self.mapping)[at : at + size]

    def check_size(self, tensor: str) -> None:
        """Refuse a region whose object was made smaller than the region since it was registered:
        touching mapped pages past the object's end would kill the process (SIGBUS). A client
        shrinking it during the very access is not caught; only trusted clients should have it."""
        if self.fd >= 0 and os.fstat(self.fd).st_size < self.offset + self.byte_size:
            raise InvalidInput(
                f"{tensor}: shared memory object {self.key!r} of region {self.name!r} is now smaller than the "
                f"region; register it again"
            )

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        try:
            self.mapping.close()
        except BufferError:  # a request in flight still uses it: unmapped when its views are released
            pass


def _uint(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidInput(f"{what} must be a non-negative integer, got {value!r}")
    return value


def _object_path(root: Path, name: str, key: Any) -> Path:
    """The file of the POSIX shared memory object ``key`` (``/name``, as ``shm_open`` takes it)."""
    if not isinstance(key, str):
        raise InvalidInput(f"shared memory region {name!r}: 'key' must be a string")
    base = key.lstrip("/")
    if not base or "/" in base or base in (".", "..") or "\0" in base:
        raise InvalidInput(
            f"shared memory region {name!r}: key {key!r} is not a shared memory object name "
            "('/name', one path component)"
        )
    return root / base


@attrs.define(eq=False)
class Target:
    """Where a requested output goes: its region's view and what the response reports."""

    region: str
    view: memoryview
    offset: int
    #: The region itself, to check its object's size again just before writing.
    source: Region | None = None


class SharedMemoryRegions:
    """The node's registered system shared memory regions, by name."""

    def __init__(self, enabled: bool, max_regions: int, root: Path = SHM_ROOT) -> None:
        self.enabled = enabled
        self.max_regions = max_regions
        self.root = root
        self._regions: dict[str, Region] = {}

    def check_enabled(self) -> None:
        if not self.enabled:
            raise Unsupported(DISABLED)

    # ------------------------------------------------------------- registry

    def register(self, name: str, key: Any, offset: Any, byte_size: Any) -> None:
        """Map ``byte_size`` bytes at ``offset`` of the object ``key`` under ``name``."""
        self.check_enabled()
        if not isinstance(name, str) or not name:
            raise InvalidInput("a shared memory region needs a non-empty name")
        if name in self._regions:
            raise InvalidInput(f"shared memory region {name!r} is already registered; unregister it first")
        if len(self._regions) >= self.max_regions:
            raise InvalidInput(
                f"cannot register shared memory region {name!r}: {len(self._regions)} regions are registered, "
                "the limit (limits.max_shared_memory_regions)"
            )
        path = _object_path(self.root, name, key)
        offset = _uint(offset, f"shared memory region {name!r}: 'offset'")
        byte_size = _uint(byte_size, f"shared memory region {name!r}: 'byte_size'")
        if byte_size == 0:
            raise InvalidInput(f"shared memory region {name!r}: 'byte_size' must be at least 1")
        try:
            fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            raise InvalidInput(f"shared memory region {name!r}: no shared memory object with key {key!r}") from None
        except OSError as exc:
            raise InvalidInput(
                f"shared memory region {name!r}: cannot open shared memory object {key!r}: {exc.strerror}"
            ) from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise InvalidInput(f"shared memory region {name!r}: {key!r} is not a shared memory object")
            if offset + byte_size > info.st_size:
                raise InvalidInput(
                    f"shared memory region {name!r}: offset {offset} + byte_size {byte_size} is beyond the "
                    f"end of shared memory object {key!r} ({info.st_size} bytes)"
                )
            start = offset - offset % mmap.ALLOCATIONGRANULARITY
            mapped = mmap.mmap(fd, offset + byte_size - start, offset=start)
        except (OSError, ValueError) as exc:
            os.close(fd)
            raise InvalidInput(
                f"shared memory region {name!r}: cannot map shared memory object {key!r}: {exc}"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        self._regions[name] = Region(name, key, offset, byte_size, mapped, offset - start, fd)

    def unregister(self, name: str = "") -> None:
        """Unmap ``name`` (every region when empty). An unknown name is no error, as in Triton:
        clients unregister in their cleanup whether or not a region is still there."""
        self.check_enabled()
        names = [name] if name else list(self._regions)
        for n in names:
            region = self._regions.pop(n, None)
            if region is not None:
                region.close()

    def status(self, name: str = "") -> list[dict[str, Any]]:
        """Every region's name, key, offset and byte size, or ``name``'s."""
        self.check_enabled()
        if not name:
            return [r.status() for r in self._regions.values()]
        return [self._region(name, "status").status()]

    def close(self) -> None:
        for region in self._regions.values():
            region.close()
        self._regions.clear()

    def _region(self, name: Any, where: str) -> Region:
        if not isinstance(name, str):
            raise InvalidInput(f"{where}: '{REGION}' must be a string")
        region = self._regions.get(name)
        if region is None:
            raise InvalidInput(f"{where}: shared memory region {name!r} is not registered")
        return region

    # ------------------------------------------------------------ inference

    def _span(self, where: str, params: dict[str, Any]) -> tuple[Region, memoryview, int]:
        region = self._region(params[REGION], where)
        if BYTE_SIZE not in params:
            raise InvalidInput(f"{where}: '{REGION}' needs '{BYTE_SIZE}'")
        size = _uint(params[BYTE_SIZE], f"{where}: '{BYTE_SIZE}'")
        offset = _uint(params.get(OFFSET, 0), f"{where}: '{OFFSET}'")
        return region, region.span(where, offset, size), offset

    def resolve(self, request: InferenceRequest) -> dict[str, Target]:
        """Read the request's inputs from their regions, and check the regions its outputs go to.

        Fixed-size inputs are ``np.frombuffer`` views of the mapping (no copy); BYTES
        elements are copied out. Returns the requested outputs' targets by name.
        """
        from .builtin.binary_codec import tensor_from_bytes  # the codecs import this module

        self.check_enabled()
        for inp in request.inputs:
            if not names_region(inp.parameters):
                continue
            where = f"input {inp.name!r}"
            region, view, _ = self._span(where, inp.parameters)
            if inp.datatype != "BYTES":
                need = check_shape(inp.name, inp.shape) * numpy_dtype(inp.datatype).itemsize
                if len(view) != need:
                    raise InvalidInput(
                        f"{where}: shape {list(inp.shape)} of {inp.datatype} needs {need} bytes, but "
                        f"shared_memory_byte_size is {len(view)} (shared memory region {region.name!r})"
                    )
            inp.data = tensor_from_bytes(inp.name, inp.datatype, inp.shape, view)
        targets = {}
        for out in request.outputs:
            if names_region(out.parameters):
                region, view, offset = self._span(f"output {out.name!r}", out.parameters)
                targets[out.name] = Target(region.name, view, offset, region)
        return targets

    @staticmethod
    def write(response: InferenceResponse, targets: dict[str, Target]) -> None:
        """Write each output that has a target into its region and say so in its parameters."""
        from .builtin.binary_codec import tensor_to_bytes

        for out in response.outputs:
            target = targets.get(out.name)
            if target is None:
                continue
            raw = tensor_to_bytes(out.data, out.datatype)
            size = len(raw)
            if size > len(target.view):
                raise InvalidInput(
                    f"output {out.name!r}: {size} bytes do not fit in the shared_memory_byte_size of "
                    f"{len(target.view)} bytes in shared memory region {target.region!r}"
                )
            if target.source is not None:
                target.source.check_size(f"output {out.name!r}")
            target.view[:size] = raw
            params = {**out.parameters, REGION: target.region, BYTE_SIZE: size}
            if target.offset:
                params[OFFSET] = target.offset
            out.parameters = params


def placeholder(name: str, params: dict[str, Any], inline: bool) -> np.ndarray:
    """What a codec stores for an input in shared memory; ``inline``: the input also carries its data."""
    if inline:
        raise InvalidInput(f"input {name!r}: give its data in a shared memory region or in the request, not both")
    return PENDING

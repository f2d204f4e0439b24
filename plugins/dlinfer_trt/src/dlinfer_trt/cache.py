"""The engine cache: one engine per (model, GPU, TensorRT, precision, profile, op plugins).

TensorRT engines are not portable: an engine only runs on the GPU model and the
TensorRT version it was built with. Every engine is stored with a JSON record of
what it was built for, and a mismatch is either refused with a message that
says so or, where allowed, answered by a rebuild.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Literal

import attrs

from dlinfer.api import ModelLoadError

from .availability import GpuInfo

log = logging.getLogger("dlinfer.trt")


@attrs.frozen
class EngineKey:
    """Everything an engine depends on."""

    model_sha256: str
    gpu: GpuInfo
    precision: str
    profile: str
    op_plugins: tuple[str, ...] = ()

    def digest(self) -> str:
        doc = json.dumps(attrs.asdict(self), sort_keys=True)
        return hashlib.sha256(doc.encode()).hexdigest()[:20]

    def to_json(self) -> dict:
        return attrs.asdict(self)

    @classmethod
    def from_json(cls, doc: dict) -> EngineKey:
        try:
            return cls(
                doc["model_sha256"],
                GpuInfo(**doc["gpu"]),
                doc["precision"],
                doc["profile"],
                tuple(doc.get("op_plugins", ())),
            )
        except (KeyError, TypeError) as exc:
            raise ModelLoadError(f"engine record is incomplete or not dlinfer's: {exc}") from None


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def portability_problem(built: GpuInfo, here: GpuInfo) -> str:
    """Why an engine built for ``built`` cannot run ``here`` ("" when it can)."""
    if (built.name, built.compute_capability, built.trt_version) == (
        here.name,
        here.compute_capability,
        here.trt_version,
    ):
        return ""
    return (
        f"the engine was built for {built.name} (compute capability {built.compute_capability}) with "
        f"TensorRT {built.trt_version}, but this node has {here.name} (compute capability "
        f"{here.compute_capability}) with TensorRT {here.trt_version}; TensorRT engines only run on the "
        "GPU model and TensorRT version they were built with"
    )


Decision = Literal["use", "build"]


def decide(stored: EngineKey | None, wanted: EngineKey, allow_rebuild: bool) -> Decision:
    """Use a stored engine, or build one; refuse when a rebuild is needed but not allowed."""
    if stored is None:
        return "build"
    problem = portability_problem(stored.gpu, wanted.gpu)
    if not problem and stored == wanted:
        return "use"
    if not problem:
        problem = "the model, precision, profile or operator plugins changed since the engine was built"
    if allow_rebuild:
        log.warning("rebuilding TensorRT engine: %s", problem)
        return "build"
    raise ModelLoadError(f"{problem}. Rebuild it (allow with parameters.rebuild_engine = true)")


class EngineCache:
    """Engines and their records in one folder (``<version>/.dlinfer-trt/`` by default)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def paths(self, key: EngineKey) -> tuple[Path, Path]:
        stem = self.folder / f"engine-{key.model_sha256[:12]}"
        return stem.with_suffix(".plan"), stem.with_suffix(".json")

    def lookup(self, key: EngineKey) -> EngineKey | None:
        """The record of the engine stored for this model, if any (whatever it was built for)."""
        plan, record = self.paths(key)
        if not (plan.is_file() and record.is_file()):
            return None
        try:
            return EngineKey.from_json(json.loads(record.read_text()))
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable engine record %s: %s", record, exc)
            return None

    def load(self, key: EngineKey) -> bytes:
        return self.paths(key)[0].read_bytes()

    def store(self, key: EngineKey, engine: bytes) -> Path | None:
        """Write engine and record atomically; None (with a warning) when the folder is read-only."""
        plan, record = self.paths(key)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            for path, data in ((plan, engine), (record, json.dumps(key.to_json(), indent=2).encode())):
                tmp = path.with_suffix(path.suffix + ".tmp")
                tmp.write_bytes(data)
                os.replace(tmp, path)
        except OSError as exc:
            log.warning("cannot cache the TensorRT engine in %s (%s); it will be rebuilt next time", self.folder, exc)
            return None
        return plan

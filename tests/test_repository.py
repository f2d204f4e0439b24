"""Model repository: versions, policies, broken-model isolation, path safety."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from dlinfer.config import node_config_from_dict
from dlinfer.errors import ModelLoadError, ModelNotFound, ModelNotReady
from dlinfer.plugins import Plugins
from dlinfer.repository import ModelRepository
from dlinfer.testing import onnx_linear_model, write_model


def _repo(root: Path, **repository: object) -> ModelRepository:
    cfg = node_config_from_dict({"repository": {"path": str(root), **repository}, "threads": {"intra_op": 1}})
    return ModelRepository(cfg, Plugins(cfg).load())


def _with_versions(root: Path, versions: list[int], config: dict | None = None) -> None:
    for v in versions:
        write_model(root, "m", v, {"model.onnx": onnx_linear_model(seed=v)}, config=config)


def _loaded_versions(repo: ModelRepository, name: str = "m") -> list[int]:
    return sorted(m.version for m in repo.loaded() if m.name == name)


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        (None, [3]),
        ({"latest": 2}, [2, 3]),
        ({"all": True}, [1, 2, 3]),
        ({"specific": [1, 3]}, [1, 3]),
    ],
)
def test_version_policy(tmp_path: Path, policy: dict | None, expected: list[int]) -> None:
    _with_versions(tmp_path, [1, 2, 3], {"version_policy": policy} if policy else {})
    repo = _repo(tmp_path)

    async def run() -> None:
        await repo.start()
        assert _loaded_versions(repo) == expected
        assert repo.get("m").version == max(expected)
        assert repo.get("m", str(expected[0])).version == expected[0]
        await repo.close()

    asyncio.run(run())


def test_broken_model_is_isolated_and_reported(tmp_path: Path) -> None:
    write_model(tmp_path, "good", 1, {"model.onnx": onnx_linear_model()})
    write_model(tmp_path, "corrupt", 1, {"model.onnx": b"\x08\x01garbage"})
    write_model(tmp_path, "unknown_format", 1, {"weights.bin": b"1234"})
    (tmp_path / "noversions").mkdir()
    bad_cfg = tmp_path / "badcfg"
    write_model(tmp_path, "badcfg", 1, {"model.onnx": onnx_linear_model()})
    (bad_cfg / "config.toml").write_text("max_batch_size = 'many'\n")
    repo = _repo(tmp_path)

    async def run() -> None:
        await repo.start()
        index = {(r["name"], r.get("version")): r for r in repo.index()}
        assert index[("good", "1")]["state"] == "READY"
        assert index[("corrupt", "1")]["state"] == "UNAVAILABLE"
        assert "ONNX Runtime cannot load it" in index[("corrupt", "1")]["reason"]
        assert "no installed loader claims the files" in index[("unknown_format", "1")]["reason"]
        assert "weights.bin" in index[("unknown_format", "1")]["reason"]
        assert "has no version folders" in index[("noversions", None)]["reason"]
        assert "max_batch_size: expected an integer, got 'many'" in index[("badcfg", None)]["reason"]
        with pytest.raises(ModelNotReady, match="ONNX Runtime cannot load it"):
            repo.get("corrupt")
        with pytest.raises(ModelNotFound, match="unknown model 'nope'"):
            repo.get("nope")
        with pytest.raises(ModelNotFound, match="has no version 7 loaded"):
            repo.get("good", "7")
        assert repo.index(ready_only=True) == [{"name": "good", "version": "1", "state": "READY", "reason": ""}]
        await repo.close()

    asyncio.run(run())


def test_symlinked_model_outside_repository_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    write_model(outside, "evil", 1, {"model.onnx": onnx_linear_model()})
    root = tmp_path / "models"
    root.mkdir()
    os.symlink(outside / "evil", root / "evil")
    repo = _repo(root)

    async def run() -> None:
        with pytest.raises(ModelLoadError, match="symlinks are not followed"):
            await repo.load("evil")

    asyncio.run(run())


def test_symlinked_file_outside_repository_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "secret.onnx"
    secret.write_bytes(onnx_linear_model())
    root = tmp_path / "models"
    vdir = write_model(root, "m", 1)
    os.symlink(secret, vdir / "model.onnx")
    repo = _repo(root)

    async def run() -> None:
        with pytest.raises(ModelLoadError, match="is a link to outside the model repository"):
            await repo.load("m")

    asyncio.run(run())


@pytest.mark.parametrize("name", ["..", "../models", "a/b", ".hidden", "", "x" * 200])
def test_unsafe_names_are_refused(tmp_path: Path, name: str) -> None:
    repo = _repo(tmp_path)

    async def run() -> None:
        with pytest.raises(ModelNotFound, match="invalid model name"):
            await repo.load(name)

    asyncio.run(run())


def test_pickle_needs_node_opt_in(tmp_path: Path) -> None:
    write_model(tmp_path, "m", 1, {"model.onnx": onnx_linear_model()}, config={"allow_pickle": True})
    repo = _repo(tmp_path)

    async def run() -> None:
        with pytest.raises(ModelLoadError, match=r"set repository.allow_pickle = true"):
            await repo.load("m")
        trusting = _repo(tmp_path, allow_pickle=True)
        await trusting.load("m")
        await trusting.close()

    asyncio.run(run())


def test_config_tensor_mismatch_is_a_load_error(tmp_path: Path) -> None:
    write_model(
        tmp_path,
        "m",
        1,
        {"model.onnx": onnx_linear_model()},
        config={"input": [{"name": "x", "datatype": "INT64", "shape": [4]}]},
    )
    write_model(tmp_path, "fixed", 1, {"model.onnx": onnx_linear_model(batch=1)}, config={"max_batch_size": 8})
    repo = _repo(tmp_path)

    async def run() -> None:
        with pytest.raises(ModelLoadError, match=r"config\.toml says input 'x' is INT64, the model says FP32"):
            await repo.load("m")
        with pytest.raises(ModelLoadError, match=r"max_batch_size is 8 but inputs \['x'\] have no dynamic first"):
            await repo.load("fixed")

    asyncio.run(run())


def test_unload_then_reload(tmp_path: Path) -> None:
    _with_versions(tmp_path, [1])
    repo = _repo(tmp_path)

    async def run() -> None:
        await repo.load("m")
        model = repo.get("m")
        await repo.unload("m")
        assert model.runner.session is None  # memory released
        with pytest.raises(ModelNotReady, match="unloaded"):
            repo.get("m")
        await repo.load("m")
        assert repo.get("m").version == 1
        await repo.close()

    asyncio.run(run())

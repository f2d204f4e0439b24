"""The loader on its own: detection, clear load errors, devices and threads."""

from __future__ import annotations

import io
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
import torch

from dlinfer.api import ModelLoadError, model_config_from_dict, node_config_from_dict
from dlinfer.api.testing import RunningNode, node_config, write_model
from dlinfer_torch import testing as tt
from dlinfer_torch import threads
from dlinfer_torch.loader import TorchLoader

CNN_INPUT = {"name": "image", "datatype": "FP32", "shape": [3, 16, 16]}


def _loader(**repository: Any) -> TorchLoader:
    return TorchLoader(node_config_from_dict({"threads": {"intra_op": 1}, "repository": repository}))


def _config(**data: Any) -> Any:
    return model_config_from_dict(data, "config.toml")


def test_detection_by_file_name_and_archive_contents(tmp_path: Path) -> None:
    cnn = tt.make(tt.TinyCNN)
    folders = {name: tmp_path / name for name in ("script", "export", "state", "empty")}
    for folder in folders.values():
        folder.mkdir()
    tt.save_torchscript(cnn, folders["script"] / "model.pt")
    tt.save_exported(cnn, (torch.randn(2, 3, 16, 16),), folders["export"] / "model.pt2")
    tt.save_state_dict(cnn, folders["state"] / "model.pth")
    assert TorchLoader.detect(folders["script"]) == "torchscript"
    assert TorchLoader.detect(folders["export"]) == "torch_export"
    assert TorchLoader.detect(folders["state"]) == "pytorch_state_dict"
    assert TorchLoader.detect(folders["empty"]) is None


def test_torchscript_without_inputs_names_forward_arguments(tmp_path: Path) -> None:
    tt.save_torchscript(tt.make(tt.TwoInTwoOut), tmp_path / "model.pt")
    with pytest.raises(ModelLoadError, match=r"\[\[input\]\].*forward takes image, extra"):
        _loader().load(_config(), tmp_path)


def test_state_dict_of_another_architecture_is_refused(tmp_path: Path) -> None:
    tt.save_state_dict(tt.make(tt.DictOut), tmp_path / "model.pt")
    cfg = _config(
        max_batch_size=4,
        input=[CNN_INPUT],
        parameters={"model_class": "dlinfer_torch.testing:TinyCNN"},
    )
    with pytest.raises(ModelLoadError, match=r"does not fit dlinfer_torch\.testing:TinyCNN.*Missing key"):
        _loader().load(cfg, tmp_path)
    cfg = _config(input=[CNN_INPUT], parameters={"model_class": "no_such_package.models:Net"})
    with pytest.raises(ModelLoadError, match="cannot be imported"):
        _loader().load(cfg, tmp_path)


def test_model_class_from_inside_the_repository_is_not_imported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = tmp_path / "models"
    vdir = repo / "net" / "1"
    vdir.mkdir(parents=True)
    tt.save_state_dict(tt.make(tt.DictOut), vdir / "model.pt")
    marker = tmp_path / "ran"
    (repo / "sneaky_models.py").write_text(
        f"open({str(marker)!r}, 'w').close()\nfrom dlinfer_torch.testing import DictOut\n"
    )
    monkeypatch.syspath_prepend(str(repo))  # e.g. a server started from inside the repository
    loader = TorchLoader(node_config_from_dict({"repository": {"path": str(repo)}}))
    cfg = _config(
        max_batch_size=2,
        input=[{"name": "x", "datatype": "FP32", "shape": [6]}],
        parameters={"model_class": "sneaky_models:DictOut"},
    )
    with pytest.raises(ModelLoadError, match="would import code from the model repository"):
        loader.load(cfg, vdir)
    assert not marker.exists()


def _stays_absent(path: Path, grace_s: float = 1.0) -> bool:
    """Whether ``path`` is still absent after ``grace_s``: a started command needs a moment to leave its mark."""
    until = time.monotonic() + grace_s
    while time.monotonic() < until:
        if path.exists():
            return False
        time.sleep(0.02)
    return True


def test_model_class_that_is_not_a_module_is_never_called(tmp_path: Path) -> None:
    """model_class = "subprocess:Popen" with init_kwargs.args would run a command at load."""
    marker = tmp_path / "command-ran"
    written = tmp_path / "file-written"
    weights = tt.save_state_dict(tt.make(tt.DictOut), tmp_path / "dict_out.pt").read_bytes()
    classes = {
        "popen": ("subprocess:Popen", {"args": ["touch", str(marker)]}),
        "fileio": ("io:FileIO", {"file": str(written), "mode": "w"}),
    }
    for name, (spec, kwargs) in classes.items():
        write_model(
            tmp_path / "models",
            name,
            files={"model.pt": weights},
            config={
                "input": [{"name": "x", "datatype": "FP32", "shape": [1, 6]}],
                "parameters": {"model_class": spec, "init_kwargs": kwargs},
            },
        )
    with RunningNode(node_config(tmp_path / "models")) as node:
        index = requests.post(f"{node.url}/v2/repository/index", timeout=30).json()
        reasons = {row["name"]: row["reason"] for row in index}
        for name, (spec, _) in classes.items():
            assert f"parameters.model_class {spec!r} is not a torch.nn.Module subclass" in reasons[name]
    assert not written.exists()
    assert _stays_absent(marker)


class _TouchOnUnpickle:
    """Unpickling this creates a file: stands in for code an attacker would run."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.path,))


def test_exported_program_with_a_pickled_member_is_refused(tmp_path: Path) -> None:
    """torch.export.load would unpickle such a member without weights_only; the loader checks first."""
    good = tt.save_exported(tt.make(tt.DictOut), (torch.randn(2, 6),), tmp_path / "good.pt2")
    marker = tmp_path / "code-ran"
    payload = io.BytesIO()
    torch.save(_TouchOnUnpickle(marker), payload)
    vdir = tmp_path / "1"
    vdir.mkdir()
    with zipfile.ZipFile(good) as zin, zipfile.ZipFile(vdir / "model.pt2", "w") as zout:
        for item in zin.infolist():
            swap = item.filename.endswith("data/sample_inputs/model.pt")
            zout.writestr(item, payload.getvalue() if swap else zin.read(item.filename))
    with pytest.raises(ModelLoadError, match=r"member 'data/sample_inputs/model\.pt'.*pickled Python objects"):
        _loader().load(_config(), vdir)
    assert not marker.exists()
    runner = _loader().load(_config(), _copy_to_version(good, tmp_path / "2"))
    assert [t.name for t in runner.outputs] == ["logits", "probs"]


def _copy_to_version(f: Path, vdir: Path) -> Path:
    vdir.mkdir()
    (vdir / "model.pt2").write_bytes(f.read_bytes())
    return vdir


def test_pickle_refused_even_if_only_the_model_config_opts_in(tmp_path: Path) -> None:
    # The repository refuses such a config before any loader runs; the loader does not rely on it.
    tt.save_pickled(tt.make(tt.DictOut), tmp_path / "model.pt")
    cfg = _config(allow_pickle=True, input=[{"name": "x", "datatype": "FP32", "shape": [1, 6]}])
    with pytest.raises(ModelLoadError, match="pickled Python objects"):
        _loader().load(cfg, tmp_path)
    runner = _loader(allow_pickle=True).load(cfg, tmp_path)
    assert [t.name for t in runner.outputs] == ["logits", "probs"]


def test_stated_outputs_are_checked_at_load(tmp_path: Path) -> None:
    tt.save_torchscript(tt.make(tt.TwoInTwoOut), tmp_path / "model.pt")
    inputs = [
        {"name": "image", "datatype": "FP32", "shape": [3, 8, 8]},
        {"name": "extra", "datatype": "FP32", "shape": [4]},
    ]
    one = [{"name": "logits", "datatype": "FP32", "shape": [3]}]
    with pytest.raises(ModelLoadError, match=r"returned 2 outputs \(output__0, output__1\) but config.toml lists 1"):
        _loader().load(_config(max_batch_size=2, input=inputs, output=one), tmp_path)
    wrong_type = [{"name": "a", "datatype": "FP32", "shape": [3]}, {"name": "b", "datatype": "INT64", "shape": [4]}]
    with pytest.raises(ModelLoadError, match="output 'b' is INT64, the model gives FP32"):
        _loader().load(_config(max_batch_size=2, input=inputs, output=wrong_type), tmp_path)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_cuda_device_refused_without_a_gpu(tmp_path: Path) -> None:
    tt.save_torchscript(tt.make(tt.TinyCNN), tmp_path / "model.pt")
    with pytest.raises(ModelLoadError, match="sees no CUDA GPU"):
        _loader().load(_config(device="cuda:0", input=[CNN_INPUT]), tmp_path)


def test_unknown_device_refused(tmp_path: Path) -> None:
    tt.save_torchscript(tt.make(tt.TinyCNN), tmp_path / "model.pt")
    with pytest.raises(ModelLoadError, match="device 'tpu'"):
        _loader().load(_config(device="tpu", input=[CNN_INPUT]), tmp_path)


def test_each_model_runs_on_its_own_thread_count(tmp_path: Path) -> None:
    """torch.set_num_threads looks global, but each model's worker threads keep their own count."""
    if not threads.per_thread():
        pytest.skip("this torch build's intra-op pool is process-wide (not OpenMP)")
    for name, n in (("one", 1), ("two", 2)):
        write_model(
            tmp_path / "models",
            name,
            files={"model.pt": tt.save_state_dict(tt.ThreadCount(), tmp_path / f"{name}.pt").read_bytes()},
            config={
                "threads": n,
                "max_batch_size": 4,
                "input": [{"name": "x", "datatype": "FP32", "shape": [1]}],
                "parameters": {"model_class": "dlinfer_torch.testing:ThreadCount"},
            },
        )
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 1], "data": [0.0]}]}
    seen = []
    with RunningNode(node_config(tmp_path / "models")) as node:
        for name in ("one", "two", "one", "two"):
            resp = requests.post(f"{node.url}/v2/models/{name}/infer", json=body, timeout=30)
            assert resp.status_code == 200, resp.text
            seen.append((name, resp.json()["outputs"][0]["data"][0]))
    assert seen == [("one", 1.0), ("two", 2.0), ("one", 1.0), ("two", 2.0)]


@pytest.mark.gpu
def test_served_on_cuda_matches_cpu(tmp_path: Path) -> None:
    cnn = tt.make(tt.TinyCNN, seed=8)
    write_model(
        tmp_path / "models",
        "gpu",
        files={"model.pt": tt.save_torchscript(cnn, tmp_path / "cnn.pt").read_bytes()},
        config={"max_batch_size": 8, "device": "cuda:0", "input": [CNN_INPUT]},
    )
    x = np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32)
    with RunningNode(node_config(tmp_path / "models")) as node:
        body = {"inputs": [{"name": "image", "datatype": "FP32", "shape": [2, 3, 16, 16], "data": x.ravel().tolist()}]}
        resp = requests.post(f"{node.url}/v2/models/gpu/infer", json=body, timeout=60)
    assert resp.status_code == 200, resp.text
    out = resp.json()["outputs"][0]
    with torch.inference_mode():
        expected = cnn(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(np.reshape(out["data"], out["shape"]), expected, atol=1e-4, rtol=0)

"""Sequence batching through a real node, driven by tritonclient over HTTP and gRPC.

The stateful model is the ``scheduler_plugins/accumulate.py`` backend: a running
sum per sequence, keyed by the CORRID control input and reset by START. Nothing
here waits on a timing: the idle-release test waits for a queued sequence to get
the slot an idle one held.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from dlinfer.errors import ConfigError
from dlinfer.model import model_config_from_dict
from dlinfer.testing import RunningNode, node_config, write_model

from .test_scheduler import PLUGINS_DIR, node_plugins

ACC = {"accumulate.toml": b""}


def controls(corrid: str = "UINT64") -> list[dict[str, Any]]:
    return [
        {"name": "START", "kind": "CONTROL_SEQUENCE_START", "int32_false_true": [0, 1]},
        {"name": "END", "kind": "CONTROL_SEQUENCE_END", "bool_false_true": [False, True]},
        {"name": "READY", "kind": "CONTROL_SEQUENCE_READY", "fp32_false_true": [0.0, 1.0]},
        {"name": "CORRID", "kind": "CONTROL_SEQUENCE_CORRID", "data_type": corrid},
    ]


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningNode]:
    root = tmp_path_factory.mktemp("models")
    write_model(
        root,
        "acc",
        1,
        ACC,
        config={"instance_count": 2, "max_batch_size": 4, "sequence_batching": {"control_input": controls()}},
    )
    write_model(
        root,
        "acc_str",
        1,
        ACC,
        config={
            "max_batch_size": 4,
            "parameters": {"corrid_datatype": "BYTES"},
            "sequence_batching": {"strategy": "oldest", "control_input": controls("BYTES")},
        },
    )
    write_model(
        root,
        "acc_idle",
        1,
        ACC,
        config={
            "instance_count": 1,
            "max_batch_size": 1,  # one slot: a second sequence waits for the first to go
            "sequence_batching": {"max_sequence_idle_microseconds": 200_000, "control_input": controls()},
        },
    )
    write_model(
        root,
        "acc_i32",
        1,
        ACC,
        config={
            "max_batch_size": 4,
            "parameters": {"corrid_datatype": "INT32"},
            "sequence_batching": {"control_input": controls("INT32")},
        },
    )
    write_model(
        root,
        "acc_ensemble",
        1,
        config={
            "format": "ensemble",
            "max_batch_size": 4,
            "input": [{"name": "IN", "datatype": "INT32", "shape": [1]}],
            "output": [{"name": "OUTPUT", "datatype": "INT32", "shape": [1]}],
            "ensemble": {"step": [{"model": "acc", "input_map": {"INPUT": "IN"}, "output_map": {"OUTPUT": "OUTPUT"}}]},
        },
    )
    cfg = node_config(root, plugins={"plugins_dir": str(PLUGINS_DIR)})
    with RunningNode(cfg, node_plugins(cfg)) as n:
        yield n


def http(node: RunningNode) -> httpclient.InferenceServerClient:
    return httpclient.InferenceServerClient(f"127.0.0.1:{node.config.server.http_port}")


def grpc(node: RunningNode) -> grpcclient.InferenceServerClient:
    return grpcclient.InferenceServerClient(f"127.0.0.1:{node.config.server.grpc_port}")


def step(client: Any, model: str, value: int, **sequence: Any) -> dict[str, np.ndarray]:
    """One request of a sequence through a tritonclient (http or grpc); the outputs by name."""
    mod = httpclient if isinstance(client, httpclient.InferenceServerClient) else grpcclient
    x = mod.InferInput("INPUT", [1, 1], "INT32")
    x.set_data_from_numpy(np.array([[value]], np.int32))
    result = client.infer(model, [x], **sequence)
    names = ("OUTPUT", "START_OUT", "END_OUT", "READY_OUT", "CORRID_OUT", "INSTANCE")
    return {n: result.as_numpy(n) for n in names}


@pytest.mark.parametrize("frontend", [http, grpc])
def test_interleaved_sequences_keep_their_own_sums_on_one_instance(node: RunningNode, frontend: Any) -> None:
    client = frontend(node)
    base = 1000 if frontend is http else 2000
    ids = [base + i for i in range(4)]
    seen: dict[int, list[dict[str, np.ndarray]]] = {i: [] for i in ids}
    for n in range(3):  # the four sequences interleaved, request by request
        for k, sid in enumerate(ids):
            seen[sid].append(
                step(client, "acc", 10 * k + n, sequence_id=sid, sequence_start=n == 0, sequence_end=n == 2)
            )
    for k, sid in enumerate(ids):
        outs = seen[sid]
        assert [int(o["OUTPUT"][0, 0]) for o in outs] == list(np.cumsum([10 * k, 10 * k + 1, 10 * k + 2]))
        assert [int(o["START_OUT"][0, 0]) for o in outs] == [1, 0, 0]
        assert [bool(o["END_OUT"][0, 0]) for o in outs] == [False, False, True]
        assert all(o["READY_OUT"].tolist() == [[1.0]] for o in outs)
        assert all(o["CORRID_OUT"].tolist() == [[sid]] and o["CORRID_OUT"].dtype == np.uint64 for o in outs)
        assert len({o["INSTANCE"][0, 0] for o in outs}) == 1  # every request of a sequence on one instance
    assert len({seen[sid][0]["INSTANCE"][0, 0] for sid in ids}) == 2  # spread over both instances


def test_concurrent_sequences_are_batched_in_order(node: RunningNode) -> None:
    """Requests of many sequences at once share batches; each sequence still sees its own order."""
    ids = [3000 + i for i in range(8)]  # eight sequences: every slot of both instances
    with ThreadPoolExecutor(8) as pool:

        def run(sid: int) -> list[int]:
            client = grpc(node)
            return [
                int(step(client, "acc", v, sequence_id=sid, sequence_start=v == 1, sequence_end=v == 5)["OUTPUT"][0, 0])
                for v in range(1, 6)
            ]

        sums = list(pool.map(run, ids))
    assert sums == [[1, 3, 6, 10, 15]] * 8


def test_string_ids_reach_a_bytes_corrid(node: RunningNode) -> None:
    for client in (http(node), grpc(node)):
        first = step(client, "acc_str", 5, sequence_id="user-7", sequence_start=True)
        last = step(client, "acc_str", 6, sequence_id="user-7", sequence_end=True)
        assert int(last["OUTPUT"][0, 0]) == 11
        assert first["CORRID_OUT"].tolist() == last["CORRID_OUT"].tolist() == [[b"user-7"]]


def test_misuse_is_invalid_argument(node: RunningNode) -> None:
    cases = [
        ({}, "must specify a non-zero or non-empty sequence_id"),
        ({"sequence_id": 4040}, "must specify sequence_start on the first request"),
        ({"sequence_id": "abc", "sequence_start": True}, "sequence_id must be an integer"),
    ]
    h, g = http(node), grpc(node)
    step(h, "acc", 1, sequence_id=4041, sequence_start=True, sequence_end=True)
    cases.append(({"sequence_id": 4041}, "is not active"))  # ended
    for params, message in cases:
        for client in (h, g):
            with pytest.raises(InferenceServerException, match=message) as err:
                step(client, "acc", 1, **params)
            assert err.value.status() in ("400", "StatusCode.INVALID_ARGUMENT")
    x = httpclient.InferInput("INPUT", [1, 1], "INT32")
    x.set_data_from_numpy(np.array([[1]], np.int32))
    start = httpclient.InferInput("START", [1, 1], "INT32")
    start.set_data_from_numpy(np.array([[1]], np.int32))
    with pytest.raises(InferenceServerException, match="is a sequence control input: the server fills it"):
        h.infer("acc", [x, start], sequence_id=4042, sequence_start=True)
    inputs = [t["name"] for t in h.get_model_metadata("acc")["inputs"]]
    assert inputs == ["INPUT"]


def test_an_id_out_of_the_corrid_range_is_invalid_argument(node: RunningNode) -> None:
    """An id the CORRID datatype cannot hold is refused up front, not failed (or wrapped) in the model."""
    for client in (http(node), grpc(node)):
        with pytest.raises(InferenceServerException, match="does not fit CORRID's INT32") as err:
            step(client, "acc_i32", 1, sequence_id=2**40, sequence_start=True)
        assert err.value.status() in ("400", "StatusCode.INVALID_ARGUMENT")
    out = step(http(node), "acc_i32", 3, sequence_id=2**31 - 1, sequence_start=True, sequence_end=True)
    assert out["CORRID_OUT"].tolist() == [[2**31 - 1]]


def test_an_ensemble_passes_its_sequence_to_a_stateful_step(node: RunningNode) -> None:
    """As in Triton, an ensemble's steps get the ensemble request's sequence_id and flags."""
    client = grpc(node)
    sums = []
    for n, value in enumerate((4, 5, 6)):
        x = grpcclient.InferInput("IN", [1, 1], "INT32")
        x.set_data_from_numpy(np.array([[value]], np.int32))
        result = client.infer("acc_ensemble", [x], sequence_id=6001, sequence_start=n == 0, sequence_end=n == 2)
        sums.append(int(result.as_numpy("OUTPUT")[0, 0]))
    assert sums == [4, 9, 15]


def test_an_idle_sequence_is_released_and_its_slot_reused(node: RunningNode) -> None:
    client = http(node)
    step(client, "acc_idle", 1, sequence_id=5001, sequence_start=True)  # holds the only slot, never ends
    # A new sequence waits for the slot: it runs only once 5001 is released for being idle.
    assert (
        int(step(client, "acc_idle", 7, sequence_id=5002, sequence_start=True, sequence_end=True)["OUTPUT"][0, 0]) == 7
    )
    with pytest.raises(InferenceServerException, match="is not active"):
        step(client, "acc_idle", 1, sequence_id=5001)


def test_sequence_batching_config_is_validated(tmp_path: Path) -> None:
    bad = [
        ({"control_input": [{"name": "S", "kind": "CONTROL_SEQUENCE_START"}]}, "exactly one of int32_false_true"),
        ({"control_input": [{"name": "C", "kind": "CONTROL_SEQUENCE_CORRID"}]}, "data_type: expected one of"),
        ({"control_input": [{"name": "S", "kind": "START", "int32_false_true": [0, 1]}]}, "kind: expected one of"),
        ({"strategy": "fifo"}, "strategy: expected one of 'direct', 'oldest'"),
        ({"max_candidate_sequences": 4}, 'strategy = "oldest"'),
        ({"control_input": controls() + controls()[:1]}, "one control_input per name"),
    ]
    for table, message in bad:
        with pytest.raises(ConfigError, match=message):
            model_config_from_dict({"sequence_batching": table}, "config.toml")
    write_model(
        tmp_path,
        "wrong",
        1,
        ACC,
        config={
            "sequence_batching": {
                "control_input": [{"name": "NOPE", "kind": "CONTROL_SEQUENCE_READY", "int32_false_true": [0, 1]}]
            }
        },
    )
    cfg = node_config(tmp_path, plugins={"plugins_dir": str(PLUGINS_DIR)})
    with RunningNode(cfg, node_plugins(cfg)) as n:
        index = {m["name"]: m for m in http(n).get_model_repository_index()}
    assert "control input 'NOPE'" in index["wrong"]["reason"]


def test_the_sequence_extension_is_announced(node: RunningNode) -> None:
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    http = httpclient.InferenceServerClient(node.url.removeprefix("http://"))
    assert "sequence" in http.get_server_metadata()["extensions"]
    grpc_client = grpcclient.InferenceServerClient(f"127.0.0.1:{node.config.server.grpc_port}")
    assert "sequence" in grpc_client.get_server_metadata(as_json=True)["extensions"]

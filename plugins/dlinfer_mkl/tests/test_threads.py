"""[plugins.mkl] settings: validated with file and key, applied only to unset variables."""

from __future__ import annotations

from pathlib import Path

import pytest

from dlinfer.api import ConfigError
from dlinfer.api.testing import node_config
from dlinfer_mkl.threads import apply_process_settings, physical_cores, settings_from


def test_settings_from_node_toml_table(tmp_path: Path) -> None:
    config = node_config(tmp_path, plugins={"mkl": {"intra_op": 2, "kmp_blocktime": 0}})
    s = settings_from(config)
    assert (s.intra_op, s.kmp_blocktime, s.given) == (2, 0, True)
    env = {"KMP_BLOCKTIME": "30"}  # the operator's own environment wins
    applied = apply_process_settings(s, env)
    assert env["KMP_BLOCKTIME"] == "30" and "KMP_BLOCKTIME" not in applied
    assert env["OMP_NUM_THREADS"] == "2" and env["TF_ENABLE_ONEDNN_OPTS"] == "1"
    assert env["KMP_AFFINITY"].startswith("granularity=fine")


def test_nothing_changes_without_the_table(tmp_path: Path) -> None:
    env: dict[str, str] = {}
    assert apply_process_settings(settings_from(node_config(tmp_path)), env) == {} and env == {}


@pytest.mark.parametrize(
    ("table", "message"),
    [({"intra_ops": 2}, "plugins.mkl.intra_ops is not a setting"), ({"kmp_blocktime": "1"}, "an integer >= 0")],
)
def test_bad_settings_name_the_key(tmp_path: Path, table: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        settings_from(node_config(tmp_path, plugins={"mkl": table}))


def test_physical_cores_counts_this_machine() -> None:
    import os

    assert 1 <= physical_cores() <= (os.cpu_count() or 1)

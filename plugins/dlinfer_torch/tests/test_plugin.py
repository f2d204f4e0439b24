"""The plugin as the core sees it: its catalogue entries, and a light entry point."""

from __future__ import annotations

import os
import subprocess
import sys

from dlinfer.api import Plugins, node_config_from_dict

LIGHT = """
import sys
from dlinfer.config import node_config_from_dict
from dlinfer.plugins import Plugins
plugins = Plugins(node_config_from_dict({})).load()
for hook in ("dlinfer_model_formats", "dlinfer_processors", "dlinfer_converters"):
    plugins.registry(hook)
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "cv2", "onnxruntime"))
print("LOADED=" + ",".join(sorted(plugins.registry("dlinfer_processors"))))
print("HEAVY=" + ",".join(heavy))
"""


def test_catalogues_name_the_torch_entries() -> None:
    plugins = Plugins(node_config_from_dict({})).load()
    formats = plugins.registry("dlinfer_model_formats")
    assert formats["torch"].distribution == "dlinfer-torch"
    assert set(formats["torch"].obj.formats) == {"torchscript", "torch_export", "pytorch_state_dict", "pytorch_pickle"}
    assert {"image", "topk", "argmax"} <= set(plugins.registry("dlinfer_processors"))
    converter = plugins.registry("dlinfer_converters")["torch-onnx"].obj
    assert converter.target_format == "onnx" and "torchscript" in converter.source_formats


def test_building_the_catalogues_imports_no_framework() -> None:
    # Only this plugin, so that another plugin's imports cannot be blamed on it.
    env = {**os.environ, "DLINFER_DISABLE_PLUGIN_AUTOLOAD": "1", "DLINFER_PLUGINS": "torch"}
    proc = subprocess.run([sys.executable, "-c", LIGHT], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "LOADED=argmax,image,topk\n" in proc.stdout, proc.stdout
    assert "HEAVY=\n" in proc.stdout, proc.stdout

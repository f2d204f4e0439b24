"""Custom operators in ONNX graphs, and the TensorRT plugins that implement them."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dlinfer.api import STANDARD_DOMAINS, ModelLoadError, custom_ops

__all__ = ["STANDARD_DOMAINS", "custom_ops", "missing_plugins", "plugin_creator", "register_plugins", "require_plugins"]

if TYPE_CHECKING:
    from dlinfer.api import Plugins

log = logging.getLogger("dlinfer.trt")


def missing_plugins(ops: Iterable[tuple[str, str]], registered: Iterable[str]) -> list[tuple[str, str]]:
    """Custom ops with no registered plugin (matched by op type, as the ONNX parser does)."""
    names = set(registered)
    return [(d, op) for d, op in ops if op not in names]


def require_plugins(model: Any, registered: Iterable[str]) -> None:
    """Refuse a graph with custom ops that no ``dlinfer_trt_plugins`` hook registered."""
    missing = missing_plugins(custom_ops(model), registered)
    if missing:
        listed = ", ".join(f"{op} (domain {d!r})" for d, op in missing)
        raise ModelLoadError(
            f"the ONNX graph uses custom operators with no TensorRT plugin: {listed}. Install a plugin "
            "distribution whose dlinfer_trt_plugins hook provides them (see docs/backends/tensorrt.md)"
        )


def plugin_creator(entry: Any) -> Any:
    """The creator object a ``dlinfer_trt_plugins`` entry stands for.

    ``entry.creator()`` when the entry has that factory: a light entry lets the hook
    module name its op without importing tensorrt, which only the factory does. Else a
    new instance when the entry is a creator class, else the entry itself. The creator
    must be named like the entry, since the ONNX parser looks plugins up by op type.
    """
    factory = getattr(entry, "creator", None)
    if callable(factory):
        creator = factory()
    elif isinstance(entry, type):
        creator = entry()
    else:
        creator = entry
    name = getattr(creator, "name", entry.name)
    if name != entry.name:
        raise ModelLoadError(
            f"TensorRT plugin {entry.name!r}: its creator is named {name!r}; the ONNX parser finds creators "
            "by the node's op type, so both must be the op type"
        )
    return creator


def register_plugins(entries: Iterable[Any]) -> list[str]:
    """Register plugin creators and plugin libraries with TensorRT; return the op names provided.

    Each entry has ``name`` (the ONNX op type); it either has ``library`` naming a
    ``.so`` file that registers its creators, or stands for a creator
    (see :func:`plugin_creator`).
    """
    import tensorrt as trt

    registry = trt.get_plugin_registry()
    trt.init_libnvinfer_plugins(trt.Logger(trt.Logger.WARNING), "")
    names = []
    for entry in entries:
        library = getattr(entry, "library", None)
        if library:
            if not Path(library).is_file():
                raise ModelLoadError(f"TensorRT plugin {entry.name!r}: library {library} does not exist")
            registry.load_library(str(library))
        else:
            creator = plugin_creator(entry)
            namespace = getattr(creator, "plugin_namespace", "")
            if not registry.register_creator(creator, namespace):
                log.info("TensorRT plugin %s was already registered", entry.name)
        names.append(entry.name)
    return names


def register_installed(plugins: Plugins) -> list[str]:
    """Register what the node's ``dlinfer_trt_plugins`` hooks provide, when TensorRT can run here.

    Called when dlinfer's plugins load (node start, every ``dlinfer-core`` command). A
    failure is logged, not raised: only the models whose graphs
    or engines use those operators fail, each with its own reason, when they load.
    """
    from .availability import status

    entries = plugins.registry("dlinfer_trt_plugins")
    if not entries or status()[0] is None:
        return []
    try:
        names = register_plugins(e.obj for e in entries.values())
    except Exception as exc:  # any failure of a third-party creator or library: keep the node up
        log.error("TensorRT operator plugins were not registered at start: %s", exc)
        return []
    log.info("registered TensorRT operator plugins: %s", ", ".join(names))
    return names

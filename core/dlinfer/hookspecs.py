"""Every hook a dlinfer plugin can implement.

This module is the plugin-author API. A plugin is any module or object with
functions named like these hooks and decorated with :data:`dlinfer.hookimpl`;
it is found through the ``dlinfer.plugins`` entry-point group (or a
``plugins_dir``). Built-in behaviour is registered through these same hooks.

Catalogue hooks (marked with :func:`catalogue`: ``dlinfer_model_formats``,
``dlinfer_converters``, ``dlinfer_optimizers``, ``dlinfer_codecs``,
``dlinfer_processors``) return lists of classes that each have a unique
``name``. The core calls them once at start and builds one registry per hook;
two classes with the same name are an error naming both distributions.

A plugin may declare hooks of its own (dlinfer-trt's ``dlinfer_trt_plugins``,
dlinfer-lb's ``dlinfer_balancers``) in ``dlinfer_addhooks``, as pytest plugins
do in ``pytest_addhooks``; they are documented in docs/hooks.md beside these.

Hook modules must stay light to import: import frameworks (torch, tensorflow,
tensorrt) inside the functions that need them, never at module top.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pluggy

if TYPE_CHECKING:
    import numpy as np
    from aiohttp import web

    from .config import NodeConfig
    from .dataplane import DataPlane
    from .model import Loader, ModelConfig, Runner
    from .plugins import Plugins
    from .repository import ModelRepository, ServedModel

hookspec = pluggy.HookspecMarker("dlinfer")
F = TypeVar("F", bound=Callable[..., Any])


def catalogue(spec: F) -> F:
    """Mark a hookspec as a catalogue: the core builds its registry at start, refusing duplicates."""
    spec.dlinfer_catalogue = True  # type: ignore[attr-defined]
    return spec


# --------------------------------------------------------------------------
# Lifecycle
# --------------------------------------------------------------------------


@hookspec(historic=True)
def dlinfer_addhooks(pluginmanager: pluggy.PluginManager) -> None:
    """Declare the hooks this plugin offers to other plugins.

    Called when the plugin is registered (historic: every plugin registered
    after the core's manager exists gets the call), before the core checks that
    every hook implementation has a spec. Call
    ``pluginmanager.add_hookspecs(module)`` with a module of ``@hookspec``
    functions (``dlinfer.hookspecs.hookspec``); mark catalogues with
    :func:`catalogue`. Implementations of those hooks may be registered before
    or after the declaring plugin. A plugin implementing a hook that no loaded
    plugin declares stops the node with a :class:`dlinfer.PluginLoadError`
    naming plugin and hook, unless the implementation is marked
    ``@hookimpl(optionalhook=True)`` (it is then ignored while the declaring
    plugin is absent) or the plugin is listed in ``[plugins] optional``.
    """


@hookspec
def dlinfer_addoption(parser: argparse.ArgumentParser) -> None:
    """Add command-line options to ``dlinfer-core``.

    Called once, after plugins are loaded and before the command line is parsed;
    ``parser`` is the ``serve`` command's parser. The parsed values arrive in
    ``dlinfer_options``. Prefer a ``[plugins.<name>]`` table in node.toml for
    anything an operator sets per deployment.
    """


@hookspec
def dlinfer_options(options: argparse.Namespace) -> None:
    """Receive the parsed ``dlinfer-core serve`` command line (including options
    added in ``dlinfer_addoption``). Called once, before the node starts.
    """


@hookspec
def dlinfer_unavailable() -> str | None:
    """Say why this plugin cannot work on this machine (e.g. no GPU), or None.

    ``dlinfer-core plugins list`` and ``GET /v2/-/plugins`` then show the plugin
    as ``unavailable`` with the reason. Called only when plugins are listed, so
    it may import heavy modules to find out.
    """


@hookspec(historic=True)
def dlinfer_configure(config: NodeConfig) -> None:
    """Validate and take the node configuration.

    Historic: a plugin registered late still receives the call. Raise
    :class:`dlinfer.ConfigError` naming the file and key for a bad
    ``[plugins.<name>]`` table; the node then exits with code 2.
    """


@hookspec(historic=True)
def dlinfer_plugins_loaded(plugins: Plugins) -> None:
    """Called once every plugin is registered and configured: when a node starts and in
    every ``dlinfer-core`` command (``models``, ``optimize``, ...), before any model loads.

    Historic: a plugin registered later still receives the call. Use it for process-wide
    set-up that needs other plugins' hooks (e.g. registering what another plugin's catalogue
    provides with a framework, so models that need it load everywhere).
    """


@hookspec
def dlinfer_startup(app: web.Application) -> Any:
    """Called when the HTTP application starts, before it accepts requests.

    May return an awaitable; the core awaits every one returned. Use it to
    open connections or start background tasks.
    """


@hookspec
def dlinfer_shutdown(app: web.Application) -> Any:
    """Called when the application stops, after in-flight requests finished.

    May return an awaitable; the core awaits every one returned.
    """


# --------------------------------------------------------------------------
# Loaders
# --------------------------------------------------------------------------


@catalogue
@hookspec
def dlinfer_model_formats() -> list[type[Loader]]:
    """Return loader classes (subclasses of :class:`dlinfer.Loader`).

    Each declares ``name``, the ``formats`` it claims and ``detect(path)``.
    A model whose config names no ``format`` goes to the first loader whose
    ``detect`` claims its version folder.
    """


@hookspec(firstresult=True)
def dlinfer_load_model(config: ModelConfig, path: Path, node_config: NodeConfig) -> Runner | None:
    """Load one version folder of a model into a :class:`dlinfer.Runner`.

    First non-None result wins. The core's own implementation runs last and
    dispatches to the registered loaders; implement this only to take over
    loading for some models (return None for the rest). Called in a worker
    thread. Raise :class:`dlinfer.ModelLoadError` with the reason on failure.
    """


@hookspec
def dlinfer_model_loaded(model: ServedModel) -> None:
    """A model version became ready (after optimizers ran), just before it takes requests.

    Called on the event loop. A version reloaded under the same number (its
    files changed) is announced again with the new model; no
    ``dlinfer_model_unloaded`` comes between, as the version is served throughout.
    """


@hookspec
def dlinfer_model_unloaded(name: str, version: int) -> None:
    """A model version stopped being served; its in-flight requests finished and its memory was released."""


@catalogue
@hookspec
def dlinfer_converters() -> list[type]:
    """Return model converter classes for ``dlinfer-core convert``.

    Each is a :class:`dlinfer.convert.Converter` subclass with ``name``,
    ``source_formats``, ``target_format`` and ``convert(src, dst, options)``;
    the ONNX export helpers of the torch/tf plugins and the Caffe converter
    are converters. The TensorRT builder takes their ONNX output.
    """


# --------------------------------------------------------------------------
# Optimizers
# --------------------------------------------------------------------------


@catalogue
@hookspec
def dlinfer_optimizers() -> list[type]:
    """Return optimizer classes (subclasses of :class:`dlinfer.optimize.Optimizer`).

    Each has ``name``, ``applies_to(runner, ctx) -> bool`` and
    ``optimize(runner, ctx) -> Runner``; ``ctx`` (an ``OptimizeContext``) carries
    the model config, the version folder, the sample inputs and the step's
    ``[optimize_options.<name>]`` table. After a version loads, its
    ``optimize = [...]`` list runs in order, in the loading worker thread. Each
    step's outputs on the samples are compared with the model as loaded; a step
    that raises, changes the tensors or leaves ``[optimize_tolerance]`` is
    rejected with a logged reason and the runner before it is kept.
    ``reduced_precision = True`` marks bf16/int8-style optimizers, which carry
    their own default ``tolerance``.
    """


# --------------------------------------------------------------------------
# Protocol frontends and codecs
# --------------------------------------------------------------------------


@hookspec
def dlinfer_routes(app: web.Application, repository: ModelRepository) -> None:
    """Add HTTP endpoints to the node's aiohttp application.

    Called once while the application is built. The V2 protocol itself is
    added through this hook by a built-in plugin. Handlers answer through the
    node's data plane, ``app[STATE]`` (a ``DataPlane``, both from
    ``dlinfer.api.frontend``: ``admit(name, version)`` before reading the body,
    then ``lease.infer(request)``), so readiness, admission, limits and deadlines
    match every other frontend; they must never block the event loop. Add nothing
    when ``app[STATE].forwarding`` is true (a gateway answers the protocols).
    """


@hookspec
def dlinfer_http_middlewares(config: NodeConfig) -> list[Any]:
    """Return aiohttp middlewares (``@aiohttp.web.middleware`` functions) for the node's HTTP
    application, the gateway's included (dlinfer-lb serves from the same application).

    Called once while the application is built. Each plugin's list keeps its order, the first
    outermost; between plugins, the order is the hook's call order (``tryfirst``/``trylast``
    place yours). They run inside the core's error middleware, so a :class:`dlinfer.DlinferError`
    they raise (e.g. :class:`dlinfer.errors.Unauthenticated`, 401) or an
    ``aiohttp.web.HTTPException`` becomes the core's JSON error response; and outside the
    request-body budget, so a request they refuse never holds any of it and its body is never
    read. Errors of the handler reach them as exceptions, before they become responses. Must
    not block the event loop.
    """


@hookspec
def dlinfer_grpc_services(server: Any, repository: ModelRepository, state: DataPlane) -> None:
    """Add servicers to the node's ``grpc.aio`` server (V2 itself, TF-Serving's
    PredictionService, ...). Called once before the gRPC server starts; handlers
    must not block the event loop.

    ``state`` is the node's data plane (``dlinfer.api.frontend.DataPlane``):
    readiness (``state.ready``, ``state.ready_model(name, version)``), admission
    (``with state.admit(name, version) as lease: await lease.infer(request,
    deadline_s)``), metadata and control, the same HTTP answers from, so the
    protocols agree while the node starts, drains or is full. Add nothing when
    ``state.forwarding`` is true.
    """


@hookspec
def dlinfer_openapi(spec: dict[str, Any], app: web.Application) -> None:
    """Describe the HTTP endpoints this plugin added in ``dlinfer_routes``.

    Called once per application, after every route was added, the first time
    the OpenAPI 3.1 document is asked for (``GET /v2/-/openapi.json``,
    ``dlinfer-core openapi``). Add path items to ``spec["paths"]`` (keys are
    aiohttp's canonical paths, e.g. ``/v2/models/{model}``) and schemas to
    ``spec["components"]["schemas"]``; reuse the core's components with
    ``{"$ref": "#/components/schemas/Error"}`` (see
    :mod:`dlinfer.server.openapi`). Look at ``app`` to describe only the
    routes actually added. A test fails when a registered route has no entry.
    """


@catalogue
@hookspec
def dlinfer_codecs() -> list[type]:
    """Return request/response codec classes for the V2 HTTP endpoint.

    Each has ``name``, ``accepts(content_type, headers) -> bool``,
    ``decode(body, headers) -> InferenceRequest`` and
    ``encode(response, request) -> (body, headers)``. The first codec whose
    ``accepts`` is true for a request decodes it; JSON is built in.
    """


# --------------------------------------------------------------------------
# Pre/post-processing
# --------------------------------------------------------------------------


@catalogue
@hookspec
def dlinfer_processors() -> list[type]:
    """Return processor classes a model config can name in ``preprocess`` or
    ``postprocess``.

    Each has ``name`` and ``__call__(tensors: dict[str, ndarray], config) ->
    dict[str, ndarray]``; it runs in the model's worker thread. One instance
    serves one model version. Optionally a pre-processor has
    ``request_inputs(inputs: list[TensorSpec], config) -> list[TensorSpec]`` and a
    post-processor ``response_outputs(outputs, config) -> list[TensorSpec]``: called
    once at load, they say which tensors clients send and receive instead of the
    model's own (metadata and request checks follow them) and may raise
    :class:`dlinfer.ModelLoadError` for bad settings.
    """


# --------------------------------------------------------------------------
# Observability
# --------------------------------------------------------------------------


@hookspec(firstresult=True)
def dlinfer_infer(model: ServedModel, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run one (possibly batched) inference; called in the model's worker thread.

    The core's implementation calls the model's runner. Implement it with
    ``@hookimpl(wrapper=True)`` to time or trace every inference::

        @hookimpl(wrapper=True)
        def dlinfer_infer(model, inputs):
            t0 = time.perf_counter()
            outputs = yield
            record(model.name, time.perf_counter() - t0)
            return outputs
    """

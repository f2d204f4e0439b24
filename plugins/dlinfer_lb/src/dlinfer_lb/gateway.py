"""Gateway mode: the V2 HTTP API answered by forwarding to the nodes.

Clients see the same endpoints as on a node: health, server and model
metadata, model readiness and config, inference, the repository index
(aggregated over the nodes) and model control (fanned out to every node).
On top: ``GET /v2/-/nodes`` (node status) and ``POST /v2/-/nodes``
(self-registration with a heartbeat TTL and a shared token).
"""

from __future__ import annotations

import asyncio
import hmac
import inspect
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from dlinfer.api import ConfigError, DlinferError, InvalidInput, NodeConfig, Plugins, Unauthenticated, Unavailable
from dlinfer.api.frontend import (
    CONFIG,
    PLUGINS,
    STATE,
    check_name,
    index_ready_only,
    json_response,
    read_body,
    version_arg,
)
from dlinfer.api.frontend import v2_server_routes as server_routes

from .health import ActiveChecker, OutlierDetector
from .membership import Membership, Node
from .metrics import GatewayMetrics
from .proxy import Proxy, RetryBudget, Route
from .settings import (
    PREFIX,
    LbSettings,
    NodeEntry,
    RoutePolicy,
    check_target,
    check_url,
    client_tls,
    node_file_path,
    policy_for,
)
from .stats import merge

log = logging.getLogger("dlinfer.lb")

#: Name of core's metrics built-in, whose registry and ``/metrics`` the gateway shares.
CORE_METRICS_PLUGIN = "dlinfer.server.metrics"


class Gateway:
    """Everything a gateway holds: nodes, health, strategies, proxy, metrics."""

    def __init__(self, config: NodeConfig, settings: LbSettings, plugins: Plugins, registry: CollectorRegistry) -> None:
        self.config = config
        self.settings = settings
        self.strategies = {name: e.obj for name, e in plugins.registry("dlinfer_balancers").items()}
        self._check_strategies()
        self.metrics = GatewayMetrics(registry)
        self.tls = client_tls(config, settings)
        self.membership = Membership(settings, node_file_path(config, settings), self._opened, self._closed)
        self.checker = ActiveChecker(self.membership, settings.health)
        self.outlier = OutlierDetector(self.membership, settings.outlier, self._ejected)
        self.proxy = Proxy(
            self.membership, self.outlier, self.metrics, RetryBudget(settings.retry_budget, settings.min_retries_per_s)
        )
        self._routes: dict[str, Route] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._channels: dict[str, tuple[str, Any]] = {}  # url -> (grpc target, grpc.aio channel)

    def _check_strategies(self) -> None:
        choices = ", ".join(sorted(self.strategies))
        named = [(f"{PREFIX}.strategy", self.settings.strategy)] + [
            (f"{PREFIX}.models.{m}.strategy", p.strategy) for m, p in self.settings.models.items() if p.strategy
        ]
        for key, name in named:
            if name not in self.strategies:
                raise ConfigError(f"{self.config.source}: {key}: unknown strategy {name!r}; installed: {choices}")

    def route(self, model: str) -> Route:
        """The model's policy and strategy, made on its first request. A model no
        node knows gets none (404), so client-chosen names cannot grow this table."""
        route = self._routes.get(model)
        if route is None:
            if not self.membership.knows(model):
                raise self.proxy.no_candidate(model, None)
            policy = policy_for(self.settings, model)
            route = self._routes[model] = Route(policy, make_strategy(self.strategies[policy.strategy], policy))
        return route

    def has_route(self, model: str) -> bool:
        return model in self._routes

    # ------------------------------------------------------------ node pools

    def _opened(self, node: Node) -> None:
        node.session = aiohttp.ClientSession(
            base_url=node.url,
            connector=aiohttp.TCPConnector(limit=self.settings.max_connections, ssl=self.tls.context),
            auto_decompress=False,  # bodies pass through as the node encoded them
            cookie_jar=aiohttp.DummyCookieJar(),  # nodes set no cookies; skip the per-request jar work
            skip_auto_headers=("User-Agent",),
        )
        self.metrics.healthy.labels(node.url).set_function(lambda: node.admitted(time.monotonic()))
        self.metrics.outstanding.labels(node.url).set_function(lambda: node.outstanding)
        self._spawn(self.checker.check(node))

    def _closed(self, node: Node) -> None:
        self.metrics.forget(node.url)
        channel = self._channels.pop(node.url, None)
        self._spawn(_close_when_idle(node, channel[1] if channel else None))

    def grpc_channel(self, node: Node) -> Any:
        """The node's pooled gRPC channel, opened on first use."""
        held = self._channels.get(node.url)
        if held is not None and held[0] == node.grpc:
            return held[1]
        import grpc

        limit = self.config.limits.max_body_bytes
        options = [("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit)]
        if node.url.startswith("https://"):  # a node served over TLS uses it on both ports
            credentials = grpc.ssl_channel_credentials(self.tls.ca, self.tls.key, self.tls.cert)
            channel = grpc.aio.secure_channel(node.grpc, credentials, options=options)
        else:
            channel = grpc.aio.insecure_channel(node.grpc, options=options)
        if held is not None:
            self._spawn(held[1].close())
        self._channels[node.url] = (node.grpc, channel)
        return channel

    def _ejected(self, node: Node) -> None:
        self.metrics.ejections.labels(node.url).inc()

    def _spawn(self, coro: Any) -> None:
        try:
            task = asyncio.get_running_loop().create_task(coro)
        except RuntimeError:  # no loop: the gateway is not started, nothing to do yet
            coro.close()
            return
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------- lifecycle

    async def lifecycle(self, app: web.Application) -> AsyncIterator[None]:
        self.membership.load_static()
        self.membership.reload_file()
        await self.checker.check_all()
        loops = [self.checker.run(lambda: self.membership.expire(time.monotonic()))]
        if self.membership.node_file is not None:
            loops.append(self.membership.watch_file())
        background = [asyncio.create_task(c, name="dlinfer-lb") for c in loops]
        log.info("gateway started with %d nodes", len(self.membership.nodes))
        yield
        for task in background:
            task.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*background, *self._tasks, return_exceptions=True)
        for node in list(self.membership.nodes.values()):
            if node.session is not None:
                await node.session.close()
        for _, channel in self._channels.values():
            await channel.close()

    def ready(self) -> bool:
        now = time.monotonic()
        return any(n.admitted(now) for n in self.membership.nodes.values())

    # ------------------------------------------------------------- aggregates

    def index(self, ready_only: bool) -> list[dict[str, Any]]:
        """The repository index over every node: a version is READY if some
        admitted node has it ready; otherwise it shows one node's state and reason."""
        now = time.monotonic()
        rows: dict[tuple[str, str | None], dict[str, Any]] = {}
        for node in self.membership.nodes.values():
            admitted = node.admitted(now)
            for row in node.index:
                if row.get("state") == "READY" and not admitted:
                    row = {**row, "state": "UNAVAILABLE", "reason": f"node {node.url} does not take traffic"}
                key = (row.get("name", ""), row.get("version"))
                if key not in rows or row.get("state") == "READY":
                    rows[key] = row
        versioned = {name for name, version in rows if version is not None}
        out = [r for (name, version), r in rows.items() if version is not None or name not in versioned]
        if ready_only:
            out = [r for r in out if r.get("state") == "READY"]
        return sorted(out, key=lambda r: (r.get("name", ""), int(r.get("version") or 0)))

    async def statistics(self, model: str, version: str | None) -> dict[str, Any]:
        """The statistics extension summed over the admitted nodes that have ``model`` (every
        model when empty), with the nodes that answered and the ones that did not."""
        now = time.monotonic()
        nodes = [
            n
            for n in self.membership.nodes.values()
            if n.admitted(now) and n.session is not None and (not model or n.serves(model, version))
        ]
        if model and not nodes:
            raise self.proxy.no_candidate(model, version)
        path = "/v2/models/stats"
        if model:
            path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/stats"
        timeout = aiohttp.ClientTimeout(total=self.settings.health.timeout_s)
        answered: dict[str, list[dict[str, Any]]] = {}
        failed: dict[str, str] = {}
        for node, status, body in await self._each(nodes, "GET", path, timeout=timeout):
            if status != 200:
                failed[node.url] = f"answered {status}: {_reason(body)}"
            else:
                try:
                    answered[node.url] = orjson.loads(body)["model_stats"]
                except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
                    failed[node.url] = f"{type(exc).__name__}: {exc}"
        for url, reason in failed.items():
            log.warning("statistics from node %s left out: %s", url, reason)
        return {"model_stats": merge(answered.values()), "nodes": sorted(answered), "nodes_failed": failed}

    async def _each(self, nodes: list[Node], method: str, path: str, **kwargs: Any) -> list[tuple[Node, int, bytes]]:
        """Send one request to every node at once: each node's status and body, or 502 and the
        error (as a JSON ``error``) when the node could not be reached."""

        async def one(node: Node) -> tuple[Node, int, bytes]:
            assert node.session is not None
            try:
                async with node.session.request(method, path, **kwargs) as r:
                    return node, r.status, await r.read()
            except (aiohttp.ClientError, TimeoutError) as exc:
                return node, 502, orjson.dumps({"error": f"{type(exc).__name__}: {exc}"})

        return await asyncio.gather(*(one(n) for n in nodes))

    async def control(self, request: web.Request, action: str, model: str) -> web.Response:
        """Load or unload a model on every healthy node; the first failure is returned with its node."""
        headers = {k: v for k, v in request.headers.items() if k.lower() in ("authorization", "content-type")}
        status, error = await self.control_nodes(action, model, headers, await read_body(request))
        return json_response({} if status == 200 else {"error": error}, status)

    async def control_nodes(self, action: str, model: str, headers: dict[str, str], body: bytes) -> tuple[int, str]:
        """Send a load/unload to every healthy node: (200, "") or the first failure's status and reason."""
        nodes = [n for n in self.membership.nodes.values() if n.healthy and n.session is not None]
        if not nodes:
            raise Unavailable("no healthy node to send the model control request to")

        path = f"/v2/repository/models/{model}/{action}"
        results = await self._each(nodes, "POST", path, data=body, headers=headers)
        await asyncio.gather(*(self.checker.check(n) for n in nodes))  # see the new state at once
        for node, status, content in results:
            if status != 200:
                return status, f"node {node.url}: {_reason(content)}"
        return 200, ""


def _reason(body: bytes) -> str:
    """A node's error answer: its JSON ``error``, else the start of the body."""
    try:
        return str(orjson.loads(body).get("error", ""))
    except (orjson.JSONDecodeError, AttributeError):
        return body[:200].decode("utf-8", "replace")


def make_strategy(cls: type, policy: RoutePolicy) -> Any:
    """One strategy instance for a model: ``cls(policy=...)`` when the class takes
    a ``policy`` (the built-ins do), else ``cls()``."""
    try:
        params = list(inspect.signature(cls).parameters.values())
    except (TypeError, ValueError):
        params = []
    if any(p.name == "policy" or p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return cls(policy=policy)
    return cls()


async def _close_when_idle(node: Node, channel: Any = None, grace_s: float = 30.0) -> None:
    """Close a removed node's pools once its in-flight requests finished."""
    until = time.monotonic() + grace_s
    try:
        while node.outstanding and time.monotonic() < until:
            await asyncio.sleep(0.05)
    finally:  # also when the gateway stops meanwhile
        if node.session is not None:
            await node.session.close()
        if channel is not None:
            await channel.close()


GATEWAY = web.AppKey("lb_gateway", Gateway)
routes = web.RouteTableDef()


def _model_args(request: web.Request) -> tuple[str, str | None]:
    version = version_arg(request.match_info.get("version"))
    return check_name(request.match_info["model"]), str(int(version)) if version else None


async def _forward(request: web.Request, body: bytes | None = None) -> web.StreamResponse:
    gw = request.app[GATEWAY]
    model, version = _model_args(request)
    code = "500"
    try:
        response = await gw.proxy.forward(request, gw.route(model), model, version, body)
        code = str(response.status)
        return response
    except DlinferError as exc:
        code = str(exc.http_status)
        raise
    finally:
        # Only models that have a route get their own series: client-chosen names must not grow /metrics.
        gw.metrics.requests.labels(model if gw.has_route(model) else "", code).inc()


# Before /v2/models/{model}, which would take "stats" for a model name.
@routes.get("/v2/models/stats")
@routes.get("/v2/models/{model}/stats")
@routes.get("/v2/models/{model}/versions/{version}/stats")
async def model_statistics(request: web.Request) -> web.Response:
    model, version = _model_args(request) if "model" in request.match_info else ("", None)
    return json_response(await request.app[GATEWAY].statistics(model, version))


#: TF-Serving's REST API (answered by nodes with dlinfer-tf), forwarded like V2.
TFS_MODEL = "/v1/models/{model:[^/:]+}"
TFS_VERSION = TFS_MODEL + "/versions/{version:[0-9]+}"
TFS_VERB = ":{verb:predict|classify|regress}"


@routes.get("/v2/models/{model}")
@routes.get("/v2/models/{model}/versions/{version}")
@routes.get("/v2/models/{model}/config")
@routes.get("/v2/models/{model}/versions/{version}/config")
@routes.get(TFS_MODEL)
@routes.get(TFS_VERSION)
@routes.get(TFS_MODEL + "/metadata")
@routes.get(TFS_VERSION + "/metadata")
async def model_metadata(request: web.Request) -> web.StreamResponse:
    return await _forward(request)


@routes.get("/v2/models/{model}/ready")
@routes.get("/v2/models/{model}/versions/{version}/ready")
async def model_ready(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    model, version = _model_args(request)
    state = request.app[STATE]
    if state.draining:
        return json_response({"name": model, "ready": False, "error": state.not_ready_reason}, 400)
    if gw.membership.candidates(model, version, time.monotonic()):
        return json_response({"name": model, "ready": True})
    exc = gw.proxy.no_candidate(model, version)
    if exc.http_status == 404:
        raise exc
    return json_response({"name": model, "ready": False, "error": exc.message}, 400)


@routes.post("/v2/models/{model}/infer")
@routes.post("/v2/models/{model}/versions/{version}/infer")
@routes.post(TFS_MODEL + TFS_VERB)
@routes.post(TFS_VERSION + TFS_VERB)
async def infer(request: web.Request) -> web.StreamResponse:
    if request.app[STATE].draining:
        raise Unavailable("server is shutting down")
    _model_args(request)  # a bad name or version is refused before the body is read
    # Decompressed here (and bounded by limits.max_body_bytes); the nodes get it plain.
    return await _forward(request, await read_body(request))


@routes.post("/v2/repository/index")
async def repository_index(request: web.Request) -> web.Response:
    return json_response(request.app[GATEWAY].index(await index_ready_only(request)))


@routes.post("/v2/repository/models/{model}/load")
async def repository_load(request: web.Request) -> web.Response:
    return await request.app[GATEWAY].control(request, "load", check_name(request.match_info["model"]))


@routes.post("/v2/repository/models/{model}/unload")
async def repository_unload(request: web.Request) -> web.Response:
    return await request.app[GATEWAY].control(request, "unload", check_name(request.match_info["model"]))


@routes.get("/v2/-/nodes")
async def list_nodes(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    now = time.monotonic()
    doc: dict[str, Any] = {"nodes": [n.status(now) for n in gw.membership.nodes.values()]}
    if gw.membership.node_file is not None:
        doc["node_file"] = {"path": str(gw.membership.node_file), "error": gw.membership.node_file_error}
    return json_response(doc)


@routes.post("/v2/-/nodes")
async def register_node(request: web.Request) -> web.Response:
    """A node's heartbeat: ``{"url": ..., "weight": 1, "ttl_s": 15}``; ``ttl_s = 0`` deregisters."""
    gw = request.app[GATEWAY]
    token = gw.settings.registration_token
    if not token:
        raise Unauthenticated(f"node registration is off on this gateway (set {PREFIX}.registration_token)")
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise Unauthenticated(
            "node registration needs 'Authorization: Bearer <token>' with the gateway's registration token"
        )
    try:
        doc = orjson.loads(await request.read())
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"malformed JSON: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("url"), str) or not isinstance(doc.get("grpc", ""), str):
        raise InvalidInput('expected {"url": "http://host:port", "grpc": "host:port", "weight": 1, "ttl_s": 15}')
    weight, ttl_s = doc.get("weight", 1), doc.get("ttl_s", 15)
    if isinstance(weight, bool) or not isinstance(weight, int) or not 1 <= weight <= 10_000:
        raise InvalidInput("'weight' must be an integer from 1 to 10000")
    if isinstance(ttl_s, bool) or not isinstance(ttl_s, int | float) or not 0 <= ttl_s <= 3600:
        raise InvalidInput("'ttl_s' must be a number of seconds from 0 to 3600")
    try:
        url = check_url(doc["url"], "url")
        target = check_target(doc["grpc"], "grpc") if doc.get("grpc") else ""
    except ConfigError as exc:
        raise InvalidInput(exc.message) from None
    node = gw.membership.register(NodeEntry(url, weight, target), float(ttl_s))
    if node is None:
        return json_response({"url": url, "registered": False})
    if not node.healthy:
        await gw.checker.check(node)
    return json_response({"url": url, "registered": True, "ttl_s": ttl_s, "admitted": node.admitted(time.monotonic())})


def install(app: web.Application, repository: Any, settings: LbSettings) -> None:
    """Turn ``app`` into a gateway: routes, node pools, health checks."""
    plugins = app[PLUGINS]
    core_metrics = plugins.pm.get_plugin(CORE_METRICS_PLUGIN)
    shared: CollectorRegistry | None = getattr(getattr(core_metrics, "metrics", None), "registry", None)
    own_metrics = shared is None
    registry = CollectorRegistry() if shared is None else shared
    gateway = Gateway(app[CONFIG], settings, plugins, registry)
    app[GATEWAY] = gateway
    from .grpc_proxy import GrpcGateway

    # A plugin object bound to this gateway, so that the gRPC hook reaches it without globals.
    plugins.register(GrpcGateway(gateway), "lb.grpc", "dlinfer-lb")
    # Server metadata, health and plugin listing are the node's own handlers; the gateway is
    # ready only while some node is admitted.
    app[STATE].checks.append(gateway.ready)
    app[STATE].forwarding = True  # the node's own V2 and TF-Serving frontends stay off
    app.add_routes(server_routes)
    app.add_routes(routes)
    if own_metrics:

        async def metrics(request: web.Request) -> web.Response:
            return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

        app.router.add_get("/metrics", metrics)
    app.cleanup_ctx.append(gateway.lifecycle)

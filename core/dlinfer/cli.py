"""``dlinfer-core``: serve models, list plugins, check a repository."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from . import __version__
from .config import NodeConfig, load_node_config
from .errors import ConfigError, DlinferError, PluginLoadError
from .logs import setup_logging
from .plugins import Plugins

EPILOG = """\
examples:
  dlinfer-core --config node.toml                 serve the repository named in node.toml
  dlinfer-core --model-repository ./models --port 9000
  dlinfer-core plugins list                       show installed plugins and their hooks
  dlinfer-core models --config node.toml          load every model once and report errors
  dlinfer-core optimize resnet50 --config node.toml   try optimizers, record the fastest valid one

  curl -s localhost:8000/v2/models/mymodel/infer -d '{"inputs": [{"name": "x",
       "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}'
"""

COMMANDS = ("serve", "plugins", "models", "convert", "optimize", "openapi")


def _common() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--config", metavar="FILE", help="node.toml to read (default: built-in defaults)")
    p.add_argument("--host", help="override server.host")
    p.add_argument("--port", type=int, help="override server.http_port")
    p.add_argument("--grpc-port", type=int, help="override server.grpc_port")
    p.add_argument("--model-repository", metavar="DIR", help="override repository.path")
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"), help="override logging.level")
    return p


def _config_from(ns: argparse.Namespace) -> NodeConfig:
    repo = str(Path(ns.model_repository).resolve()) if ns.model_repository else None
    return load_node_config(
        ns.config,
        **{
            "server.host": ns.host,
            "server.http_port": ns.port,
            "server.grpc_port": ns.grpc_port,
            "repository.path": repo,
            "logging.level": ns.log_level,
        },
    )


def build_parser(plugins: Plugins | None = None) -> argparse.ArgumentParser:
    common = _common()
    parser = argparse.ArgumentParser(
        prog="dlinfer-core",
        description="dlinfer: serve TensorFlow, PyTorch, Caffe and ONNX models over the KServe V2 protocol.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"dlinfer {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve = sub.add_parser("serve", parents=[common], help="serve models (the default command)")
    plugins_p = sub.add_parser("plugins", parents=[common], help="inspect plugins")
    plugins_p.add_argument("action", choices=["list"], help="list installed plugins")
    plugins_p.add_argument("--json", action="store_true", help="print JSON")
    sub.add_parser("openapi", parents=[common], help="print the node's OpenAPI 3.1 document (JSON)")
    models = sub.add_parser("models", parents=[common], help="load each model once and report its state")
    models.add_argument("--json", action="store_true", help="print JSON")
    conv = sub.add_parser("convert", parents=[common], help="convert a model (e.g. to ONNX)")
    conv.add_argument("src", type=Path, help="model file or version folder")
    conv.add_argument("--from", dest="source", help="source format (default: detected)")
    conv.add_argument("--to", dest="target", default="onnx", help="target format (default: onnx)")
    conv.add_argument("-o", "--output", type=Path, help="output file (default: beside the source)")
    conv.add_argument("--opset", type=int, help="ONNX opset")
    conv.add_argument("--model-config", type=Path, help="the model's config.toml (inputs, shapes)")
    conv.add_argument("--static-batch", action="store_true", help="keep the batch dimension fixed")
    conv.add_argument("--no-validate", action="store_true", help="skip comparing outputs")
    conv.add_argument(
        "--option", action="append", default=[], metavar="KEY=VALUE", help="converter-specific option (repeatable)"
    )
    opt = sub.add_parser(
        "optimize", parents=[common], help="try optimizer pipelines on a model and record the fastest valid one"
    )
    opt.add_argument("model", help="model name in the repository")
    opt.add_argument("--version", dest="model_version", type=int, help="version folder (default: the latest)")
    opt.add_argument(
        "--candidate",
        action="append",
        default=[],
        metavar="A,B",
        help="a pipeline to try, optimizer names joined by commas (repeatable; default: every installed one)",
    )
    opt.add_argument("--reduced-precision", action="store_true", help="also try bf16/int8 (numerics change)")
    opt.add_argument(
        "--batch-sizes",
        default="",
        help="latency at the first, throughput at the last (default: 1 and the model's largest preferred "
        "dynamic batch, else 8, at most its max_batch_size)",
    )
    opt.add_argument("--min-seconds", type=float, default=1.0, help="time each variant at least this long per batch")
    opt.add_argument(
        "--prefer",
        choices=("balanced", "latency", "throughput"),
        default="balanced",
        help="rank variants by batch-1 latency, by throughput at the largest batch, or both equally (default)",
    )
    opt.add_argument("--dry-run", action="store_true", help="report only; leave config.toml as it is")
    if plugins is not None:
        plugins.hook.dlinfer_addoption(parser=serve)
    return parser


def _normalise(argv: list[str]) -> list[str]:
    """``serve`` is the default command."""
    if not argv or (argv[0] not in COMMANDS and argv[0] not in ("-h", "--help", "--version")):
        return ["serve", *argv]
    return argv


def cmd_plugins(plugins: Plugins, ns: argparse.Namespace) -> int:
    infos = plugins.list()
    if ns.json:
        print(orjson.dumps([i.to_json() for i in infos], option=orjson.OPT_INDENT_2).decode())
        return 0
    rows = [
        (
            i.name,
            i.distribution,
            i.version,
            i.status,
            "; ".join(f"{kind}: {', '.join(names)}" for kind, names in i.provides.items()) or "-",
            "; ".join(filter(None, [", ".join(i.hooks), i.error])),
        )
        for i in infos
    ]
    _table(("name", "distribution", "version", "status", "provides", "hooks"), rows)
    return 0


def cmd_models(config: NodeConfig, plugins: Plugins, ns: argparse.Namespace) -> int:
    from .repository import ModelRepository

    async def run() -> list[dict[str, Any]]:
        repo = ModelRepository(config, plugins)
        for name in repo.names():
            try:
                await repo.load(name)
            except DlinferError:
                pass  # the reason is in the index
        index = repo.index()
        await repo.close()
        for row in index:
            if row["reason"] == "unloaded":
                row["state"], row["reason"] = "READY", ""
        return index

    plugins.check_registries()
    index = asyncio.run(run())
    if ns.json:
        print(orjson.dumps(index, option=orjson.OPT_INDENT_2).decode())
    else:
        print(f"repository: {config.repository_path}")
        _table(
            ("model", "version", "state", "reason"),
            [(r["name"], r.get("version", "-"), r["state"], r["reason"]) for r in index],
        )
    return 0 if all(r["state"] == "READY" for r in index) else 1


def cmd_convert(plugins: Plugins, ns: argparse.Namespace) -> int:
    from .convert import ConvertOptions, detect_format, find_converter
    from .model import ModelConfig, model_config_from_dict
    from .settings import read_toml

    src: Path = ns.src
    if not src.exists():
        raise ConfigError(f"{src}: no such file or folder")
    source = ns.source or detect_format(plugins, src)
    converter = find_converter(plugins, source, ns.target)
    model_config = (
        model_config_from_dict(read_toml(ns.model_config), ns.model_config) if ns.model_config else ModelConfig()
    )
    extra = {}
    for item in ns.option:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--option {item!r}: expected KEY=VALUE")
        extra[key] = value
    options = ConvertOptions(
        opset=ns.opset,
        dynamic_batch=not ns.static_batch,
        validate=not ns.no_validate,
        extra=extra,
        model_config=model_config,
    )
    dst = ns.output or (src if src.is_dir() else src.parent) / f"model.{ns.target}"
    result = converter.convert(src, dst, options)
    print(f"converted {src} ({source}) -> {result.output} ({ns.target}) with {converter.name}")
    if result.max_abs_error is not None:
        print(f"validation: max abs error {result.max_abs_error:.3g}, max rel error {result.max_rel_error:.3g}")
    for note in result.notes:
        print(f"note: {note}")
    return 0


def cmd_optimize(config: NodeConfig, plugins: Plugins, ns: argparse.Namespace) -> int:
    import attrs

    from .optimize import (
        OptimizeContext,
        autotune,
        best_variant,
        candidate_pipelines,
        default_batch_sizes,
        record_pipeline,
    )
    from .repository import ModelRepository, safe_child

    repo = ModelRepository(config, plugins)
    cfg = repo.read_config(ns.model)
    versions = repo.versions_on_disk(ns.model)
    version = ns.model_version or (versions[-1] if versions else None)
    if version not in versions:
        raise ConfigError(f"model {ns.model!r} has no version folder {version} (on disk: {versions})")
    path = safe_child(repo.root, repo.model_dir(ns.model), str(version))
    plain = attrs.evolve(cfg, optimize=())
    try:
        sizes = sorted({int(b) for b in ns.batch_sizes.split(",")}) if ns.batch_sizes else default_batch_sizes(cfg)
    except ValueError:
        raise ConfigError(f"--batch-sizes {ns.batch_sizes!r}: expected integers joined by commas") from None

    def load() -> Any:
        return plugins.hook.dlinfer_load_model(config=plain, path=path, node_config=config)

    if ns.candidate:
        pipelines = [(), *(tuple(n for n in c.split(",") if n) for c in ns.candidate)]
    else:
        probe = load()
        try:
            ctx = lambda: OptimizeContext(plain, path, config, plugins, [], path)  # noqa: E731
            pipelines = candidate_pipelines(plugins, probe, ctx, ns.reduced_precision)
        finally:
            probe.close()

    def progress(items: Sequence[Any]) -> Any:
        try:
            from tqdm import tqdm
        except ImportError:
            return iter(items)
        return tqdm(items, desc=f"optimizing {ns.model}", unit="variant", file=sys.stderr)

    variants = autotune(load, plain, path, plugins, pipelines, sizes, min_s=ns.min_seconds, progress=progress)
    rows = []
    for v in variants:
        timing = (f"{v.latency_ms:.2f}", f"{v.throughput:.1f}") if v.valid else ("-", "-")
        errors = (f"{v.max_abs_error:.2g}", f"{v.max_rel_error:.2g}") if v.valid and v.pipeline else ("-", "-")
        rows.append((v.label, "yes" if v.valid else "REJECTED", *timing, *errors, v.reason[:100]))
    b1, bn = sizes[0], sizes[-1]
    _table(("variant", "valid", f"latency b{b1} ms", f"rows/s b{bn}", "max abs err", "max rel err", "reason"), rows)
    best = best_variant(variants, ns.prefer)
    print(f"fastest validated variant: {best.label}")
    print(f"ranked by: {ns.prefer} (--prefer)")
    if not ns.dry_run:
        record_pipeline(repo.model_dir(ns.model) / "config.toml", best.pipeline)
        print(f"recorded optimize = {list(best.pipeline)} in {ns.model}/config.toml")
    return 0


def cmd_openapi(config: NodeConfig, plugins: Plugins) -> int:
    """Print the document the node would serve at /v2/-/openapi.json (nothing is started or loaded)."""
    from .server import create_app
    from .server.openapi import openapi_document

    print(orjson.dumps(openapi_document(create_app(config, plugins)), option=orjson.OPT_INDENT_2).decode())
    return 0


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    cells = [list(map(str, header)), *[[str(c) for c in r] for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    for r in cells:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def main(argv: Sequence[str] | None = None) -> int:
    args = _normalise(list(sys.argv[1:] if argv is None else argv))
    try:
        pre, _ = _common().parse_known_args(args[1:])
        config = _config_from(pre)
        setup_logging(config.logging.level, config.logging.format)
        plugins = Plugins(config).load()
        ns = build_parser(plugins).parse_args(args)
        if ns.command == "plugins":
            return cmd_plugins(plugins, ns)
        if ns.command == "models":
            return cmd_models(config, plugins, ns)
        if ns.command == "convert":
            return cmd_convert(plugins, ns)
        if ns.command == "openapi":
            return cmd_openapi(config, plugins)
        if ns.command == "optimize":
            try:
                return cmd_optimize(config, plugins, ns)
            except DlinferError as exc:
                print(f"dlinfer-core: error: {exc}", file=sys.stderr)
                return 1
        from .server import serve
        from .server.loop import run

        plugins.hook.dlinfer_options(options=ns)
        run(serve(config, plugins), config.server.event_loop)
        return 0
    except (ConfigError, PluginLoadError) as exc:
        print(f"dlinfer-core: error: {exc}", file=sys.stderr)
        return 2
    except DlinferError as exc:  # e.g. a conversion whose result fails validation
        print(f"dlinfer-core: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except OSError as exc:
        print(f"dlinfer-core: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

"""The configuration reference, generated from the attrs classes themselves.

``python -m dlinfer.docgen`` prints the Markdown tables of ``node.toml`` and
of a model's ``config.toml`` (``docs/configuration-reference.md``);
``python -m dlinfer.docgen hooks`` prints the hook reference (``docs/hooks.md``).
Tests keep both files equal to what the code says, so they never drift.
"""

from __future__ import annotations

import inspect
import re
import sys
import typing
from typing import Any

import attrs

from .config import NodeConfig
from .model import ModelConfig


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Literal:
        return " \\| ".join(f"`{a!r}`".replace("'", '"') for a in args)
    if origin is tuple:
        return f"array of {_type_name(args[0])}"
    if origin is dict:
        return "table"
    if args and type(None) in args:
        return " or ".join(_type_name(a) for a in args if a is not type(None))
    if attrs.has(tp):
        return "table"
    return {int: "integer", float: "number", str: "string", bool: "boolean"}.get(tp, str(tp))


def _default(field: attrs.Attribute) -> str:
    d: Any = field.default
    # attrs' stub declares Factory a function (so that `x: list = Factory(list)` type-checks); it is a class.
    if isinstance(d, attrs.Factory):  # type: ignore[arg-type]
        d = d.factory()
    if d is None:
        return "—"
    if attrs.has(type(d)):
        return "—"
    if isinstance(d, bool):
        return f"`{str(d).lower()}`"
    if isinstance(d, str | int | float):
        return f'`"{d}"`' if isinstance(d, str) else f"`{d}`"
    if isinstance(d, tuple | list):
        return "`[" + ", ".join(f'"{x}"' if isinstance(x, str) else str(x) for x in d) + "]`"
    if isinstance(d, dict):
        return "`{}`"
    return f"`{d!r}`"


def documented_fields(cls: type) -> list[attrs.Attribute]:
    """Fields a user can set in TOML and that the reference lists."""
    return [f for f in attrs.fields(cls) if f.metadata.get("toml", True) and f.metadata.get("reference", True)]


def _table(cls: type, title: str, lines: list[str]) -> None:
    hints = typing.get_type_hints(cls)
    nested = []
    rows = []
    for f in documented_fields(cls):
        tp = hints[f.name]
        inner = [a for a in typing.get_args(tp) if attrs.has(a)] or ([tp] if attrs.has(tp) else [])
        if inner and typing.get_origin(tp) is not tuple:
            nested.append((f, inner[0]))
            continue
        rows.append(f"| `{f.name}` | {_type_name(tp)} | {_default(f)} | {f.metadata.get('help', '')} |")
    if rows:
        lines += [f"### {title}", "", "| key | type | default | meaning |", "| --- | --- | --- | --- |", *rows, ""]
    prefix = title.strip("`[]") if title.startswith("`[") else ""
    for f, section in nested:
        name = f"{prefix}.{f.name}" if prefix else f.name
        _table(section, f"`[{name}]`", lines)
    for f in attrs.fields(cls):
        tp = hints[f.name]
        if typing.get_origin(tp) is tuple and attrs.has(typing.get_args(tp)[0]):
            name = f"{prefix}.{f.name}" if prefix else f.name
            _table(typing.get_args(tp)[0], f"`[[{name}]]` entries", lines)


def hookspec_names(module: Any) -> list[str]:
    """Names of the hook specifications declared in ``module``."""
    return sorted(
        name for name, obj in vars(module).items() if name.startswith("dlinfer_") and hasattr(obj, "dlinfer_spec")
    )


def undocumented_hooks(module: Any, docs_text: str) -> list[str]:
    """Hookspecs of ``module`` without a ``## `name``` (or ``###``) section in ``docs_text``."""
    return [n for n in hookspec_names(module) if not re.search(rf"^##+ `{n}`$", docs_text, re.MULTILINE)]


def unexercised_hooks(module: Any, test_sources: list[str]) -> list[str]:
    """Hookspecs of ``module`` that no test source mentions."""
    return [n for n in hookspec_names(module) if not any(n in src for src in test_sources)]


def plugin_hookspecs(plugins: Any = None) -> dict[str, Any]:
    """The hookspec modules installed plugins declared in ``dlinfer_addhooks``, by plugin name."""
    if plugins is None:
        from .plugins import Plugins

        plugins = Plugins(NodeConfig()).load()
    specified = plugins.specified()
    return {
        name: sys.modules[specified[hooks[0]].spec.namespace.__name__]
        for name, hooks in sorted(plugins.declared.items())
    }


def reference() -> str:
    """The whole configuration reference as Markdown."""
    lines = [
        "# Configuration reference",
        "",
        "Generated from the configuration classes by `python -m dlinfer.docgen`; do not edit by hand.",
        "",
        "## node.toml",
        "",
    ]
    _table(NodeConfig, "top level", lines)
    lines += ["## Model config.toml", ""]
    _table(ModelConfig, "top level", lines)
    return "\n".join(lines).rstrip() + "\n"


def _hook_sections(module: Any, lines: list[str]) -> None:
    for name in hookspec_names(module):
        fn = getattr(module, name)
        flags = [k for k in ("firstresult", "historic") if fn.dlinfer_spec.get(k)]
        if getattr(fn, "dlinfer_catalogue", False):
            flags.append("catalogue")
        sig = str(inspect.signature(fn)).replace("'", "")
        lines += [f"### `{name}`", "", "```python", f"def {name}{sig}", "```", ""]
        if flags:
            lines += [f"*{', '.join(flags)}*", ""]
        lines += [inspect.cleandoc(fn.__doc__ or ""), ""]


def hooks_reference(module: Any = None, plugin_modules: dict[str, Any] | None = None) -> str:
    """The hook reference (docs/hooks.md): the core's hookspecs, then those each installed
    plugin declares, from their signatures and docstrings."""
    if module is None:
        from . import hookspecs as module
    if plugin_modules is None:
        plugin_modules = plugin_hookspecs()
    lines = [
        "# Hook reference",
        "",
        "Generated from `core/dlinfer/hookspecs.py` and the hookspec modules of the installed plugins by",
        "`python -m dlinfer.docgen hooks`; do not edit by hand.",
        "",
        "All implementations of a hook are called (newest registration first) and their results collected",
        "in a list, unless the hook is *firstresult* (the first non-None result wins and the rest are",
        "skipped) or *historic* (a plugin registered later is still called with the original arguments).",
        "A *catalogue* hook returns classes with a unique `name`; its registry is built once at start.",
        "Implement a hook by defining a function of the same name, decorated with `dlinfer.hookimpl`, in",
        "your plugin module; it may accept any subset of the arguments.",
        "",
        "## Core hooks",
        "",
    ]
    _hook_sections(module, lines)
    for plugin, spec_module in plugin_modules.items():
        lines += [
            f"## Hooks of the `{plugin}` plugin",
            "",
            f"Declared by `{spec_module.__name__}` through `dlinfer_addhooks`; available only where the",
            f"`{plugin}` plugin is installed and enabled. Implementations that should load without it are",
            "marked `@hookimpl(optionalhook=True)`.",
            "",
        ]
        _hook_sections(spec_module, lines)
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":
    import sys

    print(hooks_reference() if sys.argv[1:] == ["hooks"] else reference(), end="")

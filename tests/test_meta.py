"""Meta-tests: every hook is documented and exercised; every config key is documented."""

from __future__ import annotations

import types
from pathlib import Path

import pluggy

from dlinfer import hookspecs
from dlinfer.docgen import hookspec_names, plugin_hookspecs, reference, undocumented_hooks, unexercised_hooks

ROOT = Path(__file__).resolve().parents[1]
HOOKS_DOC = ROOT / "docs" / "hooks.md"


def _test_sources() -> list[str]:
    files = [
        *ROOT.glob("tests/**/*.py"),
        *ROOT.glob("plugins/*/tests/**/*.py"),
        *ROOT.glob("examples/plugins/*/tests/**/*.py"),
    ]
    return [f.read_text() for f in files if f.name != "test_meta.py"]


def _hookspec_modules() -> list[object]:
    """The core's hookspecs and those the installed plugins declare in ``dlinfer_addhooks``."""
    return [hookspecs, *plugin_hookspecs().values()]


def test_every_hook_is_documented() -> None:
    assert [n for m in _hookspec_modules() for n in undocumented_hooks(m, HOOKS_DOC.read_text())] == []


def test_every_hook_is_exercised_by_a_test() -> None:
    assert [n for m in _hookspec_modules() for n in unexercised_hooks(m, _test_sources())] == []


def test_hooks_of_plugins_have_their_own_sections() -> None:
    modules = plugin_hookspecs()
    assert {"lb", "trt"} <= set(modules)
    text = HOOKS_DOC.read_text()
    assert text.index("## Hooks of the `lb` plugin") < text.index("### `dlinfer_balancers`")
    assert text.index("## Hooks of the `trt` plugin") < text.index("### `dlinfer_trt_plugins`")
    assert hookspec_names(hookspecs).count("dlinfer_balancers") == 0


def test_a_new_undocumented_hook_is_caught() -> None:
    spec = pluggy.HookspecMarker("dlinfer")
    extended = types.ModuleType("extended_hookspecs")
    extended.__dict__.update(vars(hookspecs))

    @spec
    def dlinfer_brand_new_hook(thing: object) -> None:
        """A hook nobody documented."""

    extended.dlinfer_brand_new_hook = dlinfer_brand_new_hook
    assert undocumented_hooks(extended, HOOKS_DOC.read_text()) == ["dlinfer_brand_new_hook"]
    assert unexercised_hooks(extended, _test_sources()) == ["dlinfer_brand_new_hook"]


def test_configuration_reference_is_current() -> None:
    committed = (ROOT / "docs" / "configuration-reference.md").read_text()
    assert committed == reference(), "regenerate it: python -m dlinfer.docgen > docs/configuration-reference.md"


def test_every_config_key_has_help() -> None:
    import attrs

    from dlinfer.config import NodeConfig
    from dlinfer.docgen import documented_fields
    from dlinfer.model import ModelConfig

    missing = []
    seen: set[type] = set()

    def walk(cls: type, prefix: str) -> None:
        if cls in seen:
            return
        seen.add(cls)
        for f in documented_fields(cls):
            if not f.metadata.get("help"):
                missing.append(prefix + f.name)
            for tp in (f.type, *getattr(f.type, "__args__", ())):
                if isinstance(tp, type) and attrs.has(tp):
                    walk(tp, f"{prefix}{f.name}.")

    import typing

    for cls in (NodeConfig, ModelConfig):
        typing.get_type_hints(cls)
        attrs.resolve_types(cls)
        walk(cls, "")
    assert missing == []


def test_hook_reference_is_current() -> None:
    from dlinfer.docgen import hooks_reference

    assert HOOKS_DOC.read_text() == hooks_reference(), "regenerate it: python -m dlinfer.docgen hooks > docs/hooks.md"

"""The generic registry: the one place a name becomes code, and the trust rule it enforces."""

import sys
import textwrap

import pytest

from stabilitylab.core.errors import ConfigError, StoreError
from stabilitylab.core.registry import Registry, untrusted


@pytest.fixture
def marker_module(tmp_path, monkeypatch):
    (tmp_path / "slab_core_marker.py").write_text(textwrap.dedent('''
        import pathlib
        pathlib.Path(__file__).with_name("imported").write_text("yes")
        VALUE = 41
        def build():
            return VALUE + 1
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("STABILITYLAB_TRUST_PLUGINS", raising=False)
    yield tmp_path / "imported"
    sys.modules.pop("slab_core_marker", None)


def test_shipped_session_and_spec_names_resolve(marker_module):
    reg = Registry("widget", "widget.name", "stabilitylab.test-widgets",
                   {"json-dumps": "json:dumps", "obj": len})
    import json

    assert reg.resolve("json-dumps") is json.dumps
    assert reg.resolve("obj") is len
    reg.add_session("python:w", abs)
    assert reg.resolve("python:w") is abs
    assert reg.resolve("slab_core_marker:build")() == 42
    assert marker_module.exists()
    with pytest.raises(ValueError, match="already registered"):
        reg.add("obj", min)


def test_unknown_and_broken_names_are_one_line_config_errors():
    reg = Registry("widget", "widget.name", "stabilitylab.test-widgets", {"a": "json:dumps"})
    for name, text in (("nope", "unknown widget 'nope'; choose from a"),
                       ("no_such_module_xyz:f", "cannot import module"),
                       ("json:no_such_attr", "has no 'no_such_attr'"),
                       ("python:gone", "another Python session")):
        with pytest.raises(ConfigError, match=text) as exc:
            reg.resolve(name)
        assert "\n" not in str(exc.value)


def test_a_stores_spec_is_refused_before_its_module_is_imported(marker_module, monkeypatch):
    reg = Registry("widget", "widget.name", "stabilitylab.test-widgets", {"a": "json:dumps"})
    with untrusted("runs/x.zarr"):
        assert reg.resolve("a")  # shipped names stay fine
        with pytest.raises(StoreError, match="--trust-plugins") as exc:
            reg.resolve("slab_core_marker:build")
    assert "runs/x.zarr" in str(exc.value) and "slab_core_marker:build" in str(exc.value)
    assert not marker_module.exists() and "slab_core_marker" not in sys.modules
    with untrusted("runs/x.zarr", trust=True):
        assert reg.resolve("slab_core_marker:build")() == 42
    sys.modules.pop("slab_core_marker", None)
    monkeypatch.setenv("STABILITYLAB_TRUST_PLUGINS", "1")
    with untrusted("runs/x.zarr"):
        assert reg.resolve("slab_core_marker:build")() == 42
    # outside a store's content the user's own names are trusted
    monkeypatch.delenv("STABILITYLAB_TRUST_PLUGINS")
    assert reg.resolve("slab_core_marker:build")() == 42

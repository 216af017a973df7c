"""small_pages: NumPy's huge-page advice off inside the block, restored after, and a
user's NUMPY_MADVISE_HUGEPAGE left alone. The collector helpers: paused and frozen inside
their blocks, everything as it was after (unless frozen by someone before)."""

import gc

import pytest

from stabilitylab.core import memory


def _current(toggle) -> bool:
    value = toggle(True)  # read the setting by setting it, then put it back
    toggle(value)
    return value


@pytest.fixture
def toggle():
    t = memory._toggle()
    if t is None:
        pytest.skip("this NumPy has no runtime switch of the huge-page advice")
    before = _current(t)
    yield t
    t(before)


@pytest.mark.parametrize("outside", [True, False])
def test_off_inside_and_restored_after(toggle, monkeypatch, outside):
    monkeypatch.delenv(memory.ENV, raising=False)
    toggle(outside)
    with memory.small_pages():
        assert _current(toggle) is False
    assert _current(toggle) is outside


def test_restored_after_an_error(toggle, monkeypatch):
    monkeypatch.delenv(memory.ENV, raising=False)
    toggle(True)
    with pytest.raises(RuntimeError), memory.small_pages():
        raise RuntimeError("boom")
    assert _current(toggle) is True


def test_the_users_choice_is_kept(toggle, monkeypatch):
    monkeypatch.setenv(memory.ENV, "1")
    toggle(True)
    with memory.small_pages():
        assert _current(toggle) is True


def test_analyze_runs_on_small_pages(toggle, monkeypatch, tmp_path):
    from stabilitylab.analysis import run

    monkeypatch.delenv(memory.ENV, raising=False)
    toggle(True)
    seen = []

    def fake(*args, **kwargs):
        seen.append(_current(toggle))
        return {}

    monkeypatch.setattr(run, "_analyze", fake)
    run.analyze_store(str(tmp_path / "absent.zarr"))
    assert seen == [False]
    assert _current(toggle) is True


@pytest.fixture
def collector():
    """The collector enabled and nothing frozen before the test; restored after."""
    was, frozen = gc.isenabled(), gc.get_freeze_count()
    gc.unfreeze()
    gc.enable()
    yield
    gc.unfreeze()
    if frozen:
        gc.freeze()
    (gc.enable if was else gc.disable)()


class _Node:
    pass


def _cycle_alive() -> tuple:
    """An object in a reference cycle, and a weak reference to it."""
    import weakref

    node = _Node()
    node.me = node
    return node, weakref.ref(node)


def test_collector_paused_inside_and_restored(collector):
    with memory.collector_paused():
        assert not gc.isenabled()
    assert gc.isenabled()
    gc.disable()
    with memory.collector_paused():
        assert not gc.isenabled()
    assert not gc.isenabled()  # it was off before: it stays off


def test_long_lived_frozen_skips_what_was_alive_and_gives_it_back(collector):
    node, ref = _cycle_alive()
    with memory.long_lived_frozen():
        assert gc.get_freeze_count() > 0
        del node
        gc.collect()
        assert ref() is not None  # frozen: a full collection does not look at it
        young, young_ref = _cycle_alive()
        del young
        gc.collect()
        assert young_ref() is None  # made inside the block: collected as always
    assert gc.get_freeze_count() == 0
    gc.collect()
    assert ref() is None  # back with the collector after the block


def test_long_lived_frozen_leaves_an_earlier_freeze_frozen(collector):
    node, ref = _cycle_alive()
    gc.freeze()
    del node
    with memory.long_lived_frozen():
        pass
    gc.collect()
    assert ref() is not None and gc.get_freeze_count() > 0


def test_long_lived_imports_freezes_what_the_block_made(collector):
    with memory.long_lived_frozen():
        with memory.long_lived_imports():
            assert not gc.isenabled()
            node, ref = _cycle_alive()
        assert gc.isenabled()
        del node
        gc.collect()
        assert ref() is not None  # made in the block: frozen with the rest
    gc.collect()
    assert ref() is None
    with memory.long_lived_imports():  # outside long_lived_frozen: the block as it is
        assert gc.isenabled()
        node, ref = _cycle_alive()
    del node
    gc.collect()
    assert ref() is None


def test_analyze_store_freezes_inside_and_unfreezes_after(collector, monkeypatch, tmp_path):
    from stabilitylab.analysis import run

    seen = []
    monkeypatch.setattr(run, "_analyze", lambda *a, **k: seen.append(gc.get_freeze_count()) or {})
    run.analyze_store(str(tmp_path / "absent.zarr"))
    assert seen[0] > 0 and gc.get_freeze_count() == 0


@pytest.mark.parametrize("from_the_command_line", [True, False])
def test_the_analyze_command_freezes_only_its_own_process(collector, monkeypatch,
                                                          from_the_command_line):
    import sys

    from stabilitylab.cli.main import main

    import stabilitylab.store
    from stabilitylab.analysis import run

    seen = []
    monkeypatch.setattr(stabilitylab.store, "validate", lambda store: None)
    monkeypatch.setattr(run, "analyze_store", lambda *a, **k: seen.append(
        gc.get_freeze_count()) or {"lines": [], "profile": {}})
    argv = ["analyze", "some.zarr", "--no-report", "--no-progress"]
    monkeypatch.setattr(sys, "argv", ["stabilitylab", *argv])
    assert main(None if from_the_command_line else argv) == 0
    assert (seen[0] > 0) is from_the_command_line
    assert (gc.get_freeze_count() > 0) is from_the_command_line  # kept to the process's end
    assert gc.isenabled()

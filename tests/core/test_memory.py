"""small_pages: NumPy's huge-page advice off inside the block, restored after, and a
user's NUMPY_MADVISE_HUGEPAGE left alone."""

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

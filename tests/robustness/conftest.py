"""Fixtures shared by the robustness modules."""

import pytest


@pytest.fixture
def work(tmp_path, monkeypatch):
    """An empty working directory: anything written by default (runs/, reports/) lands here."""
    wd = tmp_path / "wd"
    wd.mkdir()
    monkeypatch.chdir(wd)
    return wd

"""record --probe: copies stopped at k + Δ are the full copies' first Δ steps."""

import numpy as np
import pytest
from conftest import tiny_config
from stabilitylab.cli.main import main

import stabilitylab
from stabilitylab.analysis.lmc_probe import probe_lines, probe_rewinds
from stabilitylab.core.errors import ConfigError

LEVEL0 = ("pruning.levels=0", "study.controls=[]")


def test_probe_copies_match_the_recorded_copies_at_k_plus_delta(tmp_path):
    cfg = tiny_config(*LEVEL0)
    out = tmp_path / "s.zarr"
    stabilitylab.record_study(cfg, str(out), progress=False, rewinds_per_task=1)
    ds = stabilitylab.open_study(out)
    res = probe_rewinds(cfg, delta=10)
    assert res["rewinds"] == [0, 10]
    for i, k in enumerate(res["rewinds"]):
        stored = ds.weights.sel(kind="imp", level=0, rewind=k, step=k + 10).values
        np.testing.assert_allclose(res["weights"][i], stored, rtol=1e-5, atol=1e-6)
    assert res["replica_steps"] == 2 * 2 * 10  # replicas x rewinds x delta
    assert res["full_replica_steps"] == 2 * (60 + 50)
    assert res["barrier"].shape == (2, 1) and np.isfinite(res["barrier"]).all()
    answer = [ln for ln in res["lines"] if ln.startswith(("stable from k≈", "no rewind point"))]
    assert len(answer) == 1 and "the LMC rule" in answer[0]  # which rule gave the answer
    assert res["lines"][-1].startswith("cost: ")


def test_record_probe_prints_the_stability_point_and_writes_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["record", "--probe", "--probe-steps", "5", "--no-progress"]
    for o in (*LEVEL0, "training.steps='40it'", "study.rewinds=['0it','10it']",
              "study.replicas=2", "data.num_samples=500", "model.channels=4"):
        args += ["--set", o]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "k=0:" in text and "k=10:" in text and "replica-steps" in text
    assert "stable from k≈" in text or "no rewind point is stable" in text
    assert not list(tmp_path.iterdir())  # nothing written


def test_probe_lines_say_why_a_later_unstable_k_does_not_change_the_answer():
    """Issue 27: `k=100: 2.33 (unstable)` then `stable from k≈0` read as a contradiction."""
    lines = probe_lines([0, 25, 100], np.array([0.01, 0.015, 0.0233]), delta=50, replicas=3)
    assert lines[1:4] == ["  k=0: 1.00 pp", "  k=25: 1.50 pp", "  k=100: 2.33 pp (≥ 2 pp)"]
    assert lines[4].startswith("stable from k≈0 (rule: the LMC rule")
    assert "k=100" in lines[5] and "do not change it" in lines[5] and "earliest" in lines[5]
    lines = probe_lines([0, 25], np.array([0.01, 0.015]), delta=50, replicas=3)
    assert len(lines) == 4 and "do not change" not in "".join(lines)  # nothing to explain
    lines = probe_lines([0, 25], np.array([0.05, 0.03]), delta=50, replicas=3)
    assert lines[-1].startswith("no rewind point is stable at k + 50")


def test_bad_probe_steps_is_a_config_error():
    with pytest.raises(ConfigError):
        probe_rewinds(tiny_config(*LEVEL0), delta=0)

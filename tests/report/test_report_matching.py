"""The report's matching cells and rule note, on analyses built by the real rule."""

import numpy as np
import xarray as xr

from stabilitylab.analysis.prediction import matching
from stabilitylab.report import matching as M


def _analysis(replicas):
    rng = np.random.default_rng(0)
    acc = 0.9 + 0.01 * rng.standard_normal((1, 2, 1, len(replicas)))
    acc[0, 1] -= 0.1  # level 1: ten points worse
    per = xr.DataArray(acc, dims=("kind", "level", "rewind", "replica"),
                       coords={"kind": ["imp"], "level": [0, 1], "rewind": [0],
                               "replica": replicas})
    an = xr.Dataset(matching(per))
    an["dense_test_acc"] = xr.DataArray(0.93)
    an.attrs.update(matching_tolerance=0.002, matching_confidence=0.95)
    return an


def test_cells_show_the_difference_its_bound_and_n():
    an = _analysis([0, 1, 2])
    dense = {"kind": "imp", "level": 0, "rewind": 0}
    worse = {"kind": "imp", "level": 1, "rewind": 0}
    assert M.flag_text(an, dense) == "yes" and M.flag_text(an, worse) == "no"
    assert M.difference_text(an, dense) == "+0.00 (≥ +0.00), n = 3"
    text = M.difference_text(an, worse)
    low = 100 * float(an.matching_low.sel(**worse))
    diff = 100 * float(an.matching_difference.sel(**worse))
    assert diff < -5 and text.startswith(f"{diff:+.2f} (") and f"≥ {low:+.2f})" in text and text.endswith("n = 3")


def test_one_replica_is_said_to_be_undefined():
    an = _analysis([0])
    at = {"kind": "imp", "level": 0, "rewind": 0}
    assert M.flag_text(an, at) == M.UNDEFINED
    assert M.difference_text(an, at) == "+0.00 (bound undefined), n = 1"


def test_rule_note_names_the_rule_and_keeps_the_dense_run_as_information():
    note = M.rule_note(_analysis([0, 1, 2]))
    assert "one-sided 95% lower bound" in note and "n − 1 dof" in note
    assert "93.00%" in note and "information only" in note
    assert "Frankle et al., ICML 2020" in note and "Sec. 4.4" in note
    old = xr.Dataset(attrs={"matching_tolerance": 0.002})  # an analysis from before the rule
    assert "dense run's − 0.2 pp" in M.rule_note(old)

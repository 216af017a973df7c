"""The ``init`` noise kind: dense copies from independently seeded W_0 (different-init pairs,
Entezari et al., ICLR 2022), recorded, analyzed and labelled ``init`` end to end."""

import numpy as np
import pandas as pd
import pytest
from conftest import tiny_config

import stabilitylab
from stabilitylab.analysis.run import analyze_store
from stabilitylab.core import keys as K
from stabilitylab.store import schema as S


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    out = tmp_path_factory.mktemp("init") / "s.zarr"
    cfg = tiny_config("study.noise=['data_order','init']", "study.noise_levels=[0]",
                      "pruning.levels=1")
    stabilitylab.record_study(cfg, str(out), progress=False)
    return out


def test_init_copies_start_from_their_own_w0_and_are_dense(store):
    ds = stabilitylab.open_study(store)
    assert tuple(ds.kind.values) == S.KINDS + ("init",)
    done = ds.status == K.STATUS_COMPLETE
    assert bool(done.sel(kind="init", level=0).all())
    assert not bool(done.sel(kind="init", level=1).any())
    for k in (0, 10):
        starts = ds.weights.sel(kind="init", level=0, rewind=k, step=k).values
        imp_w0 = ds.weights.sel(kind="imp", level=0, rewind=0, replica=0, step=0).values
        assert not np.array_equal(starts[0], starts[1])  # independent inits
        assert not np.array_equal(starts[0], imp_w0) and not np.array_equal(starts[1], imp_w0)
        np.testing.assert_array_equal(
            starts, ds.weights.sel(kind="init", level=0, rewind=0, step=0).values)
        assert (ds.weights.sel(kind="init", level=0, rewind=k).isel(step=-1) != 0).all()


def test_init_pairs_are_analyzed_and_labelled_init(store, tmp_path):
    result = analyze_store(str(store), measures=["interpolation", "aligned", "repair"],
                           alphas=5, progress=False)
    analysis = result["analysis"]
    # the summary names them for what they are, with their barrier in pp and aligned
    line = next(i for i, t in enumerate(result["lines"]) if t.startswith("init copies"))
    assert result["lines"][line].startswith("init copies (different-init pairs), level 0, "
                                            "barrier: k=0: ")
    assert result["lines"][line].endswith(" pp")
    assert result["lines"][line + 1].startswith("  after weight matching: k=0: ")
    inst = analysis.instability.sel(kind="init", level=0)
    assert np.isfinite(inst.values).all()
    assert np.isfinite(analysis.repaired_instability.sel(kind="init", level=0).values).all()
    assert np.isfinite(analysis.aligned_repaired_instability.sel(kind="init", level=0).values).all()
    summary = pd.read_csv(f"{store}.analysis/summary.csv")
    assert "init" in set(summary.kind)
    from stabilitylab.report.figures import KIND_LABELS

    assert KIND_LABELS["init"] == "different-init pairs"

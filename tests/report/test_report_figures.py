"""Report figures from real tiny analyses: labels, PNG output, graceful NaN/missing data."""

import inspect
import io

import numpy as np
import pytest
from _studies import study_and_analysis
from matplotlib.figure import Figure

from stabilitylab.report import correlations as C
from stabilitylab.report import figures as F


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    """Levels 0-2 (controls at 2), rewinds 0/10/20, 3 replicas: (study, analysis)."""
    return study_and_analysis(tmp_path_factory, "full")


@pytest.fixture(scope="module")
def analysis(full):
    return full[1]


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """One level, 2 replicas (a single pair: min–max bands), no controls, no alignment."""
    return study_and_analysis(tmp_path_factory, "small")[1]


def density_label(analysis, level) -> str:
    d = float(analysis.density.sel(kind="imp", level=level).mean())
    return f"density {100 * d:.0f}%"


def png_bytes(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=60)
    return buf.getvalue()


def texts(ax) -> str:
    return " ".join(t.get_text() for t in ax.texts)


def legend_labels(ax) -> list[str]:
    return [t.get_text() for t in ax.get_legend().get_texts()]


def test_instability(analysis):
    fig = F.plot_instability(analysis)
    ax = fig.axes[0]
    assert isinstance(fig, Figure) and png_bytes(fig).startswith(b"\x89PNG")
    assert "rewind step k (iterations)" == ax.get_xlabel()
    assert "barrier" in ax.get_ylabel() and "percentage points" in ax.get_ylabel()
    assert ax.get_xscale() == "symlog"
    labels = legend_labels(ax)
    assert any(density_label(analysis, 2) in lab for lab in labels) and "threshold 2 pp" in labels
    title = ax.get_legend().get_title().get_text()  # 3 replicas: too few for a 95% interval
    assert "range, n = 3 replicas (3 pairs)" in title
    # the level lines are pair means, in percentage points
    line = next(ln for ln in ax.lines if ln.get_label().startswith("level 2"))
    want = 100 * analysis.instability.sel(kind="imp", level=2).mean("pair").values
    np.testing.assert_allclose(line.get_ydata(), want)


def test_instability_range_band_with_one_pair(small):
    ax = F.plot_instability(small).axes[0]
    assert "range, n = 2 replicas (1 pair)" in ax.get_legend().get_title().get_text()


def test_instability_all_nan_or_missing_does_not_crash(analysis):
    nan = analysis.copy()
    nan["instability"] = nan.instability * np.nan
    ax = F.plot_instability(nan).axes[0]
    assert "no data" in texts(ax)
    ax = F.plot_instability(analysis.drop_vars(["instability", "density"])).axes[0]
    assert "no data" in texts(ax)
    png_bytes(ax.figure)
    # a control kind at a level without controls is simply absent
    ax = F.plot_instability(analysis, kind="reinit").axes[0]
    assert [lab for lab in legend_labels(ax) if lab.startswith("level")] == [
        f"level 2 ({density_label(analysis, 2)})"]


def test_interpolation_one_line_per_pair(analysis):
    fig = F.plot_interpolation(analysis, level=1, rewind=10)
    ax = fig.axes[0]
    assert len(ax.lines) == analysis.sizes["pair"]
    assert ax.get_xlabel().startswith("interpolation coefficient α")
    assert ax.get_ylabel() == "test error (%)"
    np.testing.assert_allclose(ax.lines[0].get_xdata(), analysis.alpha.values)
    assert png_bytes(fig)


def test_interpolation_several_settings_and_loss(analysis):
    ax = F.plot_interpolation(analysis, level=[1, 2], rewind=[0, 20], split="train",
                              quantity="loss").axes[0]
    assert ax.get_ylabel() == "train loss (nats)"
    assert len(legend_labels(ax)) == 4  # one entry per (level, rewind)
    ax = F.plot_interpolation(analysis, level=7, rewind=0).axes[0]  # no such level
    assert "no data" in texts(ax)
    with pytest.raises(ValueError):
        F.plot_interpolation(analysis, level=1, rewind=0, split="valid")


@pytest.mark.parametrize("which,metric,ylabel", [
    ("data_order", "l2", "L2 distance ‖W_a − W_b‖"),
    ("data_order", "angle", "angle between weights (rad)"),
    ("pruning_noise", "l2", "L2 distance ‖m⊙W_dense − m⊙W_sub‖"),
])
def test_distances(analysis, which, metric, ylabel):
    fig = F.plot_distances(analysis, level=2, which=which, metric=metric)
    ax = fig.axes[0]
    assert ax.get_xlabel() == "training step t (iterations)" and ax.get_ylabel() == ylabel
    labels = legend_labels(ax)
    assert "k = 0" in labels and "IMP" in labels and "random pruning" in labels
    assert png_bytes(fig)


def test_distances_at_one_rewind_and_without_data(analysis, small):
    ax = F.plot_distances(analysis, level=2, rewind=10).axes[0]
    assert legend_labels(ax) == ["IMP, k = 10", "random pruning, k = 10"]
    # IMP drawn from k on, as the pair mean
    want = analysis.data_order_l2.sel(kind="imp", level=2, rewind=10).mean("pair")
    np.testing.assert_allclose(ax.lines[0].get_ydata(), want.dropna("step").values)
    assert "no data" in texts(F.plot_distances(analysis, level=0, which="pruning_noise").axes[0])
    ax = F.plot_distances(small, level=1).axes[0]  # no controls: IMP only
    assert "k = 40" in legend_labels(ax)


@pytest.mark.parametrize("source", ["study", "analysis"])
def test_accuracy_vs_density(full, source):
    data = full[0] if source == "study" else full[1]
    fig = F.plot_accuracy_vs_density(data)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    lo, hi = ax.get_xlim()
    assert lo > hi  # density decreases to the right
    assert ax.get_xlabel() == "density: kept fraction of prunable weights (%)"
    assert ax.get_ylabel() == "final test accuracy (%)"
    labels = legend_labels(ax)
    assert {"IMP", "random pruning", "random reinit"} <= set(labels)
    dense = next(lab for lab in labels if lab.startswith("dense "))
    assert f"{100 * float(full[1].dense_test_acc):.1f}" in dense
    assert "± 0.2 pp matching tolerance" in dense  # the band is the tolerance, not an sd
    assert "k = 20" in ax.get_title()
    assert png_bytes(fig)


def test_accuracy_vs_density_uses_complete_runs_only(full):
    study = full[0].load()
    assert int((study.status == 3).sum()) == 1  # the diverged reinit run
    ax = F.plot_accuracy_vs_density(study, rewind=0).axes[0]
    clean = np.concatenate([ln.get_ydata() for ln in ax.lines if len(ln.get_ydata())])
    study["final_test_acc"] = study.final_test_acc.where(study.status != 3, -1e3)  # garbage
    ax = F.plot_accuracy_vs_density(study, rewind=0).axes[0]
    heights = np.concatenate([ln.get_ydata() for ln in ax.lines if len(ln.get_ydata())])
    np.testing.assert_allclose(heights, clean)  # the diverged run's value is never used
    assert heights.min() > 0


def test_measure_correlations(analysis, small):
    fig = C.plot_measure_correlations(analysis)
    assert len(fig.axes) == analysis.sizes["measure"]
    ax = fig.axes[0]
    assert ax.get_xlabel() == "instability (pp)" and ax.get_ylabel() == "final test acc. (%)"
    assert "ρ = " in ax.get_title() and "[" in ax.get_title()
    # same unit as the instability figure: percentage points, not fractions
    level = int(analysis.level[-1])
    x = np.sort(ax.collections[0].get_offsets()[:, 0])
    want = 100 * analysis.measure_value.sel(measure="instability", level=level).values
    np.testing.assert_allclose(x, np.sort(want[np.isfinite(want)]))
    assert png_bytes(fig)
    # all-NaN measures (no alignment; mask_jaccard made NaN at level 0) are left out
    small = small.copy()
    small["measure_value"] = small.measure_value.where(
        (small.measure != "mask_jaccard") | (small.level != 0))
    fig = C.plot_measure_correlations(small, level=0)
    names = [a.get_xlabel().split(" (")[0] for a in fig.axes]
    assert "aligned_instability" not in names and "mask_jaccard" not in names
    assert "instability" in names and "sign_flips" in names


def test_measure_correlations_without_measures(analysis):
    fig = C.plot_measure_correlations(analysis.drop_vars("measure_value"))
    assert "no data" in texts(fig.axes[0])


def test_report_never_uses_pyplot():
    """Figures are plain ``Figure`` objects: no pyplot state, no windows, no plt.show()."""
    from stabilitylab.report import document

    for module in (F, C, document):
        source = inspect.getsource(module)
        assert "import matplotlib.pyplot" not in source and "plt." not in source

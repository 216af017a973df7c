"""Figures, tables and the HTML/Markdown report of a study.

    stabilitylab.report.write_report("runs/mnist1d-default.zarr")   # -> reports/<study name>/

Plot functions take xarray data first and keyword-only options, and return a
``matplotlib.figure.Figure`` (no pyplot; Agg when saved).
"""

from stabilitylab.report.correlations import plot_measure_correlations
from stabilitylab.report.document import (
    prediction_table,
    provenance_rows,
    study_name,
    write_report,
    write_report_from,
)
from stabilitylab.report.figures import (
    plot_accuracy_vs_density,
    plot_distances,
    plot_instability,
    plot_interpolation,
)

__all__ = ["plot_accuracy_vs_density", "plot_distances", "plot_instability", "plot_interpolation",
           "plot_measure_correlations", "prediction_table", "provenance_rows", "study_name",
           "write_report", "write_report_from"]

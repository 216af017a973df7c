"""``report.pdf``: the report's summary, its table and its figures, for an email attachment.

    stabilitylab report runs/mnist1d-default.zarr --pdf     # -> reports/<name>/report.pdf

Written with matplotlib's PDF backend (``PdfPages``; no browser, no extra dependency):
page 1 holds the title and the summary lines, then the summary table over as many pages
as it needs, then one page per figure with its caption underneath. Figures stay vector
graphics, so the file is small (about 1 MB for the default study) and sharp when printed.
"""

from __future__ import annotations

import textwrap

from matplotlib.backends.backend_pdf import PdfPages
from matplotlib.figure import Figure

PAGE = (8.27, 11.69)  # A4 portrait, inches
ROWS_PER_PAGE = 34


def _text_page(title: str, meta: str, head, note: str) -> Figure:
    fig = Figure(figsize=PAGE)
    y = 0.95
    fig.text(0.07, y, title, fontsize=16, weight="bold", va="top")
    y -= 0.035
    fig.text(0.07, y, meta, fontsize=9, color="0.4", va="top")
    y -= 0.05
    fig.text(0.07, y, "Summary", fontsize=13, weight="bold", va="top")
    y -= 0.035
    for label, text in head:
        text = text if isinstance(text, str) else "; ".join(text)
        lines = textwrap.wrap(f"{label}: {text}", 100)
        fig.text(0.07, y, "\n".join(lines), fontsize=9, va="top", linespacing=1.4)
        y -= 0.017 * len(lines) + 0.015
    if note:
        lines = textwrap.wrap(note, 110)
        fig.text(0.07, max(y - 0.02, 0.03), "\n".join(lines), fontsize=8, color="0.35",
                 va="top", linespacing=1.4)
    return fig


def _table_pages(summary, columns: dict, fmt) -> list[Figure]:
    pages = []
    for start in range(0, len(summary), ROWS_PER_PAGE):
        rows = summary[start:start + ROWS_PER_PAGE]
        fig = Figure(figsize=(PAGE[1], PAGE[0]))  # landscape: the table is wide
        ax = fig.add_axes((0.03, 0.03, 0.94, 0.9))
        ax.axis("off")
        ax.set_title("Summary per level and rewind point"
                     + (f" (rows {start + 1}–{start + len(rows)} of {len(summary)})"
                        if len(summary) > ROWS_PER_PAGE else ""), fontsize=11, loc="left")
        cells = [[fmt(k, r.get(k)) for k in columns] for r in rows]
        table = ax.table(cellText=cells, colLabels=list(columns.values()), loc="upper left",
                         cellLoc="left")
        table.auto_set_font_size(False)
        table.set_fontsize(7)
        table.auto_set_column_width(list(range(len(columns))))
        pages.append(fig)
    return pages


def write_pdf(path, title: str, meta: str, head, figures, summary=(), note: str = "") -> None:
    """Write the PDF at ``path``: ``head`` the (label, text) summary lines, ``figures`` the
    (caption, Figure) pairs (each Figure gets its caption as a bottom label), ``summary``
    the summary-table rows."""
    from stabilitylab.report.tables import SUMMARY_COLUMNS, cell_text

    with PdfPages(path, metadata={"Title": title, "Creator": "stabilitylab"}) as pdf:
        pdf.savefig(_text_page(title, meta, head, note))
        for page in _table_pages(list(summary), SUMMARY_COLUMNS, cell_text):
            pdf.savefig(page)
        for caption, fig in figures:
            width = max(60, int(fig.get_figwidth() * 13))
            fig.supxlabel("\n".join(textwrap.wrap(caption, width)), fontsize=9, color="0.3")
            pdf.savefig(fig)

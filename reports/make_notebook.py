"""Generate reports/explore.ipynb, the example notebook for exploring a study store.

    python reports/make_notebook.py            # rewrites reports/explore.ipynb (unexecuted)

Edit the cells here, not in the .ipynb, so the notebook stays reviewable as code.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

CELLS = [
    ("md", """# Exploring a stabilitylab study

Opens a recorded study, computes a data-order distance curve straight from the stored
weights, plots an interpolation curve from the analysis, and joins instability with
final accuracy in one table. Set `STABILITYLAB_STORE` to point at another store; by
default it opens `runs/mnist1d-default.zarr` under the repository root (the README's first
command writes it there), wherever the kernel was started."""),
    ("code", """import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import xarray as xr

import stabilitylab


def repository_root(start: Path) -> Path:
    # the first folder at or above start that holds reports/make_notebook.py
    for folder in (start, *start.parents):
        if (folder / "reports" / "make_notebook.py").is_file():
            return folder
    return start


# the store to explore: $STABILITYLAB_STORE, or the default study's output in the repository
STORE = os.environ.get("STABILITYLAB_STORE") or str(
    repository_root(Path.cwd().resolve()) / "runs" / "mnist1d-default.zarr")
ds = stabilitylab.open_study(STORE)  # lazy: nothing is loaded until .compute()/.values
ds"""),
    ("code", """# pick the sparsest level and a middle rewind point k
level = int(ds.level[-1])
rewind = int(ds.rewind[len(ds.rewind) // 2])
print(ds.attrs["config"]["study"]["name"], "| level", level, "| rewind k =", rewind)"""),
    ("md", """## Data-order distance, from the raw trajectories

Replicas 0 and 1 start from the same `m⊙W_k` and differ only in data order.
Steps before `k` are never written (they read as 0), so keep `step >= rewind`."""),
    ("code", """w = ds.weights.sel(kind="imp", level=level, rewind=rewind).sel(step=slice(rewind, None))
distance = np.sqrt(((w.sel(replica=0) - w.sel(replica=1)) ** 2).sum("param")).compute()

fig, ax = plt.subplots(figsize=(6, 3.5))
distance.plot(ax=ax, marker="o", markersize=3)
ax.set(xlabel="training step (iterations)", ylabel="L2 distance ‖W_0 − W_1‖",
       title=f"data-order distance, level {level}, k = {rewind}");"""),
    ("md", """## Linear interpolation, from the analysis

`stabilitylab analyze STORE` wrote the `analysis` group: E_α is the test error of
αW_a + (1−α)W_b for each replica pair."""),
    ("code", """an = stabilitylab.open_analysis(STORE)
curve = an.interp_test_error.sel(kind="imp", level=level, rewind=rewind)

fig, ax = plt.subplots(figsize=(6, 3.5))
(100 * curve).plot.line(ax=ax, x="alpha", hue="pair")  # the store keeps fractions; show %
ax.set(xlabel="α", ylabel="test error (%)", title="error along the linear path");"""),
    ("code", """# the same, as the report draws it (returns a Figure; no pyplot inside)
from stabilitylab.report import plot_interpolation

plot_interpolation(an, level=level, rewind=rewind)"""),
    ("md", """## Instability next to final accuracy

The store keeps fractions (0.208); people read percent. The table shows accuracy and
density in percent (%) and instability, a difference of error rates, in percentage
points (pp), as the report and the command line do."""),
    ("code", """# mean over pairs / complete replicas, then one row per (kind, level, rewind)
final_acc = ds.final_test_acc.where(ds.status == 2).mean("replica")
summary = xr.Dataset({"instability (pp)": 100 * an.instability.mean("pair"),
                      "final acc. (%)": 100 * final_acc, "density (%)": 100 * ds.density})
table = summary.to_dataframe().dropna(subset=["instability (pp)"]).reset_index()
table.round(2)"""),
    ("code", """# does instability track accuracy across rewind points? (IMP only)
imp = table[table.kind == "imp"]
imp[["level", "rewind", "instability (pp)", "final acc. (%)"]].corr(method="spearman")"""),
    ("md", """## Your own model and data: the Python API

`record_study` takes a model builder `(cfg, input_shape, num_classes) -> nn.Module` and the
data as tensors, with no registry entry; `analyze_study` returns the analysis Dataset. A
deliberately small study (a two-layer MLP, 60 steps, two rewind points) into a temporary
folder, so this cell takes seconds."""),
    ("code", """import tempfile

from torch import nn

from stabilitylab.data import load_dataset


def small_mlp(cfg, input_shape, num_classes):
    return nn.Sequential(nn.Flatten(), nn.Linear(int(np.prod(input_shape)), 32), nn.ReLU(),
                         nn.Linear(32, num_classes))


mnist1d = load_dataset(stabilitylab.load_config().data)  # the embedded data, as tensors
config = stabilitylab.load_config(None, [
    "training.steps='60it'", "study.rewinds=['0it','20it']", "study.replicas=2",
    "pruning.levels=1", "training.eval_every='30it'", "study.record='every:10'"])
mine = str(Path(tempfile.mkdtemp()) / "mine.zarr")
stabilitylab.record_study(config, mine, model=small_mlp, progress=False,
                          data=(mnist1d.train_x, mnist1d.train_y, mnist1d.test_x, mnist1d.test_y))
mine_an = stabilitylab.analyze_study(mine, model=small_mlp, progress=False, n_boot=100,
                                     data=(mnist1d.train_x, mnist1d.train_y,
                                           mnist1d.test_x, mnist1d.test_y))
# instability in percentage points, one row per level, one column per rewind point k
(100 * mine_an.instability.sel(kind="imp").mean("pair")).round(2).to_pandas()"""),
]


def build() -> nbformat.NotebookNode:
    nb = new_notebook()
    nb.cells = [new_markdown_cell(src) if kind == "md" else new_code_cell(src) for kind, src in CELLS]
    for i, cell in enumerate(nb.cells):
        cell.id = f"cell-{i:02d}"  # stable ids: regenerating changes only what changed
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


if __name__ == "__main__":
    path = Path(__file__).with_name("explore.ipynb")
    nbformat.write(build(), path)

"""Studies: which runs a config implies, and the recorder that trains them.

- :mod:`~stabilitylab.study.plan`: run keys, tasks, their dependencies and seeds;
- :mod:`~stabilitylab.study.kinds`: the run kinds (IMP and the controls), one entry each;
- :mod:`~stabilitylab.study.context`: the model, data and seeds, built once per process;
- :mod:`~stabilitylab.study.execution`: running one task into the store;
- :mod:`~stabilitylab.study.runner`: ``record`` in this process;
- :mod:`~stabilitylab.study.cluster`: ``record`` on a Dask cluster;
- :mod:`~stabilitylab.study.estimate`: sizes and limits, from the config alone.

``record --probe`` (the LMC rule on short copies) measures barriers, so it lives one layer
up, in :mod:`stabilitylab.analysis.lmc_probe`.
"""

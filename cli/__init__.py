"""The ``stabilitylab`` command (installed as ``stabilitylab.cli``)."""

"""The bottom layer: what every other part of stabilitylab may import, and which imports
nothing else of the package.

- :mod:`~stabilitylab.core.errors`: the documented error types;
- :mod:`~stabilitylab.core.seeds`: seed derivation from the master seed;
- :mod:`~stabilitylab.core.keys`: run keys and the run status codes;
- :mod:`~stabilitylab.core.device`: ``auto`` / ``cpu`` / ``cuda`` to a ``torch.device``;
- :mod:`~stabilitylab.core.version`: the package version;
- :mod:`~stabilitylab.core.registry`: the generic name -> implementation registry, the
  only place where a name becomes code (and where the plugin trust rule is enforced).

The layer order of the whole package is written down in docs/contributing.md and checked
by tests/architecture/test_layers.py.
"""

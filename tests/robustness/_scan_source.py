"""Entry point for ``test_no_pickle_no_eval_in_the_package``: run in a fresh interpreter."""

from __future__ import annotations

import importlib.util
from pathlib import Path


def scan() -> dict:
    spec = importlib.util.spec_from_file_location(
        "_no_pickle_rules", Path(__file__).with_name("test_robust_no_pickle.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod._scan(mod._package_files())

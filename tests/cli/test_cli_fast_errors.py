"""A config typo is rejected before torch is imported (issue 27: errors took 8-14 s on a
busy machine). Checked by what is imported, not by timing (timings live in benchmarks/)."""

import subprocess
import sys

import pytest

PROBE = """
import sys
from stabilitylab.cli.main import main
code = main(sys.argv[1:])
heavy = sorted(m for m in ("torch", "xarray", "zarr", "scipy") if m in sys.modules)
print("HEAVY=" + ",".join(heavy))
sys.exit(code)
"""


@pytest.mark.parametrize("override, message", [
    ("training.lrr=0.1", "training.lrr: unknown key"),
    ("modle.name=conv1d", "unknown section"),
    ("training.lr=-1", "training.lr: must be > 0"),
    ("pruning.fraction=1.5", "pruning.fraction: must be in (0, 1)"),
    ("study.replicas=1", "study.replicas"),
    ("model.name='resnet21'", "model.name: unknown model 'resnet21'"),  # registry names too
    ("data.name='mnist2'", "data.name: unknown dataset 'mnist2'"),
])
def test_record_rejects_a_typo_without_importing_torch(override, message, tmp_path):
    run = subprocess.run([sys.executable, "-c", PROBE, "record", "--set", override],
                         check=False, capture_output=True, text=True, cwd=tmp_path,
                         timeout=120)
    assert run.returncode == 2, run.stderr
    assert message in run.stderr and run.stderr.count("\n") == 1
    assert "HEAVY=\n" in run.stdout, run.stdout  # none of torch, xarray, zarr, scipy
    assert not list(tmp_path.iterdir())  # nothing written


def test_models_package_imports_without_torch():
    code = ("import sys, stabilitylab.models as m; assert 'torch' not in sys.modules; "
            "m.build_model; assert 'torch' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)

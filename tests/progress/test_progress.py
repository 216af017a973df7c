"""Progress when stderr is not a terminal: one line every ~10 s or 5%, for record and analyze."""

import io
import re
import shutil

import stabilitylab
from stabilitylab.progress import Progress


class _Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_lines_every_five_percent_or_ten_seconds():
    out, clock = io.StringIO(), _Clock()
    p = Progress(1000, desc="record", unit="replica-steps", stream=out, clock=clock)
    p.set(level=1, runs="3/19")
    clock.t = 1.0
    p.update(10)  # 1% after 1 s: nothing yet
    assert out.getvalue() == ""
    clock.t = 2.0
    p.update(40)  # 5%: a line
    first = out.getvalue().splitlines()
    assert len(first) == 1
    assert first[0].startswith("record: level 1 | runs 3/19 | 5% of 1,000 replica-steps")
    assert "25 replica-steps/s" in first[0] and "ETA 38s" in first[0]  # 950 left at 25/s
    clock.t = 13.0
    p.update(1)  # 0.1% more but 11 s later: a line
    assert len(out.getvalue().splitlines()) == 2
    clock.t = 20.0
    p.update(949)
    p.close()
    last = out.getvalue().splitlines()[-1]
    assert "100% of 1,000" in last and "done in 20s" in last


def test_off_and_terminal_modes_print_no_lines():
    out = io.StringIO()
    p = Progress(10, desc="x", unit="u", stream=out, enabled=False)
    p.update(10)
    p.close()
    assert out.getvalue() == ""


def test_record_and_analyze_print_progress_lines_when_piped(tmp_path, capsys, monkeypatch):
    from conftest import tiny_config

    # No minimum gap between lines: a fast machine records this study in about a second,
    # and the test is about what the lines say, not about how often they come.
    init = Progress.__init__
    monkeypatch.setattr(Progress, "__init__",
                        lambda self, *a, **k: init(self, *a, **{**k, "min_gap": 0.0}))

    from stabilitylab.analysis.run import analyze_store
    from stabilitylab.study.plan import all_runs
    from stabilitylab.study.resolve import resolve_study

    cfg = tiny_config("pruning.levels=1", "training.steps='40it'")
    store = tmp_path / "s.zarr"
    stabilitylab.record_study(cfg, str(store))  # progress=None, stderr is no tty
    lines = [x for x in capsys.readouterr().err.splitlines() if x.startswith("record: ")]
    assert len(lines) >= 3, lines
    assert re.match(r"record: level dense \| runs 0/\d+ \| \d+% of [\d,]+ replica-steps",
                    lines[0]), lines[0]
    assert all(re.search(r"replica-steps/s \| (ETA|done in) ", x) for x in lines), lines
    assert any(re.search(r"level 1 \| ", x) for x in lines), lines
    total = 1 + len(all_runs(resolve_study(cfg)))  # dense run too
    runs = [tuple(map(int, re.search(r"runs (\d+)/(\d+)", x).groups())) for x in lines]
    assert runs[-1] == (total, total)  # every run counted by the end
    assert [r[0] for r in runs] == sorted(r[0] for r in runs)
    assert "100% of" in lines[-1]
    copy = tmp_path / "a.zarr"
    shutil.copytree(store, copy)
    analyze_store(str(copy), n_boot=20, alphas=3)
    lines = [x for x in capsys.readouterr().err.splitlines() if x.startswith("analyze: ")]
    phases = {m.group(1) for x in lines if (m := re.match(r"analyze: phase ([^|]+?) \|", x))}
    assert {"trajectory measures", "replica measures", "gradient noise"} <= phases, lines
    assert any(p.startswith("interpolation") for p in phases)
    assert "100% of" in lines[-1]
    analyze_store(str(copy), n_boot=20, alphas=3, measures=["instability"])  # one group
    lines = [x for x in capsys.readouterr().err.splitlines() if x.startswith("analyze: ")]
    assert "100% of" in lines[-1] and "done in" in lines[-1], lines
    # Building the compiled forward (9-18 s on a fresh machine) is named while it runs; a
    # build that falls back to the eager forward at once keeps this test fast.
    from stabilitylab.analysis import interpolate

    monkeypatch.setattr(interpolate, "_build_checked", lambda *a, **k: False)
    analyze_store(str(copy), n_boot=20, alphas=3, measures=["instability"], compile="on")
    lines = [x for x in capsys.readouterr().err.splitlines() if x.startswith("analyze: ")]
    named = [i for i, x in enumerate(lines)
             if re.match(r"analyze: phase interpolation[^|]* \| compiling the evaluation "
                         r"forward \| \d+% of", x)]
    assert named, lines
    assert "compiling" not in lines[-1] and "100% of" in lines[-1], lines


def test_terminal_mode_is_a_tqdm_bar_with_the_fields():
    out = io.StringIO()
    p = Progress(10, desc="record", unit="replica-steps", stream=out, enabled=True)
    p.set(level=2, runs="3/19")
    p.update(10)
    p.close()
    text = out.getvalue()
    assert "record" in text and "level 2 runs 3/19" in text and "10/10" in text

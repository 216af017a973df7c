"""The ``stabilitylab`` command line (argument parsing; the work is in the library).

    stabilitylab record [PRESET|CONFIG.toml] [--out PATH] [--set key=value ...] [--device D] [--resume]
    stabilitylab analyze STORE [--measures ...] [--device D] [--alphas N] [--compile auto|on|off] [--no-report] [--profile]
    stabilitylab report STORE [--out DIR] [--pdf]
    stabilitylab validate STORE [--deep]
    stabilitylab data download NAME [--data-root DIR]     # stabilitylab data download --help
    stabilitylab presets
    stabilitylab models | datasets | kinds
    stabilitylab compare A B --model SPEC --data SPEC [--alphas 30] [--bn-recompute]
        [--align weight|activation] [--repair] [--json]
    stabilitylab import openlth RUN_DIR --out STORE
    stabilitylab import checkpoints SPEC.toml --out STORE [--model SPEC] [--data SPEC]

Every error on bad input is one ``error: ...`` line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from stabilitylab.core.errors import StabilityLabError
from stabilitylab.data.registry import downloadable, offline_notes

DESCRIPTION = """\
Measure the weight-space stability of lottery tickets: train iterative magnitude pruning
with rewinding, record every weight trajectory to a Zarr store, measure instability and
other stability measures, and predict the best rewind point.

examples:
  stabilitylab record --out runs/mnist1d-default.zarr      # the default MNIST-1D study
  stabilitylab analyze runs/mnist1d-default.zarr           # measures + report
  stabilitylab record --set pruning.levels=0 --out runs/which-k.zarr   # which k? (no IMP)
"""

DATA_ROOT_HELP = ("where datasets are (default: $STABILITYLAB_DATA, else "
                  "~/.cache/stabilitylab/datasets)")


class _UsageError(StabilityLabError):
    """A bad command line (unknown option, bad choice, missing argument)."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad command line raises (printed as one ``error:`` line, exit 2)
    instead of printing the usage block and calling ``sys.exit``."""

    def error(self, message: str):
        raise _UsageError(f"{message} (see `{self.prog} --help`)")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("stabilitylab")
    except PackageNotFoundError:
        from stabilitylab.core.version import __version__

        return __version__


def _measures_help() -> str:
    from stabilitylab.analysis.registry import GROUPS
    from stabilitylab.analysis.run import MEASURE_GROUP, MEASURE_GROUPS

    opt_in = [g for g in MEASURE_GROUPS if not GROUPS[g].default]
    return ("measure groups or measure names to compute (default: every group but the opt-in "
            "ones; 'default' names those, e.g. --measures default plane; a measure name "
            "computes its whole group). Groups: " + ", ".join(MEASURE_GROUPS)
            + (" (opt-in: " + ", ".join(opt_in) + ")" if opt_in else "") + ". Measures: "
            + ", ".join(f"{m} ({g})" for m, g in MEASURE_GROUP.items()))


class _LazyHelp(str):
    """A help text built only when argparse formats it (``help % params``): the measure
    list imports the analysis package (xarray, scipy), which ``record`` does not need."""

    def __new__(cls, build):
        self = super().__new__(cls, "(measures)")
        self._build = build
        return self

    def __mod__(self, params):
        return self._build() % params


# The datasets `data download` can fetch, and why the others need none: read from the
# datasets' declarations without importing them (the data modules import torch).
DOWNLOADABLE = downloadable()


def _downloadable(name: str) -> str:
    note = offline_notes().get(name)
    if note is not None:
        raise argparse.ArgumentTypeError(f"{name} needs no download: it is {note}")
    return name


def _download_help() -> str:
    notes = "; ".join(f"{n} needs no download: it is {why}" for n, why in offline_notes().items())
    return " or ".join(DOWNLOADABLE) + (f" ({notes})" if notes else "")


def _alphas_arg(text: str):
    """``--alphas``: a number of grid points, or ``adaptive``."""
    if text == "adaptive":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a number of points or 'adaptive', got {text!r}")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="stabilitylab", description=DESCRIPTION,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"stabilitylab {_version()}")
    sub = p.add_subparsers(dest="command", required=True)
    device_help = "where to compute: auto (cuda if available), cpu or cuda (default: study.device)"

    rec = sub.add_parser("record", help="train a study and record every trajectory to Zarr")
    rec.add_argument("config", nargs="?", default=None,
                     help="preset name or path to a .toml file (default: mnist1d_default)")
    rec.add_argument("--out", default=None, help="store path or fsspec URL (default: runs/<name>-<id>.zarr)")
    rec.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a config value, e.g. --set training.lr=0.05 (repeatable)")
    rec.add_argument("--device", default=None, choices=["auto", "cpu", "cuda"], help=device_help)
    rec.add_argument("--resume", action="store_true", help="continue a store with incomplete runs")
    rec.add_argument("--scheduler", default=None,
                     help="Dask scheduler address, or local:N for a LocalCluster of N workers")
    rec.add_argument("--rewinds-per-task", type=int, default=0, metavar="N",
                     help="rewind points per batched task (0 = a whole level, the default; "
                          "1 = one task per rewind point, the most parallel on a cluster)")
    rec.add_argument("--no-progress", action="store_true",
                     help="print no progress (default: a bar on a terminal, else one line "
                          "every ~10 s or 5%%)")
    rec.add_argument("--data-root", default=None, metavar="DIR",
                     help=DATA_ROOT_HELP + "; overrides data.root")
    rec.add_argument("--dry-run", action="store_true",
                     help="print the plan (groups, runs, recorded steps) and the estimated "
                          "store size, memory and replica-steps; write nothing")
    rec.add_argument("--probe", action="store_true",
                     help="the cheap rewind-point probe: the study's data-order copies from each "
                          "k trained only --probe-steps steps, the LMC rule at k + Δ; prints "
                          "'stable from k≈…' and writes nothing")
    rec.add_argument("--probe-steps", type=int, default=50, metavar="N",
                     help="Δ of --probe (default 50)")
    rec.add_argument("--max-store-gb", type=float, default=None, metavar="GB",
                     help="refuse a study whose estimated uncompressed store exceeds GB "
                          "(default 100)")

    ana = sub.add_parser("analyze", help="measure stability, correlate with accuracy, predict k")
    ana.add_argument("store", help="path or fsspec URL of a store written by record")
    ana.add_argument("--measures", nargs="*", default=None, metavar="NAME", help=_LazyHelp(_measures_help))
    ana.add_argument("--device", default=None, choices=["auto", "cpu", "cuda"],
                     help="where to compute: auto (default: cuda if available), cpu or cuda")
    ana.add_argument("--alphas", type=_alphas_arg, default=30,
                     help="interpolation points incl. endpoints (default: %(default)s, the grid "
                          "of Frankle et al.), or 'adaptive': a coarse grid, then refinement "
                          "around each barrier's maximum (its resolution is stored as "
                          "attrs['alpha_resolution'])")
    ana.add_argument("--compile", choices=["auto", "on", "off"], default="auto",
                     help="compile the CPU evaluation forward (torch inductor): auto "
                          "(default: for an evaluation of at least 2M network-examples, e.g. "
                          "the default study's barriers), on or off; used only where it gives "
                          "the eager logits bit for bit")
    ana.add_argument("--no-report", action="store_true", help="skip writing the report")
    ana.add_argument("--profile", action="store_true",
                     help="print the seconds of each phase (reading the store and compiling "
                          "the forward are rows of their own)")
    ana.add_argument("--report-out", default=None, help="report folder (default: reports/<name>)")
    ana.add_argument("--no-progress", action="store_true",
                     help="print no progress (default: a bar on a terminal, else one line per "
                          "phase and every ~10 s or 5%%)")
    ana.add_argument("--data-root", default=None, metavar="DIR",
                     help=DATA_ROOT_HELP + "; the data.root saved in the store is never used")
    ana.add_argument("--trust-plugins", action="store_true",
                     help="import the package.module:function model or dataset the store names "
                          "(runs that module's code; only for stores you trust)")

    rep = sub.add_parser("report", help="write the HTML/Markdown report of an analyzed store")
    rep.add_argument("store", help="path or fsspec URL of an analyzed store")
    rep.add_argument("--out", default=None, help="report folder (default: reports/<name>)")
    rep.add_argument("--pdf", action="store_true",
                     help="also write report.pdf (summary, table and figures; for email)")
    rep.add_argument("--trust-plugins", action="store_true",
                     help="import the package.module:function model or dataset the store names "
                          "(runs that module's code; only for stores you trust)")

    val = sub.add_parser("validate", help="check a store against the schema")
    val.add_argument("store", help="path or fsspec URL of a store")
    val.add_argument("--deep", action="store_true",
                     help="also decode every chunk (finds truncated or corrupt chunks; slow)")

    sub.add_parser("presets", help="list the shipped presets")

    data = sub.add_parser("data", help="datasets: download " + " or ".join(DOWNLOADABLE))
    data_sub = data.add_subparsers(dest="data_command", required=True)
    dl = data_sub.add_parser("download", help="download a torchvision dataset (md5-checked)")
    dl.add_argument("dataset", choices=DOWNLOADABLE, type=_downloadable, help=_download_help())
    dl.add_argument("--data-root", default=None, metavar="DIR", help=DATA_ROOT_HELP)
    dl.add_argument("--mirror", default=None, metavar="URL",
                    help="base URL of a mirror serving the same files (default: torchvision's)")
    _add_plugin_commands(sub)
    return p


# -- models, datasets, compare, import (issue 14: plugins and checkpoints) ------------------

def _add_plugin_commands(sub) -> None:
    sub.add_parser("models", help="list the model names a config can use (shipped and entry points)")
    sub.add_parser("datasets", help="list the dataset names a config can use (shipped and entry points)")
    sub.add_parser("kinds", help="list the run kinds: controls (study.controls) and noise kinds "
                   "(study.noise)")

    cmp = sub.add_parser("compare", help="barriers, distance and disagreement between two checkpoints")
    cmp.add_argument("a", help="state_dict file (.pt/.pth via torch.load(weights_only=True), or .safetensors)")
    cmp.add_argument("b", help="second state_dict file of the same architecture")
    cmp.add_argument("--model", required=True, metavar="SPEC",
                     help="model name, package.module:function or entry point")
    cmp.add_argument("--data", required=True, metavar="SPEC",
                     help="dataset name, package.module:function or entry point (its test set is used)")
    cmp.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="further settings, e.g. --set model.options.width=2 --set data.root=DIR")
    cmp.add_argument("--alphas", type=int, default=30,
                     help="interpolation points incl. endpoints (default: %(default)s)")
    cmp.add_argument("--bn-recompute", action="store_true",
                     help="recompute BatchNorm statistics at every alpha on the train subset "
                          "(default: interpolate the files' statistics)")
    cmp.add_argument("--align", nargs="?", const="weight", default=None,
                     choices=["weight", "activation"],
                     help="also the barrier after weight (default) or activation matching")
    cmp.add_argument("--repair", action="store_true",
                     help="also the barrier after REPAIR (and after --align + REPAIR)")
    cmp.add_argument("--curve", action="store_true",
                     help="also train a Bezier curve and a one-bend chain from B to A and report "
                          "their barriers (Garipov et al. 2018)")
    cmp.add_argument("--device", default=None, choices=["auto", "cpu", "cuda"])
    cmp.add_argument("--json", action="store_true", help="print the results as one JSON object")

    imp = sub.add_parser("import", help="convert another framework's runs into a store")
    fmt = imp.add_subparsers(dest="format", required=True)
    olth = fmt.add_parser("openlth", help="an OpenLTH lottery_<hash> directory (replicates, "
                                          "levels, branches)")
    olth.add_argument("run_dir", help="the OpenLTH lottery_<hash> directory")
    olth.add_argument("--out", required=True, help="the new store (path or fsspec URL)")
    olth.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                      help="settings on top of the mapped config, e.g. --set data.root=DIR")
    ck = fmt.add_parser("checkpoints", help="folders of per-step state_dicts (.pt/.pth, "
                                            "Lightning .ckpt, safetensors, HF folders) named "
                                            "by a TOML spec")
    ck.add_argument("spec", help="the TOML spec (see docs/checkpoints.md)")
    ck.add_argument("--out", required=True, help="the new store (path or fsspec URL)")
    ck.add_argument("--model", default=None, metavar="SPEC",
                    help="model name, package.module:function or entry point (else the spec's)")
    ck.add_argument("--data", default=None, metavar="SPEC",
                    help="dataset name, package.module:function or entry point (else the spec's)")
    ck.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="further settings, e.g. --set training.batch_size=32")
    ck.add_argument("--no-progress", action="store_true", help="no progress bar")


def _models(args) -> int:
    from stabilitylab.models.registry import available_models, model_help

    helps = model_help()
    for name, target in available_models().items():
        print(f"{name}\t{target}" + (f"\t{helps[name]}" if helps.get(name) else ""))
    print("(or any package.module:function builder)")
    return 0


def _datasets(args) -> int:
    from stabilitylab.data.registry import available_datasets

    for name, target in available_datasets().items():
        print(f"{name}\t{target}")
    print("(or any package.module:function loader)")
    return 0


def _kinds(args) -> int:
    from stabilitylab.study import kinds

    for name, kind in kinds.REGISTRY.items():
        role = "control" if kind.control else "noise" if kind.noise else "always"
        print(f"{name}\t{role}\t{kind.meaning}")
    print("(study.controls lists control kinds; study.noise: data_order and the noise kinds)")
    return 0


def _compare(args) -> int:
    import json

    from stabilitylab.interop.compare import compare_checkpoints, summary_lines

    result = compare_checkpoints(args.a, args.b, model=args.model, data=args.data,
                                 alphas=args.alphas, bn_recompute=args.bn_recompute,
                                 align=args.align, repair=args.repair, curve=args.curve,
                                 overrides=args.overrides,
                                 device=args.device)
    print(json.dumps(result) if args.json else "\n".join(summary_lines(result)))
    return 0


def _import(args) -> int:
    if args.format == "checkpoints":
        from stabilitylab.interop.import_checkpoints import import_checkpoints

        summary = import_checkpoints(args.spec, args.out, model=args.model, data=args.data,
                                     overrides=args.overrides,
                                     progress=False if args.no_progress else None)
    else:
        from stabilitylab.interop.openlth import import_openlth

        summary = import_openlth(args.run_dir, args.out, overrides=args.overrides)
    for line in summary["lines"]:
        print(line)
    print(f"wrote {args.out}; next: stabilitylab analyze {args.out}")
    return 0


_PLUGIN_HANDLERS = {"models": _models, "datasets": _datasets, "kinds": _kinds, "compare": _compare,
                    "import": _import}


def _default_out(study) -> str:
    name, sid = study.config.study.name, study.id
    return str(Path("runs") / (f"{name}.zarr" if name.endswith(sid) else f"{name}-{sid}.zarr"))


def _named_for_overrides(study, config_arg, overrides):
    """The study name, telling overridden studies apart: when ``--set`` changes what the
    study computes (its study id differs from the preset's or file's own) and does not set
    ``study.name`` itself, the name becomes ``<name>-<study id>`` (the id ignores the name)."""
    import dataclasses

    from stabilitylab.config import load_config
    from stabilitylab.study.resolve import study_id

    if not overrides or any(o.split("=", 1)[0].strip() == "study.name" for o in overrides):
        return study
    if study_id(load_config(config_arg, [])) == study.id:
        return study
    cfg = study.config
    cfg = dataclasses.replace(cfg, study=dataclasses.replace(cfg.study,
                                                             name=f"{cfg.study.name}-{study.id}"))
    return dataclasses.replace(study, config=cfg)


def _record(args) -> int:
    import dataclasses

    from stabilitylab.config import load_config

    # the config first: a typo in a plain value is reported before torch and the study
    # machinery import; then the one resolution of this command (every step takes the Study)
    cfg = load_config(args.config, args.overrides)
    from stabilitylab.study.resolve import resolve_study

    study = _named_for_overrides(resolve_study(cfg), args.config, args.overrides)
    from stabilitylab.study.runner import record_study  # torch: once the study is known good

    if args.data_root is not None:  # the user's flag; data.root is not part of the study id
        cfg = study.config
        study = dataclasses.replace(study, config=dataclasses.replace(
            cfg, data=dataclasses.replace(cfg.data, root=args.data_root)))
    cfg = study.config
    out = args.out if args.out is not None else _default_out(study)
    if not out.strip():
        raise StabilityLabError("--out: empty path; give a folder or URL for the store")
    if args.dry_run:
        return _dry_run(study, out, args)
    if args.probe:
        from stabilitylab.analysis.lmc_probe import probe_rewinds
        from stabilitylab.progress import Progress

        resolved = study
        total = max(resolved.rewinds) + 1 + cfg.study.replicas * sum(
            min(args.probe_steps, resolved.total_steps - k) for k in resolved.rewinds)
        bar = Progress(total, desc="probe", unit="replica-steps",
                       enabled=False if args.no_progress else None)
        result = probe_rewinds(study, delta=args.probe_steps, device=args.device,
                               progress=bar.update)
        bar.close()
        print("\n".join(result["lines"]))
        return 0
    if args.resume:
        from stabilitylab.study.runner import nothing_to_resume

        if nothing_to_resume(study, out):
            print(f"{out} already holds the complete study {cfg.study.name}: nothing to do")
            return 0
    progress = False if args.no_progress else None
    if args.scheduler:
        from stabilitylab.study.cluster import record_distributed

        record_distributed(study, out, scheduler=args.scheduler, resume=args.resume,
                           device=args.device, progress=progress,
                           rewinds_per_task=args.rewinds_per_task, max_store_gb=args.max_store_gb)
    else:
        record_study(study, out, resume=args.resume, device=args.device, progress=progress,
                     rewinds_per_task=args.rewinds_per_task, max_store_gb=args.max_store_gb)
    from stabilitylab.train.step import compile_summary

    compiled = compile_summary()
    print(f"recorded study {cfg.study.name} to {out}" + (f" ({compiled})" if compiled else ""))
    return 0


def _dry_run(study, out, args) -> int:
    """``record --dry-run``: the plan and the estimates, then the limit checks; writes nothing."""
    from stabilitylab.study.estimate import estimate, plan_lines
    from stabilitylab.study.plan import check_rewinds_per_task
    from stabilitylab.study.runner import check_resources

    per_task = check_rewinds_per_task(args.rewinds_per_task)
    print("\n".join([f"dry run: would record to {out}", *plan_lines(study, estimate(study, per_task),
                                                                    per_task)]))
    check_resources(study, out, resume=args.resume, device=args.device,
                    rewinds_per_task=per_task, max_store_gb=args.max_store_gb)
    print("limits: fits (nothing written)")
    return 0


def _analyze(args) -> int:
    import gc

    from stabilitylab.core.memory import collector_paused

    with collector_paused():  # torch, xarray, zarr, scipy: no collections while they load
        from stabilitylab.analysis.run import analyze_store

        if args.owns_process:  # they live until it ends: collections skip them from now on
            gc.freeze()  # (stabilitylab.core.memory; main([...]) from Python leaves it alone)
    from stabilitylab.store import validate

    validate(args.store)  # cheap; a damaged store stops here, before anything is written

    summary = analyze_store(args.store, measures=args.measures, device=args.device,
                            alphas=args.alphas, progress=False if args.no_progress else None,
                            data_root=args.data_root, trust_plugins=args.trust_plugins,
                            compile=args.compile)
    for line in summary.get("lines", []):
        print(line)
    if not args.no_report:
        import time

        from stabilitylab.report import write_report

        started = time.perf_counter()
        where = write_report(args.store, out=args.report_out, trust_plugins=args.trust_plugins,
                             resolved=summary.get("study"))
        summary["profile"]["report"] = time.perf_counter() - started
        print(f"report: {where}")
    if args.profile:
        from stabilitylab.analysis.run import profile_table

        print("\n".join(profile_table(summary["profile"])))
    return 0


def _report(args) -> int:
    from stabilitylab.report import write_report
    from stabilitylab.store import validate

    validate(args.store)

    where = write_report(args.store, out=args.out, pdf=args.pdf,
                         trust_plugins=args.trust_plugins)
    print(f"report: {where}" + (f" (and {where / 'report.pdf'})" if args.pdf else ""))
    return 0


def _validate(args) -> int:
    from stabilitylab.store import validate

    notes = validate(args.store, deep=args.deep)
    print(f"{args.store}: valid stabilitylab store")
    for line in notes:  # leftovers of an interrupted analyze, a partial analysis
        if line.startswith("warning: "):
            print(line)
    return 0


def _presets(args) -> int:
    from stabilitylab.config import available_presets

    print("\n".join(available_presets()))
    return 0


def _data(args) -> int:
    from stabilitylab.data.download import download

    print(f"{args.dataset}: {download(args.dataset, args.data_root, mirror=args.mirror)}")
    return 0


def _one_line(exc: BaseException) -> str:
    """The message on one line: a path or value with a newline in it must not split it."""
    text = str(exc) or type(exc).__name__
    return text.replace("\r", "\\r").replace("\n", "\\n")


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        args, extra = _parser().parse_known_args(argv)
        if extra:  # point at the subcommand's own help, where its options are listed
            where = f"stabilitylab {args.command}"
            if args.command == "data":
                where += f" {args.data_command}"
            raise _UsageError(f"unrecognized arguments: {' '.join(extra)} "
                              f"(see `{where} --help`)")
        args.owns_process = argv is None  # the command line's process, not a caller's
        handler = {"record": _record, "analyze": _analyze, "report": _report,
                   "validate": _validate, "presets": _presets, "data": _data,
                   **_PLUGIN_HANDLERS}[args.command]
        return handler(args)
    except StabilityLabError as exc:
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; completed runs are kept (continue with --resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""The TOML of ``stabilitylab import checkpoints``: which files are which copy at which step.

    model = "mypkg.models:small_mlp"   # or --model; what analyze rebuilds
    data = "mypkg.data:digits"         # or --data
    step_pattern = 'step=(\\d+)'       # optional: a regex with one group; default: the
                                       # last number in the file (or folder) name
    prefix = "model."                  # optional: stripped from every key (Lightning's
                                       # LightningModule attribute); default: detected
    masks = "zeros"                    # optional: "zeros" (the zeros of each run's first
                                       # checkpoint), or a mask file; default: all ones
    [settings]                         # optional further config settings
    "training.batch_size" = 32

    [[runs]]                           # one per copy
    path = "ckpts/seed0/*.ckpt"        # a glob or a folder, relative to this file
    kind = "imp"                       # default imp
    level = 0                          # default 0
    k = 0                              # the rewind step; default: the first step found
    replica = 0
    # files = ["a.pt", "b.pt"]         # instead of path: an explicit list, in step order

A file is a ``.pt`` / ``.pth`` / ``.bin`` state_dict (``torch.load(weights_only=True)``),
a PyTorch Lightning ``.ckpt`` (its ``state_dict``), a ``.safetensors`` file, or a
Hugging Face-style folder holding ``model.safetensors`` or ``pytorch_model.bin``.
Nothing outside a run's folder is read: a file that resolves (through a symlink)
outside it is refused.
"""

from __future__ import annotations

import glob
import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path

import tomllib

from stabilitylab.core.errors import CheckpointError

HF_FILES = ("model.safetensors", "pytorch_model.bin")
SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors")
_LAST_NUMBER = re.compile(r"(\d+)(?!.*\d)")


@dataclass
class RunFiles:
    kind: str
    level: int
    replica: int
    k: int | None
    steps: list[int] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    mask: Path | None = None


@dataclass
class Spec:
    model: str
    data: str
    runs: list[RunFiles]
    masks: str | None
    prefix: str | None
    settings: dict
    where: str


def _weights_file(path: Path, where: str) -> Path:
    """``path`` itself, or the weights file of a Hugging Face-style folder."""
    if path.is_dir():
        for name in HF_FILES:
            if (path / name).is_file():
                return path / name
        raise CheckpointError(f"{path}: a folder without {' or '.join(HF_FILES)} ({where})")
    return path


def _inside(path: Path, folder: Path) -> None:
    real, root = path.resolve(), folder.resolve()
    if real != root and root not in real.parents:
        raise CheckpointError(f"{path}: resolves to {real}, outside its folder {folder}; refused")


def _step(name: str, pattern: re.Pattern | None, path: Path) -> int:
    stem = name
    for suffix in SUFFIXES:
        stem = stem.removesuffix(suffix)
    m = pattern.search(name) if pattern is not None else _LAST_NUMBER.search(stem)
    if m is None or not m.groups():
        raise CheckpointError(f"{path}: no step in its name"
                              + (f" (step_pattern {pattern.pattern!r})" if pattern else ""))
    return int(m.group(1))


def _files_of(entry: dict, base: Path, pattern, where: str) -> tuple[list[int], list[Path]]:
    if ("path" in entry) == ("files" in entry):
        raise CheckpointError(f"{where}: give each run either path or files")
    if "files" in entry:
        names = entry["files"]
        if not isinstance(names, list) or not names:
            raise CheckpointError(f"{where}: files must be a non-empty list")
        paths = [base / str(n) for n in names]
        folder = base
        ordered = True
    else:
        text = str(entry["path"])
        full = base / text
        if glob.has_magic(text):
            parts = Path(text).parts
            plain = [p for p in parts[:next(i for i, p in enumerate(parts) if glob.has_magic(p))]]
            folder = base.joinpath(*plain) if plain else base
            paths = [Path(p) for p in glob.glob(str(full))]
        elif full.is_dir() and not any((full / n).is_file() for n in HF_FILES):
            folder = full
            paths = [p for p in full.iterdir() if p.suffix in SUFFIXES or p.is_dir()]
        else:
            folder, paths = full.parent, [full]
        ordered = False
    if not paths:
        raise CheckpointError(f"{where}: no checkpoint files match {entry.get('path')!r}")
    steps = []
    for p in paths:
        if not p.exists():
            raise CheckpointError(f"{p}: no such file ({where})")
        _inside(p, folder)
        steps.append(_step(p.name, pattern, p))
    if ordered:
        for (s0, p0), (s1, p1) in zip(zip(steps, paths), zip(steps[1:], paths[1:])):
            if s1 <= s0:
                raise CheckpointError(f"{where}: steps go backwards: {p1.name} (step {s1}) "
                                      f"after {p0.name} (step {s0})")
    else:
        order = sorted(range(len(paths)), key=lambda i: steps[i])
        steps, paths = [steps[i] for i in order], [paths[i] for i in order]
        dup = [s for s, t in itertools.pairwise(steps) if s == t]
        if dup:
            raise CheckpointError(f"{where}: two files have step {dup[0]}")
    files = [_weights_file(p, where) for p in paths]
    for p, f in zip(paths, files):
        _inside(f, folder if p.is_file() else p)
    return steps, files


def read_spec(path, *, model: str | None = None, data: str | None = None) -> Spec:
    """Parse and check the spec at ``path`` (no checkpoint is loaded yet)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such spec file")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8", errors="replace"))
    except tomllib.TOMLDecodeError as exc:
        raise CheckpointError(f"{path}: not valid TOML ({exc})") from None
    known = {"model", "data", "step_pattern", "prefix", "masks", "settings", "runs"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise CheckpointError(f"{path}: unknown key {unknown[0]!r}; keys: {', '.join(sorted(known))}")
    model = model or raw.get("model")
    data = data or raw.get("data")
    if not model or not data:
        raise CheckpointError(f"{path}: name the model and the data (model = ..., data = ... "
                              "in the spec, or --model / --data)")
    pattern = None
    if raw.get("step_pattern"):
        try:
            pattern = re.compile(str(raw["step_pattern"]))
        except re.error as exc:
            raise CheckpointError(f"{path}: step_pattern is not a regex ({exc})") from None
        if pattern.groups != 1:
            raise CheckpointError(f"{path}: step_pattern needs exactly one (group) for the step")
    entries = raw.get("runs")
    if not isinstance(entries, list) or not entries:
        raise CheckpointError(f"{path}: no [[runs]] entries")
    base = path.parent
    runs = []
    for i, entry in enumerate(entries):
        where = f"{path} run {i + 1}"
        bad = sorted(set(entry) - {"path", "files", "kind", "level", "k", "replica", "mask"})
        if bad:
            raise CheckpointError(f"{where}: unknown key {bad[0]!r}")
        steps, files = _files_of(entry, base, pattern, where)
        run = RunFiles(str(entry.get("kind", "imp")), int(entry.get("level", 0)),
                       int(entry.get("replica", 0)),
                       int(entry["k"]) if "k" in entry else None, steps, files,
                       base / entry["mask"] if "mask" in entry else None)
        if run.mask is not None:
            _inside(run.mask, base)
        runs.append(run)
    masks = raw.get("masks")
    if masks is not None and masks != "zeros":
        _inside(base / str(masks), base)
        masks = str(base / str(masks))
    settings = raw.get("settings") or {}
    if not isinstance(settings, dict):
        raise CheckpointError(f"{path}: [settings] must be a table of dotted config keys")
    return Spec(str(model), str(data), runs, masks, raw.get("prefix"), settings, str(path))

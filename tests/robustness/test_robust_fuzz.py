"""Fuzzing the config parser and the store opener with hypothesis.

Whatever the input, the only exceptions allowed out are our documented ones
(:class:`~stabilitylab.core.errors.StabilityLabError` subclasses), each with a non-empty
one-line message. Example counts are fixed (``max_examples``) so the run time is
bounded: 300 for each config entry point, 100 for the store.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stabilitylab.config import available_presets, config_from_dict, config_to_dict, load_config
from stabilitylab.config.schema import SECTIONS, Config
from stabilitylab.core.errors import StabilityLabError
from stabilitylab.store import open_study, validate
from stabilitylab.store.testing import make_fake_store

CONFIG_EXAMPLES = 300
STORE_EXAMPLES = 100

_BASE = settings(deadline=None, derandomize=True, database=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                        HealthCheck.function_scoped_fixture])


def FUZZ(n: int):
    return settings(_BASE, max_examples=n)

FIELDS = {name: [f for f in cls.__dataclass_fields__] for name, cls in SECTIONS.items()}


def _documented(exc: BaseException) -> None:
    """Re-raise anything that is not one of our error types; check the message is one line."""
    if not isinstance(exc, StabilityLabError):
        raise exc
    text = str(exc)
    assert text and "\n" not in text and "\r" not in text, repr(text)


# -- strategies ------------------------------------------------------------------------------

BIG = [10**20, 2**63, 2**63 - 1, -(2**63) - 1, 10**400]  # 10**400 overflows float()

step_strings = st.one_of(
    st.from_regex(r"\A\s?[0-9]{0,4}\s?(ep)?[0-9]{0,4}\s?(it)?\s?\Z"),
    st.sampled_from(["0it", "10it", "1ep", "1ep5it", "2ep", "\u00b2", "\u0663it", "-5it", "1e3it",
                     " 7 ", "9" * 80, "1ep1ep", "it", "ep"]),
)
scalars = st.one_of(
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, 1, 2, -1, *BIG]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    step_strings,
    st.sampled_from(["mnist1d", "mnist", "cifar10", "conv1d", "mlp", "sgd", "adam", "global",
                     "random_prune", "reinit", "dense_early", "every:5", "every:0", "list:0,10",
                     "list:a", "endpoints", "auto", "cpu", "cuda", "fp32", "bf16", "output"]),
)
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4),
    st.dictionaries(st.text(max_size=8), inner, max_size=3),
), max_leaves=8)


DEFAULTS = config_to_dict(Config())


def _typed(default, key: str):
    """Values of the field's own type, often in range: they get past the type checks and
    reach the range checks and the schedule building."""
    if isinstance(default, bool):
        return st.booleans()
    if isinstance(default, int):
        return st.one_of(st.integers(-3, 120), st.integers(0, 10**7), st.sampled_from(BIG))
    if isinstance(default, float):
        return st.one_of(st.floats(-0.5, 1.5), st.floats(), st.sampled_from([0.0, 1.0, 1e-8, 1e300]))
    if isinstance(default, list):
        item = default[0] if default else ("0it" if "rewind" in key or "milestone" in key else 1)
        return st.lists(_typed(item, key), max_size=4)
    if key in ("steps", "warmup", "eval_every", "log_every", "rewinds", "milestones"):
        return st.one_of(step_strings, st.integers(-2, 10**6).map(lambda i: f"{i}it"),
                         st.sampled_from(BIG).map(lambda i: f"{i}it"))
    if key == "record":
        return st.one_of(st.sampled_from(["dense_early", "endpoints", "every:1", "every:0", "every:-3",
                                          "every:x", "list:0,5,1000000000", "list:", "list:1,a"]),
                         st.integers(-2, 10**9).map(lambda i: f"every:{i}"),
                         st.lists(st.integers(-5, 2000), max_size=5).map(
                             lambda xs: "list:" + ",".join(map(str, xs))))
    return st.one_of(st.just(default), st.text(max_size=10), scalars.filter(lambda v: isinstance(v, str)))


def _field_value(section: str, key: str):
    default = DEFAULTS[section][key]
    return st.one_of(st.just(default), _typed(default, key), _typed(default, key), values)


@st.composite
def config_dicts(draw):
    """Mostly-plausible nested dicts: real section and key names, values often of the right
    type and range, some noise (unknown keys and sections, non-table sections)."""
    out = {}
    for section in draw(st.lists(st.sampled_from(list(SECTIONS)), max_size=5, unique=True)):
        keys = draw(st.lists(st.sampled_from(FIELDS[section]), max_size=4, unique=True))
        out[section] = {k: draw(_field_value(section, k)) for k in keys}
        if draw(st.integers(0, 9)) == 0:
            out[section][draw(st.one_of(st.text(max_size=8), st.integers()))] = draw(values)
    for _ in range(draw(st.integers(0, 2)) if draw(st.integers(0, 4)) == 0 else 0):
        out[draw(st.one_of(st.text(max_size=8), st.integers()))] = draw(values)
    if draw(st.integers(0, 9)) == 0 and out:
        out[draw(st.sampled_from(sorted(out, key=repr)))] = draw(scalars)  # a section that is not a table
    return out


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))} = {_toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(type(v))


def _toml_document(raw: dict) -> str:
    lines = [f"{json.dumps(str(k))} = {_toml_value(v)}" for k, v in raw.items() if not isinstance(v, dict)]
    for k, v in raw.items():
        if isinstance(v, dict):
            lines.append(f"[{json.dumps(str(k))}]")
            lines += [f"{json.dumps(str(kk))} = {_toml_value(vv)}" for kk, vv in v.items()]
    return "\n".join(lines) + "\n"


toml_texts = st.one_of(
    st.text(max_size=200),
    config_dicts().map(_toml_document),
    # a valid document with a random splice: malformed in many small ways
    st.tuples(config_dicts().map(_toml_document), st.integers(0, 400), st.text(max_size=6)).map(
        lambda t: t[0][: t[1]] + t[2] + t[0][t[1]:]),
)


@st.composite
def override_strings(draw):
    section = draw(st.one_of(st.sampled_from(list(SECTIONS)), st.text(max_size=6)))
    key = draw(st.sampled_from(FIELDS[section])) if section in FIELDS else draw(st.text(max_size=6))
    typed = _field_value(section, key).map(_toml_value) if section in FIELDS else st.nothing()
    value = draw(st.one_of(typed, typed, values.map(_toml_value), st.text(max_size=12)))
    sep = draw(st.sampled_from([".", ".", ".", "..", ""]))
    return f"{section}{sep}{key}{draw(st.sampled_from(['=', '=', ' = ', '==', '']))}{value}"


overrides = st.lists(st.one_of(override_strings(), st.text(max_size=30)), max_size=4)


# -- config ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


COUNTS: dict[str, int] = {}


def _count(name: str) -> None:
    COUNTS[name] = COUNTS.get(name, 0) + 1


@FUZZ(CONFIG_EXAMPLES)
@given(text=toml_texts, sets=overrides)
def test_fuzz_load_config_toml_file(scratch, text, sets):
    _count("load_config(file)")
    path = scratch / "fuzz.toml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        load_config(path, sets)
    except Exception as exc:  # noqa: BLE001 - the point of the test
        _documented(exc)


@FUZZ(CONFIG_EXAMPLES)
@given(source=st.one_of(st.none(), st.sampled_from(available_presets()), st.text(max_size=40),
                        st.text(max_size=10).map(lambda s: s + ".toml")),
       sets=overrides)
def test_fuzz_load_config_preset_and_set(source, sets):
    _count("load_config(--set)")
    try:
        load_config(source, sets)
    except Exception as exc:  # noqa: BLE001
        _documented(exc)


@FUZZ(CONFIG_EXAMPLES)
@given(raw=st.one_of(config_dicts(), values))
def test_fuzz_config_from_dict(raw):
    _count("config_from_dict")
    try:
        config_from_dict(raw)
    except Exception as exc:  # noqa: BLE001
        _documented(exc)


# -- store -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def fake_store(tmp_path_factory):
    """Two tiny fake stores (consolidated or not); each example damages one in place and
    the files it touched are restored afterwards (much cheaper than copying the store)."""
    base = tmp_path_factory.mktemp("fuzzstore")
    small = {"levels": 1, "rewinds": (0, 10), "replicas": 2, "n_params": 10, "controls": ("random_prune",),
                 "total_steps": 20, "record_every": 10, "step_chunk": 2}
    make_fake_store(base / "cons.zarr", **small)
    make_fake_store(base / "plain.zarr", consolidate=False, **small)
    return base


class Saved(dict):
    """Original bytes of every file a mutation touches, to put back afterwards."""

    def keep(self, path: Path) -> None:
        if path not in self:
            self[path] = path.read_bytes()

    def restore(self) -> None:
        for path, data in self.items():
            path.write_bytes(data)


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.integers(-(2**70), 2**70),
              st.floats(allow_nan=False), st.text(max_size=12),
              st.sampled_from(["stabilitylab.study", "float32", "int8", "bool", "string", "object",
                               "bytes", "blosc", "zstd", "crc32c", "numcodecs.pickle", "regular",
                               "default", "/", ".", "c", "step", "param", "kind"])),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=6,
)


def _paths(node, prefix=()):
    """Every (path) into a JSON tree, containers and leaves."""
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, prefix + (i,))


@st.composite
def mutate_json(draw, meta):
    paths = list(_paths(meta))
    path = draw(st.sampled_from(paths))
    if not path:
        return draw(json_values)
    parent = meta
    for p in path[:-1]:
        parent = parent[p]
    action = draw(st.sampled_from(["replace", "replace", "delete", "insert"]))
    if action == "replace":
        parent[path[-1]] = draw(json_values)
    elif action == "delete":
        del parent[path[-1]]
    elif isinstance(parent, dict):
        parent[draw(st.text(max_size=8))] = draw(json_values)
    else:
        parent.insert(draw(st.integers(0, len(parent))), draw(json_values))
    return meta


ROOT_ATTRS = ["schema", "schema_version", "created_at", "creation_library", "versions", "device",
              "seed", "study_id", "config", "param_layout", "buffer_layout", "complete", "precision_bits"]


@st.composite
def mutation(draw, store: Path, saved: Saved):
    files = sorted(p for p in store.rglob("*") if p.is_file())
    metas = [p for p in files if p.name == "zarr.json"]
    kind = draw(st.sampled_from(["attr", "attr", "json", "json", "json", "file"]))
    if kind == "attr":
        root = store / "zarr.json"
        saved.keep(root)
        meta = json.loads(root.read_text())
        attrs = meta.setdefault("attributes", {})
        name = draw(st.one_of(st.sampled_from(ROOT_ATTRS), st.text(max_size=8)))
        if draw(st.booleans()) and name in attrs:
            del attrs[name]
        elif name == "config" and draw(st.booleans()):
            attrs[name] = json.dumps(draw(config_dicts()))  # JSON text of a random config
        else:
            attrs[name] = draw(json_values)
        root.write_text(json.dumps(meta))
        return f"attr {name}"
    if kind == "json":
        path = draw(st.sampled_from(metas))
        saved.keep(path)
        meta = draw(mutate_json(json.loads(path.read_text())))
        path.write_text(json.dumps(meta))
        return f"json {path.relative_to(store)}"
    path = draw(st.sampled_from(files))
    saved.keep(path)
    data = path.read_bytes()
    how = draw(st.sampled_from(["truncate", "garbage", "delete", "flip"]))
    if how == "truncate":
        path.write_bytes(data[: draw(st.integers(0, max(len(data) - 1, 0)))])
    elif how == "garbage":
        path.write_bytes(draw(st.binary(max_size=64)))
    elif how == "flip" and data:
        i = draw(st.integers(0, len(data) - 1))
        path.write_bytes(data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1:])
    else:
        path.unlink()
    return f"{how} {path.relative_to(store)}"


READ = ("status", "dense_status", "weights", "masks", "test_acc", "final_test_acc", "rewind_state_weights")


@FUZZ(STORE_EXAMPLES)
@given(data=st.data(), which=st.sampled_from(["cons.zarr", "plain.zarr"]), n=st.integers(1, 3))
def test_fuzz_store_open_and_validate(fake_store, data, which, n):
    _count("store")
    store, saved = fake_store / which, Saved()
    try:
        for _ in range(n):
            data.draw(mutation(store, saved), label="mutation")
        try:
            validate(store, deep=True)
        except Exception as exc:  # noqa: BLE001
            _documented(exc)
        try:
            ds = open_study(store)
            for name in READ:
                if name in ds:
                    np.asarray(ds[name].values)
            _ = ds.attrs["config"]
        except Exception as exc:  # noqa: BLE001
            _documented(exc)
    finally:
        saved.restore()


def test_zz_report_fuzz_counts():
    """Logs how many examples each fuzz test ran (see it with ``--log-cli-level=INFO``) and
    checks that every fuzz test that ran got examples."""
    logging.getLogger(__name__).info("fuzz examples run: %s", COUNTS)
    assert all(n > 0 for n in COUNTS.values()), COUNTS

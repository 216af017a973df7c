"""CUDA code paths of the engine, exercised on CPU: device choice, bf16 fallback,
pinned-memory host copies, channels-last layout, and the self-contained CUDA benchmark."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from engine_helpers import make_data
from torch import nn

from stabilitylab.config import load_config
from stabilitylab.core.device import resolve_device
from stabilitylab.core.errors import ConfigError
from stabilitylab.study.resolve import resolve_study
from stabilitylab.train import engine, host_records
from stabilitylab.train.engine import GroupPlan, train_group
from stabilitylab.train.functional import StackedModel

REPO = Path(__file__).resolve().parents[2]


def _data(shape=(1, 8)):
    return make_data(n_train=120, n_test=30, shape=shape)


def _resolved(*overrides, steps=12):
    base = ["training.batch_size=20", f"training.steps='{steps}it'", "study.rewinds=['0it']",
            "training.eval_every='6it'", "training.log_every='3it'", "data.train_eval_size=20"]
    return resolve_study(load_config(None, base + list(overrides)))


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))


def _conv2d():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.Conv2d(4, 4, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 3 * 3, 3))


def _train(model, data, resolved, *, replicas=2, recorder=None, **kw):
    stacked = StackedModel(model)
    params, buffers = stacked.stack([model] * replicas)
    plan = GroupPlan(runs=list(range(replicas)), start_steps=[0] * replicas,
                     data_seeds=list(range(replicas)), params=params, buffers=buffers)
    return train_group(stacked, plan, data, resolved, recorder=recorder, **kw)


class _ListRecorder:
    def __init__(self):
        self.calls = []

    def record(self, runs, step, weights):
        self.calls.append((list(runs), step, np.array(weights)))


# -- device resolution ----------------------------------------------------------------------

def test_auto_device_is_cpu_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")


def test_cuda_requested_without_cuda_is_one_line_config_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError) as info:
        resolve_device("cuda")
    assert "cuda" in str(info.value) and "\n" not in str(info.value)


# -- precision ------------------------------------------------------------------------------

def test_bf16_config_is_accepted():
    assert _resolved("training.precision='bf16'").config.training.precision == "bf16"
    with pytest.raises(ConfigError):
        _resolved("training.precision='fp8'")


def test_autocast_is_a_no_op_on_cpu():
    assert isinstance(engine.autocast(torch.device("cpu"), "bf16"), type(engine.contextlib.nullcontext()))


def test_bf16_on_cpu_trains_exactly_like_fp32():
    data = _data()
    a = _train(_mlp(), data, _resolved())
    b = _train(_mlp(), data, _resolved("training.precision='bf16'"))
    for n in a.params:
        assert torch.equal(a.params[n], b.params[n])
    np.testing.assert_array_equal(a.train_loss, b.train_loss)
    np.testing.assert_array_equal(a.test_acc, b.test_acc)


# -- host copies ------------------------------------------------------------------------------

def test_pinned_empty_falls_back_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    buf = host_records.pinned_empty((3, 4), torch.float32)
    assert buf.shape == (3, 4) and buf.dtype == torch.float32 and not buf.is_pinned()


def test_pinned_empty_falls_back_when_pinning_fails(monkeypatch):
    # CUDA "available" but pinning raises (no driver here): still an ordinary buffer.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    real_empty = torch.empty

    def empty(*args, pin_memory=False, **kw):
        if pin_memory:
            raise RuntimeError("no pinned memory")
        return real_empty(*args, **kw)

    monkeypatch.setattr(torch, "empty", empty)
    buf = host_records.pinned_empty((2,), torch.float32)
    assert buf.shape == (2,) and not buf.is_pinned()


def test_host_copy_on_cpu_is_plain_and_equal():
    t = torch.randn(3, 7)
    host, event = host_records.host_copy(t)
    assert event is None and host.device.type == "cpu"
    np.testing.assert_array_equal(host.numpy(), t.numpy())


def test_host_records_direct_on_cpu():
    rec = _ListRecorder()
    hr = host_records.HostRecords(rec)
    w = torch.randn(2, 5)
    hr.push(["a", "b"], 3, w)
    assert len(rec.calls) == 1  # delivered at once, no queue
    assert rec.calls[0][:2] == (["a", "b"], 3)
    np.testing.assert_array_equal(rec.calls[0][2], w.numpy())


class _FakeEvent:
    def __init__(self):
        self.done = False
        self.waited = False

    def query(self):
        return self.done

    def synchronize(self):
        self.waited = True
        self.done = True


def test_host_records_ring_order_depth_and_flush():
    """The asynchronous (CUDA) bookkeeping, driven by fake events."""
    rec = _ListRecorder()
    events = []

    def fake_copy(t):
        events.append(_FakeEvent())
        return t.clone(), events[-1]

    hr = host_records.HostRecords(rec, depth=2, copy=fake_copy)
    ws = [torch.full((1, 3), float(i)) for i in range(6)]
    hr.push([0], 0, ws[0])
    hr.push([0], 1, ws[1])
    assert rec.calls == []  # both copies in flight
    hr.push([0], 2, ws[2])  # ring full: the oldest is waited for and delivered
    assert [c[1] for c in rec.calls] == [0] and events[0].waited
    events[1].done = True  # completes on its own: delivered at the next push, without waiting
    hr.push([0], 3, ws[3])
    assert [c[1] for c in rec.calls] == [0, 1] and not events[1].waited
    events[3].done = True  # out of order completion must not reorder delivery
    hr.push([0], 4, ws[4])
    assert [c[1] for c in rec.calls] == [0, 1, 2]
    hr.flush()
    assert [c[1] for c in rec.calls] == [0, 1, 2, 3, 4] and not hr.pending
    for call, w in zip(rec.calls, ws):
        np.testing.assert_array_equal(call[2], w.numpy())


def test_recorded_weights_equal_flattened_params():
    rec = _ListRecorder()
    data = _data()
    resolved = _resolved()
    result = _train(_mlp(), data, resolved, recorder=rec)
    steps = [c[1] for c in rec.calls]
    assert steps == sorted(steps) and steps[-1] == resolved.total_steps
    stacked = StackedModel(_mlp())
    np.testing.assert_array_equal(rec.calls[-1][2], stacked.flatten(result.params).numpy())


# -- channels last ----------------------------------------------------------------------------

def test_use_channels_last_decision():
    assert not engine.use_channels_last()  # off by default: NYI under vmap+BN
    assert engine.use_channels_last(True)
    assert not engine.use_channels_last(False)


def test_channels_last_stacked_layout_and_values():
    x = torch.randn(3, 5, 2, 4, 6)
    y = engine.channels_last_stacked(x)
    assert y.shape == x.shape and torch.equal(y, x)
    # the grouped-conv view (B, R*C, H, W) that vmap builds is exactly NHWC
    view = y.movedim(0, 1).reshape(5, 3 * 2, 4, 6)
    assert view.is_contiguous(memory_format=torch.channels_last)
    x4 = torch.randn(5, 2, 4, 6)
    assert engine.channels_last_stacked(x4).is_contiguous(memory_format=torch.channels_last)
    x3 = torch.randn(5, 1, 40)
    assert engine.channels_last_stacked(x3) is x3


def test_channels_last_under_vmap_gives_same_logits_and_stays_nhwc():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Conv2d(8, 4, 3, padding=1))
    stacked = StackedModel(model)
    p, b = stacked.stack([model] * 3)
    b2 = {n: t.clone() for n, t in b.items()}
    x = torch.randn(3, 5, 3, 6, 6)
    y1 = stacked.forward(p, b, x, train=True)
    y2 = stacked.forward(p, b2, engine.channels_last_stacked(x), train=True)
    torch.testing.assert_close(y1, y2, rtol=1e-5, atol=1e-5)
    for n in b:
        torch.testing.assert_close(b[n], b2[n], rtol=1e-5, atol=1e-6)
    # the layout propagated through conv, BN and ReLU: channel stride 1
    assert y2.stride(2) == 1


def test_train_group_channels_last_matches_default():
    data = _data(shape=(3, 6, 6))
    resolved = _resolved()
    a = _train(_conv2d(), data, resolved)
    b = _train(_conv2d(), data, resolved, channels_last=True)
    for n in a.params:
        torch.testing.assert_close(a.params[n], b.params[n], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(a.test_acc, b.test_acc)


# -- the CUDA benchmark stays importable without the storage stack ------------------------------

def test_bench_cuda_imports_without_zarr_or_dask():
    code = (
        f"import sys; sys.path.insert(0, {str(REPO / 'benchmarks')!r})\n"
        "import bench_cuda\n"
        "bad = sorted(m for m in ('zarr', 'dask', 'xarray', 'stabilitylab.store') if m in sys.modules)\n"
        "assert not bad, bad\n"
        "import torch\n"
        "if not torch.cuda.is_available():\n"
        "    rows = bench_cuda.rows(quick=True)\n"
        "    assert len(rows) == 1 and 'no CUDA device' in rows[0]['ours'], rows\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         check=False)
    assert out.returncode == 0, out.stderr

import math

import pytest
import torch
from torch import nn

from stabilitylab.config.schema import ModelConfig
from stabilitylab.core.errors import ConfigError
from stabilitylab.models import (
    MODEL_NAMES,
    build_model,
    count_parameters,
    init_model,
    output_layer_name,
)
from stabilitylab.models.registry import MODEL_BUILDERS

IMAGE = (3, 32, 32)
SHAPES = {"mlp": (1, 40), "lenet_300_100": (1, 28, 28), "conv1d": (1, 40)}


def _shape(name):
    return SHAPES.get(name, IMAGE)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_registry_covers_model_names():
    assert tuple(MODEL_BUILDERS) == MODEL_NAMES


@pytest.mark.parametrize("name,expected", [
    ("conv1d", 5210), ("lenet_300_100", 266610), ("resnet20", 272474), ("resnet32", 466906),
    ("resnet56", 855770), ("vgg11", 9231114), ("vgg16", 14728266), ("vgg19", 20040522),
])
def test_parameter_counts(name, expected):
    model = build_model(ModelConfig(name=name), _shape(name), 10, device="meta")  # no memory, no compute
    assert count_parameters(model) == expected


def test_conv1d_is_about_5k_params():
    n = count_parameters(build_model(ModelConfig(name="conv1d", options={"channels": 25}), (1, 40), 10, _gen()))
    assert 4000 <= n <= 6000


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_forward_shapes_on_meta(name):
    model = build_model(ModelConfig(name=name), _shape(name), 10, device="meta")
    out = model.eval()(torch.empty(2, *_shape(name), device="meta"))
    assert out.shape == (2, 10)
    assert output_layer_name(model) == "fc.weight"
    assert "fc.weight" in dict(model.named_parameters())
    assert isinstance(model.fc, nn.Linear) and model.fc.out_features == 10


@pytest.mark.parametrize("name,cfg,shape", [
    ("mlp", ModelConfig(name="mlp", options={"hidden": (8, 6)}), (1, 40)),
    ("conv1d", ModelConfig(name="conv1d", options={"channels": 4}), (1, 40)),
    ("resnet20", ModelConfig(name="resnet20"), (3, 8, 8)),
])
def test_real_forward_small(name, cfg, shape):
    model = build_model(cfg, shape, 7, _gen()).eval()
    with torch.no_grad():
        out = model(torch.randn(3, *shape))
    assert out.shape == (3, 7) and torch.isfinite(out).all()


def test_lenet_refuses_hidden_and_mlp_uses_it():
    with pytest.raises(ConfigError, match="lenet_300_100 takes no option 'hidden'"):
        build_model(ModelConfig(name="lenet_300_100", options={"hidden": (5,)}), (1, 28, 28), 10,
                    device="meta")
    lenet = build_model(ModelConfig(name="lenet_300_100"), (1, 28, 28), 10, device="meta")
    assert [layer.out_features for layer in lenet.hidden] == [300, 100]
    mlp = build_model(ModelConfig(name="mlp", options={"hidden": (5, 4)}), (1, 40), 10, device="meta")
    assert [layer.out_features for layer in mlp.hidden] == [5, 4] and mlp.hidden[0].in_features == 40


def test_conv1d_lengths():
    m = build_model(ModelConfig(name="conv1d", options={"channels": 25}), (1, 40), 10, device="meta")
    x = torch.empty(2, 40, 1, device="meta")  # the convs run length-major: (B, L, C)
    x = m.conv1(x)
    assert x.shape[1:] == (20, 25)
    x = m.conv2(x)
    assert x.shape[1:] == (10, 25)
    assert m.conv3(x).shape[1:] == (5, 25)
    assert m.fc.in_features == 125


def test_matmul_conv1d_equals_nn_conv1d():
    from stabilitylab.models.conv1d import MatmulConv1d

    torch.manual_seed(0)
    for k, s, p, bias in ((5, 2, 2, True), (3, 2, 1, False), (3, 1, 0, True)):
        ref = nn.Conv1d(3, 4, k, stride=s, padding=p, bias=bias)
        ours = MatmulConv1d(3, 4, k, stride=s, padding=p, bias=bias)
        ours.load_state_dict(ref.state_dict())
        x = torch.randn(2, 3, 11)
        torch.testing.assert_close(ours(x.transpose(1, 2)).transpose(1, 2), ref(x))


@pytest.mark.parametrize("length,k,s,p", [(40, 5, 2, 2), (20, 3, 2, 1), (10, 3, 2, 1),
                                          (17, 4, 3, 1), (9, 3, 1, 1), (8, 2, 2, 0),
                                          (11, 5, 1, 0), (12, 7, 2, 3), (5, 5, 1, 0)])
def test_matmul_conv1d_evaluation_and_training_paths_give_the_same_bits(length, k, s, p):
    """The no-grad path (one unfold) and the autograd path (slices + cat) build the same
    im2col matrix, so the forward is bit-identical with and without autograd."""
    from stabilitylab.models.conv1d import MatmulConv1d, _im2col_cat, _im2col_unfold

    torch.manual_seed(1)
    conv = MatmulConv1d(3, 4, k, stride=s, padding=p)
    x = torch.randn(6, length, 3)
    out_len = (length + 2 * p - k) // s + 1
    assert torch.equal(_im2col_unfold(x, k, s, p, out_len).reshape(6, out_len, -1),
                       _im2col_cat(x, k, s, p, out_len))
    with torch.no_grad():
        evaluated = conv(x)
    trained = conv(x)
    assert trained.requires_grad and torch.equal(evaluated, trained.detach())
    ref = nn.functional.conv1d(x.transpose(1, 2), conv.weight, conv.bias, stride=s, padding=p)
    torch.testing.assert_close(evaluated, ref.transpose(1, 2).detach())


@pytest.mark.parametrize("length,k,s,p,bias", [(40, 5, 2, 2, True), (20, 3, 2, 1, False),
                                               (17, 4, 3, 1, True)])
def test_matmul_conv1d_channels_first_products_compute_the_same_conv(length, k, s, p, bias):
    """Within channels_first_products, evaluation (no autograd) computes each product as
    its transpose and returns a (B, L_out, C_out) view of channels-first memory: the same
    convolution (to rounding; on MKL to the bit, which the compiled forward's builder
    checks), with a batch dim under vmap too. Under autograd nothing changes."""
    from torch.func import vmap

    from stabilitylab.models.conv1d import MatmulConv1d, channels_first_products

    torch.manual_seed(2)
    conv = MatmulConv1d(3, 4, k, stride=s, padding=p, bias=bias)
    x = torch.randn(6, length, 3)
    with torch.no_grad():
        plain = conv(x)
        with channels_first_products():
            first = conv(x)
    assert first.shape == plain.shape and first.stride() != plain.stride()
    torch.testing.assert_close(first, plain, rtol=1e-6, atol=1e-6)
    with channels_first_products():
        assert torch.equal(conv(x).detach(), conv(x.clone()).detach())
        assert conv(x).is_contiguous()  # the autograd path: as outside
    weights = torch.randn(2, *conv.weight.shape)

    def one(w, xb):
        return torch.func.functional_call(conv, {"weight": w, "bias": conv.bias}, (xb,))

    with torch.no_grad():
        want = vmap(one, in_dims=(0, None))(weights, x)
        with channels_first_products():
            got = vmap(one, in_dims=(0, None))(weights, x)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def test_resnet_structure():
    m = build_model(ModelConfig(name="resnet20", options={"width": 2}), IMAGE, 10, device="meta")
    assert len(m.blocks) == 9
    assert all(c.bias is None for c in m.modules() if isinstance(c, nn.Conv2d))
    assert [len(b.shortcut) for b in m.blocks] == [0, 0, 0, 2, 0, 0, 2, 0, 0]
    assert m.fc.in_features == 128


def test_init_is_determined_by_generator():
    cfg = ModelConfig(name="resnet20")
    state = torch.get_rng_state()
    a = build_model(cfg, IMAGE, 10, _gen(3)).state_dict()
    b = build_model(cfg, IMAGE, 10, _gen(3)).state_dict()
    c = build_model(cfg, IMAGE, 10, _gen(4)).state_dict()
    assert torch.equal(state, torch.get_rng_state())  # global RNG neither used nor advanced
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["conv.weight"], c["conv.weight"])


def test_init_values():
    m = build_model(ModelConfig(name="lenet_300_100"), (1, 28, 28), 10, _gen())
    w = m.hidden[0].weight
    assert abs(w.std().item() - math.sqrt(2 / 784)) < 0.002 and abs(w.mean().item()) < 0.002
    assert all(torch.count_nonzero(layer.bias) == 0 for layer in [*m.hidden, m.fc])
    r = build_model(ModelConfig(name="resnet20"), IMAGE, 10, _gen())
    for bn in (x for x in r.modules() if isinstance(x, nn.BatchNorm2d)):
        assert torch.all(bn.weight == 1) and torch.all(bn.bias == 0)
        assert torch.all(bn.running_mean == 0) and torch.all(bn.running_var == 1)


def test_init_model_refuses_unknown_tensors():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.ones(3))
            self.fc = nn.Linear(3, 2)

    with pytest.raises(TypeError, match="scale"):
        init_model(Odd(), _gen())


def test_dropout_placement():
    m = build_model(ModelConfig(name="mlp", options={"hidden": (8, 8)}, dropout=0.5), (1, 40), 10, _gen()).train()
    assert isinstance(m.dropout, nn.Dropout) and m.dropout.p == 0.5
    x = torch.randn(4, 1, 40)
    torch.manual_seed(0)
    y1 = m(x)
    torch.manual_seed(1)
    assert not torch.equal(y1, m(x))
    m.eval()
    assert torch.equal(m(x), m(x))
    c = build_model(ModelConfig(name="conv1d", dropout=0.1), (1, 40), 10, device="meta")
    assert isinstance(c.dropout, nn.Dropout)
    assert build_model(ModelConfig(name="conv1d"), (1, 40), 10, device="meta").dropout is None


@pytest.mark.parametrize("cfg,shape,match", [
    (ModelConfig(name="transformer"), (1, 40), "unknown model"),
    (ModelConfig(name="conv1d"), (1, 28, 28), "1-D"),
    (ModelConfig(name="resnet20"), (1, 40), "image"),
    (ModelConfig(name="mlp", dropout=1.0), (1, 40), "dropout"),
    (ModelConfig(name="vgg11", options={"width": 0}), IMAGE, "width"),
])
def test_config_errors(cfg, shape, match):
    with pytest.raises(ConfigError, match=match):
        build_model(cfg, shape, 10, device="meta")


def test_conv1d_layer_norm_option_adds_a_layernorm_after_each_conv_and_refuses_other_norms():
    plain = build_model(ModelConfig(name="conv1d", options={"channels": 25}), (1, 40), 10, _gen())
    normed = build_model(ModelConfig(name="conv1d", options={"channels": 25, "norm": "layer"}),
                         (1, 40), 10, _gen())
    assert count_parameters(normed) == count_parameters(plain) + 3 * 2 * 25
    assert [type(normed.get_submodule(f"norm{i}")) for i in (1, 2, 3)] == [nn.LayerNorm] * 3
    assert plain.norm1 is None
    # the plain net keeps its parameter names (stores and OpenLTH imports key on them)
    assert [n for n, _ in plain.named_parameters()] == [
        "conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias", "conv3.weight", "conv3.bias",
        "fc.weight", "fc.bias"]
    # the LayerNorm normalises each position's channels: scaling conv1's output changes nothing
    x = torch.randn(6, 1, 40, generator=_gen())
    ref = normed(x)
    with torch.no_grad():
        normed.conv1.weight.mul_(3.0)
        normed.conv1.bias.mul_(3.0)
    torch.testing.assert_close(normed(x), ref, rtol=1e-4, atol=1e-5)
    with pytest.raises(ConfigError, match="model.options.norm: choose from none, layer"):
        build_model(ModelConfig(name="conv1d", options={"norm": "batch"}), (1, 40), 10, _gen())

import types

import pytest
import torch
from torch import nn


def make_data(n_train=240, n_test=60, shape=(1, 8), classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return types.SimpleNamespace(
        train_x=torch.randn(n_train, *shape, generator=g),
        train_y=torch.randint(0, classes, (n_train,), generator=g),
        test_x=torch.randn(n_test, *shape, generator=g),
        test_y=torch.randint(0, classes, (n_test,), generator=g),
        num_classes=classes,
    )


@pytest.fixture
def data():
    return make_data()


def tiny_mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))


def tiny_conv(seed=0, bn=False):
    torch.manual_seed(seed)
    layers = [nn.Conv1d(1, 4, 3, stride=2, padding=1, bias=not bn)]
    if bn:
        layers.append(nn.BatchNorm1d(4))
    layers += [nn.ReLU(), nn.Flatten(), nn.Linear(16, 3)]
    return nn.Sequential(*layers)


# Optimizer settings every engine path is checked under (reference and compiled tests).
OPTIMIZER_CASES = [
    ["training.optimizer='sgd'"],
    ["training.optimizer='sgd'", "training.nesterov=true", "training.weight_decay=0.01"],
    ["training.optimizer='sgd'", "training.momentum=0.0"],
    ["training.optimizer='adam'", "training.lr=0.01", "training.weight_decay=0.001"],
    ["training.optimizer='adamw'", "training.lr=0.01", "training.weight_decay=0.01"],
    ["training.optimizer='radam'", "training.lr=0.01"],
]

"""A tiny model and data set named as plugins (``slab_tiny_plugin:mlp``) by the checkpoint
import tests, and the plain Lightning module that trains the model."""

import math

import torch


def digits(cfg):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(120, 1, 6, 6, generator=g)
    y = torch.arange(120) % 4
    return x, y, x[:60].clone(), y[:60].clone()


def mlp(cfg, input_shape, num_classes):
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(math.prod(input_shape), 8),
                               torch.nn.ReLU(), torch.nn.Linear(8, num_classes))


def wide_mlp(cfg, input_shape, num_classes):  # another architecture (mixed-architecture test)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(math.prod(input_shape), 9),
                               torch.nn.ReLU(), torch.nn.Linear(9, num_classes))


def lightning_module(net):
    """A plain LightningModule around ``net`` (its state_dict keys get the prefix ``model.``)."""
    import lightning.pytorch as pl

    class Lit(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = net

        def training_step(self, batch, batch_idx):
            x, y = batch
            return torch.nn.functional.cross_entropy(self.model(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    return Lit()


def loader(seed):
    """The training data in the order of ``seed`` (the copies differ in data order)."""
    x, y, _, _ = digits(None)
    g = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=12,
                                       shuffle=True, generator=g)

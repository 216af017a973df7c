"""Per-replica data orders that *seek*: the batch at step t is computed, never replayed.

Order ``u`` with seed s: epoch e is ``randperm(N)`` from a generator seeded with
``derive_seed(s, e)``; step t uses slice ``t % E`` (E = N // B batches per epoch,
the last partial batch is dropped) of epoch ``t // E``. Jumping to step k costs
one permutation, unlike OpenLTH, which iterates through and discards k batches.
"""

from __future__ import annotations

import torch

from stabilitylab.core.seeds import derive_seed


class DataOrders:
    """Batch indices for R replicas, each with its own seed and step position.

    Parameters
    ----------
    seeds : list of int
        Data-order seed of each replica.
    num_examples, batch_size : int
    device : torch device for the index tensors.
    """

    def __init__(self, seeds: list[int], num_examples: int, batch_size: int, device="cpu"):
        self.seeds = [int(s) for s in seeds]
        self.num_examples = num_examples
        self.batch_size = batch_size
        self.batches_per_epoch = num_examples // batch_size
        self.device = torch.device(device)
        self._epochs = [-1] * len(seeds)
        self._perms = torch.empty(len(seeds), num_examples, dtype=torch.long, device=self.device)
        self._arange = torch.arange(batch_size, device=self.device)

    def permutation(self, replica: int, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(derive_seed(self.seeds[replica], "epoch", epoch))
        return torch.randperm(self.num_examples, generator=g).to(self.device)

    def indices(self, steps: list[int] | torch.Tensor) -> torch.Tensor:
        """(R, B) example indices for replica r at global step ``steps[r]``."""
        steps = [int(s) for s in steps]
        for r, t in enumerate(steps):
            epoch = t // self.batches_per_epoch
            if epoch != self._epochs[r]:
                self._perms[r] = self.permutation(r, epoch)
                self._epochs[r] = epoch
        starts = torch.tensor(
            [(t % self.batches_per_epoch) * self.batch_size for t in steps], device=self.device
        )
        return torch.gather(self._perms, 1, starts[:, None] + self._arange[None, :])

    def block(self, starts: list[int], first: int, count: int) -> torch.Tensor:
        """(count, R, B) indices of iterations ``first .. first + count - 1``.

        Iteration i puts replica r at step ``starts[r] + i``, so this is
        ``indices([k + i for k in starts])`` for every i at once: one slice of the
        concatenated epoch permutations per replica, no Python work per step. The values
        are exactly those :meth:`indices` gives.
        """
        per_epoch, batch = self.batches_per_epoch, self.batch_size
        out = torch.empty(count, len(self.seeds), batch, dtype=torch.long, device=self.device)
        for r, k in enumerate(starts):
            t0 = int(k) + first
            e0, e1 = t0 // per_epoch, (t0 + count - 1) // per_epoch
            perms = []
            for e in range(e0, e1 + 1):
                if e != self._epochs[r]:
                    self._perms[r] = self.permutation(r, e)
                    self._epochs[r] = e
                perms.append(self._perms[r, : per_epoch * batch].clone() if e0 != e1
                             else self._perms[r, : per_epoch * batch])
            seq = torch.cat(perms) if len(perms) > 1 else perms[0]
            offset = t0 - e0 * per_epoch
            out[:, r] = seq.view(-1, batch)[offset:offset + count]
        return out

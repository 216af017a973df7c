import pytest
import torch
import torch.nn.functional as F

from stabilitylab.data.augment import random_flip_crop


def _draws(seed, m, padding):
    g = torch.Generator().manual_seed(seed)
    flip = torch.rand(m, generator=g) < 0.5
    rows = torch.randint(0, 2 * padding + 1, (m,), generator=g)
    cols = torch.randint(0, 2 * padding + 1, (m,), generator=g)
    return flip, rows, cols


def test_shape_dtype_determinism_and_input_untouched():
    x = torch.randn(16, 3, 8, 8)
    x0 = x.clone()
    a = random_flip_crop(x, torch.Generator().manual_seed(1))
    b = random_flip_crop(x, torch.Generator().manual_seed(1))
    c = random_flip_crop(x, torch.Generator().manual_seed(2))
    assert a.shape == x.shape and a.dtype == x.dtype
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(x, x0)


def test_flip_really_flips():
    m = 64
    x = torch.randn(m, 2, 5, 6)
    out = random_flip_crop(x, torch.Generator().manual_seed(3), padding=0)
    flip, _, _ = _draws(3, m, 0)
    assert 0 < int(flip.sum()) < m  # both cases occur
    assert torch.equal(out[flip], x[flip].flip(-1))
    assert torch.equal(out[~flip], x[~flip])
    # a flip mirrors columns: first column becomes last
    i = int(flip.nonzero()[0])
    assert torch.equal(out[i, :, :, 0], x[i, :, :, -1])


def test_crop_keeps_content_of_padded_image():
    m, p = 32, 4
    x = torch.randn(m, 3, 8, 8)
    out = random_flip_crop(x, torch.Generator().manual_seed(5), padding=p)
    flip, rows, cols = _draws(5, m, p)
    assert rows.unique().numel() > 1 and cols.unique().numel() > 1
    for i in range(m):  # reference, one example at a time
        xi = x[i].flip(-1) if flip[i] else x[i]
        padded = F.pad(xi, (p, p, p, p))
        r, c = int(rows[i]), int(cols[i])
        assert torch.equal(out[i], padded[:, r:r + 8, c:c + 8])
    # centre offset (p, p) means no shift: content equal to the (flipped) input
    centre = (rows == p) & (cols == p) & ~flip
    assert torch.equal(out[centre], x[centre])


def test_rejects_non_image_batches():
    with pytest.raises(ValueError):
        random_flip_crop(torch.zeros(4, 1, 40), torch.Generator())

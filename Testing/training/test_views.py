"""Block masking of the condition net's views."""

from __future__ import annotations

import numpy as np
import torch

from screener_training.views import ViewConfig, apply_block_mask


def test_block_mask_uses_block_size_in_voxels():
    view = torch.ones(1, 16, 16, 16)
    config = ViewConfig(mask_ratio=0.5, mask_block_size=4)

    masked = apply_block_mask(view, config, np.random.default_rng(0))

    visible = masked[1]
    cells = visible.view(4, 4, 4, 4, 4, 4).permute(0, 2, 4, 1, 3, 5).reshape(64, 64)
    # Each 4-voxel cell is wholly visible or wholly hidden, and the image is zero where hidden.
    assert bool(torch.all(cells.min(dim=1).values == cells.max(dim=1).values))
    assert 0 < float(visible.mean()) < 1
    assert torch.equal(masked[0], view[0] * visible)


def test_block_mask_hides_about_the_ratio():
    view = torch.ones(1, 48, 48, 48)
    config = ViewConfig(mask_ratio=0.6, mask_block_size=4)

    hidden = [1 - float(apply_block_mask(view, config, np.random.default_rng(seed))[1].mean()) for seed in range(5)]

    assert abs(np.mean(hidden) - 0.6) < 0.05

"""The minimal training path: VICReg behaviour and a short real-data run that lowers the loss."""

from __future__ import annotations

import csv

import numpy as np
import torch

from ScreenerCore.config import NetConfig, PreprocessingConfig
from screener_training.data import load_training_volumes
from screener_training.losses import vicreg_loss
from screener_training.train import StageConfig, train_embedding_net
from screener_training.views import ViewConfig, sample_positive_pair


def test_vicreg_low_for_identical_unit_variance():
    torch.manual_seed(0)
    z = torch.randn(4096, 16)
    loss, terms = vicreg_loss(z, z.clone())
    assert terms["invariance"] == 0.0
    assert terms["variance"] < 0.02
    assert terms["covariance"] < 0.05
    assert float(loss) < 1.0


def test_vicreg_high_for_collapsed():
    collapsed = torch.ones(4096, 16) * 0.5
    loss, terms = vicreg_loss(collapsed, collapsed.clone())
    # Every channel has zero spread, so the variance hinge is (1 - sqrt(1e-4)) per channel.
    assert np.isclose(terms["variance"], 0.99, atol=1e-6)
    assert float(loss) > 24.0


def test_positive_pair_positions_match(shared_ct):
    config = PreprocessingConfig(spacing_mm=(4.0, 4.0, 4.0))
    volume = load_training_volumes([shared_ct("train/abdomen_pelvis_totalseg.nii.gz")], config)[0]
    # Without augmentation or rescaling, paired positions must see the same intensity in both views.
    views = ViewConfig(crop_size=16, positions_per_pair=64, scale_range=(1.0, 1.0), brightness=0.0,
                       contrast_range=(1.0, 1.0), gamma_range=(1.0, 1.0), noise_std_max=0.0, blur_sigma_max=0.0)
    pair = sample_positive_pair(volume, views, np.random.default_rng(0), pad_value=-1.0)
    first = pair.views[0, 0][tuple(pair.positions[0].T)]
    second = pair.views[1, 0][tuple(pair.positions[1].T)]
    assert torch.allclose(first, second, atol=1e-5)


def test_short_training_lowers_loss(shared_ct, tmp_path):
    config = PreprocessingConfig(spacing_mm=(4.0, 4.0, 4.0))
    volumes = load_training_volumes([shared_ct("train/abdomen_pelvis_totalseg.nii.gz")], config)
    log = tmp_path / "log.csv"
    stage = StageConfig(steps=40, volumes_per_step=2, learning_rate=3e-3, log_every=1, seed=1, projector_width=64)
    train_embedding_net(NetConfig(channels=(4, 8), out_channels=8), volumes,
                        ViewConfig(crop_size=16, positions_per_pair=64), stage, pad_value=-1.0, log_path=log)

    with open(log, newline="") as handle:
        losses = [float(row["loss"]) for row in csv.DictReader(handle)]
    assert len(losses) == 40
    assert np.mean(losses[-8:]) < np.mean(losses[:8]) - 1.0

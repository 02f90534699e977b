"""The fast inference path gives the plain path's map within a stated tolerance, on a real CT crop.

Tolerance: on the CPU in float32 the fast path changes only the order of float
operations (folded batch norm and head, in-place likelihood, channels-last convolution
algorithms), so scores may differ by rounding. FLOAT32_TOLERANCE_NATS bounds the
absolute difference; scores of these models are tens of nats.
"""

from __future__ import annotations

import copy
import itertools

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from screener_testdata import shared_ct_path
from torch import nn

from ScreenerCore.config import ConditionConfig, ModelConfig, NetConfig, PreprocessingConfig
from ScreenerCore.fast_model import FastScreenerModel, OneDnnConv3d, fold_head_into_conv, use_onednn_convolutions
from ScreenerCore.io import read_ct
from ScreenerCore.models import ScreenerModel
from ScreenerCore.package import load_model_package, save_model_package
from ScreenerCore.pipeline import compute_anomaly_map
from ScreenerCore.preprocessing import to_model_grid
from ScreenerCore.sliding_window import (blend_normalisers, blend_profile, patch_grid, select_patches,
                                         sliding_window_scores)
from ScreenerCore.speed import SpeedOptions

FLOAT32_TOLERANCE_NATS = 1e-3
CT_FILE = "train/abdomen_pelvis_totalseg.nii.gz"


def random_batch_norm_statistics(model: nn.Module, seed: int = 1) -> None:
    """Give every batch norm non-trivial statistics and affine terms, so folding them changes the weights."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm3d):
                channels = module.num_features
                module.running_mean.copy_(torch.rand(channels, generator=generator) - 0.5)
                module.running_var.copy_(torch.rand(channels, generator=generator) + 0.5)
                module.weight.copy_(torch.rand(channels, generator=generator) + 0.5)
                module.bias.copy_(torch.rand(channels, generator=generator) - 0.5)


def small_model(kind: str = "masked", seed: int = 0) -> ScreenerModel:
    torch.manual_seed(seed)
    condition_net = NetConfig(in_channels=2, out_channels=8, channels=(4, 8)) if kind == "masked" else None
    config = ModelConfig(
        name=f"speed-test-{kind}",
        preprocessing=PreprocessingConfig(spacing_mm=(4.0, 4.0, 4.0), patch_size=(32, 32, 32), overlap=0.25),
        descriptor=NetConfig(in_channels=1, out_channels=8, channels=(4, 8)),
        condition=ConditionConfig(kind=kind, net=condition_net, frequencies=2),
    )
    config.density.hidden_channels = 8
    model = ScreenerModel(config)
    random_batch_norm_statistics(model)
    return model.eval()


@pytest.fixture(scope="module")
def speed_model(tmp_path_factory):
    folder = save_model_package(small_model(), tmp_path_factory.mktemp("speed_model"))
    return load_model_package(folder)


@pytest.fixture(scope="module")
def ct_crop():
    """A 300 x 240 x 200 mm crop of a real abdomen-pelvis CT: body, air and the crop's edges."""
    image = read_ct(shared_ct_path(CT_FILE))
    return image[:100, 10:90, 20:87]


def test_fast_path_matches_plain_on_ct(speed_model, ct_crop):
    plain = compute_anomaly_map(ct_crop, speed_model, device="cpu", batch_size=2,
                                speed=SpeedOptions(fast=False, skip_outside_body=False))
    fast = compute_anomaly_map(ct_crop, speed_model, device="cpu", batch_size=0, speed=SpeedOptions(cpu_workers=2))

    plain_map = sitk.GetArrayFromImage(plain.anomaly_map)
    fast_map = sitk.GetArrayFromImage(fast.anomaly_map)
    body = plain.model_grid.body_mask
    assert body.any()
    assert not body.all()
    assert np.ptp(plain.model_grid_map[body]) > 100 * FLOAT32_TOLERANCE_NATS
    assert np.abs(fast.model_grid_map - plain.model_grid_map).max() <= FLOAT32_TOLERANCE_NATS
    assert np.abs(fast_map - plain_map).max() <= FLOAT32_TOLERANCE_NATS
    assert fast.floor == plain.floor


@pytest.mark.parametrize("kind", ["masked", "sincos", "none"])
def test_fast_model_matches_each_condition_kind(kind, ct_crop):
    model = small_model(kind)
    config = model.config.preprocessing
    intensity = to_model_grid(ct_crop, config).intensity
    patches = torch.from_numpy(np.stack([intensity[:32, :32, :32], intensity[-32:, -32:, -32:]]))[:, None]
    origins = torch.tensor([[-150.0, -120.0, -300.0], [10.0, 20.0, 30.0]])

    with torch.inference_mode():
        plain = model(patches, origins)
        fast = FastScreenerModel(model)(patches, origins)
        fast_contiguous = FastScreenerModel(model, channels_last=False)(patches, origins)

    assert fast.shape == plain.shape
    assert torch.abs(fast - plain).max() <= FLOAT32_TOLERANCE_NATS
    assert torch.abs(fast_contiguous - plain).max() <= FLOAT32_TOLERANCE_NATS


def test_fast_model_leaves_original_unchanged():
    model = small_model()
    before = {name: value.clone() for name, value in model.state_dict().items()}
    FastScreenerModel(model)
    after = model.state_dict()
    assert before.keys() == after.keys()
    for name, value in before.items():
        assert torch.equal(value, after[name]), name


def test_head_folding_exact_at_borders():
    torch.manual_seed(3)
    head = nn.Conv3d(4, 6, 1)
    conv = nn.Conv3d(6, 5, 3, padding=1)
    with torch.no_grad():
        head.bias.uniform_(1.0, 2.0)
    features = torch.randn(2, 4, 7, 8, 9)

    with torch.no_grad():
        expected = conv(head(features))
        folded = fold_head_into_conv(head, conv)(torch.cat([features, torch.ones_like(features[:, :1])], dim=1))
        # Folding the head's bias into the conv's bias instead is right inside the patch only.
        naive_bias = conv.bias + conv.weight.sum(dim=(2, 3, 4)) @ head.bias
        naive = nn.functional.conv3d(features, torch.einsum("omdhw,mi->oidhw", conv.weight, head.weight[:, :, 0, 0, 0]),
                                     naive_bias, padding=1)

    assert torch.allclose(folded, expected, atol=1e-5)
    assert torch.allclose(naive[..., 1:-1, 1:-1, 1:-1], expected[..., 1:-1, 1:-1, 1:-1], atol=1e-5)
    assert torch.abs(naive - expected).max() > 1e-2


@pytest.mark.parametrize("in_channels,out_channels,kernel,batch", [(1, 4, 3, 1), (2, 4, 3, 2), (4, 8, 1, 1)])
def test_onednn_conv_matches_conv3d(in_channels, out_channels, kernel, batch):
    torch.manual_seed(4)
    conv = nn.Conv3d(in_channels, out_channels, kernel, padding=kernel // 2)
    converted = use_onednn_convolutions(nn.Sequential(copy.deepcopy(conv)))[0]
    features = torch.randn(batch, in_channels, 12, 10, 9)
    with torch.no_grad():
        expected = conv(features)
        result = converted(features)
    assert type(converted) is OneDnnConv3d
    assert torch.allclose(result, expected, atol=1e-5)


@pytest.mark.parametrize("mode", ["constant", "gaussian"])
@pytest.mark.parametrize("shape", [(40, 37, 50), (20, 33, 70)])
def test_blend_normalisers_equal_summed_weights(mode, shape):
    patch = (16, 16, 16)
    grid = patch_grid(shape, patch, 0.3)
    profiles = [blend_profile(p, mode, 0.125) for p in patch]
    weight = np.einsum("i,j,k->ijk", *profiles)
    summed = np.zeros(shape)
    for z, y, x in itertools.product(*grid):
        summed[z:z + 16, y:y + 16, x:x + 16] += weight

    normaliser_z, normaliser_y, normaliser_x = blend_normalisers(shape, grid, profiles)
    separable = np.einsum("i,j,k->ijk", normaliser_z, normaliser_y, normaliser_x)
    assert np.allclose(separable, summed, rtol=1e-12)


def border_sensitive_predictor():
    """A random 3D conv: its zero padding makes a voxel's score depend on the patch that contains it."""
    torch.manual_seed(5)
    conv = nn.Conv3d(1, 1, 5, padding=2)

    def predict(patches, starts):
        return conv(patches)[:, 0] * 10.0

    return predict


@pytest.mark.parametrize("mode", ["constant", "gaussian"])
def test_blending_matches_monai(mode, ct_crop):
    monai_utils = pytest.importorskip("monai.inferers.utils")
    volume = to_model_grid(ct_crop, small_model().config.preprocessing).intensity
    patch = (24, 24, 24)
    predict = border_sensitive_predictor()

    ours = sliding_window_scores(volume, predict, patch, overlap=0.25, batch_size=3, blend=mode)
    weight = torch.from_numpy(np.einsum("i,j,k->ijk", *[blend_profile(p, mode, 0.125) for p in patch])).float()
    with torch.inference_mode():
        reference = monai_utils.sliding_window_inference(
            torch.from_numpy(volume)[None, None], patch, 3, lambda patches: predict(patches, None)[:, None],
            overlap=0.25, mode=mode, roi_weight_map=weight if mode == "gaussian" else None,
        )[0, 0].numpy()

    assert ours.shape == reference.shape
    assert np.abs(ours - reference).max() <= 1e-4 * max(1.0, np.abs(reference).max())


def test_region_skip_keeps_region_scores(ct_crop):
    volume = to_model_grid(ct_crop, small_model().config.preprocessing).intensity
    patch = (16, 16, 16)
    region = np.zeros(volume.shape, dtype=bool)
    region[:20, :25, :18] = True
    predict = border_sensitive_predictor()
    calls = {"all": 0, "region": 0}

    def counting(key):
        def run(patches, starts):
            calls[key] += patches.shape[0]
            return predict(patches, starts)
        return run

    full = sliding_window_scores(volume, counting("all"), patch, batch_size=2)
    skipped = sliding_window_scores(volume, counting("region"), patch, batch_size=2, region_mask=region,
                                    outside_value=-5.0)

    grid = patch_grid(volume.shape, patch, 0.25)
    assert calls["region"] == len(select_patches(grid, patch, region))
    assert calls["region"] < calls["all"]
    assert np.abs(skipped[region] - full[region]).max() <= 1e-5
    assert np.all(skipped[~region] == -5.0)


def test_cpu_workers_match_one_worker(speed_model, ct_crop):
    single = compute_anomaly_map(ct_crop, speed_model, device="cpu", batch_size=3,
                                 speed=SpeedOptions(cpu_workers=1))
    parallel = compute_anomaly_map(ct_crop, speed_model, device="cpu", batch_size=3,
                                   speed=SpeedOptions(cpu_workers=2))
    assert np.abs(parallel.model_grid_map - single.model_grid_map).max() <= FLOAT32_TOLERANCE_NATS


@pytest.mark.parametrize("bad", [{"precision": "fp8"}, {"blend": "median"}, {"cpu_workers": -1}])
def test_invalid_speed_options_raise(bad, speed_model, ct_crop):
    with pytest.raises(ValueError, match=str(next(iter(bad.values())))):
        compute_anomaly_map(ct_crop, speed_model, device="cpu", speed=SpeedOptions(**bad))

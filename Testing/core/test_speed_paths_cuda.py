"""The fast path on a CUDA GPU: half-precision maps within tolerance, device memory bounded by the batch.

Skipped without CUDA. benchmarks/gpu_check.sh runs these on a GPU machine.

Tolerance: float16 autocast rounds every network activation to 11 significant bits
(relative error about 5e-4), and cuDNN runs float32 convolutions in TF32, with the same
11 bits, unless torch.backends.cudnn.allow_tf32 is turned off (PyTorch 1.12 and later).
FP16_TOLERANCE_NATS bounds the absolute score difference from the CPU float32 plain
path for the small test model, whose scores are about 8 nats. bfloat16 keeps 8 bits,
so it gets 8 times that.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from screener_testdata import EXAMPLE_CT
from ScreenerCore.fast_model import FastScreenerModel
from ScreenerCore.io import read_ct
from ScreenerCore.package import load_model_package, save_model_package
from ScreenerCore.pipeline import compute_anomaly_map
from ScreenerCore.sliding_window import sliding_window_scores
from ScreenerCore.speed import SpeedOptions, auto_batch_size, build_patch_scorer

from test_speed_paths import small_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

FP16_TOLERANCE_NATS = 0.05
# Two CUDA runs with the same kernels differ only by the order of additions into the sum buffer.
SAME_KERNELS_TOLERANCE_NATS = 1e-4
CUDA = torch.device("cuda")
FLOAT32_BYTES = 4
# Allowed difference in peak allocated device memory that does not come from the volume, in
# bytes: PyTorch's caching allocator rounds large blocks up to multiples of 2 MiB.
DEVICE_SLACK_BYTES = 8 * 1024 * 1024


@pytest.fixture(scope="module")
def example_ct():
    return read_ct(EXAMPLE_CT)


@pytest.fixture(scope="module")
def speed_model(tmp_path_factory):
    return load_model_package(save_model_package(small_model(), tmp_path_factory.mktemp("cuda_model")))


@pytest.mark.parametrize("precision,tolerance", [("fp32", FP16_TOLERANCE_NATS), ("fp16", FP16_TOLERANCE_NATS),
                                                 ("bf16", 8 * FP16_TOLERANCE_NATS)])
def test_cuda_map_matches_cpu_plain(precision, tolerance, speed_model, example_ct):
    plain = compute_anomaly_map(example_ct, speed_model, device="cpu", batch_size=2,
                                speed=SpeedOptions(fast=False, skip_outside_body=False))
    fast = compute_anomaly_map(example_ct, speed_model, device="cuda", batch_size=0,
                               speed=SpeedOptions(precision=precision))
    assert fast.device.startswith("cuda")
    body = plain.model_grid.body_mask
    difference = np.abs(fast.model_grid_map - plain.model_grid_map)[body]
    assert difference.max() <= tolerance


def test_device_and_host_blending_agree():
    scorer = build_patch_scorer(small_model(), CUDA, SpeedOptions(precision="fp32"))
    volume = np.random.default_rng(0).standard_normal((70, 90, 80), dtype=np.float32)
    maps = {}
    for accumulate in ("device", "host"):
        maps[accumulate] = sliding_window_scores(volume, lambda patches, starts: scorer(patches, starts.float()),
                                                 (32, 32, 32), batch_size=3, device=CUDA, accumulate=accumulate)
    assert np.ptp(maps["host"]) > 0.1
    assert np.abs(maps["device"] - maps["host"]).max() <= SAME_KERNELS_TOLERANCE_NATS


def peak_device_bytes(shape, accumulate: str) -> int:
    scorer = build_patch_scorer(small_model(), CUDA, SpeedOptions(cudnn_benchmark=False))
    volume = np.zeros(shape, dtype=np.float32)
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    sliding_window_scores(volume, lambda patches, starts: scorer(patches, starts.float()), (32, 32, 32),
                          batch_size=4, device=CUDA, accumulate=accumulate)
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before


def test_device_memory_bounded_by_batch(monkeypatch):
    # cuDNN autotuning tries algorithms with different workspaces; fixed heuristics keep peaks comparable.
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    small, large = (64, 64, 64), (64, 256, 256)
    extra_buffer = (np.prod(large) - np.prod(small)) * FLOAT32_BYTES

    # Blending on the host: the device stores one batch, whatever the volume size.
    host_small = peak_device_bytes(small, "host")
    host_large = peak_device_bytes(large, "host")
    assert abs(host_large - host_small) <= DEVICE_SLACK_BYTES

    # Blending on the device: the input and the sum buffer, one float each per voxel, and nothing more.
    device_small = peak_device_bytes(small, "device")
    device_large = peak_device_bytes(large, "device")
    assert device_large - device_small <= 2 * extra_buffer + DEVICE_SLACK_BYTES
    assert device_large - device_small >= 2 * extra_buffer - DEVICE_SLACK_BYTES


def test_auto_batch_fills_free_memory():
    options = SpeedOptions()
    scorer = build_patch_scorer(small_model(), CUDA, options)
    batch = auto_batch_size(scorer, (32, 32, 32), CUDA, options)
    assert batch > 1


def test_fast_model_half_precision_keeps_float32_scores():
    model = small_model().cuda()
    patches = torch.randn(2, 1, 32, 32, 32, device="cuda")
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16):
        scores = FastScreenerModel(model)(patches)
    assert scores.dtype == torch.float32
    assert torch.isfinite(scores).all()

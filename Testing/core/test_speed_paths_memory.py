"""Peak memory of sliding-window inference grows with the volume only by its output buffer.

Each measurement runs in a fresh Python process and reads the kernel's peak resident
set size (VmHWM in /proc/self/status, Linux only) after resetting it, so the numbers
include every allocator: NumPy, PyTorch and oneDNN. A fixed glibc mmap threshold makes
every large block go back to the kernel when freed, so the resident size follows the
live allocations instead of what malloc keeps cached.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
# With 32-voxel patches and no overlap: 4 and 80 patches.
SMALL_SHAPE = (32, 64, 64)
LARGE_SHAPE = (32, 256, 320)
FLOAT32_BYTES = 4
# Allowed measurement noise: page rounding and small allocations, in bytes.
SLACK_BYTES = 2 * 1024 * 1024

MEASURE_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    import torch
    from ScreenerCore.config import ConditionConfig, ModelConfig, NetConfig, PreprocessingConfig
    from ScreenerCore.models import ScreenerModel
    from ScreenerCore.sliding_window import sliding_window_scores
    from ScreenerCore.speed import SpeedOptions, build_patch_scorer

    def status_kib(key):
        for line in open("/proc/self/status"):
            if line.startswith(key + ":"):
                return int(line.split()[1])

    torch.set_num_threads(1)
    torch.manual_seed(0)
    config = ModelConfig(
        preprocessing=PreprocessingConfig(patch_size=(32, 32, 32)),
        descriptor=NetConfig(in_channels=1, out_channels=8, channels=(4, 8)),
        condition=ConditionConfig(kind="masked", net=NetConfig(in_channels=2, out_channels=8, channels=(4, 8))),
    )
    config.density.hidden_channels = 8
    scorer = build_patch_scorer(ScreenerModel(config).eval(), torch.device("cpu"), SpeedOptions(cpu_workers=1))
    volume = np.random.default_rng(0).standard_normal(json.loads(sys.argv[1]), dtype=np.float32)
    # One patch first, so allocator pools and oneDNN's kernels exist before the measurement.
    patch = torch.zeros(1, 1, 32, 32, 32)
    with torch.inference_mode():
        scorer(patch, torch.zeros(1, 3))

    def reset_peak():
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")  # resets VmHWM to the current resident set size
        return status_kib("VmRSS")

    before = reset_peak()
    with torch.inference_mode():
        scorer(patch, torch.zeros(1, 3))
    batch_kib = status_kib("VmHWM") - before

    before = reset_peak()
    scores = sliding_window_scores(volume, lambda patches, starts: scorer(patches, starts.float()), (32, 32, 32),
                                   overlap=0.0, batch_size=1)
    print(json.dumps({"batch_kib": batch_kib, "total_kib": status_kib("VmHWM") - before,
                      "finite": bool(np.isfinite(scores).all())}))
""")


def peak_growth_bytes(shape) -> tuple[int, int]:
    """Return how far peak resident memory rose while scoring one patch, and during the whole job, in bytes."""
    environment = {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO_ROOT),
                   "MALLOC_MMAP_THRESHOLD_": "131072"}
    result = subprocess.run([sys.executable, "-c", MEASURE_SCRIPT, json.dumps(list(shape))], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=600, env=environment)
    assert result.returncode == 0, result.stderr
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    assert measured["finite"]
    return measured["batch_kib"] * 1024, measured["total_kib"] * 1024


def voxels(shape) -> int:
    return shape[0] * shape[1] * shape[2]


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc to reset peak RSS")
def test_host_peak_grows_by_output_buffer_only():
    small_batch, small_total = peak_growth_bytes(SMALL_SHAPE)
    large_batch, large_total = peak_growth_bytes(LARGE_SHAPE)

    # Each job needs one float32 sum buffer (returned as the map) beyond one patch's
    # activations. A second full-size buffer, such as a per-voxel count, or patch
    # results kept until the end would exceed this by 10 MB on the large volume.
    assert small_total <= voxels(SMALL_SHAPE) * FLOAT32_BYTES + small_batch + SLACK_BYTES
    assert large_total <= voxels(LARGE_SHAPE) * FLOAT32_BYTES + large_batch + SLACK_BYTES
    # The measurement detects the output buffer, so it would detect a second one.
    assert large_total - small_total >= 0.8 * (voxels(LARGE_SHAPE) - voxels(SMALL_SHAPE)) * FLOAT32_BYTES

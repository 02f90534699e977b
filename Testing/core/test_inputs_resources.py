"""Resources and outputs: memory, device failures, training on bad folders, outliers, whole-file writes.

No GPU runs here, so device failures are injected. An out-of-memory error is raised by a
wrapper around the sliding-window call, and torch.cuda.is_available is patched to return
True on a CPU-only build, so that using CUDA fails inside PyTorch itself.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from ScreenerCore import fallback, pipeline
from ScreenerCore.calibration import Calibration
from ScreenerCore.cli import main
from ScreenerCore.errors import InputError
from ScreenerCore.fallback import check_device_runs_model, run_with_fallback
from ScreenerCore.findings import find_findings
from ScreenerCore.io import write_image
from ScreenerCore.pipeline import compute_anomaly_map
from ScreenerCore.preview import render_preview

from ct_inputs import abdomen_crop, screening_model  # noqa: F401  (pytest fixtures)

TESTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parents[1]


def fallback_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == fallback.logger.name and r.levelno == logging.WARNING]


def test_out_of_memory_retries_smaller_batch(abdomen_crop, screening_model, monkeypatch, caplog):
    expected = sitk.GetArrayFromImage(compute_anomaly_map(abdomen_crop, screening_model, device="cpu").anomaly_map)
    real_sliding_window = pipeline.sliding_window_scores
    batches = []

    def sliding_window_failing_above_one_patch(volume, predictor, patch_size, **options):
        if options["batch_size"] > 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (raised by the test)")

        def recording_predictor(patches, starts):
            batches.append(tuple(patches.shape))
            return predictor(patches, starts)

        return real_sliding_window(volume, recording_predictor, patch_size, **options)

    monkeypatch.setattr(pipeline, "sliding_window_scores", sliding_window_failing_above_one_patch)
    with caplog.at_level(logging.WARNING, logger="ScreenerCore"):
        result = compute_anomaly_map(abdomen_crop, screening_model, device="cpu", batch_size=4)

    assert fallback_warnings(caplog) == [
        "Out of memory on cpu with 4 patches per batch; retrying with 2.",
        "Out of memory on cpu with 2 patches per batch; retrying with 1.",
    ]
    # Memory on the device is bounded by the batch: each call gets one patch of the patch size.
    patch = tuple(screening_model.config.preprocessing.patch_size)
    assert batches
    assert all(shape[0] == 1 for shape in batches)
    assert all(shape[2:] == patch for shape in batches)
    np.testing.assert_allclose(sitk.GetArrayFromImage(result.anomaly_map), expected, rtol=0, atol=1e-5)


def test_out_of_memory_on_gpu_moves_to_cpu(caplog):
    # A stand-in for the sliding-window run: every CUDA attempt runs out of memory.
    attempts = []

    def run(device: torch.device, batch_size: int) -> str:
        attempts.append((device.type, batch_size))
        if device.type == "cuda":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (raised by the test)")
        return "map"

    with caplog.at_level(logging.WARNING, logger="ScreenerCore"):
        result, device, batch_size = run_with_fallback(run, torch.device("cuda"), 4)

    assert result == "map"
    assert device.type == "cpu"
    assert batch_size == 1
    assert attempts == [("cuda", 4), ("cuda", 2), ("cuda", 1), ("cpu", 1)]
    assert fallback_warnings(caplog)[-1] == "Out of memory on cuda with 1 patch per batch; retrying on the CPU."


def test_other_device_errors_raised():
    def run(device: torch.device, batch_size: int):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    with pytest.raises(RuntimeError, match="illegal memory access"):
        run_with_fallback(run, torch.device("cuda"), 4)

    def run_out_of_memory(device: torch.device, batch_size: int):
        raise RuntimeError("DefaultCPUAllocator: not enough memory: you tried to allocate 10 GB; out of memory")

    with pytest.raises(RuntimeError, match="out of memory"):
        run_with_fallback(run_out_of_memory, torch.device("cpu"), 1)


def test_broken_cuda_falls_back_to_cpu(abdomen_crop, screening_model, monkeypatch, caplog):
    expected = sitk.GetArrayFromImage(compute_anomaly_map(abdomen_crop, screening_model, device="cpu").anomaly_map)
    # CUDA reported available on a CPU-only PyTorch: moving the model there raises inside PyTorch.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)

    with caplog.at_level(logging.WARNING, logger="ScreenerCore"):
        result = compute_anomaly_map(abdomen_crop, screening_model, device="auto")

    assert result.device == "cpu"
    messages = fallback_warnings(caplog)
    assert len(messages) == 1
    assert messages[0].startswith("Device cuda failed to run the model's 3D convolutions")
    assert messages[0].endswith("running on the CPU instead.")
    np.testing.assert_allclose(sitk.GetArrayFromImage(result.anomaly_map), expected, rtol=0, atol=1e-6)


def test_mps_failure_falls_back_to_cpu(screening_model, caplog):
    # This PyTorch build has no MPS support, so using the device fails as an unsupported MPS operator would.
    with caplog.at_level(logging.WARNING, logger="ScreenerCore"):
        device = check_device_runs_model(screening_model.model, torch.device("mps"), (8, 8, 8))
    assert device.type == "cpu"
    assert next(screening_model.model.parameters()).device.type == "cpu"
    messages = fallback_warnings(caplog)
    assert len(messages) == 1
    assert "Device mps failed" in messages[0]


def test_cli_broken_cuda_writes_map(abdomen_crop, screening_model, monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    source = tmp_path / "ct.nrrd"
    sitk.WriteImage(abdomen_crop, str(source))
    output = tmp_path / "map.nrrd"
    code = main(["predict", str(source), "-o", str(output), "--model", str(screening_model.folder),
                 "--progress", "none", "--threshold-score", "1e9"])
    assert code == 0
    assert output.is_file()


MEMORY_PROBE = r"""
import json, resource, sys, tempfile
import numpy as np, SimpleITK as sitk, torch
sys.path.insert(0, sys.argv[1])
from screener_testdata import tiny_model_config
from ScreenerCore.models import ScreenerModel
from ScreenerCore.package import load_model_package, save_model_package
from ScreenerCore.pipeline import compute_anomaly_map

torch.set_num_threads(1)
torch.manual_seed(0)
loaded = load_model_package(save_model_package(ScreenerModel(tiny_model_config()).eval(), tempfile.mkdtemp()))

def phantom(x, y, z):
    # A water cylinder in air, with -3024 HU padding outside the field of view.
    values = np.full((z, y, x), -1000.0, dtype=np.float32)
    rows, columns = np.mgrid[:y, :x]
    distance = np.hypot(columns - x / 2, rows - y / 2)
    values[:, distance < 0.35 * x] = 40.0
    values[:, distance > 0.48 * x] = -3024.0
    image = sitk.GetImageFromArray(values)
    image.SetSpacing((1.0, 1.0, 2.5))
    return values, image

compute_anomaly_map(phantom(48, 48, 24)[1], loaded, device="cpu")
report = []
for size in ((160, 160, 60), (320, 320, 120)):
    # `values` stays referenced, so the process's peak so far equals what it holds now.
    values, image = phantom(*size)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    compute_anomaly_map(image, loaded, device="cpu", batch_size=2)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    report.append({"input_bytes": values.nbytes, "added_bytes": (after - before) * 1024})
    del values, image
print(json.dumps(report))
"""


@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss is in KiB on Linux only")
def test_memory_grows_with_volume_not_batch():
    # A fresh process, so earlier tests do not raise the peak that ru_maxrss reports.
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    completed = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(TESTS_DIR.parent)], capture_output=True,
                               text=True, env=environment, check=True)
    small, large = json.loads(completed.stdout.strip().splitlines()[-1])

    # 8 times the voxels. The pipeline holds about one input-sized float32 copy at a time:
    # first the copy with padding set to air, then the map on the input grid (measured: 0.9
    # bytes added per input byte here, 1.05 for 768 x 768 x 600 voxels). Scoring the whole
    # model grid at once instead of patches would add roughly 100 MB of activations for the
    # large volume (an estimate from the nets' channel counts).
    growth = large["added_bytes"] - small["added_bytes"]
    input_growth = large["input_bytes"] - small["input_bytes"]
    assert large["input_bytes"] == 8 * small["input_bytes"]
    assert growth < 2 * input_growth, f"{growth / 2**20:.0f} MiB added for {input_growth / 2**20:.0f} MiB of input"


def write_training_folder(folder: Path, crop: sitk.Image) -> dict[str, str]:
    """Write readable, small and unreadable training inputs; return skipped file names and their reason."""
    folder.mkdir()
    sitk.WriteImage(crop, str(folder / "good.nii.gz"))
    # 8 x 8 x 4 voxels of 3 mm: smaller than a 16-voxel crop of the 4 mm model grid on every axis.
    sitk.WriteImage(crop[28:36, 28:36, 20:24], str(folder / "small.nii.gz"))
    (folder / "truncated.nii.gz").write_bytes((folder / "good.nii.gz").read_bytes()[:2000])
    (folder / "not_an_image.nrrd").write_text("this is not an image\n", encoding="utf-8")
    scaled = sitk.RescaleIntensity(crop, 0.0, 255.0)
    sitk.WriteImage(scaled, str(folder / "scaled.mha"))
    four_d = sitk.JoinSeries([crop, crop])
    sitk.WriteImage(four_d, str(folder / "dynamic.nii.gz"))
    return {"truncated.nii.gz": "is truncated", "not_an_image.nrrd": "Cannot read",
            "scaled.mha": "Hounsfield", "dynamic.nii.gz": "2 frames"}


def test_training_skips_bad_files(abdomen_crop, tmp_path, caplog):
    from screener_training.data import load_training_volumes
    from screener_training.train import StageConfig, calibrate, train_embedding_net
    from screener_training.views import ViewConfig

    from screener_testdata import tiny_model_config

    skipped = write_training_folder(tmp_path / "data", abdomen_crop)
    config = tiny_model_config()
    with caplog.at_level(logging.WARNING, logger="screener_training"):
        volumes = load_training_volumes([tmp_path / "data"], config.preprocessing)

    assert sorted(volume.name for volume in volumes) == ["good.nii.gz", "small.nii.gz"]
    assert min(volumes, key=lambda v: v.intensity.size).intensity.shape < (16, 16, 16)
    for name, reason in skipped.items():
        messages = [r.getMessage() for r in caplog.records if name in r.getMessage()]
        assert len(messages) == 1, f"{name} should be logged once, got {messages}"
        assert reason in messages[0]

    # A few steps over both volumes: the small one is padded to the crop, and every step runs.
    views = ViewConfig(crop_size=16, positions_per_pair=32)
    stage = StageConfig(steps=3, volumes_per_step=4, projector_width=16, log_every=1)
    log = tmp_path / "log.csv"
    net = train_embedding_net(config.descriptor, volumes, views, stage, pad_value=-1.0, log_path=log)
    assert len(log.read_text(encoding="utf-8").splitlines()) == 1 + stage.steps
    assert not net.training

    from ScreenerCore.models import ScreenerModel

    calibration = calibrate(ScreenerModel(config).eval(), volumes, crop_size=16, crops_per_volume=2,
                            pad_value=-1.0, border=2)
    assert np.all(np.isfinite(calibration.scores))


def map_with_region(shape=(40, 40, 40)) -> tuple[sitk.Image, np.ndarray]:
    """Return a map of noise around 10 with one 4 x 4 x 4 region scoring 20 to 24, and the region's mask."""
    rng = np.random.default_rng(0)
    scores = rng.normal(10.0, 0.5, shape).astype(np.float32)
    region = np.zeros(shape, dtype=bool)
    region[10:14, 20:24, 20:24] = True
    scores[region] = np.linspace(20.0, 24.0, int(region.sum()), dtype=np.float32)
    image = sitk.GetImageFromArray(scores)
    image.SetSpacing((2.0, 2.0, 2.0))
    return image, region


def with_outlier(image: sitk.Image) -> sitk.Image:
    values = sitk.GetArrayFromImage(image)
    values[30, 5, 5] = 1e6
    outlier = sitk.GetImageFromArray(values)
    outlier.CopyInformation(image)
    return outlier


def test_outlier_keeps_findings(abdomen_crop):
    clean, region = map_with_region()
    findings_clean = find_findings(clean, threshold=15.0)
    findings_outlier = find_findings(with_outlier(clean), threshold=15.0)

    assert len(findings_clean) == 1
    assert len(findings_outlier) == 2
    # The outlier is a finding of its own; the region keeps its volume and peak.
    assert findings_outlier[0].voxel_count == 1
    assert findings_outlier[1].voxel_count == findings_clean[0].voxel_count == int(region.sum())
    assert findings_outlier[1].peak_score == findings_clean[0].peak_score


def test_outlier_keeps_preview_colours():
    clean, region = map_with_region()
    ct = sitk.Image(clean.GetSize(), sitk.sitkFloat32) - 1000.0
    ct.CopyInformation(clean)
    centre = clean.TransformIndexToPhysicalPoint((21, 21, 11))

    # The heat scale runs from the threshold to the map's 99.99th percentile, not to its
    # maximum. One voxel of 1e6 moves that percentile by one rank, so the region's colours
    # change by a few levels of 255; scaling to the maximum would turn the region dark red.
    plain = np.asarray(render_preview(ct, clean, threshold=15.0, centre_lps=centre, spacing_mm=2.0)).astype(int)
    outlier = np.asarray(render_preview(ct, with_outlier(clean), threshold=15.0, centre_lps=centre,
                                        spacing_mm=2.0)).astype(int)
    assert plain.shape == outlier.shape
    assert np.abs(plain - outlier).max() <= 8
    washed_out = np.asarray(render_preview(ct, clean, threshold=15.0, centre_lps=centre, spacing_mm=2.0,
                                           display_max=1e6)).astype(int)
    assert np.abs(plain - washed_out).max() > 64, "the check should tell a washed-out overlay apart"


def test_outlier_keeps_calibration():
    scores = np.random.default_rng(0).normal(20.0, 2.0, 100_000)
    clean = Calibration.from_scores(scores)
    outlier = Calibration.from_scores(np.append(scores, 1e9))
    for top_percent in (0.1, 0.5, 1.0, 5.0):
        # Quantiles move by at most one rank: under 0.01 for scores with a spread of 2.
        assert outlier.score_for_top_percent(top_percent) == pytest.approx(clean.score_for_top_percent(top_percent),
                                                                           abs=0.01)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_input_file_never_changed(abdomen_crop, screening_model, tmp_path):
    source = tmp_path / "ct.nii.gz"
    sitk.WriteImage(abdomen_crop, str(source))
    digest, modified = sha256(source), source.stat().st_mtime_ns
    arguments = ["--model", str(screening_model.folder), "--device", "cpu", "--progress", "none"]

    assert main(["predict", str(source), "-o", str(tmp_path / "map.nii.gz")] + arguments) == 0
    # Writing the map over the input is rejected before any work.
    assert main(["predict", str(source), "-o", str(source)] + arguments) == 2
    assert sha256(source) == digest
    assert source.stat().st_mtime_ns == modified


def test_output_replaced_only_whole(abdomen_crop, monkeypatch, tmp_path):
    output = tmp_path / "map.nii.gz"
    output.write_bytes(b"previous map")

    def write_half_then_fail(image, path, useCompression=False):
        Path(path).write_bytes(b"half a map")
        raise RuntimeError("disk full (raised by the test)")

    monkeypatch.setattr(sitk, "WriteImage", write_half_then_fail)
    with pytest.raises(RuntimeError, match="disk full"):
        write_image(abdomen_crop, output)
    monkeypatch.undo()

    assert output.read_bytes() == b"previous map"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["map.nii.gz"], "no temporary file may be left"

    previous_inode = output.stat().st_ino
    write_image(abdomen_crop, output)
    assert output.stat().st_ino != previous_inode, "the new map is renamed over the old one"
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(output))), sitk.GetArrayFromImage(abdomen_crop))
    umask = os.umask(0)
    os.umask(umask)
    assert output.stat().st_mode & 0o777 == 0o666 & ~umask


def test_failed_run_keeps_old_output(abdomen_crop, screening_model, tmp_path):
    scaled = tmp_path / "scaled.nrrd"
    sitk.WriteImage(sitk.RescaleIntensity(abdomen_crop, 0.0, 1.0), str(scaled))
    output = tmp_path / "map.nrrd"
    output.write_bytes(b"previous map")

    code = main(["predict", str(scaled), "-o", str(output), "--model", str(screening_model.folder),
                 "--device", "cpu", "--progress", "none"])
    assert code == 2
    assert output.read_bytes() == b"previous map"


def test_output_folder_rejected(tmp_path, abdomen_crop):
    folder = tmp_path / "maps.nii.gz"
    folder.mkdir()
    with pytest.raises(InputError, match="is a folder"):
        write_image(abdomen_crop, folder)

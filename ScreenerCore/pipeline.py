"""The one job behind every front end: CT image in, anomaly map on the input grid out."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import SimpleITK as sitk
import torch

from .calibration import Calibration
from .device import resolve_device
from .errors import OperationCancelled
from .fallback import check_device_runs_model, run_with_fallback
from .package import LoadedModel
from .postprocessing import smooth_scores
from .preprocessing import ModelGridVolume, hu_to_intensity, to_input_grid, to_model_grid
from .sliding_window import CancelFlag, sliding_window_scores
from .speed import SpeedOptions, auto_batch_size, build_patch_scorer, configure_threads

logger = logging.getLogger(__name__)

# progress(stage, fraction of that stage done in [0, 1]); stages: preprocess, inference, resample.
StageProgress = Callable[[str, float], None]


@dataclass
class AnomalyMapResult:
    """An anomaly map and what is needed to threshold and display it."""

    # Scores (-log q in nats) on the input image's grid: size, origin, spacing and direction.
    anomaly_map: sitk.Image
    # Scores on the model grid, in (z, y, x) order, before resampling.
    model_grid_map: np.ndarray
    model_grid: ModelGridVolume
    # The score given to voxels outside the body.
    floor: float
    calibration: Calibration | None
    device: str
    timings_s: dict[str, float] = field(default_factory=dict)


def compute_anomaly_map(
    image: sitk.Image,
    loaded: LoadedModel,
    device: str = "auto",
    batch_size: int = 4,
    progress: StageProgress | None = None,
    cancel: CancelFlag | None = None,
    name: str = "input",
    allow_non_hu: bool = False,
    *,
    speed: SpeedOptions | None = None,
) -> AnomalyMapResult:
    """Compute the voxel-wise anomaly map of a CT image in HU.

    Args:
        image: 3D CT in Hounsfield units with any orientation; not modified.
        loaded: a model package from load_model_package.
        device: "auto" (CUDA when present, else CPU), "cpu", "cuda" or "cuda:N".
        batch_size: patches per network call; 0 picks it from the free memory on CUDA and
            one patch per worker thread on the CPU. Default 4.
        progress: called as progress(stage, fraction) while the job runs.
        cancel: checked between batches; when set, OperationCancelled is raised.
        name: how the input is named in logs and errors (usually its path).
        allow_non_hu: run even when the values do not look like HU.
        speed: how the networks run (precision, layout, threads, blending); default
            SpeedOptions(), the fast path. SpeedOptions(fast=False) runs the model as trained.

    Returns:
        AnomalyMapResult whose anomaly_map has exactly the input's geometry. Voxels
        outside the body get the floor score: the lowest calibration quantile, or the
        lowest in-body score when the model has no calibration.
    """
    timings = {}
    report = progress or (lambda stage, fraction: None)
    options = speed or SpeedOptions()
    configure_threads(options)
    torch_device = resolve_device(device)
    config = loaded.config.preprocessing
    calibration = Calibration.from_config(loaded.config.calibration)

    # Step 1: resample onto the model grid, map HU to intensity, find the body.
    started = time.perf_counter()
    report("preprocess", 0.0)
    grid = to_model_grid(image, config, name=name, allow_non_hu=allow_non_hu)
    timings["preprocess"] = time.perf_counter() - started
    report("preprocess", 1.0)
    if cancel is not None and cancel.is_set():
        raise OperationCancelled("Cancelled after preprocessing.")

    # Step 2: score overlapping patches and blend them. A device that cannot run the model, or
    # runs out of memory, falls back to a smaller batch and then the CPU (see fallback.py).
    started = time.perf_counter()
    model = loaded.model.eval()
    torch_device = check_device_runs_model(model, torch_device, config.patch_size)
    air_intensity = float(hu_to_intensity(np.array([-1024.0]), config)[0])
    # Patches without body voxels change no voxel of the final map: those all get the floor.
    region = grid.body_mask if options.skip_outside_body and grid.body_mask.any() else None
    scorers = {}
    if batch_size == 0:
        scorers[torch_device] = build_patch_scorer(model, torch_device, options)
        batch_size = auto_batch_size(scorers[torch_device], config.patch_size, torch_device, options)

    def score_patches(run_device: torch.device, run_batch_size: int) -> np.ndarray:
        if run_device not in scorers:
            scorers[run_device] = build_patch_scorer(model, run_device, options)
        scorer = scorers[run_device]
        origin = torch.tensor(grid.reference.GetOrigin(), dtype=torch.float32, device=run_device)
        spacing = torch.tensor(grid.reference.GetSpacing(), dtype=torch.float32, device=run_device)

        def predictor(patches: torch.Tensor, starts_zyx: torch.Tensor) -> torch.Tensor:
            # Patch origins in mm: (x, y, z) = grid origin + start index (reversed to x, y, z) * spacing.
            origin_mm = origin + starts_zyx.flip(-1).to(torch.float32) * spacing
            return scorer(patches, origin_mm)

        return sliding_window_scores(
            grid.intensity, predictor, config.patch_size, overlap=config.overlap, batch_size=run_batch_size,
            device=run_device, pad_value=air_intensity,
            progress=lambda done, total: report("inference", done / total), cancel=cancel,
            blend=options.blend, region_mask=region,
        )

    scores, torch_device, batch_size = run_with_fallback(score_patches, torch_device, batch_size)
    timings["inference"] = time.perf_counter() - started

    # Step 3: floor outside the body, smooth at lesion scale, then resample onto the input grid.
    started = time.perf_counter()
    if calibration is not None:
        floor = calibration.floor
    elif grid.body_mask.any():
        floor = float(scores[grid.body_mask].min())
    else:
        floor = float(scores.min())
    scores = np.where(grid.body_mask, np.maximum(scores, floor), floor).astype(np.float32)
    if config.score_smoothing_mm > 0:
        # Smoothing mixes the floor into voxels at the body's edge; floor the outside again after it.
        scores = smooth_scores(scores, grid.reference.GetSpacing()[::-1], config.score_smoothing_mm)
        scores = np.where(grid.body_mask, np.maximum(scores, floor), floor).astype(np.float32)
    anomaly_map = to_input_grid(scores, grid.reference, image, default_value=floor)
    timings["resample"] = time.perf_counter() - started
    report("resample", 1.0)
    logger.info("Anomaly map of %s computed on %s in %.1f s", name, torch_device, sum(timings.values()))

    return AnomalyMapResult(anomaly_map=anomaly_map, model_grid_map=scores, model_grid=grid, floor=floor,
                            calibration=calibration, device=str(torch_device), timings_s=timings)

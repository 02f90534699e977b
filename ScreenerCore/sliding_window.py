"""Sliding-window inference: score overlapping patches in batches and blend them into one map.

The steps, each in its own function below:

1. pad axes shorter than the patch (`pad_to_patch`);
2. lay a grid of patch starts over the volume (`patch_starts`, `patch_grid`), and
   optionally drop patches that hold no voxel of a region of interest (`select_patches`);
3. weight each patch's scores by a blending profile, constant or Gaussian (`blend_profile`);
4. run the predictor on batches gathered into one preallocated buffer and add the
   weighted scores into one preallocated sum buffer, on the device when it fits, else
   on the host (`choose_accumulator_device`);
5. divide by the summed weights. The patch grid is a product of per-axis starts and the
   weights are a product of per-axis profiles, so the summed weights are a product of
   three 1D arrays (`blend_normalisers`): no second full-size buffer is needed.

Memory: besides the input and the sum buffer (one float32 per voxel each), the job
needs one batch of patches and the predictor's activations, whatever the volume size.
"""

from __future__ import annotations

import itertools
import logging
import math
from typing import Callable, Protocol, Sequence

import numpy as np
import torch

from .errors import OperationCancelled

logger = logging.getLogger(__name__)

# predictor(patches (B, 1, D, H, W), starts (B, 3) in (z, y, x) voxels) -> maps (B, D, H, W)
PatchPredictor = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# progress(done_patches, total_patches)
ProgressCallback = Callable[[int, int], None]

BLEND_MODES = ("constant", "gaussian")
ACCUMULATE_CHOICES = ("auto", "device", "host")
# Share of the free device memory that the input and the sum buffer may take when
# accumulate="auto"; the rest stays for the batch's activations.
DEVICE_BUFFER_SHARE = 0.5


class CancelFlag(Protocol):
    """Anything with is_set(), such as threading.Event or multiprocessing.Event."""

    def is_set(self) -> bool: ...


def patch_starts(size: int, patch: int, overlap: float) -> list[int]:
    """Return patch start indices along one axis so that patches of length `patch` cover [0, size).

    Neighbours share about `overlap` * patch voxels; the last patch is moved back to end
    at `size`, so every voxel is covered and no patch leaves the volume. An axis shorter
    than the patch gets one patch at 0 (the caller pads the volume). These are the same
    starts as MONAI's sliding_window_inference (MONAI 1.3 to 1.6) for the same overlap.
    """
    if size <= patch:
        return [0]
    stride = max(1, int(round(patch * (1.0 - overlap))))
    starts = list(range(0, size - patch + 1, stride))
    if starts[-1] != size - patch:
        starts.append(size - patch)
    return starts


def pad_to_patch(volume: np.ndarray, patch_size: Sequence[int], pad_value: float) -> np.ndarray:
    """Pad axes shorter than the patch at their high end with `pad_value`; return `volume` itself when none is."""
    padding = [(0, max(0, p - s)) for s, p in zip(volume.shape, patch_size)]
    if not any(after for _, after in padding):
        return volume
    return np.pad(volume, padding, mode="constant", constant_values=pad_value)


def patch_grid(shape: Sequence[int], patch_size: Sequence[int], overlap: float) -> list[list[int]]:
    """Return the patch starts along each axis (z, y, x); the patches are their Cartesian product."""
    return [patch_starts(size, patch, overlap) for size, patch in zip(shape, patch_size)]


def select_patches(grid: Sequence[Sequence[int]], patch_size: Sequence[int],
                   region_mask: np.ndarray | None) -> list[tuple[int, int, int]]:
    """List the patch starts (z, y, x) of `grid`, dropping patches with no voxel in `region_mask`.

    A voxel inside the region lies only in patches that hold a region voxel (itself), so
    every patch that covers it is kept and its blended score does not change. Voxels
    outside the region may lose patches and are not valid afterwards.
    """
    starts = list(itertools.product(*grid))
    if region_mask is None:
        return starts
    depth, height, width = patch_size
    return [(z, y, x) for z, y, x in starts if region_mask[z:z + depth, y:y + height, x:x + width].any()]


def blend_profile(length: int, mode: str, sigma_scale: float) -> np.ndarray:
    """Return the 1D blending weights across a patch of `length` voxels (float64, peak 1).

    "constant" gives every voxel weight 1, so overlaps are plain means. "gaussian" gives
    exp(-d^2 / (2 sigma^2)) with d the distance in voxels from the patch centre and
    sigma = sigma_scale * length. Voxels near patch edges, where a network has less
    context, count less. The 3D weight is the product of the three profiles.
    """
    if mode == "constant":
        return np.ones(length)
    if mode == "gaussian":
        sigma = sigma_scale * length
        distance = np.arange(length) - (length - 1) / 2.0
        return np.exp(-0.5 * (distance / sigma) ** 2)
    raise ValueError(f"Unknown blend mode '{mode}'; expected one of {BLEND_MODES}.")


def blend_normalisers(shape: Sequence[int], grid: Sequence[Sequence[int]],
                      profiles: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Return, per axis, the sum over patch starts of the profile placed at each start (float64).

    The summed 3D weight at voxel (z, y, x) is normaliser_z[z] * normaliser_y[y] *
    normaliser_x[x], because both the grid and the weights factor over the axes.
    """
    normalisers = []
    for size, starts, profile in zip(shape, grid, profiles):
        total = np.zeros(size)
        for start in starts:
            total[start:start + len(profile)] += profile
        normalisers.append(total)
    return normalisers


def choose_accumulator_device(shape: Sequence[int], device: torch.device, accumulate: str) -> torch.device:
    """Pick where the input and the sum buffer live: on `device`, or on the host for volumes that would not fit.

    "auto" keeps them on a CUDA device when both take at most DEVICE_BUFFER_SHARE of its
    free memory, so no patch crosses between host and device. Otherwise they stay on
    the host, and each batch is copied over once and its scores back once.
    """
    if accumulate not in ACCUMULATE_CHOICES:
        raise ValueError(f"Unknown accumulate choice '{accumulate}'; expected one of {ACCUMULATE_CHOICES}.")
    if device.type == "cpu" or accumulate == "host":
        return torch.device("cpu")
    if accumulate == "device":
        return device
    needed_bytes = 2 * 4 * math.prod(shape)
    free_bytes, _ = torch.cuda.mem_get_info(device) if device.type == "cuda" else (0, 0)
    if needed_bytes <= DEVICE_BUFFER_SHARE * free_bytes:
        return device
    logger.info("Blending on the host: input and sum buffer need %.2f GB, device has %.2f GB free",
                needed_bytes / 1e9, free_bytes / 1e9)
    return torch.device("cpu")


def gather_patches(source: torch.Tensor, starts: Sequence[tuple[int, int, int]], patch_size: Sequence[int],
                   buffer: torch.Tensor) -> torch.Tensor:
    """Copy the patches at `starts` from `source` (D, H, W) into `buffer` (B, 1, *patch_size); return the used part."""
    depth, height, width = patch_size
    for index, (z, y, x) in enumerate(starts):
        buffer[index, 0].copy_(source[z:z + depth, y:y + height, x:x + width])
    return buffer[:len(starts)]


def add_patch_scores(score_sum: torch.Tensor, scores: torch.Tensor, starts: Sequence[tuple[int, int, int]],
                     weight: torch.Tensor | None) -> None:
    """Add each patch's scores (B, D, H, W), times `weight` when given, into `score_sum` in place."""
    depth, height, width = scores.shape[1:]
    for (z, y, x), score in zip(starts, scores):
        target = score_sum[z:z + depth, y:y + height, x:x + width]
        if weight is None:
            target.add_(score)
        else:
            target.addcmul_(score, weight)


def sliding_window_scores(
    volume: np.ndarray,
    predictor: PatchPredictor,
    patch_size: Sequence[int],
    overlap: float = 0.25,
    batch_size: int = 4,
    device: torch.device | str = "cpu",
    pad_value: float = 0.0,
    progress: ProgressCallback | None = None,
    cancel: CancelFlag | None = None,
    *,
    blend: str = "constant",
    sigma_scale: float = 0.125,
    accumulate: str = "auto",
    region_mask: np.ndarray | None = None,
    outside_value: float = 0.0,
) -> np.ndarray:
    """Score every voxel of `volume` by running `predictor` on overlapping patches.

    Args:
        volume: (D, H, W) float32 array on the model grid, in network intensity units.
        predictor: maps a batch of patches (B, 1, *patch_size) and their start indices
            (B, 3) to per-voxel scores (B, *patch_size).
        patch_size: patch edge in voxels, (D, H, W).
        overlap: fraction of a patch shared with its neighbour along each axis, in [0, 1);
            default 0.25.
        batch_size: patches per predictor call, at least 1; device memory grows with it,
            not with the volume. Default 4.
        device: where patches are sent before the predictor runs. Default "cpu".
        pad_value: intensity used to pad axes shorter than the patch (air). Padding is
            added at the high end of each axis and cropped from the result. Default 0.
        progress: called with (patches done, patches total) after each batch.
        cancel: checked before each batch; when set, OperationCancelled is raised.
        blend: "constant" (default: each voxel is the mean of the scores of all patches
            covering it) or "gaussian" (a weighted mean with Gaussian weights that fall
            off toward patch edges).
        sigma_scale: Gaussian sigma as a fraction of the patch edge, per axis; used only
            with blend="gaussian". Default 0.125, as in MONAI.
        accumulate: where the input and the score sum live: "auto" (default: on a CUDA
            device when they fit in half its free memory, else on the host), "device" or
            "host".
        region_mask: optional (D, H, W) boolean array; patches with no voxel in it are
            not run. Scores inside the region are unchanged by this; voxels outside it
            get `outside_value`. Default None (every patch runs).
        outside_value: score written outside `region_mask`; default 0.

    Returns:
        (D, H, W) float32 map: per voxel, the (weighted) mean of the scores that all
        patches covering it gave.
    """
    if volume.ndim != 3:
        raise ValueError(f"Expected a 3D volume, got shape {volume.shape}.")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"Overlap must be in [0, 1), got {overlap}.")
    if batch_size < 1:
        raise ValueError(f"Batch size must be at least 1, got {batch_size}.")
    if region_mask is not None and region_mask.shape != volume.shape:
        raise ValueError(f"Region mask shape {region_mask.shape} differs from the volume shape {volume.shape}.")
    patch_size = tuple(int(p) for p in patch_size)
    device = torch.device(device)
    original_shape = volume.shape

    # Step 1: pad axes shorter than the patch so every patch lies inside the array.
    volume = pad_to_patch(volume, patch_size, pad_value)
    if region_mask is not None:
        region_mask = pad_to_patch(region_mask, patch_size, False)

    # Step 2: the patch grid, without patches that hold no region voxel.
    grid = patch_grid(volume.shape, patch_size, overlap)
    starts = select_patches(grid, patch_size, region_mask)
    total = len(starts)
    logger.debug("Sliding window: %d of %d patches of %s over %s", total, math.prod(map(len, grid)),
                 patch_size, volume.shape)

    # Step 3: blending weights of one patch, and their per-axis sums over the whole grid.
    profiles = [blend_profile(p, blend, sigma_scale) for p in patch_size]
    normalisers = blend_normalisers(volume.shape, grid, profiles)

    # Step 4: preallocated buffers; each batch is gathered, scored and added in place.
    accumulator_device = choose_accumulator_device(volume.shape, device, accumulate)
    source = torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32)).to(accumulator_device)
    score_sum = torch.zeros(volume.shape, dtype=torch.float32, device=accumulator_device)
    weight = None
    if blend != "constant":
        weight_3d = np.einsum("i,j,k->ijk", *profiles).astype(np.float32)
        weight = torch.from_numpy(weight_3d).to(accumulator_device)
    batch_buffer = torch.empty((min(batch_size, max(total, 1)), 1, *patch_size), dtype=torch.float32,
                               device=accumulator_device, pin_memory=accumulator_device != device and device.type == "cuda")

    for first in range(0, total, batch_size):
        if cancel is not None and cancel.is_set():
            raise OperationCancelled("Cancelled during sliding-window inference.")
        batch_starts = starts[first:first + batch_size]
        patches = gather_patches(source, batch_starts, patch_size, batch_buffer)
        with torch.inference_mode():
            scores = predictor(patches.to(device, non_blocking=True),
                               torch.tensor(batch_starts, device=device))
            # One copy per batch at most: none when the sum buffer is on the predictor's device.
            scores = scores.to(accumulator_device, torch.float32)
            add_patch_scores(score_sum, scores, batch_starts, weight)
        if progress is not None:
            progress(min(first + batch_size, total), total)

    # Step 5: divide by the summed weights, axis by axis and in place, then crop the padding.
    for axis, normaliser in enumerate(normalisers):
        shape = [1, 1, 1]
        shape[axis] = -1
        # A voxel that no patch covers cannot occur (the grid covers every voxel); 1 avoids 0/0 anyway.
        divisor = torch.from_numpy(np.where(normaliser > 0, normaliser, 1.0).astype(np.float32))
        score_sum.div_(divisor.to(accumulator_device).view(shape))
    blended = score_sum.cpu().numpy()[:original_shape[0], :original_shape[1], :original_shape[2]]
    if region_mask is not None:
        np.copyto(blended, np.float32(outside_value),
                  where=~region_mask[:original_shape[0], :original_shape[1], :original_shape[2]])
    return blended

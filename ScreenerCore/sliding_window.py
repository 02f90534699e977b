"""Sliding-window inference: score overlapping patches in batches and blend them into one map."""

from __future__ import annotations

import itertools
import logging
from typing import Callable, Protocol, Sequence

import numpy as np
import torch

from .errors import OperationCancelled

logger = logging.getLogger(__name__)

# predictor(patches (B, 1, D, H, W), starts (B, 3) in (z, y, x) voxels) -> maps (B, D, H, W)
PatchPredictor = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# progress(done_patches, total_patches)
ProgressCallback = Callable[[int, int], None]


class CancelFlag(Protocol):
    """Anything with is_set(), such as threading.Event or multiprocessing.Event."""

    def is_set(self) -> bool: ...


def patch_starts(size: int, patch: int, overlap: float) -> list[int]:
    """Return patch start indices along one axis so that patches of length `patch` cover [0, size).

    Neighbours share about `overlap` * patch voxels; the last patch is moved back to end
    at `size`, so every voxel is covered and no patch leaves the volume. An axis shorter
    than the patch gets one patch at 0 (the caller pads the volume).
    """
    if size <= patch:
        return [0]
    stride = max(1, int(round(patch * (1.0 - overlap))))
    starts = list(range(0, size - patch + 1, stride))
    if starts[-1] != size - patch:
        starts.append(size - patch)
    return starts


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
) -> np.ndarray:
    """Score every voxel of `volume` by running `predictor` on overlapping patches.

    Args:
        volume: (D, H, W) float32 array on the model grid, in network intensity units.
        predictor: maps a batch of patches (B, 1, *patch_size) and their start indices
            (B, 3) to per-voxel scores (B, *patch_size).
        patch_size: patch edge in voxels, (D, H, W).
        overlap: fraction of a patch shared with its neighbour along each axis, in [0, 1);
            default 0.25.
        batch_size: patches per predictor call; device memory grows with it, not with
            the volume. Default 4.
        device: where patches are sent before the predictor runs.
        pad_value: intensity used to pad axes shorter than the patch (air). Padding is
            added at the high end of each axis and cropped from the result.
        progress: called with (patches done, patches total) after each batch.
        cancel: checked before each batch; when set, OperationCancelled is raised.

    Returns:
        (D, H, W) float32 map where each voxel is the mean of the scores that all
        patches covering it gave.
    """
    if volume.ndim != 3:
        raise ValueError(f"Expected a 3D volume, got shape {volume.shape}.")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"Overlap must be in [0, 1), got {overlap}.")
    patch_size = tuple(int(p) for p in patch_size)

    # Step 1: pad axes shorter than the patch so every patch lies inside the array.
    original_shape = volume.shape
    padding = [(0, max(0, p - s)) for s, p in zip(volume.shape, patch_size)]
    if any(after for _, after in padding):
        volume = np.pad(volume, padding, mode="constant", constant_values=pad_value)

    # Step 2: list the patch starts; their product covers every voxel.
    starts = list(itertools.product(*(patch_starts(s, p, overlap) for s, p in zip(volume.shape, patch_size))))
    total = len(starts)
    logger.debug("Sliding window: %d patches of %s over %s", total, patch_size, volume.shape)

    # Step 3: run batches and accumulate score sums and cover counts on the host.
    source = torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32))
    score_sum = torch.zeros(volume.shape, dtype=torch.float32)
    cover_count = torch.zeros(volume.shape, dtype=torch.float32)
    depth, height, width = patch_size
    for first in range(0, total, batch_size):
        if cancel is not None and cancel.is_set():
            raise OperationCancelled("Cancelled during sliding-window inference.")
        batch_starts = starts[first:first + batch_size]
        patches = torch.stack([source[z:z + depth, y:y + height, x:x + width] for z, y, x in batch_starts])
        patches = patches.unsqueeze(1).to(device, non_blocking=True)
        with torch.inference_mode():
            scores = predictor(patches, torch.tensor(batch_starts, device=device)).float().cpu()

        for (z, y, x), score in zip(batch_starts, scores):
            score_sum[z:z + depth, y:y + height, x:x + width] += score
            cover_count[z:z + depth, y:y + height, x:x + width] += 1.0
        if progress is not None:
            progress(min(first + batch_size, total), total)

    # Step 4: average overlaps and crop the padding.
    blended = (score_sum / cover_count).numpy()
    return blended[:original_shape[0], :original_shape[1], :original_shape[2]]

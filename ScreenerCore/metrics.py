"""Voxel-level detection metrics: AUROC, AUROC up to a false-positive rate, and AUPRO.

The areas are exact: the ROC and PRO curves are built through every distinct score,
with tied scores joined by a straight line, as scikit-learn's roc_curve does. They
need the sorted scores of the negative voxels (4 bytes per voxel for float32 maps)
and the scores of the positive voxels, never an argsort of the whole volume. So a
100 M-voxel float32 map with its mask needs about 0.5 GB on top of the map itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


def roc_curve(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return (false-positive rates, true-positive rates) at every distinct score, from (0, 0) to (1, 1).

    Tied scores form one threshold, so ties count as half right, as in scikit-learn.
    """
    scores = np.asarray(scores, dtype=np.float64).ravel()
    labels = np.asarray(labels, dtype=bool).ravel()
    positives = int(labels.sum())
    negatives = labels.size - positives
    if positives == 0 or negatives == 0:
        raise ValueError(f"ROC needs both classes; got {positives} positive and {negatives} negative voxels.")

    order = np.argsort(-scores, kind="stable")
    sorted_scores = scores[order]
    sorted_labels = labels[order]
    # The last index of each run of equal scores is where a threshold takes effect.
    distinct = np.flatnonzero(np.diff(sorted_scores)) if sorted_scores.size > 1 else np.array([], dtype=int)
    ends = np.concatenate([distinct, [sorted_scores.size - 1]])
    true_positives = np.cumsum(sorted_labels)[ends]
    false_positives = (ends + 1) - true_positives
    fpr = np.concatenate([[0.0], false_positives / negatives])
    tpr = np.concatenate([[0.0], true_positives / positives])
    return fpr, tpr


@dataclass
class VolumeScores:
    """The part of one volume's scores and mask that the curves need."""

    # Scores of the negative (non-pathology) voxels, sorted ascending.
    negatives: np.ndarray
    # Scores of the positive voxels, in C order of the volume.
    positives: np.ndarray
    # Region number (1 to len(region_sizes)) of each positive voxel.
    regions: np.ndarray
    # Voxels per region; regions are connected components of the mask, 26-connected in 3D.
    region_sizes: np.ndarray

    @property
    def voxels(self) -> int:
        return self.negatives.size + self.positives.size


def collect_volume_scores(scores: np.ndarray, labels: np.ndarray) -> VolumeScores:
    """Split a score map by its pathology mask and label the mask's connected regions.

    Regions connect through faces, edges and corners (26-connectivity in 3D, the full
    neighbourhood in any dimension). Labelling runs on the mask's bounding box only.
    """
    scores = np.asarray(scores)
    labels = np.asarray(labels, dtype=bool)
    if scores.shape != labels.shape:
        raise ValueError(f"Scores of shape {scores.shape} and mask of shape {labels.shape} differ; "
                         "resample the mask onto the score map's grid.")
    if np.issubdtype(scores.dtype, np.floating) and np.isnan(scores).any():
        raise ValueError("Scores contain NaN; every voxel needs a finite score.")

    negatives = scores[~labels]
    negatives.sort()
    positives = scores[labels]

    regions = np.zeros(0, dtype=np.int32)
    region_sizes = np.zeros(0, dtype=np.int64)
    boxes = ndimage.find_objects(labels.view(np.uint8))
    if boxes:
        box = boxes[0]
        components, count = ndimage.label(labels[box], structure=np.ones((3,) * labels.ndim))
        # C order inside the bounding box is C order of the whole volume, so this matches `positives`.
        regions = components[labels[box]]
        region_sizes = np.bincount(regions, minlength=count + 1)[1:]
    return VolumeScores(negatives=negatives, positives=positives, regions=regions, region_sizes=region_sizes)


def _curve_area(negatives: list[np.ndarray], positives: np.ndarray, weights: np.ndarray, max_fpr: float) -> float:
    """Return the area under the curve of weighted positive rate against FPR up to `max_fpr`, over max_fpr.

    The curve's vertices sit at each distinct positive score u: before it at
    (FP(> u), W(> u)), after it at (FP(>= u), W(>= u)). Negatives between two positive
    scores only move the curve sideways, so these vertices define it exactly.
    """
    if not 0.0 < max_fpr <= 1.0:
        raise ValueError(f"max_fpr must be in (0, 1], got {max_fpr}.")
    total_negatives = sum(array.size for array in negatives)
    total_weight = float(weights.sum())
    if total_negatives == 0 or positives.size == 0 or total_weight <= 0:
        raise ValueError(f"The metric needs both classes; got {positives.size} positive and "
                         f"{total_negatives} negative voxels.")

    order = np.argsort(-positives, kind="stable")
    sorted_positives = positives[order]
    sorted_weights = weights[order].astype(np.float64)
    starts = np.flatnonzero(np.concatenate([[True], sorted_positives[1:] != sorted_positives[:-1]]))
    values = sorted_positives[starts]
    value_weights = np.add.reduceat(sorted_weights, starts)

    above = np.zeros(values.size, dtype=np.float64)
    tied = np.zeros(values.size, dtype=np.float64)
    for array in negatives:
        right = np.searchsorted(array, values, side="right")
        left = np.searchsorted(array, values, side="left")
        above += array.size - right
        tied += right - left

    rate_after = np.cumsum(value_weights) / total_weight
    rate_before = rate_after - value_weights / total_weight
    fpr = np.empty(2 * values.size + 2)
    rate = np.empty_like(fpr)
    fpr[0], rate[0], fpr[-1], rate[-1] = 0.0, 0.0, 1.0, 1.0
    fpr[1:-1:2] = above / total_negatives
    fpr[2:-1:2] = (above + tied) / total_negatives
    rate[1:-1:2] = rate_before
    rate[2:-1:2] = rate_after

    # Trapezoids, the one that crosses max_fpr cut at the linearly interpolated rate.
    x0, x1, y0, y1 = fpr[:-1], fpr[1:], rate[:-1], rate[1:]
    x1_cut = np.minimum(x1, max_fpr)
    width = np.maximum(x1_cut - x0, 0.0)
    fraction = np.divide(x1_cut - x0, x1 - x0, out=np.zeros_like(x0), where=x1 > x0)
    y1_cut = y0 + (y1 - y0) * np.clip(fraction, 0.0, 1.0)
    return float(np.sum(width * (y0 + y1_cut) / 2) / max_fpr)


@dataclass
class DetectionMetrics:
    """AUROC, AUROC up to max_fpr and AUPRO up to max_fpr of one volume or of volumes pooled."""

    auroc: float
    partial_auroc: float
    aupro: float
    max_fpr: float
    voxels: int
    positives: int
    regions: int


def detection_metrics(volumes: list[VolumeScores], max_fpr: float = 0.3) -> DetectionMetrics:
    """Return the metrics of the voxels of `volumes` pooled, as if they were one volume.

    AUPRO: for each threshold, the mean over all regions of the fraction of the region's
    voxels at or above it, against the FPR over all negative voxels. Partial areas are
    divided by max_fpr, so 1 is perfect and max_fpr / 2 is random for AUROC.
    """
    negatives = [volume.negatives for volume in volumes]
    positives = np.concatenate([volume.positives for volume in volumes])
    region_weights = np.concatenate([1.0 / volume.region_sizes[volume.regions - 1] for volume in volumes])
    unit_weights = np.ones(positives.size)
    return DetectionMetrics(
        auroc=_curve_area(negatives, positives, unit_weights, 1.0),
        partial_auroc=_curve_area(negatives, positives, unit_weights, max_fpr),
        aupro=_curve_area(negatives, positives, region_weights, max_fpr),
        max_fpr=max_fpr,
        voxels=sum(volume.voxels for volume in volumes),
        positives=int(positives.size),
        regions=int(sum(volume.region_sizes.size for volume in volumes)),
    )


def auroc(scores: np.ndarray, labels: np.ndarray, max_fpr: float = 1.0) -> float:
    """Return the area under the ROC curve up to `max_fpr`, divided by `max_fpr`.

    With max_fpr = 1 this is the usual AUROC. With max_fpr < 1 the partial area is
    normalised by max_fpr (not McClish-corrected as scikit-learn's max_fpr is), so a
    perfect score is 1 and a random one is max_fpr / 2.
    """
    volume = collect_volume_scores(scores, labels)
    return _curve_area([volume.negatives], volume.positives, np.ones(volume.positives.size), max_fpr)


def aupro(scores: np.ndarray, labels: np.ndarray, max_fpr: float = 0.3) -> float:
    """Return the area under the per-region overlap curve up to `max_fpr`, divided by `max_fpr`."""
    return detection_metrics([collect_volume_scores(scores, labels)], max_fpr).aupro

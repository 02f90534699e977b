"""Findings: connected regions of the anomaly map above a threshold, with size, peak and position."""

from __future__ import annotations

import csv
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from .calibration import Calibration

# 26-connectivity: voxels touching by a face, an edge or a corner belong to one finding.
CONNECTIVITY = np.ones((3, 3, 3), dtype=bool)


@dataclass
class Finding:
    """One connected region above the threshold. Positions are in mm; LPS is ITK's patient frame."""

    rank: int
    peak_score: float
    # % of normal training voxels that score above the peak; None without calibration.
    peak_top_percent: float | None
    volume_ml: float
    voxel_count: int
    centroid_lps: tuple[float, float, float]
    centroid_ras: tuple[float, float, float]
    peak_lps: tuple[float, float, float]
    # Voxel index (i, j, k) of the peak in the input image, as ITK orders it (x fastest).
    peak_index: tuple[int, int, int]


def find_findings(anomaly_map: sitk.Image, threshold: float, calibration: Calibration | None = None,
                  min_volume_ml: float = 0.0, max_findings: int | None = None) -> list[Finding]:
    """Return the connected regions of `anomaly_map` with score > `threshold`, highest peak first."""
    scores = sitk.GetArrayViewFromImage(anomaly_map)
    above = scores > threshold
    labels, count = ndimage.label(above, structure=CONNECTIVITY)
    if count == 0:
        return []

    voxel_ml = float(np.prod(anomaly_map.GetSpacing())) / 1000.0
    voxel_counts, peaks, peak_positions, centroids = region_statistics(scores, above, labels, count)

    findings = []
    for label in range(count):
        volume_ml = float(voxel_counts[label]) * voxel_ml
        if volume_ml < min_volume_ml:
            continue
        # Arrays are (z, y, x); ITK indices are (x, y, z).
        centroid = anomaly_map.TransformContinuousIndexToPhysicalPoint([float(c) for c in centroids[label][::-1]])
        peak_index = tuple(int(i) for i in peak_positions[label][::-1])
        peak = anomaly_map.TransformIndexToPhysicalPoint(peak_index)
        peak_score = float(peaks[label])
        top = None if calibration is None else float(calibration.top_percent_of_score(peak_score))
        findings.append(Finding(
            rank=0, peak_score=peak_score, peak_top_percent=top, volume_ml=volume_ml,
            voxel_count=int(voxel_counts[label]), centroid_lps=tuple(centroid),
            centroid_ras=(-centroid[0], -centroid[1], centroid[2]), peak_lps=tuple(peak), peak_index=peak_index,
        ))

    findings.sort(key=lambda finding: finding.peak_score, reverse=True)
    if max_findings is not None:
        findings = findings[:max_findings]
    for rank, finding in enumerate(findings, start=1):
        finding.rank = rank
    return findings


def region_statistics(scores: np.ndarray, above: np.ndarray, labels: np.ndarray, count: int):
    """Return voxel count, peak score, peak (z, y, x) and centroid (z, y, x) of labels 1..count.

    Works on the voxels above the threshold only. scipy's labelled maximum sorts the whole
    volume, which takes seconds on a full CT and made the Slicer module's threshold slider lag.
    Among voxels tied at a region's maximum score, the peak is the last in C order.
    """
    flat = np.flatnonzero(above)
    voxel_labels = labels.ravel()[flat] - 1
    voxel_scores = np.asarray(scores).ravel()[flat]
    voxel_counts = np.bincount(voxel_labels, minlength=count)

    positions = np.unravel_index(flat, above.shape)
    centroids = np.stack([np.bincount(voxel_labels, weights=axis, minlength=count) for axis in positions], axis=1)
    centroids /= voxel_counts[:, None]

    # Sort by label, then by score; lexsort is stable, so tied scores keep C order.
    order = np.lexsort((voxel_scores, voxel_labels))
    last_of_label = np.flatnonzero(np.r_[np.diff(voxel_labels[order]) != 0, True])
    peak_voxels = order[last_of_label]
    peak_positions = np.stack(np.unravel_index(flat[peak_voxels], above.shape), axis=1)
    return voxel_counts, voxel_scores[peak_voxels], peak_positions, centroids


def write_findings(findings: list[Finding], path: str | os.PathLike) -> Path:
    """Write findings as CSV or JSON, chosen by the suffix; vectors become _x, _y, _z columns in CSV."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [asdict(finding) for finding in findings]
    if path.suffix.lower() == ".json":
        path.write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
        return path
    if path.suffix.lower() != ".csv":
        raise ValueError(f"Findings file '{path}' must end in .csv or .json.")

    columns = ["rank", "peak_score", "peak_top_percent", "volume_ml", "voxel_count"]
    vectors = ["centroid_lps", "centroid_ras", "peak_lps", "peak_index"]
    header = columns + [f"{name}_{axis}" for name in vectors for axis in "xyz"]
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for row in rows:
            writer.writerow([row[c] for c in columns] + [value for name in vectors for value in row[name]])
    return path

"""PNG preview: axial, coronal and sagittal slices of the CT with the anomaly map as a heat overlay."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from PIL import Image, ImageDraw

from .preprocessing import AIR_HU, model_grid_reference

# Grey window for the CT: level -300 HU, width 1500 HU, which shows lung and soft tissue together.
WINDOW_LOW_HU, WINDOW_HIGH_HU = -1050.0, 450.0


def heat_colours(values: np.ndarray) -> np.ndarray:
    """Map values in [0, 1] to RGB in [0, 1] on a black-red-yellow-white heat scale."""
    values = np.clip(values, 0, 1)[..., None]
    red = np.clip(3 * values, 0, 1)
    green = np.clip(3 * values - 1, 0, 1)
    blue = np.clip(3 * values - 2, 0, 1)
    return np.concatenate([red, green, blue], axis=-1)


def _plane(image: sitk.Image, grid: sitk.Image, axis: int, index: int, default: float) -> np.ndarray:
    """Resample `image` onto one plane of the identity-direction `grid`: fixed array `axis` at `index`."""
    size = list(grid.GetSize())
    origin = list(grid.GetOrigin())
    itk_axis = 2 - axis  # array axes (z, y, x) are ITK axes (2, 1, 0)
    origin[itk_axis] += index * grid.GetSpacing()[itk_axis]
    size[itk_axis] = 1
    plane = sitk.Image(size, sitk.sitkUInt8)
    plane.SetSpacing(grid.GetSpacing())
    plane.SetOrigin(origin)
    plane.SetDirection(grid.GetDirection())
    resampled = sitk.Resample(image, plane, sitk.Transform(), sitk.sitkLinear, default, sitk.sitkFloat32)
    return np.take(sitk.GetArrayFromImage(resampled), 0, axis=axis)


def render_preview(ct: sitk.Image, anomaly_map: sitk.Image, threshold: float, centre_lps=None,
                   display_max: float | None = None, spacing_mm: float = 1.0) -> Image.Image:
    """Return an RGB image of three orthogonal slices through `centre_lps` (default: the map's maximum).

    Slices follow radiological convention: patient right on the image's left in axial and
    coronal views, anterior at the top of axial views, superior at the top otherwise.
    Voxels above `threshold` are coloured from dark red (threshold) to white (`display_max`,
    default the map's 99.99th percentile), so one outlier voxel does not wash out the rest.
    """
    grid = model_grid_reference(ct, (spacing_mm,) * 3)
    if centre_lps is None:
        scores = sitk.GetArrayViewFromImage(anomaly_map)
        peak = np.unravel_index(int(np.argmax(scores)), scores.shape)[::-1]
        centre_lps = anomaly_map.TransformIndexToPhysicalPoint([int(i) for i in peak])
    centre = grid.TransformPhysicalPointToIndex(centre_lps)
    centre_zyx = [min(max(int(c), 0), s - 1) for c, s in zip(centre[::-1], grid.GetSize()[::-1])]

    floor = float(np.min(sitk.GetArrayViewFromImage(anomaly_map)))
    if display_max is None:
        display_max = float(np.percentile(sitk.GetArrayViewFromImage(anomaly_map), 99.99))
    display_max = max(display_max, threshold + 1e-6)

    panels = []
    for axis, title in ((0, "axial"), (1, "coronal"), (2, "sagittal")):
        hu = _plane(ct, grid, axis, centre_zyx[axis], AIR_HU)
        score = _plane(anomaly_map, grid, axis, centre_zyx[axis], floor)
        if axis > 0:  # rows run along z: put superior at the top
            hu, score = hu[::-1], score[::-1]
        grey = np.clip((hu - WINDOW_LOW_HU) / (WINDOW_HIGH_HU - WINDOW_LOW_HU), 0, 1)
        rgb = np.repeat(grey[..., None], 3, axis=-1)
        strength = (score - threshold) / (display_max - threshold)
        above = score > threshold
        colour = heat_colours(0.35 + 0.65 * strength)
        rgb[above] = 0.35 * rgb[above] + 0.65 * colour[above]
        panel = Image.fromarray((rgb * 255).astype(np.uint8))
        ImageDraw.Draw(panel).text((4, 4), title, fill=(255, 255, 0))
        panels.append(panel)

    height = max(panel.height for panel in panels)
    canvas = Image.new("RGB", (sum(panel.width for panel in panels) + 8 * (len(panels) - 1), height))
    left = 0
    for panel in panels:
        canvas.paste(panel, (left, (height - panel.height) // 2))
        left += panel.width + 8
    return canvas


def write_preview(ct: sitk.Image, anomaly_map: sitk.Image, threshold: float, path: str | os.PathLike,
                  centre_lps=None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    render_preview(ct, anomaly_map, threshold, centre_lps).save(path)
    return path

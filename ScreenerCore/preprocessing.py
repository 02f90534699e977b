"""Bringing a CT onto the model grid: resampling, HU-to-intensity mapping and the body mask.

The model grid is axis-aligned in patient space (ITK's identity direction, so axes
point to patient left, posterior and superior), has the model's spacing, and covers
the input's whole physical extent. Any input orientation, permuted or flipped axes
and oblique directions included, therefore reaches the networks the same way, and
the map goes back onto the exact input grid by resampling.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from .config import PreprocessingConfig
from .errors import InputError

logger = logging.getLogger(__name__)

# HU of air; used to fill voxels of the model grid that lie outside the input.
AIR_HU = -1024.0


@dataclass
class ModelGridVolume:
    """A CT on the model grid. Arrays are in (z, y, x) order, matching SimpleITK's GetArrayFromImage."""

    hu: np.ndarray
    intensity: np.ndarray
    body_mask: np.ndarray
    # An image with the model grid's geometry; its voxel values are not used.
    reference: sitk.Image

    def positions_mm(self, start_index_zyx) -> np.ndarray:
        """Return the physical (x, y, z) position in mm of the voxel at `start_index_zyx`."""
        z, y, x = (int(i) for i in start_index_zyx)
        return np.array(self.reference.TransformIndexToPhysicalPoint((x, y, z)))


def model_grid_reference(image: sitk.Image, spacing_mm) -> sitk.Image:
    """Return an identity-direction image with `spacing_mm` whose extent covers all of `image`."""
    size = np.array(image.GetSize())
    corners = []
    for corner in np.ndindex(2, 2, 2):
        # Voxel edges lie half a voxel outside the first and last voxel centres.
        index = np.array(corner) * size - 0.5
        corners.append(image.TransformContinuousIndexToPhysicalPoint(index.tolist()))
    corners = np.array(corners)
    low, high = corners.min(axis=0), corners.max(axis=0)

    spacing = np.asarray(spacing_mm, dtype=float)
    grid_size = np.maximum(np.ceil((high - low) / spacing - 1e-6).astype(int), 1)
    origin = low + spacing / 2

    reference = sitk.Image([int(s) for s in grid_size], sitk.sitkUInt8)
    reference.SetSpacing(spacing.tolist())
    reference.SetOrigin(origin.tolist())
    reference.SetDirection(np.eye(3).ravel().tolist())
    return reference


def hu_to_intensity(hu: np.ndarray, config: PreprocessingConfig) -> np.ndarray:
    """Map HU to network intensity with the config's piecewise-linear knots, clamping outside them."""
    return np.interp(hu, config.intensity_knots_hu, config.intensity_knots_value).astype(np.float32)


def body_mask(hu: np.ndarray, threshold_hu: float) -> np.ndarray:
    """Return the body as a boolean mask: the largest connected region above `threshold_hu`, holes filled.

    Lungs and bowel gas are holes inside that region and are filled slice by slice
    (axial), so they count as body. Scanner padding (-2048 or -3024 HU outside the
    field of view) and air outside the patient do not.
    """
    foreground = hu > threshold_hu
    labels, count = ndimage.label(foreground)
    if count == 0:
        return np.zeros_like(foreground)
    sizes = ndimage.sum_labels(foreground, labels, index=np.arange(1, count + 1))
    body = labels == (int(np.argmax(sizes)) + 1)

    for z in range(body.shape[0]):
        body[z] = ndimage.binary_fill_holes(body[z])
    return body


def check_hounsfield(hu: np.ndarray, name: str) -> None:
    """Raise InputError when the values cannot be CT values in HU (no negative values at all).

    Every CT in HU has air or fat below 0 HU; images scaled to [0, 1] or [0, 255], and
    raw stored values without the rescale intercept, do not.
    """
    finite = hu[np.isfinite(hu)]
    if finite.size == 0:
        raise InputError(f"'{name}' contains no finite values.")
    low, high = float(finite.min()), float(finite.max())
    if low >= 0:
        raise InputError(f"'{name}' does not look like CT in Hounsfield units: values range from {low:g} "
                         f"to {high:g} with nothing below 0 HU (air is about -1000 HU). Convert it to HU "
                         "(apply the rescale slope and intercept), or pass --allow-non-hu to run anyway.")


def to_model_grid(image: sitk.Image, config: PreprocessingConfig, name: str = "input",
                  allow_non_hu: bool = False) -> ModelGridVolume:
    """Resample `image` (HU) onto the model grid and compute intensity and body mask there.

    NaN and Inf voxels are replaced by air before resampling, so they cannot spread.
    The input image is not modified.
    """
    array = sitk.GetArrayViewFromImage(image)
    if not np.all(np.isfinite(array)):
        bad = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
        logger.warning("%s: %d NaN or Inf voxels replaced by %g HU", name, bad, AIR_HU)
        clean = sitk.GetImageFromArray(np.nan_to_num(array, nan=AIR_HU, posinf=AIR_HU, neginf=AIR_HU))
        clean.CopyInformation(image)
        image = clean
        array = sitk.GetArrayViewFromImage(image)
    if not allow_non_hu:
        check_hounsfield(np.asarray(array), name)

    reference = model_grid_reference(image, config.spacing_mm)
    resampled = sitk.Resample(image, reference, sitk.Transform(), sitk.sitkLinear, AIR_HU, sitk.sitkFloat32)
    hu = sitk.GetArrayFromImage(resampled)

    return ModelGridVolume(
        hu=hu,
        intensity=hu_to_intensity(hu, config),
        body_mask=body_mask(hu, config.body_threshold_hu),
        reference=reference,
    )


def to_input_grid(values: np.ndarray, reference: sitk.Image, input_image: sitk.Image,
                  default_value: float, interpolator=sitk.sitkLinear) -> sitk.Image:
    """Resample a (z, y, x) array on the model grid `reference` onto `input_image`'s exact grid."""
    model_image = sitk.GetImageFromArray(values.astype(np.float32))
    model_image.CopyInformation(reference)
    return sitk.Resample(model_image, input_image, sitk.Transform(), interpolator, float(default_value),
                         sitk.sitkFloat32)

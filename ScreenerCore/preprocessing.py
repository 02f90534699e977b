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

# HU of air; fills voxels of the model grid outside the input, and replaces NaN, Inf and padding.
AIR_HU = -1024.0
# The smallest value span, in HU, accepted as CT; fat to soft tissue alone spans about 150 HU.
MIN_SPAN_HU = 100.0
# Direction matrices with |D D^T - I| above this get a warning; float64 round-off is about 1e-15.
ORTHONORMAL_TOLERANCE = 1e-9
# A direction matrix with |det| below this is singular: voxel positions are undefined.
MIN_DIRECTION_DETERMINANT = 1e-3


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
    """Return an identity-direction image with `spacing_mm` whose extent covers all of `image`, centred on it."""
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
    # Centre the grid on the input's extent. Since (size - 1) * spacing < extent, every grid
    # voxel centre then lies inside the input, even for a slice thinner than one grid voxel.
    origin = (low + high) / 2 - (grid_size - 1) / 2 * spacing

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


def check_direction(direction, name: str, warn: bool = True) -> None:
    """Raise InputError when a direction matrix (9 values, row-major) is not finite or is singular.

    Direction cosines that are orthonormal only up to rounding (float32 headers of
    oblique scans) are accepted, with a warning when `warn`: ITK maps indices to
    positions with the matrix as stored, so the map stays consistent with the input.
    """
    matrix = np.array(direction, dtype=float).reshape(3, 3)
    if not np.all(np.isfinite(matrix)) or abs(np.linalg.det(matrix)) < MIN_DIRECTION_DETERMINANT:
        raise InputError(f"'{name}' has an invalid direction matrix {matrix.ravel().tolist()} (not finite or "
                         "singular), so voxel positions are undefined. Fix the file header, e.g. by saving "
                         "the volume again from the software that made it.")
    deviation = float(np.abs(matrix @ matrix.T - np.eye(3)).max())
    if warn and deviation > ORTHONORMAL_TOLERANCE:
        logger.warning("%s: direction cosines are orthonormal only to within %.1e (rounded or sheared header); "
                       "using them as stored.", name, deviation)


def check_volume(image: sitk.Image, name: str) -> None:
    """Raise InputError unless `image` is a 3D scalar volume with a usable direction matrix."""
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"'{name}' has {image.GetNumberOfComponentsPerPixel()} components per voxel; Screener "
                         "needs one CT value per voxel. Select one component or frame first.")
    if image.GetDimension() != 3:
        raise InputError(f"'{name}' is {image.GetDimension()}D; Screener needs a 3D CT volume.")
    check_direction(image.GetDirection(), name)


def value_range(values: np.ndarray) -> tuple[float, float, bool]:
    """Return the lowest and highest finite value (NaN when none is finite), and whether all are finite.

    Only arrays with NaN or Inf get a temporary copy of their finite values.
    """
    low, high = float(values.min()), float(values.max())
    if np.isfinite(low) and np.isfinite(high):
        return low, high, True
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return float("nan"), float("nan"), False
    return float(finite.min()), float(finite.max()), False


def check_hounsfield(low: float, high: float, name: str) -> None:
    """Raise InputError when values from `low` to `high` cannot be a CT in Hounsfield units.

    A CT in HU has negative values (air about -1000 HU, lung, fat about -100 HU) and
    spans hundreds of HU. Images scaled to [0, 1] or [0, 255] and raw stored values
    without the rescale intercept have nothing below 0; normalised intensities span a
    few units.
    """
    if not np.isfinite(low):
        raise InputError(f"'{name}' contains no finite values (all voxels are NaN or infinite).")
    problem = None
    if low >= 0:
        problem = "nothing below 0 HU, but air is about -1000 HU and fat about -100 HU"
    elif high - low < MIN_SPAN_HU:
        problem = f"a span of {high - low:g}, but CT values in HU span at least {MIN_SPAN_HU:g} HU"
    if problem:
        raise InputError(f"'{name}' does not look like CT in Hounsfield units: values range from {low:g} to "
                         f"{high:g}, {problem}. Convert it to HU (apply the rescale slope and intercept), or "
                         "pass --allow-non-hu to run anyway (the map is not meaningful unless the values are HU).")


def clean_values(image: sitk.Image, name: str, allow_non_hu: bool = False) -> sitk.Image:
    """Return `image` with NaN, Inf and scanner padding replaced by air, after checking that the values are HU.

    Voxels below AIR_HU are padding outside the scanner's field of view (commonly -2048
    or -3024 HU) or noise in air; setting them to air before resampling keeps them from
    being interpolated with tissue at the field-of-view edge. `image` is not modified.
    A copy is made only when some voxel needs replacing.
    """
    values = sitk.GetArrayViewFromImage(image)
    low, high, all_finite = value_range(values)
    if allow_non_hu:
        try:
            check_hounsfield(low, high, name)
        except InputError as error:
            logger.warning("%s Running anyway because non-HU input was allowed.", error)
    else:
        check_hounsfield(low, high, name)

    if all_finite and low >= AIR_HU:
        return image

    if all_finite:
        # Only padding to replace: one filter output, no NumPy copy and mask of the whole volume.
        below = sum(int(np.count_nonzero(values[k:k + 16] < AIR_HU)) for k in range(0, values.shape[0], 16))
        logger.info("%s: %d voxels below %g HU (padding outside the field of view) treated as air",
                    name, below, AIR_HU)
        return sitk.Maximum(image, AIR_HU)

    clean = np.array(values, dtype=np.float32)
    bad = ~np.isfinite(clean)
    logger.warning("%s: %d NaN or infinite voxels replaced by air (%g HU)", name, int(bad.sum()), AIR_HU)
    clean[bad] = AIR_HU
    del bad
    np.maximum(clean, AIR_HU, out=clean)
    cleaned = sitk.GetImageFromArray(clean)
    cleaned.CopyInformation(image)
    return cleaned


def to_model_grid(image: sitk.Image, config: PreprocessingConfig, name: str = "input",
                  allow_non_hu: bool = False) -> ModelGridVolume:
    """Resample `image` (HU) onto the model grid and compute intensity and body mask there.

    The image is checked first (3D, one value per voxel, valid direction, values in HU
    unless `allow_non_hu`); NaN, Inf and padding below AIR_HU become air before
    resampling, so they cannot spread into tissue. The input image is not modified.
    """
    check_volume(image, name)
    image = clean_values(image, name, allow_non_hu)

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

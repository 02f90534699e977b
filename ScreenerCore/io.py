"""Reading CT volumes (NIfTI, NRRD, MHA or one DICOM series) and writing maps atomically."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .errors import InputError

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")
OUTPUT_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".mha")


def has_suffix(path: Path, suffixes: tuple[str, ...]) -> bool:
    name = path.name.lower()
    return any(name.endswith(suffix) for suffix in suffixes)


def list_dicom_series(folder: Path) -> dict[str, list[str]]:
    """Return the DICOM series found directly in `folder`: series instance UID to sorted file names."""
    series = {}
    for uid in sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)):
        series[uid] = list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid))
    return series


def read_dicom_series(folder: Path, series_uid: str | None = None) -> sitk.Image:
    """Read one DICOM series from `folder` as float32 Hounsfield units.

    ITK applies each file's own rescale slope and intercept, so a series whose slope
    differs between slices still comes out in HU. Files that are not DICOM are ignored.
    """
    series = list_dicom_series(folder)
    if not series:
        raise InputError(f"No DICOM series found in folder '{folder}'. Point to a folder that contains "
                         "the .dcm files of one series, or to a NIfTI, NRRD or MHA file.")

    if series_uid is None:
        if len(series) > 1:
            listing = "\n".join(f"  {uid} ({len(files)} files)" for uid, files in series.items())
            raise InputError(f"Folder '{folder}' contains {len(series)} DICOM series:\n{listing}\n"
                             "Choose one with --series UID.")
        series_uid = next(iter(series))
    elif series_uid not in series:
        raise InputError(f"DICOM series '{series_uid}' not found in '{folder}'. "
                         f"Available series: {', '.join(series)}.")

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(series[series_uid])
    reader.SetOutputPixelType(sitk.sitkFloat32)
    image = reader.Execute()
    logger.info("Read DICOM series %s from %s: %d slices", series_uid, folder, len(series[series_uid]))
    return image


def read_ct(path: str | os.PathLike, series_uid: str | None = None) -> sitk.Image:
    """Read a CT from an image file or a DICOM folder as a 3D float32 image in HU.

    Raises InputError naming the path when it is missing, unreadable, not 3D, or has
    several components per voxel.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"Input '{path}' not found.")

    if path.is_dir():
        image = read_dicom_series(path, series_uid)
    else:
        try:
            image = sitk.ReadImage(str(path), sitk.sitkFloat32)
        except RuntimeError as error:
            if "components" in str(error).lower() or "vector" in str(error).lower():
                image = sitk.ReadImage(str(path))
            else:
                raise InputError(f"Cannot read '{path}' as an image ({error.__class__.__name__}). "
                                 f"Supported: {', '.join(IMAGE_SUFFIXES)} files or a DICOM folder.") from error

    check_single_volume(image, path)
    return sitk.Cast(image, sitk.sitkFloat32)


def check_single_volume(image: sitk.Image, path: Path) -> None:
    """Raise InputError unless `image` is a single-component 3D volume."""
    components = image.GetNumberOfComponentsPerPixel()
    if components > 1:
        raise InputError(f"'{path}' has {components} components per voxel (e.g. RGB or several frames "
                         "stored as a vector). Screener needs one CT value per voxel: extract one "
                         "component or frame and save it as a 3D image.")
    if image.GetDimension() == 4:
        frames = image.GetSize()[3]
        raise InputError(f"'{path}' is 4D with {frames} frames. Screener needs a 3D CT: extract one "
                         "frame (e.g. with SimpleITK's image[:, :, :, k]) and save it as a 3D image.")
    if image.GetDimension() != 3:
        raise InputError(f"'{path}' is {image.GetDimension()}D; Screener needs a 3D CT volume.")


def write_image(image: sitk.Image, path: str | os.PathLike) -> Path:
    """Write `image` to `path` (format from the suffix), replacing any existing file only as a whole.

    The image is first written to a temporary file in the same folder, then renamed,
    so a failed write never leaves a half-written file behind.
    """
    path = Path(path)
    if not has_suffix(path, OUTPUT_SUFFIXES):
        raise InputError(f"Output '{path}' has an unsupported suffix; use one of {', '.join(OUTPUT_SUFFIXES)}.")
    path.parent.mkdir(parents=True, exist_ok=True)

    # Keep the full suffix (".nii.gz") so SimpleITK picks the right writer for the temporary file.
    suffix = next(s for s in OUTPUT_SUFFIXES if path.name.lower().endswith(s))
    handle, temporary = tempfile.mkstemp(prefix=".screener-", suffix=suffix, dir=path.parent)
    os.close(handle)
    try:
        sitk.WriteImage(image, temporary, useCompression=True)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def same_geometry(a: sitk.Image, b: sitk.Image, tolerance: float = 1e-6) -> bool:
    """Return True when both images have equal size and, within `tolerance`, origin, spacing and direction."""
    return (a.GetSize() == b.GetSize()
            and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=tolerance)
            and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=tolerance)
            and np.allclose(a.GetDirection(), b.GetDirection(), atol=tolerance))

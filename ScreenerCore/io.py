"""Reading CT volumes (NIfTI, NRRD, MHA or one DICOM series) and writing maps atomically."""

from __future__ import annotations

import gzip
import logging
import os
import secrets
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .errors import InputError
from .preprocessing import check_direction

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")
OUTPUT_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".mha")

# Slices of one series whose direction cosines differ by more than this belong to different stacks.
DIRECTION_TOLERANCE = 1e-4
# Two slices closer than this along the slice normal, in mm, occupy the same position.
SAME_POSITION_MM = 1e-3
# Size in bytes of a NIfTI-1 header; also the value of its first field, sizeof_hdr.
NIFTI1_HEADER_BYTES = 348


def has_suffix(path: Path, suffixes: tuple[str, ...]) -> bool:
    name = path.name.lower()
    return any(name.endswith(suffix) for suffix in suffixes)


@dataclass
class DicomSeries:
    """One image series in a DICOM folder, as listed to the user."""

    uid: str
    files: list[str]
    description: str = ""
    modality: str = ""
    number: str = ""

    def summary(self) -> str:
        details = ", ".join(part for part in (self.modality, f"series {self.number}" if self.number else "",
                                              f"'{self.description}'" if self.description else "",
                                              f"{len(self.files)} files") if part)
        return f"{self.uid} ({details})"


def _header(file_name: str) -> sitk.ImageFileReader:
    """Return a reader whose image information (size, geometry, DICOM tags) is read, not its pixels."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(file_name)
    reader.ReadImageInformation()
    return reader


def _tag(reader: sitk.ImageFileReader, key: str) -> str:
    return reader.GetMetaData(key).strip() if reader.HasMetaDataKey(key) else ""


def describe_dicom_series(folder: Path) -> list[DicomSeries]:
    """Return the image series found directly in `folder`, with description, modality and number.

    Files that are not DICOM are ignored. Series whose first file has no readable image
    (structure sets, reports) are left out, because they cannot be scored.
    """
    found = []
    for uid in sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)):
        files = list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid))
        try:
            first = _header(files[0])
        except RuntimeError as error:
            logger.debug("Series %s in %s has no readable image, left out: %s", uid, folder, error)
            continue
        found.append(DicomSeries(uid, files, description=_tag(first, "0008|103e"),
                                 modality=_tag(first, "0008|0060"), number=_tag(first, "0020|0011")))
    return found


def list_dicom_series(folder: Path) -> dict[str, list[str]]:
    """Return the DICOM image series found directly in `folder`: series instance UID to sorted file names."""
    return {series.uid: series.files for series in describe_dicom_series(Path(folder))}


def check_series_slices(series: DicomSeries, folder: Path) -> None:
    """Raise InputError when the files of one series do not form one regular stack of slices.

    Some scanners and exports put a localizer, a second reconstruction or a repeated
    acquisition under one series UID; reading them together would mix different images.
    """
    sizes, directions, positions = set(), [], []
    for name in series.files:
        try:
            header = _header(name)
        except RuntimeError as error:
            raise InputError(f"DICOM file '{name}' of series {series.uid} cannot be read ({error}). "
                             "Remove the damaged file from the folder or export the series again.") from error
        sizes.add(tuple(header.GetSize()[:2]))
        directions.append(np.array(header.GetDirection()).reshape(3, 3))
        positions.append(np.array(header.GetOrigin()))

    if len(sizes) > 1:
        listing = " and ".join("x".join(map(str, size)) for size in sorted(sizes))
        raise InputError(f"DICOM series {series.uid} in '{folder}' mixes slices of different sizes ({listing}): "
                         "it holds more than one image stack, such as a localizer. Move the files of the "
                         "other stack to another folder, or export the series again.")
    if any(np.abs(direction - directions[0]).max() > DIRECTION_TOLERANCE for direction in directions):
        raise InputError(f"DICOM series {series.uid} in '{folder}' mixes slices with different orientations. "
                         "Move the slices of the other orientation to another folder.")
    if len(positions) > 1:
        normal = directions[0][:, 2]
        along = np.sort(np.array(positions) @ normal)
        repeated = int(np.count_nonzero(np.diff(along) < SAME_POSITION_MM))
        if repeated:
            raise InputError(f"DICOM series {series.uid} in '{folder}' has {repeated} slices at a position that "
                             "another slice already has: it holds more than one acquisition. Move the "
                             "repeated acquisition to another folder.")


def read_dicom_series(folder: Path, series_uid: str | None = None) -> sitk.Image:
    """Read one DICOM series from `folder` as float32 Hounsfield units.

    ITK applies each file's own rescale slope and intercept, so a series whose slope
    differs between slices still comes out in HU. Files that are not DICOM are ignored.
    A folder with several series needs `series_uid`; the error lists the series.
    """
    folder = Path(folder)
    series = {item.uid: item for item in describe_dicom_series(folder)}
    if not series:
        raise InputError(f"No DICOM image series found in folder '{folder}'. Point to a folder that contains "
                         "the .dcm files of one series, or to a NIfTI, NRRD or MHA file.")

    listing = "\n".join(f"  {item.summary()}" for item in series.values())
    if series_uid is None:
        if len(series) > 1:
            raise InputError(f"Folder '{folder}' contains {len(series)} DICOM series:\n{listing}\n"
                             "Choose one with --series UID.")
        series_uid = next(iter(series))
    elif series_uid not in series:
        raise InputError(f"DICOM series '{series_uid}' not found in '{folder}'. Available series:\n{listing}")

    chosen = series[series_uid]
    check_series_slices(chosen, folder)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(chosen.files)
    reader.SetOutputPixelType(sitk.sitkFloat32)
    try:
        image = reader.Execute()
    except RuntimeError as error:
        raise InputError(f"DICOM series {series_uid} in '{folder}' cannot be read as one volume ({error}).") from error
    logger.info("Read DICOM series %s from %s: %d slices", series_uid, folder, len(chosen.files))
    return image


def read_ct(path: str | os.PathLike, series_uid: str | None = None, frame: int | None = None) -> sitk.Image:
    """Read a CT from an image file or a DICOM folder as a 3D float32 image in HU.

    Rescale slope and intercept stored in the file are applied. A 4D image or an image
    with several components per voxel needs `frame` (0-based) to pick one volume; it is
    never averaged. Raises InputError naming the path when it is missing, unreadable,
    not 3D, or needs a frame.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"Input '{path}' not found.")

    if path.is_dir():
        if frame not in (None, 0):
            raise InputError(f"--frame applies to 4D image files, but '{path}' is a DICOM folder; "
                             "pick a series with --series UID instead.")
        image = read_dicom_series(path, series_uid)
    else:
        image = read_image_file(path, frame)

    if image.GetDimension() != 3:
        raise InputError(f"'{path}' is {image.GetDimension()}D; Screener needs a 3D CT volume.")
    return sitk.Cast(image, sitk.sitkFloat32)


def nifti_data_bytes(path: Path) -> tuple[int, int] | None:
    """Return (expected, actual) byte counts of a NIfTI-1 file (.nii or .nii.gz), header included.

    Returns None for other files and for NIfTI-2. For .nii.gz the actual size comes from the
    gzip trailer, and from decompressing the whole file only when the trailer disagrees (a
    truncated file, or several gzip members).
    """
    # TODO: NIfTI-2 files (540-byte header) are not checked for truncation. ITK raises for
    # truncated NRRD files; other formats are untested.
    name = path.name.lower()
    compressed = name.endswith(".nii.gz")
    if not (compressed or name.endswith(".nii")):
        return None
    try:
        with (gzip.open(path, "rb") if compressed else open(path, "rb")) as handle:
            header = handle.read(NIFTI1_HEADER_BYTES)
    except (OSError, EOFError, zlib.error):
        return None  # ITK reports unreadable files with its own message
    if len(header) < NIFTI1_HEADER_BYTES:
        return None
    order = next((o for o in "<>" if struct.unpack(o + "i", header[:4])[0] == NIFTI1_HEADER_BYTES), None)
    if order is None:
        return None
    dims = struct.unpack(order + "8h", header[40:56])
    bitpix = struct.unpack(order + "h", header[72:74])[0]
    vox_offset = struct.unpack(order + "f", header[108:112])[0]
    expected = int(vox_offset) + int(np.prod([max(d, 1) for d in dims[1:1 + dims[0]]])) * bitpix // 8

    if not compressed:
        return expected, path.stat().st_size
    with open(path, "rb") as handle:
        handle.seek(-4, os.SEEK_END)
        trailer_size = struct.unpack("<I", handle.read(4))[0]  # uncompressed size modulo 2**32
    if trailer_size == expected % 2**32:
        return expected, expected
    actual = 0
    try:
        with gzip.open(path, "rb") as handle:
            while block := handle.read(1 << 16):
                actual += len(block)
    except (EOFError, OSError, zlib.error):
        pass  # the stream ends early: `actual` counts what could be read
    return expected, actual


def read_image_file(path: Path, frame: int | None) -> sitk.Image:
    """Read one volume of an image file as float32, choosing `frame` of a 4D or multi-component image."""
    # ITK's NIfTI reader fills a truncated file's missing voxels with zeros instead of failing.
    sizes = nifti_data_bytes(path)
    if sizes is not None and sizes[1] < sizes[0]:
        raise InputError(f"'{path}' is truncated: it contains {sizes[1]} of the {sizes[0]} bytes that its header "
                         "describes. Download or export the file again.")
    try:
        reader = _header(str(path))
    except RuntimeError as error:
        raise InputError(f"Cannot read '{path}' as an image ({error.__class__.__name__}). "
                         f"Supported: {', '.join(IMAGE_SUFFIXES)} files or a DICOM folder.") from error

    dimension = reader.GetDimension()
    components = reader.GetNumberOfComponents()
    size = list(reader.GetSize())
    if dimension == 2:
        raise InputError(f"'{path}' is a 2D image of {size[0]}x{size[1]} pixels. Screener needs a 3D CT; save a "
                         "single slice as a 3D volume of size X x Y x 1 so that its position and thickness are kept.")
    if dimension not in (3, 4):
        raise InputError(f"'{path}' is {dimension}D; Screener needs a 3D CT volume.")
    if dimension == 4 and components > 1:
        raise InputError(f"'{path}' is 4D with {components} components per voxel; Screener needs one 3D CT. "
                         "Extract one volume and save it as a 3D image.")

    # ITK reads a singular direction from some headers and fails only on the pixel data, with a bare message.
    spatial_direction = np.array(reader.GetDirection()).reshape(dimension, dimension)[:3, :3]
    check_direction(spatial_direction.ravel(), str(path), warn=False)

    frames = size[3] if dimension == 4 else components
    if frames > 1 and frame is None:
        kind = "frames (4D)" if dimension == 4 else "components per voxel (e.g. RGB, or frames stored as a vector)"
        raise InputError(f"'{path}' has {frames} {kind}; Screener needs one 3D CT and does not average them. "
                         f"Choose one with --frame K (K from 0 to {frames - 1}), or extract it and save it as a 3D image.")
    frame = 0 if frame is None else frame
    if not 0 <= frame < frames:
        raise InputError(f"Frame {frame} requested, but '{path}' has {frames} frame(s); "
                         f"use --frame K with K from 0 to {frames - 1}.")

    try:
        if dimension == 4:
            # Read only the chosen frame: a size of 0 on the fourth axis drops that axis.
            reader.SetExtractIndex([0, 0, 0, frame])
            reader.SetExtractSize(size[:3] + [0])
            reader.SetOutputPixelType(sitk.sitkFloat32)
            image = reader.Execute()
        elif components > 1:
            # Reading with a scalar pixel type would make ITK convert the vector (RGB to luminance),
            # so read the vector as stored and select one component.
            image = sitk.VectorIndexSelectionCast(reader.Execute(), frame, sitk.sitkFloat32)
        else:
            reader.SetOutputPixelType(sitk.sitkFloat32)
            image = reader.Execute()
    except RuntimeError as error:
        raise InputError(f"Cannot read the pixel data of '{path}' ({error.__class__.__name__}: "
                         f"{str(error).strip().splitlines()[-1]}). The file may be truncated; export it again.") from error

    if frames > 1:
        logger.info("Read frame %d of %d from %s", frame, frames, path)
    return image


def check_output_path(path: str | os.PathLike, input_path: str | os.PathLike | None = None) -> Path:
    """Raise InputError unless `path` has an output suffix and is not the input file itself."""
    path = Path(path)
    if not has_suffix(path, OUTPUT_SUFFIXES):
        raise InputError(f"Output '{path}' has an unsupported suffix; use one of {', '.join(OUTPUT_SUFFIXES)}.")
    if input_path is not None and path.exists() and Path(input_path).exists() and path.samefile(input_path):
        raise InputError(f"Output '{path}' is the input file; the input is never overwritten. "
                         "Choose another output path.")
    if path.is_dir():
        raise InputError(f"Output '{path}' is a folder; give a file name such as '{path / 'map.nii.gz'}'.")
    return path


def write_image(image: sitk.Image, path: str | os.PathLike) -> Path:
    """Write `image` to `path` (format from the suffix), replacing any existing file only as a whole.

    The image is first written to a temporary file in the same folder, then renamed over
    `path`, so a failed write never leaves a half-written file behind. The new file gets
    the permissions of a newly created file (mode 0o666 less the umask).
    """
    path = check_output_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    # Keep the full suffix (".nii.gz") so SimpleITK picks the right writer for the temporary file.
    suffix = next(s for s in OUTPUT_SUFFIXES if path.name.lower().endswith(s))
    temporary = path.parent / f".screener-{secrets.token_hex(6)}{suffix}"
    # O_EXCL: never reuse an existing file; mode 0o666 lets the umask set the permissions.
    os.close(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        sitk.WriteImage(image, str(temporary), useCompression=True)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path


def same_geometry(a: sitk.Image, b: sitk.Image, tolerance: float = 1e-6) -> bool:
    """Return True when both images have equal size and, within `tolerance`, origin, spacing and direction."""
    return (a.GetSize() == b.GetSize()
            and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=tolerance)
            and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=tolerance)
            and np.allclose(a.GetDirection(), b.GetDirection(), atol=tolerance))

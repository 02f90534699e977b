"""Builders of small CT inputs for the input-handling tests: real crops, DICOM series, a model.

Every input is made by the test that needs it, from a crop of a real CT in the shared
collection or from synthetic arrays, and written through SimpleITK or pydicom.
"""

from __future__ import annotations

import datetime
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from screener_testdata import tiny_model_config

# A small abdomen-pelvis CT at 3 mm, read in well under a second.
ABDOMEN_CT = "train/abdomen_pelvis_totalseg.nii.gz"


def abdomen_crop_from(path: Path) -> sitk.Image:
    """Return a 64 x 64 x 48 voxel crop (192 x 192 x 144 mm) of the abdomen CT as float32 HU.

    The crop contains air outside the body, fat, soft tissue, bowel gas and bone, so
    maps of it vary, and the tiny model scores it in well under a second.
    """
    image = sitk.ReadImage(str(path), sitk.sitkFloat32)
    return image[20:84, 20:84, 30:78]


@pytest.fixture(scope="session")
def abdomen_crop() -> sitk.Image:
    from screener_testdata import shared_ct_path

    return abdomen_crop_from(shared_ct_path(ABDOMEN_CT))




@pytest.fixture(scope="session")
def screening_model(tmp_path_factory, abdomen_crop):
    """A random tiny model calibrated on its own in-body scores of the abdomen crop.

    The shared tiny model is calibrated on made-up scores that lie above all its real
    scores, so its maps are flat at the floor. Comparing maps needs maps that vary.
    """
    from ScreenerCore.calibration import Calibration
    from ScreenerCore.models import ScreenerModel
    from ScreenerCore.package import load_model_package, save_model_package
    from ScreenerCore.pipeline import compute_anomaly_map

    torch.manual_seed(1)
    config = tiny_model_config("tiny-input-test-model")
    model = ScreenerModel(config).eval()
    folder = save_model_package(model, tmp_path_factory.mktemp("screening_model"))

    uncalibrated = load_model_package(folder)
    result = compute_anomaly_map(abdomen_crop, uncalibrated, device="cpu")
    in_body = result.model_grid_map[result.model_grid.body_mask]
    config.calibration = Calibration.from_scores(in_body).to_config()
    folder = save_model_package(model, tmp_path_factory.mktemp("screening_model_calibrated"))
    return load_model_package(folder)


def new_uid() -> str:
    from pydicom.uid import generate_uid

    return generate_uid()


def write_dicom_series(folder: Path, hu: np.ndarray, spacing=(0.8, 0.8, 2.5), origin=(-100.0, -120.0, 50.0),
                       series_uid: str | None = None, study_uid: str | None = None, slopes=None,
                       intercepts=None, unsigned: bool = True, description: str = "test series",
                       series_number: int = 1, file_prefix: str = "slice") -> list[Path]:
    """Write `hu` ((z, y, x) array in HU) as an axial CT series, one uncompressed file per slice.

    `slopes` and `intercepts` give each slice's rescale slope and intercept (default 1 and
    -1024); stored values are (HU - intercept) / slope, rounded, so pick HU the slope divides.
    Spacing and origin are (x, y, z) in mm, in the LPS patient frame of DICOM.
    """
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

    folder.mkdir(parents=True, exist_ok=True)
    depth, rows, columns = hu.shape
    series_uid = series_uid or new_uid()
    study_uid = study_uid or new_uid()
    frame_uid = new_uid()
    slopes = [1.0] * depth if slopes is None else list(slopes)
    intercepts = [-1024.0] * depth if intercepts is None else list(intercepts)
    today = datetime.date.today().strftime("%Y%m%d")

    paths = []
    for k in range(depth):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = new_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = folder / f"{file_prefix}{k:03d}.dcm"
        ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = frame_uid
        ds.Modality = "CT"
        ds.PatientName = "Test^Synthetic"
        ds.PatientID = "synthetic"
        ds.StudyDate = ds.SeriesDate = today
        ds.SeriesDescription = description
        ds.SeriesNumber = series_number
        ds.InstanceNumber = k + 1
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [float(origin[0]), float(origin[1]), float(origin[2]) + k * spacing[2]]
        ds.PixelSpacing = [float(spacing[1]), float(spacing[0])]
        ds.SliceThickness = float(spacing[2])
        ds.Rows, ds.Columns = rows, columns
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 0 if unsigned else 1
        ds.RescaleSlope = slopes[k]
        ds.RescaleIntercept = intercepts[k]
        ds.RescaleType = "HU"
        stored = np.round((hu[k].astype(np.float64) - intercepts[k]) / slopes[k])
        ds.PixelData = stored.astype(np.uint16 if unsigned else np.int16).tobytes()
        pydicom.dcmwrite(path, ds, enforce_file_format=True)
        paths.append(path)
    return paths

"""Scalar volume nodes to and from files and SimpleITK images, with their geometry intact.

MRML stores geometry as an IJK-to-RAS matrix; ITK and SimpleITK use LPS. The two differ by
a sign flip of the first two axes, applied here in one place.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import slicer
import vtk
from vtk.util import numpy_support

logger = logging.getLogger(__name__)

# RAS = LPS_TO_RAS @ LPS for points and direction columns.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def ijk_to_ras_matrix(volume_node) -> vtk.vtkMatrix4x4:
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    return matrix


def ijk_to_ras_array(volume_node) -> np.ndarray:
    matrix = ijk_to_ras_matrix(volume_node)
    return np.array([[matrix.GetElement(row, column) for column in range(4)] for row in range(4)])


def check_has_image(volume_node) -> None:
    """Raise ValueError when `volume_node` is missing or contains no voxels."""
    if volume_node is None:
        raise ValueError("No input volume selected. Load a CT and select it as the input volume.")
    image = volume_node.GetImageData()
    if image is None or min(image.GetDimensions()) < 1 or image.GetNumberOfPoints() == 0:
        raise ValueError(f"Volume '{volume_node.GetName()}' has no voxels. Load the CT again.")
    if image.GetNumberOfScalarComponents() != 1:
        raise ValueError(f"Volume '{volume_node.GetName()}' has {image.GetNumberOfScalarComponents()} components "
                         "per voxel; Screener needs a single-component CT volume.")


def export_volume(volume_node, path: Path) -> Path:
    """Write `volume_node` (voxels and geometry, ignoring parent transforms) to `path`; NRRD or NIfTI by suffix."""
    check_has_image(volume_node)
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    storage.SetUseCompression(False)
    # A storage node needs a scene for its file-name helpers, but it is never added to it,
    # so exporting leaves the scene unchanged.
    storage.SetScene(volume_node.GetScene())
    if not storage.WriteData(volume_node) or not Path(path).is_file():
        raise OSError(f"Failed to write volume '{volume_node.GetName()}' to '{path}'. "
                      "Check that the temporary folder has free space.")
    return Path(path)


def read_volume_into(volume_node, path: Path) -> None:
    """Replace the voxels and geometry of `volume_node` with the image file at `path`."""
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    storage.SetScene(volume_node.GetScene())
    if not storage.ReadData(volume_node):
        raise OSError(f"Failed to read the anomaly map '{path}' into volume '{volume_node.GetName()}'.")


def array_view(volume_node) -> np.ndarray:
    """Return the voxels of `volume_node` as a (k, j, i) array that shares memory with the node."""
    image = volume_node.GetImageData()
    i, j, k = image.GetDimensions()
    scalars = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())
    return scalars.reshape(k, j, i)


def image_data_from_array(array: np.ndarray) -> vtk.vtkImageData:
    """Return a vtkImageData with a copy of a (k, j, i) array, unit spacing and zero origin."""
    array = np.ascontiguousarray(array)
    image = vtk.vtkImageData()
    image.SetDimensions(array.shape[2], array.shape[1], array.shape[0])
    scalars = numpy_support.numpy_to_vtk(array.ravel(), deep=True)
    image.GetPointData().SetScalars(scalars)
    return image


def sitk_image_from_volume(volume_node) -> sitk.Image:
    """Return a SimpleITK image (LPS geometry) with a copy of the voxels of `volume_node`."""
    ijk_to_ras = ijk_to_ras_array(volume_node)
    columns = ijk_to_ras[:3, :3]
    spacing = np.linalg.norm(columns, axis=0)
    direction_ras = columns / spacing
    # GetImageFromArray copies the voxels, so the image does not share memory with the node.
    image = sitk.GetImageFromArray(array_view(volume_node))
    image.SetSpacing([float(value) for value in spacing])
    image.SetOrigin([float(value) for value in LPS_TO_RAS @ ijk_to_ras[:3, 3]])
    image.SetDirection([float(value) for value in (LPS_TO_RAS @ direction_ras).ravel()])
    return image


def same_geometry(first, second, tolerance_mm: float = 1e-4) -> bool:
    """Return True when two volume nodes have equal dimensions and IJK-to-RAS matrices within `tolerance_mm`."""
    if first.GetImageData().GetDimensions() != second.GetImageData().GetDimensions():
        return False
    return bool(np.allclose(ijk_to_ras_array(first), ijk_to_ras_array(second), atol=tolerance_mm))

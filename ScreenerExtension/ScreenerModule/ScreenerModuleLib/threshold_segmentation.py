"""The segment "map above the threshold", rebuilt whenever the threshold changes, with a 3D surface."""

from __future__ import annotations

import numpy as np
import slicer
from vtk.util import numpy_support

from .volume_nodes import array_view, ijk_to_ras_matrix, image_data_from_array

SEGMENT_ID = "anomalous"
# Orange-red, distinct from the heat overlay's yellow and from typical organ colours.
SEGMENT_COLOR = (1.0, 0.3, 0.1)


def threshold_labelmap(map_node, threshold: float):
    """Return a vtkOrientedImageData, 1 where the map's score is strictly above `threshold`, else 0.

    "Strictly above" matches ScreenerCore.findings, so segment and findings cover the same voxels.
    """
    mask = (array_view(map_node) > threshold).astype(np.uint8)
    labelmap = slicer.vtkOrientedImageData()
    labelmap.ShallowCopy(image_data_from_array(mask))
    labelmap.SetImageToWorldMatrix(ijk_to_ras_matrix(map_node))
    return labelmap


def update_segment(segmentation_node, map_node, threshold: float, segment_name: str, with_surface: bool) -> None:
    """Make the segment the map above `threshold`, on the map's grid, with a closed surface if `with_surface`."""
    segmentation = segmentation_node.GetSegmentation()
    if segmentation_node.GetDisplayNode() is None:
        segmentation_node.CreateDefaultDisplayNodes()
    segmentation_node.SetReferenceImageGeometryParameterFromVolumeNode(map_node)

    segment = segmentation.GetSegment(SEGMENT_ID)
    if segment is None:
        segmentation.AddEmptySegment(SEGMENT_ID, segment_name, list(SEGMENT_COLOR))
        segment = segmentation.GetSegment(SEGMENT_ID)
    segment.SetName(segment_name)

    labelmap = threshold_labelmap(map_node, threshold)
    replaced = slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
        labelmap, segmentation_node, SEGMENT_ID, slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE)
    if not replaced:
        raise RuntimeError(f"Failed to update segment '{segment_name}' of '{segmentation_node.GetName()}'.")
    set_surface_visible(segmentation_node, with_surface)


def set_surface_visible(segmentation_node, visible: bool) -> None:
    """Show the segment's surface in 3D, or hide it and drop the surface representation.

    While the representation exists, the segmentation rebuilds it on every labelmap change,
    which takes seconds on a full CT, so a hidden surface is not kept up to date.
    """
    if visible:
        segmentation_node.CreateClosedSurfaceRepresentation()
    else:
        segmentation_node.RemoveClosedSurfaceRepresentation()
    display = segmentation_node.GetDisplayNode()
    if display is not None:
        display.SetVisibility3D(visible)


def segment_voxel_count(segmentation_node) -> int:
    """Return the number of voxels in the anomalous segment (0 when it does not exist)."""
    segment = segmentation_node.GetSegmentation().GetSegment(SEGMENT_ID)
    if segment is None:
        return 0
    labelmap = segment.GetRepresentation(slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName())
    if labelmap is None or labelmap.GetPointData().GetScalars() is None:
        return 0
    values = numpy_support.vtk_to_numpy(labelmap.GetPointData().GetScalars())
    return int(np.count_nonzero(values == segment.GetLabelValue()))

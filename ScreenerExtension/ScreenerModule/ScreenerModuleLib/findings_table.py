"""Findings (connected regions above the threshold) in a table node, and centring the views on one."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
import slicer
import vtk
from ScreenerCore.findings import Finding, find_findings

from .thresholds import ThresholdScale

# Rows in the table at most; the highest peaks are kept. More regions than this are noise
# for a reader, and a long table slows the GUI.
MAX_FINDINGS = 100

# (column title, value type) in table order. Positions are RAS in mm, in world coordinates.
COLUMNS = (
    ("Rank", "int"),
    ("Peak score", "double"),
    ("Top % of normal tissue", "double"),
    ("Volume (ml)", "double"),
    ("R (mm)", "double"),
    ("A (mm)", "double"),
    ("S (mm)", "double"),
)


def compute_findings(map_image: sitk.Image, threshold: float, scale: ThresholdScale,
                     max_findings: int = MAX_FINDINGS) -> list[Finding]:
    """Return the regions of the map above `threshold`, highest peak first, at most `max_findings`.

    Without a model calibration the "top %" of each peak is left empty, because the fallback
    scale refers to this scan's voxels, not to normal tissue.
    """
    calibration = scale.calibration if scale.calibrated else None
    return find_findings(map_image, threshold, calibration, max_findings=max_findings)


def to_world(node, ras: tuple[float, float, float]) -> tuple[float, float, float]:
    """Map a point from `node`'s own RAS frame to world RAS through its parent transforms."""
    transform_node = node.GetParentTransformNode()
    if transform_node is None:
        return tuple(float(value) for value in ras)
    to_world_transform = vtk.vtkGeneralTransform()
    transform_node.GetTransformToWorld(to_world_transform)
    return tuple(float(value) for value in to_world_transform.TransformPoint(ras))


def fill_table(table_node, findings: list[Finding], map_node) -> None:
    """Replace the rows of `table_node` with `findings`; positions are world RAS centroids."""
    table = vtk.vtkTable()
    arrays = []
    for title, kind in COLUMNS:
        array = vtk.vtkIntArray() if kind == "int" else vtk.vtkDoubleArray()
        array.SetName(title)
        array.SetNumberOfTuples(len(findings))
        arrays.append(array)
        table.AddColumn(array)

    for row, finding in enumerate(findings):
        centroid = to_world(map_node, finding.centroid_ras)
        top = np.nan if finding.peak_top_percent is None else finding.peak_top_percent
        values = (finding.rank, finding.peak_score, top, finding.volume_ml, *centroid)
        for array, value in zip(arrays, values):
            array.SetValue(row, value)

    was_modifying = table_node.StartModify()
    table_node.SetAndObserveTable(table)
    table_node.SetUseColumnTitleAsColumnHeader(True)
    table_node.SetLocked(True)
    table_node.EndModify(was_modifying)


def table_row_centroid(table_node, row: int) -> tuple[float, float, float]:
    """Return the world RAS centroid stored in `row` of a findings table."""
    table = table_node.GetTable()
    if not 0 <= row < table.GetNumberOfRows():
        raise IndexError(f"Finding row {row} does not exist; the table has {table.GetNumberOfRows()} rows.")
    return tuple(float(table.GetColumnByName(title).GetValue(row)) for title in ("R (mm)", "A (mm)", "S (mm)"))


def centre_slice_views(scene, ras: tuple[float, float, float]) -> None:
    """Move every slice view so that it shows the world point `ras` at its centre."""
    slicer.vtkMRMLSliceNode.JumpAllSlices(scene, *ras, slicer.vtkMRMLSliceNode.CenteredJumpSlice)

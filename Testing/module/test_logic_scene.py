"""The module's logic on a real MRML scene (slicer-core) with a real CT and the real CLI in a subprocess.

Most checks share one blocking run per test module, because each run starts the CLI, which takes
a few seconds on two CPU cores. The re-run test makes two more runs on a fresh scene.
"""

from __future__ import annotations

import numpy as np
import pytest
import slicer
import vtk
from module_testing import (
    TEST_CT,
    calibrated_model_folder,  # noqa: F401 (fixture)
    create_headless_slicer,
    load_volume,
    put_in_study,
)
from scipy import ndimage

from ScreenerModuleLib import findings_table, result_nodes, threshold_segmentation
from ScreenerModuleLib.logic import ScreenerLogic, ScreenerSettings
from ScreenerModuleLib.volume_nodes import array_view, ijk_to_ras_array

TOP_PERCENT = 1.0
OPACITY = 0.6
RUN_TIMEOUT_S = 600


class ScreenedScene:
    """A headless scene with the test CT in a study, after one Screener run."""

    def __init__(self, model_folder, ct_path):
        self.headless = create_headless_slicer()
        self.scene = self.headless.scene
        self.input_node = load_volume(self.headless, ct_path)
        self.study_item = put_in_study(self.scene, self.input_node)
        self.voxels_before = array_view(self.input_node).copy()
        self.ijk_to_ras_before = ijk_to_ras_array(self.input_node)
        self.image_mtime_before = self.input_node.GetImageData().GetMTime()
        self.logic = ScreenerLogic(self.scene, self.headless.volume_rendering_logic)
        self.settings = ScreenerSettings(model=str(model_folder), device="cpu", top_percent=TOP_PERCENT,
                                         overlay_opacity=OPACITY)
        self.progress = []
        self.result = self.logic.run(self.input_node, self.settings, timeout_s=RUN_TIMEOUT_S,
                                     on_progress=lambda stage, fraction: self.progress.append((stage, fraction)))


@pytest.fixture(scope="module")
def screened(calibrated_model_folder):
    from screener_testdata import shared_ct_path

    return ScreenedScene(calibrated_model_folder, shared_ct_path(TEST_CT))


def role_nodes(scene, input_node, role):
    return result_nodes.result_nodes(scene, input_node, role)


def test_map_geometry_equals_input(screened):
    map_node = screened.result.map_node
    assert map_node.GetImageData().GetDimensions() == screened.input_node.GetImageData().GetDimensions()
    np.testing.assert_allclose(ijk_to_ras_array(map_node), ijk_to_ras_array(screened.input_node), atol=1e-4)


def test_map_holds_varying_float_scores(screened):
    scores = array_view(screened.result.map_node)
    assert scores.dtype == np.float32
    assert scores.max() > scores.min()


def test_input_voxels_and_geometry_unchanged(screened):
    np.testing.assert_array_equal(array_view(screened.input_node), screened.voxels_before)
    np.testing.assert_array_equal(ijk_to_ras_array(screened.input_node), screened.ijk_to_ras_before)
    assert screened.input_node.GetImageData().GetMTime() == screened.image_mtime_before


def test_progress_reported_up_to_one(screened):
    fractions = [fraction for _, fraction in screened.progress]
    assert fractions == sorted(fractions)
    assert fractions[-1] == pytest.approx(1.0)
    assert {stage for stage, _ in screened.progress} == {"preprocess", "inference", "resample"}


def test_map_shown_as_heat_overlay(screened):
    map_node = screened.result.map_node
    assert map_node.GetDisplayNode().GetColorNodeID() == "vtkMRMLPETProceduralColorNodePET-Heat"
    composites = screened.scene.GetNodesByClass("vtkMRMLSliceCompositeNode")
    assert composites.GetNumberOfItems() == 3
    for index in range(composites.GetNumberOfItems()):
        composite = composites.GetItemAsObject(index)
        assert composite.GetBackgroundVolumeID() == screened.input_node.GetID()
        assert composite.GetForegroundVolumeID() == map_node.GetID()
        assert composite.GetForegroundOpacity() == pytest.approx(OPACITY)


def test_overlay_opacity_follows_setting(screened):
    screened.logic.set_overlay_opacity(screened.result, 0.25)
    composite = screened.scene.GetNodesByClass("vtkMRMLSliceCompositeNode").GetItemAsObject(0)
    assert composite.GetForegroundOpacity() == pytest.approx(0.25)
    screened.logic.set_overlay_opacity(screened.result, OPACITY)


def test_outputs_placed_in_input_study(screened):
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(screened.scene)
    result = screened.result
    for node in (result.map_node, result.segmentation_node, result.table_node):
        item = hierarchy.GetItemByDataNode(node)
        assert item, f"{node.GetName()} is not in the subject hierarchy"
        assert hierarchy.GetItemParent(item) == screened.study_item, node.GetName()


def test_segment_grows_monotonically_with_top_percent(screened):
    logic, result = screened.logic, screened.result
    scores = array_view(result.map_node)
    counts = []
    for top_percent in (0.05, 0.2, 1.0, 3.0, 8.0):
        logic.apply_threshold(result, top_percent)
        count = threshold_segmentation.segment_voxel_count(result.segmentation_node)
        assert count == int(np.count_nonzero(scores > result.threshold)), top_percent
        counts.append(count)
    assert counts == sorted(counts)
    assert counts[0] < counts[-1]
    logic.apply_threshold(result, TOP_PERCENT)


def test_segment_has_closed_surface(screened):
    segmentation_node = screened.result.segmentation_node
    assert segmentation_node.GetSegmentation().GetNumberOfSegments() == 1
    surface = vtk.vtkPolyData()
    segmentation_node.GetClosedSurfaceRepresentation(threshold_segmentation.SEGMENT_ID, surface)
    assert surface.GetNumberOfPoints() > 0


def test_volume_rendering_shows_only_above_threshold(screened):
    logic, result = screened.logic, screened.result
    display = logic.volume_rendering_logic.GetFirstVolumeRenderingDisplayNode(result.map_node)
    assert display is not None
    assert display.GetVolumePropertyNode() is not None
    assert display.GetVisibility()
    opacity = display.GetVolumePropertyNode().GetVolumeProperty().GetScalarOpacity()
    assert opacity.GetValue(result.threshold - 0.01) == 0.0
    assert opacity.GetValue(result.scale.max_score) > 0.0


def test_show_3d_toggles_rendering_and_surface(screened):
    logic, result = screened.logic, screened.result
    display = logic.volume_rendering_logic.GetFirstVolumeRenderingDisplayNode(result.map_node)
    surface_name = slicer.vtkSegmentationConverter.GetClosedSurfaceRepresentationName()
    logic.set_show_3d(result, False)
    assert not display.GetVisibility()
    assert not result.segmentation_node.GetDisplayNode().GetVisibility3D()
    assert not result.segmentation_node.GetSegmentation().ContainsRepresentation(surface_name)
    logic.apply_threshold(result, 2.0)
    assert not display.GetVisibility()
    assert not result.segmentation_node.GetSegmentation().ContainsRepresentation(surface_name)

    logic.set_show_3d(result, True)
    assert display.GetVisibility()
    assert result.segmentation_node.GetDisplayNode().GetVisibility3D()
    assert result.segmentation_node.GetSegmentation().ContainsRepresentation(surface_name)
    logic.apply_threshold(result, TOP_PERCENT)


def test_findings_table_matches_connected_components(screened):
    result = screened.result
    scores = array_view(result.map_node)
    above = scores > result.threshold
    labels, count = ndimage.label(above, structure=np.ones((3, 3, 3), dtype=bool))
    assert count > 0
    index = np.arange(1, count + 1)
    peaks = np.asarray(ndimage.maximum(scores, labels, index))
    sizes = np.asarray(ndimage.sum_labels(above, labels, index))
    centroids_kji = np.asarray(ndimage.center_of_mass(above, labels, index))
    order = np.argsort(-peaks, kind="stable")[:findings_table.MAX_FINDINGS]

    table = result.table_node.GetTable()
    assert table.GetNumberOfRows() == min(count, findings_table.MAX_FINDINGS)
    ijk_to_ras = ijk_to_ras_array(result.map_node)
    voxel_ml = abs(np.linalg.det(ijk_to_ras[:3, :3])) / 1000.0
    for row, component in enumerate(order):
        assert table.GetColumnByName("Rank").GetValue(row) == row + 1
        assert table.GetColumnByName("Peak score").GetValue(row) == pytest.approx(peaks[component], abs=1e-5)
        assert table.GetColumnByName("Volume (ml)").GetValue(row) == pytest.approx(sizes[component] * voxel_ml)
        expected_ras = ijk_to_ras @ np.r_[centroids_kji[component][::-1], 1.0]
        np.testing.assert_allclose(findings_table.table_row_centroid(result.table_node, row), expected_ras[:3],
                                   atol=1e-3)


def test_centre_on_finding_moves_slice_views(screened):
    position = screened.logic.centre_on_finding(screened.result, 0)
    slices = screened.scene.GetNodesByClass("vtkMRMLSliceNode")
    assert slices.GetNumberOfItems() == 3
    for index in range(slices.GetNumberOfItems()):
        slice_to_ras = slices.GetItemAsObject(index).GetSliceToRAS()
        centre = [slice_to_ras.GetElement(row, 3) for row in range(3)]
        np.testing.assert_allclose(centre, position, atol=1e-3)


def test_centre_on_missing_row_raises(screened):
    with pytest.raises(IndexError, match="does not exist"):
        screened.logic.centre_on_finding(screened.result, 10_000)


def test_existing_result_restores_threshold_scale(screened):
    restored = screened.logic.existing_result(screened.input_node)
    assert restored.map_node.GetID() == screened.result.map_node.GetID()
    assert restored.scale.calibrated
    assert restored.scale.score_for_top_percent(2.0) == pytest.approx(screened.result.scale.score_for_top_percent(2.0))


def test_rerun_leaves_one_of_each_output(calibrated_model_folder):
    from screener_testdata import shared_ct_path

    first = ScreenedScene(calibrated_model_folder, shared_ct_path(TEST_CT))
    nodes_after_first = first.scene.GetNumberOfNodes()
    ids_after_first = {role: [node.GetID() for node in role_nodes(first.scene, first.input_node, role)]
                       for role in result_nodes.ROLE_NODES}

    second = first.logic.run(first.input_node, first.settings, timeout_s=RUN_TIMEOUT_S)

    for role in result_nodes.ROLE_NODES:
        nodes = role_nodes(first.scene, first.input_node, role)
        assert [node.GetID() for node in nodes] == ids_after_first[role], role
    assert first.scene.GetNumberOfNodes() == nodes_after_first
    assert first.scene.GetNodesByClass("vtkMRMLVolumeRenderingDisplayNode").GetNumberOfItems() == 1
    assert second.segmentation_node.GetSegmentation().GetNumberOfSegments() == 1
    np.testing.assert_array_equal(array_view(first.input_node), first.voxels_before)

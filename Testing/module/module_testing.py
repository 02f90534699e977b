"""Fixtures and helpers for the Slicer module's tests: a headless MRML scene and a calibrated test model.

Tests import these by name. They are not in a conftest.py because a second conftest.py would
shadow the top-level one, which tests import as the module `conftest`.

slicer-core provides Slicer's MRML and module logic libraries (scene, volumes, segmentations,
subject hierarchy, volume rendering, tables) without Qt, so the module's logic runs on the
real classes here. Only the GUI (Qt widgets, slicer.app) is absent.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import slicer
from screener_testdata import shared_ct_path

REPO_ROOT = Path(__file__).resolve().parents[2]
MODULE_FOLDER = REPO_ROOT / "ScreenerExtension" / "ScreenerModule"
if str(MODULE_FOLDER) not in sys.path:
    sys.path.insert(0, str(MODULE_FOLDER))

# Real CTs from the shared training folder: small enough for a CPU run of a few seconds.
TEST_CT = "train/abdomen_pelvis_totalseg.nii.gz"
CALIBRATION_CT = "train/chest_cta_mediastinum_crop.nii.gz"
SLICE_VIEWS = ("Red", "Yellow", "Green")


@dataclass
class HeadlessSlicer:
    """The parts of a Slicer application that the module's logic uses."""

    scene: object
    application_logic: object
    volume_rendering_logic: object
    # Kept referenced so that the logics stay registered for the scene's lifetime.
    other_logics: list


def create_headless_slicer() -> HeadlessSlicer:
    """Return a scene wired like Slicer's: colour, segmentation, hierarchy and volume rendering logics, slice views."""
    scene = slicer.vtkMRMLScene()
    application = slicer.vtkSlicerApplicationLogic()
    application.SetMRMLScene(scene)

    colors = slicer.vtkSlicerColorLogic()
    colors.SetMRMLApplicationLogic(application)
    colors.SetMRMLScene(scene)
    application.SetModuleLogic("Colors", colors)

    segmentations = slicer.vtkSlicerSegmentationsModuleLogic()
    segmentations.SetMRMLApplicationLogic(application)
    segmentations.SetMRMLScene(scene)
    application.SetModuleLogic("Segmentations", segmentations)

    hierarchy = slicer.vtkSlicerSubjectHierarchyModuleLogic()
    hierarchy.SetMRMLApplicationLogic(application)
    hierarchy.SetMRMLScene(scene)

    volumes = slicer.vtkSlicerVolumesLogic()
    volumes.SetMRMLApplicationLogic(application)
    volumes.SetMRMLScene(scene)
    application.SetModuleLogic("Volumes", volumes)

    rendering = slicer.vtkSlicerVolumeRenderingLogic()
    rendering.SetMRMLApplicationLogic(application)
    rendering.SetMRMLScene(scene)

    # Slicer's layout creates one slice node and one composite node per slice view.
    slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(scene)
    for name in SLICE_VIEWS:
        slice_node = slicer.vtkMRMLSliceNode()
        slice_node.SetLayoutName(name)
        slice_node.SetName(name)
        {"Red": slice_node.SetOrientationToAxial, "Yellow": slice_node.SetOrientationToSagittal,
         "Green": slice_node.SetOrientationToCoronal}[name]()
        scene.AddNode(slice_node)
        composite = slicer.vtkMRMLSliceCompositeNode()
        composite.SetLayoutName(name)
        scene.AddNode(composite)

    return HeadlessSlicer(scene, application, rendering, [colors, segmentations, hierarchy, volumes])


def load_volume(headless: HeadlessSlicer, path: Path, name: str = "CT"):
    """Load a CT file into the scene as a scalar volume node, as Slicer's Add Data does."""
    node = headless.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    storage = headless.scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(path))
    if not storage.ReadData(node):
        raise OSError(f"slicer-core failed to read {path}")
    node.SetAndObserveStorageNodeID(storage.GetID())
    node.CreateDefaultDisplayNodes()
    return node


def put_in_study(scene, node, patient: str = "Patient 1", study: str = "CT study"):
    """Place `node` under a patient and study in the subject hierarchy; return the study's item id."""
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    patient_item = hierarchy.CreateSubjectItem(hierarchy.GetSceneItemID(), patient)
    study_item = hierarchy.CreateStudyItem(patient_item, study)
    item = hierarchy.GetItemByDataNode(node) or hierarchy.CreateItem(study_item, node)
    hierarchy.SetItemParent(item, study_item)
    return study_item


@pytest.fixture
def headless_slicer() -> HeadlessSlicer:
    return create_headless_slicer()


@pytest.fixture(scope="session")
def calibrated_model_folder(tiny_model_folder, tmp_path_factory) -> Path:
    """Return the tiny test model, calibrated on a real CT so its maps vary over "top p %" thresholds.

    The tiny model's own calibration comes from synthetic scores that lie above everything it
    outputs on CT, which would make every map flat at the floor.
    """
    import ScreenerCore
    from ScreenerCore.calibration import Calibration
    from ScreenerCore.config import CalibrationConfig
    from ScreenerCore.package import save_model_package

    loaded = ScreenerCore.load_model_package(tiny_model_folder)
    loaded.config.calibration = CalibrationConfig()
    image = ScreenerCore.read_ct(shared_ct_path(CALIBRATION_CT))
    result = ScreenerCore.compute_anomaly_map(image, loaded, device="cpu")
    body_scores = result.model_grid_map[result.model_grid.body_mask]
    loaded.config.calibration = Calibration.from_scores(body_scores).to_config()
    return save_model_package(loaded.model, tmp_path_factory.mktemp("calibrated_model"))

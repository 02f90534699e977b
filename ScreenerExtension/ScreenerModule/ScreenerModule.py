"""Screener: anomaly maps of CT scans in 3D Slicer (module, parameter node, widget and self-test).

The work happens in ScreenerModuleLib: `logic` runs the Screener CLI in a background process
and builds the output nodes, without Qt. This file only connects the GUI to it. Modules that
import ScreenerCore are imported when first needed, so the module loads and reports the missing
packages before torch and the others are installed.
"""

import logging
import shutil
import sys
from typing import Annotated

import qt
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from ScreenerModuleLib import dependencies

logger = logging.getLogger(__name__)

# Milliseconds between checks of the background process's output.
POLL_INTERVAL_MS = 100
# Milliseconds the threshold slider must rest before the segment and findings are rebuilt.
# Rebuilding takes from a fraction of a second to a few seconds on a large CT.
THRESHOLD_DELAY_MS = 250
DEVICE_CHOICES = ["auto", "CPU", "GPU"]


class ScreenerModule(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "Screener"
        self.parent.categories = ["Analysis"]
        self.parent.dependencies = []
        self.parent.contributors = ["Screener developers"]
        self.parent.helpText = (
            "Computes a voxel-wise anomaly map of a CT scan with self-supervised models: regions that are "
            "unusual compared with the normal tissue the models were trained on score high. Research use only, "
            "not a diagnostic device. See the user guide in the extension's docs/user-guide.md."
        )
        self.parent.acknowledgementText = "Screener is released under the Apache-2.0 licence."


@parameterNodeWrapper
class ScreenerParameterNode:
    """The module's settings, saved with the scene.

    inputVolume: the CT to screen.
    model: a registered model name, a package folder or REPO@REVISION; empty for the bundled model.
    device: where the networks run.
    topPercent: the threshold, as the top p % of normal-tissue scores.
    overlayOpacity: opacity of the heat overlay in the slice views.
    show3D: show the volume rendering and the segment surface.
    """

    inputVolume: vtkMRMLScalarVolumeNode
    model: str = ""
    device: Annotated[str, Choice(DEVICE_CHOICES)] = "auto"
    topPercent: Annotated[float, WithinRange(0.01, 10.0)] = 0.5
    overlayOpacity: Annotated[float, WithinRange(0.0, 1.0)] = 0.5
    show3D: bool = True


class ScreenerModuleWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._run = None
        self._result = None
        # Values last applied to the result, so a parameter change updates only what changed.
        self._applied = {}

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/ScreenerModule.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = ScreenerModuleLogic()

        self._pollTimer = qt.QTimer()
        self._pollTimer.setInterval(POLL_INTERVAL_MS)
        self._pollTimer.connect("timeout()", self.onPollRun)
        self._thresholdTimer = qt.QTimer()
        self._thresholdTimer.setSingleShot(True)
        self._thresholdTimer.setInterval(THRESHOLD_DELAY_MS)
        self._thresholdTimer.connect("timeout()", self.applyDisplaySettings)

        self.ui.computeButton.connect("clicked(bool)", self.onComputeButton)
        self.ui.modelComboBox.connect("currentTextChanged(QString)", self.onModelTextChanged)
        self.ui.findingsTable.connect("itemSelectionChanged()", self.onFindingSelected)
        self.ui.clearCacheButton.connect("clicked(bool)", self.onClearCache)
        self.ui.modelComboBox.lineEdit().placeholderText = "bundled model"
        self.ui.progressBar.hide()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.initializeParameterNode()
        self.updateDependencyStatus()

    def cleanup(self):
        self.cancelRun()
        self.removeObservers()

    def enter(self):
        self.initializeParameterNode()

    def exit(self):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterChanged)

    def onSceneStartClose(self, caller, event):
        self.cancelRun()
        self._result = None
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self):
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            firstVolume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolume:
                self._parameterNode.inputVolume = firstVolume

    def setParameterNode(self, parameterNode):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterChanged)
        self._parameterNode = parameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterChanged)
            self.ui.modelComboBox.setCurrentText(self._parameterNode.model)
            self.onParameterChanged()

    # Dependencies and models

    def updateDependencyStatus(self):
        missing = dependencies.describe_missing()
        self.ui.dependenciesLabel.text = missing
        self.ui.dependenciesLabel.visible = bool(missing)
        if not missing:
            self.populateModels()

    def populateModels(self):
        from ScreenerModuleLib import models

        current = self.ui.modelComboBox.currentText
        self.ui.modelComboBox.blockSignals(True)
        self.ui.modelComboBox.clear()
        for choice in models.model_choices():
            self.ui.modelComboBox.addItem(choice.label, choice.name)
        self.ui.modelComboBox.setCurrentText(current)
        self.ui.modelComboBox.blockSignals(False)
        self.ui.cacheFolderLineEdit.text = str(models.cache_folder())

    def onModelTextChanged(self, text):
        if not self._parameterNode:
            return
        index = self.ui.modelComboBox.findText(text)
        # Entries show "name (bundled)"; the name itself is in the item data.
        self._parameterNode.model = self.ui.modelComboBox.itemData(index) if index >= 0 else text.strip()

    def onClearCache(self):
        from ScreenerModuleLib import models

        if not slicer.util.confirmOkCancelDisplay(
                f"Delete all downloaded Screener models from {models.cache_folder()}? "
                "They download again when used."):
            return
        with slicer.util.tryWithErrorDisplay("Clearing the model cache failed.", waitCursor=True):
            removed = models.clear_downloaded_models()
            self.ui.statusLabel.text = f"Removed {len(removed)} downloaded model(s)."
            self.populateModels()

    # Running

    def onComputeButton(self):
        if self._run is not None:
            self.cancelRun()
            self.ui.statusLabel.text = "Cancelled; the scene is unchanged."
            return

        from ScreenerModuleLib import installer

        with slicer.util.tryWithErrorDisplay("Screener could not start.", waitCursor=False):
            try:
                installer.ensure_dependencies()
            except installer.InstallDeclined as declined:
                self.ui.statusLabel.text = str(declined)
                return
            self.updateDependencyStatus()
            from ScreenerModuleLib.logic import ScreenerSettings

            settings = ScreenerSettings(
                model=self._parameterNode.model or None, device=self._parameterNode.device,
                top_percent=self._parameterNode.topPercent, overlay_opacity=self._parameterNode.overlayOpacity,
                show_3d=self._parameterNode.show3D)
            self._run = self.logic.screener.start(self._parameterNode.inputVolume, settings)
            self.ui.computeButton.text = "Cancel"
            self.ui.progressBar.value = 0
            self.ui.progressBar.show()
            self.ui.statusLabel.text = "Starting..."
            self._pollTimer.start()

    def onPollRun(self):
        from ScreenerModuleLib.predict_job import JobState

        run = self._run
        state = run.poll()
        self.ui.progressBar.value = round(100 * run.fraction)
        if state is JobState.RUNNING:
            self.ui.statusLabel.text = f"Running: {run.stage}"
            return

        self._pollTimer.stop()
        self._run = None
        self.ui.computeButton.text = "Compute anomaly map"
        self.ui.progressBar.hide()
        if state is JobState.SUCCEEDED:
            self._result = run.result
            self._applied = {"topPercent": run.settings.top_percent, "overlayOpacity": run.settings.overlay_opacity,
                             "show3D": run.settings.show_3d}
            self.showResult()
            self.populateModels()
        elif state is JobState.FAILED:
            self.ui.statusLabel.text = "Failed."
            slicer.util.errorDisplay(run.error_message or "Screener failed.", windowTitle="Screener")

    def cancelRun(self):
        if self._run is not None:
            self._pollTimer.stop()
            self._run.cancel()
            self._run = None
            self.ui.computeButton.text = "Compute anomaly map"
            self.ui.progressBar.hide()

    # Display

    def onParameterChanged(self, caller=None, event=None):
        node = self._parameterNode
        self.ui.computeButton.enabled = bool(node and node.inputVolume) or self._run is not None
        if not node:
            return
        inputID = node.inputVolume.GetID() if node.inputVolume else None
        if self._result is None or self._result.input_node.GetID() != inputID:
            self._result = self.existingResult(node.inputVolume)
            self._applied = {}
            self.showResult()
        if self._result is not None:
            # Opacity and visibility are cheap; the threshold waits until the slider rests.
            self._thresholdTimer.start()

    def existingResult(self, inputVolume):
        if inputVolume is None or dependencies.describe_missing():
            return None
        return self.logic.screener.existing_result(inputVolume)

    def applyDisplaySettings(self):
        node, result = self._parameterNode, self._result
        if node is None or result is None:
            return
        screener = self.logic.screener
        with slicer.util.tryWithErrorDisplay("Updating the display failed.", waitCursor=True):
            if self._applied.get("overlayOpacity") != node.overlayOpacity:
                screener.set_overlay_opacity(result, node.overlayOpacity)
            if self._applied.get("show3D") != node.show3D:
                screener.set_show_3d(result, node.show3D)
            if self._applied.get("topPercent") != node.topPercent:
                screener.apply_threshold(result, node.topPercent, node.show3D)
            self._applied = {"topPercent": node.topPercent, "overlayOpacity": node.overlayOpacity,
                             "show3D": node.show3D}
            self.showResult()

    def showResult(self):
        result = self._result
        table = self.ui.findingsTable
        table.clear()
        table.setRowCount(0)
        if result is None:
            self.ui.thresholdScoreLabel.text = ""
            return

        self.ui.thresholdScoreLabel.text = (
            f"Score > {result.threshold:.2f}: the top {result.top_percent:g} % {result.scale.reference}. "
            f"{result.scale.note}").strip()
        self.ui.statusLabel.text = f"{len(result.findings)} findings with model {result.model or 'unknown'}."

        from ScreenerModuleLib.findings_table import COLUMNS

        tableNode = result.table_node.GetTable()
        table.setColumnCount(len(COLUMNS))
        table.setHorizontalHeaderLabels([title for title, _ in COLUMNS])
        table.setRowCount(tableNode.GetNumberOfRows())
        for row in range(tableNode.GetNumberOfRows()):
            for column, (title, kind) in enumerate(COLUMNS):
                value = tableNode.GetColumnByName(title).GetValue(row)
                text = str(value) if kind == "int" else f"{value:.2f}"
                table.setItem(row, column, qt.QTableWidgetItem(text))
        table.resizeColumnsToContents()

    def onFindingSelected(self):
        row = self.ui.findingsTable.currentRow()
        if self._result is None or row < 0:
            return
        with slicer.util.tryWithErrorDisplay("Centring the views failed."):
            self.logic.screener.centre_on_finding(self._result, row)


class ScreenerModuleLogic(ScriptedLoadableModuleLogic):
    """Slicer's entry point to the logic: the parameter node, and ScreenerLogic for the application's scene."""

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        self._screener = None

    def getParameterNode(self):
        return ScreenerParameterNode(super().getParameterNode())

    @property
    def screener(self):
        """The Qt-free ScreenerLogic; created on first use because it imports ScreenerCore and torch."""
        if self._screener is None:
            from ScreenerModuleLib.logic import ScreenerLogic

            self._screener = ScreenerLogic.for_slicer_application(
                python_executable=slicerPythonExecutable(), temporary_folder=slicer.app.temporaryPath)
        return self._screener


def slicerPythonExecutable():
    """Return Slicer's Python launcher, which sets up the library paths the child process needs."""
    return shutil.which("PythonSlicer") or sys.executable


class ScreenerModuleTest(ScriptedLoadableModuleTest):
    """Runs the headless tests' flow inside Slicer on the CTChest sample (needs network for the sample)."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_ComputeThresholdRerun()

    def test_ComputeThresholdRerun(self):
        import numpy as np
        import SampleData

        from ScreenerModuleLib import installer, result_nodes, threshold_segmentation
        from ScreenerModuleLib.logic import ScreenerSettings
        from ScreenerModuleLib.volume_nodes import same_geometry

        installer.ensure_dependencies()
        self.delayDisplay("Loading the CTChest sample")
        volume = SampleData.downloadSample("CTChest")
        voxels_before = slicer.util.arrayFromVolume(volume).copy()

        logic = ScreenerModuleLogic().screener
        settings = ScreenerSettings(device="cpu", top_percent=1.0)
        self.delayDisplay("Computing the anomaly map")
        result = logic.run(volume, settings, timeout_s=1800)

        self.assertTrue(same_geometry(result.map_node, volume))
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(volume), voxels_before)
        self.assertIsNotNone(logic.volume_rendering_logic.GetFirstVolumeRenderingDisplayNode(result.map_node))
        self.assertEqual(result.table_node.GetNumberOfRows(), len(result.findings))

        counts = []
        for top_percent in (0.1, 1.0, 5.0):
            logic.apply_threshold(result, top_percent)
            counts.append(threshold_segmentation.segment_voxel_count(result.segmentation_node))
        self.assertEqual(counts, sorted(counts))

        logic.run(volume, settings, timeout_s=1800)
        for role in (result_nodes.MAP_ROLE, result_nodes.SEGMENTATION_ROLE, result_nodes.FINDINGS_ROLE):
            self.assertEqual(len(result_nodes.result_nodes(slicer.mrmlScene, volume, role)), 1)
        self.delayDisplay("Test passed")

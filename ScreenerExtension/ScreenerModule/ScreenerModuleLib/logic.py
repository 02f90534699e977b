"""The module's logic: run Screener on a volume node in the background and show the results in the scene.

No Qt and no widgets here, so the same code runs inside Slicer and under plain Python with
slicer-core. The caller provides the scene and the volume rendering logic; inside Slicer,
`ScreenerLogic.for_slicer_application()` takes them from the application.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import ScreenerCore
import SimpleITK as sitk
from ScreenerCore.findings import Finding

from . import findings_table, map_rendering, overlay, result_nodes, threshold_segmentation
from .predict_job import JobState, PredictJob, PredictRequest
from .process_runner import ProcessRunner, SubprocessRunner
from .thresholds import ThresholdScale
from .volume_nodes import (
    array_view,
    check_has_image,
    export_volume,
    read_volume_into,
    same_geometry,
    sitk_image_from_volume,
)

logger = logging.getLogger(__name__)

DEFAULT_TOP_PERCENT = 0.5
DEFAULT_OVERLAY_OPACITY = 0.5
# The overlay colours only scores in the top 10 % of normal tissue, so the 90 % most normal
# tissue shows the plain CT and the heat colours mark what is unusual.
OVERLAY_TOP_PERCENT = 10.0
# Scores at the top 0.01 % of normal tissue and above get the hottest colour.
OVERLAY_HOTTEST_TOP_PERCENT = 0.01

# Attributes on the map node, so a saved and reloaded scene can be re-thresholded.
MODEL_ATTRIBUTE = "Screener.Model"
CALIBRATION_ATTRIBUTE = "Screener.Calibration"
FLOOR_ATTRIBUTE = "Screener.Floor"


@dataclass
class ScreenerSettings:
    """The user's choices; the GUI's parameter node contains the same values."""

    model: str | None = None
    # "auto", "cpu" or "gpu"; case does not matter.
    device: str = "auto"
    top_percent: float = DEFAULT_TOP_PERCENT
    overlay_opacity: float = DEFAULT_OVERLAY_OPACITY
    show_3d: bool = True


@dataclass
class ScreenerResult:
    """The output nodes of one input volume and the current threshold."""

    input_node: object
    map_node: object
    segmentation_node: object
    table_node: object
    scale: ThresholdScale
    top_percent: float = DEFAULT_TOP_PERCENT
    threshold: float = 0.0
    findings: list[Finding] = field(default_factory=list)
    model: str | None = None
    # The map as a SimpleITK image, converted once; the slider re-thresholds it many times.
    map_image: sitk.Image | None = None

    def map_as_image(self) -> sitk.Image:
        if self.map_image is None:
            self.map_image = sitk_image_from_volume(self.map_node)
        return self.map_image


class ScreenerRun:
    """One background run: poll() it from the GUI thread; the scene changes only when it succeeds."""

    def __init__(self, logic: "ScreenerLogic", job: PredictJob, input_node, settings: ScreenerSettings,
                 work_folder: Path):
        self.logic = logic
        self.job = job
        self.input_node = input_node
        self.settings = settings
        self.work_folder = work_folder
        self.state = JobState.RUNNING
        self.result: ScreenerResult | None = None
        self.error_message: str | None = None

    @property
    def fraction(self) -> float:
        return self.job.fraction

    @property
    def stage(self) -> str:
        return self.job.stage

    def poll(self) -> JobState:
        """Handle the process's output; on success, load the results into the scene (once)."""
        if self.state is not JobState.RUNNING:
            return self.state
        job_state = self.job.poll()
        if job_state is JobState.RUNNING:
            return self.state

        try:
            if job_state is JobState.SUCCEEDED:
                self.result = self.logic.load_results(self.input_node, self.job.done, self.settings)
            else:
                self.error_message = self.job.error_message
            self.state = job_state
        except (OSError, ValueError, RuntimeError) as error:
            logger.exception("Loading the Screener results failed")
            self.error_message = f"Loading the results failed: {error}"
            self.state = JobState.FAILED
        finally:
            self._remove_work_folder()
        return self.state

    def wait(self, timeout_s: float | None = None) -> JobState:
        """Block until the run ends (for scripts and tests); raise TimeoutError after `timeout_s`."""
        try:
            self.job.wait(timeout_s)
        except TimeoutError:
            self._remove_work_folder()
            raise
        return self.poll()

    def cancel(self) -> None:
        """Stop the process and its children; the scene stays as it was before the run."""
        if self.state is not JobState.RUNNING:
            return
        self.job.cancel()
        self.state = JobState.CANCELLED
        self._remove_work_folder()

    def _remove_work_folder(self) -> None:
        shutil.rmtree(self.work_folder, ignore_errors=True)


class ScreenerLogic:
    """Runs Screener on volume nodes of one scene and manages its output nodes."""

    def __init__(self, scene, volume_rendering_logic, runner: ProcessRunner | None = None,
                 python_executable: str | None = None, temporary_folder: str | Path | None = None):
        self.scene = scene
        self.volume_rendering_logic = volume_rendering_logic
        self.runner = runner or SubprocessRunner()
        self.python_executable = python_executable or sys.executable
        self.temporary_folder = None if temporary_folder is None else Path(temporary_folder)

    @classmethod
    def for_slicer_application(cls, **options) -> "ScreenerLogic":
        """Return the logic for the running Slicer application's scene."""
        import slicer

        return cls(slicer.mrmlScene, slicer.modules.volumerendering.logic(), **options)

    # Running

    def start(self, input_node, settings: ScreenerSettings,
              on_progress: Callable[[str, float], None] | None = None) -> ScreenerRun:
        """Export `input_node` and start the CLI on it in the background; the scene is not changed yet."""
        check_has_image(input_node)
        if self.temporary_folder is not None:
            self.temporary_folder.mkdir(parents=True, exist_ok=True)
        work_folder = Path(tempfile.mkdtemp(prefix="screener-", dir=self.temporary_folder))
        try:
            input_path = export_volume(input_node, work_folder / "input.nrrd")
            request = PredictRequest(
                input_path=input_path, output_path=work_folder / "anomaly_map.nrrd",
                python_executable=self.python_executable, model=settings.model or None,
                device=settings.device.lower(), top_percent=settings.top_percent,
                # NOTE: inside Slicer the child is the PythonSlicer launcher. It is expected to keep
                # PYTHONPATH entries from the environment; this has not been run in Slicer itself yet.
                python_paths=[str(Path(ScreenerCore.__file__).resolve().parents[1])],
            )
            job = PredictJob.start(self.runner, request, on_progress)
        except BaseException:
            shutil.rmtree(work_folder, ignore_errors=True)
            raise
        return ScreenerRun(self, job, input_node, settings, work_folder)

    def run(self, input_node, settings: ScreenerSettings | None = None, timeout_s: float | None = None,
            on_progress: Callable[[str, float], None] | None = None) -> ScreenerResult:
        """Run Screener and wait for it: the blocking call for scripts and tests.

        Raises RuntimeError with the CLI's message when the run fails.
        """
        run = self.start(input_node, settings or ScreenerSettings(), on_progress)
        state = run.wait(timeout_s)
        if state is not JobState.SUCCEEDED:
            raise RuntimeError(run.error_message or f"Screener ended in state {state.value}.")
        return run.result

    # Results

    def load_results(self, input_node, done, settings: ScreenerSettings) -> ScreenerResult:
        """Load the map that a finished run wrote and build every output node from it."""
        map_node = result_nodes.get_or_create_result_node(self.scene, input_node, result_nodes.MAP_ROLE)
        read_volume_into(map_node, done.map_path)
        if not same_geometry(map_node, input_node):
            raise ValueError(f"The anomaly map's grid differs from the grid of '{input_node.GetName()}'.")
        map_node.SetAttribute(MODEL_ATTRIBUTE, done.model or "")
        map_node.SetAttribute(CALIBRATION_ATTRIBUTE, json.dumps(done.calibration))
        map_node.SetAttribute(FLOOR_ATTRIBUTE, "" if done.floor is None else repr(float(done.floor)))

        segmentation_node = result_nodes.get_or_create_result_node(
            self.scene, input_node, result_nodes.SEGMENTATION_ROLE)
        table_node = result_nodes.get_or_create_result_node(self.scene, input_node, result_nodes.FINDINGS_ROLE)
        result_nodes.place_with_input(self.scene, input_node, [map_node, segmentation_node, table_node])

        scale = ThresholdScale.for_map(array_view(map_node), done.calibration, done.floor)
        result = ScreenerResult(input_node, map_node, segmentation_node, table_node, scale, model=done.model)
        self._show_map(result, settings.overlay_opacity)
        self.apply_threshold(result, settings.top_percent, settings.show_3d)
        logger.info("Screener results for '%s': %d findings in the top %g %% %s", input_node.GetName(),
                    len(result.findings), result.top_percent, scale.reference)
        return result

    def existing_result(self, input_node) -> ScreenerResult | None:
        """Return the outputs of an earlier run on `input_node` (e.g. after reloading a scene), or None."""
        if input_node is None:
            return None
        found = {role: result_nodes.find_result_node(self.scene, input_node, role)
                 for role in (result_nodes.MAP_ROLE, result_nodes.SEGMENTATION_ROLE, result_nodes.FINDINGS_ROLE)}
        map_node = found[result_nodes.MAP_ROLE]
        if map_node is None or map_node.GetImageData() is None or None in found.values():
            return None
        calibration = json.loads(map_node.GetAttribute(CALIBRATION_ATTRIBUTE) or "null")
        floor_text = map_node.GetAttribute(FLOOR_ATTRIBUTE)
        floor = float(floor_text) if floor_text else None
        scale = ThresholdScale.for_map(array_view(map_node), calibration, floor)
        return ScreenerResult(input_node, map_node, found[result_nodes.SEGMENTATION_ROLE],
                              found[result_nodes.FINDINGS_ROLE], scale,
                              model=map_node.GetAttribute(MODEL_ATTRIBUTE) or None)

    def _show_map(self, result: ScreenerResult, opacity: float) -> None:
        scale = result.scale
        lowest = scale.score_for_top_percent(OVERLAY_TOP_PERCENT)
        hottest = scale.score_for_top_percent(OVERLAY_HOTTEST_TOP_PERCENT)
        overlay.style_map_display(result.map_node, lowest, max(hottest, lowest + 1e-3))
        overlay.show_overlay(self.scene, result.input_node, result.map_node, opacity)

    # Interaction

    def apply_threshold(self, result: ScreenerResult, top_percent: float, show_3d: bool | None = None) -> None:
        """Rebuild segment, volume rendering and findings table for the top `top_percent` %."""
        if not 0.0 < top_percent <= 100.0:
            raise ValueError(f"Top percent must be in (0, 100], got {top_percent}.")
        threshold = result.scale.score_for_top_percent(top_percent)
        result.top_percent = top_percent
        result.threshold = threshold

        rendering = map_rendering.get_or_create_rendering(self.volume_rendering_logic, result.map_node)
        visible = bool(rendering.GetVisibility()) if show_3d is None else show_3d
        map_rendering.update_rendering(rendering, threshold, result.scale.max_score, result.scale.floor, visible)

        segment_name = f"Top {top_percent:g} % {result.scale.reference}"
        threshold_segmentation.update_segment(result.segmentation_node, result.map_node, threshold, segment_name,
                                              with_surface=visible)

        result.findings = findings_table.compute_findings(result.map_as_image(), threshold, result.scale)
        findings_table.fill_table(result.table_node, result.findings, result.map_node)

    def set_overlay_opacity(self, result: ScreenerResult, opacity: float) -> None:
        overlay.set_overlay_opacity(self.scene, result.map_node, opacity)

    def set_show_3d(self, result: ScreenerResult, visible: bool) -> None:
        """Show or hide the volume rendering and the segment's surface in the 3D views."""
        rendering = map_rendering.get_or_create_rendering(self.volume_rendering_logic, result.map_node)
        rendering.SetVisibility(visible)
        threshold_segmentation.set_surface_visible(result.segmentation_node, visible)

    def centre_on_finding(self, result: ScreenerResult, row: int) -> tuple[float, float, float]:
        """Centre the slice views on the finding in table `row`; return its world RAS position."""
        position = findings_table.table_row_centroid(result.table_node, row)
        findings_table.centre_slice_views(self.scene, position)
        return position

"""Render the user guide's pictures: the Slicer module's real output on the example CT, drawn by Slicer's own code.

Runs the module's logic (ScreenerModuleLib) on a headless MRML scene from slicer-core. Slicer's
slice logic then draws the slice views, with the same layer blending as in the application, and
Slicer's displayable managers draw the 3D view in an off-screen VTK window. Slicer's Qt GUI
(panels, buttons) is not drawn.

    .venv/bin/python docs/images/render_slicer_views.py [--model NAME|FOLDER] [--ct FILE]

Needs an off-screen OpenGL context (EGL or OSMesa), which VTK's Linux wheels provide.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import vtk

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT / "ScreenerExtension" / "ScreenerModule"))

import slicer  # noqa: E402

from ScreenerModuleLib.logic import ScreenerLogic, ScreenerSettings  # noqa: E402

OUTPUT_FOLDER = Path(__file__).resolve().parent
VIEW_SIZE = (512, 512)
# Lung window (HU): width 1500, level -500.
CT_WINDOW, CT_LEVEL = 1500.0, -500.0


class HeadlessViews:
    """A scene with the logics the module needs, two slice views (axial, coronal) and one 3D view."""

    def __init__(self):
        self.scene = slicer.vtkMRMLScene()
        self.application = slicer.vtkSlicerApplicationLogic()
        self.application.SetMRMLScene(self.scene)
        self.application.GetColorLogic().SetMRMLScene(self.scene)
        self.application.GetColorLogic().AddDefaultColorNodes()
        self.application.SetSliceLogics(vtk.vtkCollection())
        self.application.SetViewLogics(vtk.vtkCollection())
        self.logics = []
        for logic_class, name in ((slicer.vtkMRMLColorLogic, "Colors"),
                                  (slicer.vtkSlicerSegmentationsModuleLogic, "Segmentations"),
                                  (slicer.vtkSlicerSubjectHierarchyModuleLogic, None)):
            logic = logic_class()
            logic.SetMRMLApplicationLogic(self.application)
            logic.SetMRMLScene(self.scene)
            if name:
                self.application.SetModuleLogic(name, logic)
            self.logics.append(logic)
        self.volume_rendering = slicer.vtkSlicerVolumeRenderingLogic()
        self.volume_rendering.SetMRMLApplicationLogic(self.application)
        self.volume_rendering.SetMRMLScene(self.scene)
        # The CPU ray caster needs no GPU, so it also renders in a software OpenGL context.
        self.volume_rendering.SetDefaultRenderingMethod("vtkMRMLCPURayCastVolumeRenderingDisplayNode")
        slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(self.scene)
        slicer.vtkMRMLThreeDViewDisplayableManagerFactory.GetInstance().SetMRMLApplicationLogic(self.application)

        self.slice_views = {name: self._slice_view(name, orientation)
                            for name, orientation in (("Red", "Axial"), ("Green", "Coronal"))}
        self.threed = self._threed_view()

    def _slice_view(self, name: str, orientation: str) -> dict:
        renderer, window = _offscreen_window()
        logic = slicer.vtkMRMLSliceLogic()
        logic.SetMRMLApplicationLogic(self.application)
        self.application.GetSliceLogics().AddItem(logic)
        logic.SetMRMLScene(self.scene)
        node = logic.AddSliceNode(name)
        node.SetOrientation(orientation)
        logic.ResizeSliceNode(*VIEW_SIZE)
        # The slice logic outputs RGBA bytes, already windowed per layer by the display nodes.
        mapper = vtk.vtkImageMapper()
        mapper.SetColorWindow(255)
        mapper.SetColorLevel(127.5)
        actor = vtk.vtkActor2D()
        actor.SetMapper(mapper)
        renderer.AddViewProp(actor)
        return {"logic": logic, "node": node, "window": window, "mapper": mapper}

    def _threed_view(self) -> dict:
        renderer, window = _offscreen_window()
        interactor = vtk.vtkRenderWindowInteractor()
        interactor.SetRenderWindow(window)
        factory = slicer.vtkMRMLThreeDViewDisplayableManagerFactory.GetInstance()
        for manager in ("vtkMRMLCameraDisplayableManager", "vtkMRMLViewDisplayableManager",
                        "vtkMRMLModelDisplayableManager", "vtkMRMLVolumeRenderingDisplayableManager",
                        "vtkMRMLSegmentationsDisplayableManager3D"):
            if not factory.IsDisplayableManagerRegistered(manager):
                factory.RegisterDisplayableManager(manager)
        group = slicer.vtkMRMLDisplayableManagerGroup()
        group.SetRenderer(renderer)
        group.Initialize(factory, renderer)
        logic = slicer.vtkMRMLViewLogic()
        logic.SetMRMLApplicationLogic(self.application)
        self.application.GetViewLogics().AddItem(logic)
        logic.SetMRMLScene(self.scene)
        node = logic.AddViewNode("1")
        group.SetMRMLDisplayableNode(node)
        node.SetBoxVisible(False)
        node.SetAxisLabelsVisible(False)
        return {"renderer": renderer, "window": window, "group": group, "node": node, "interactor": interactor}

    def load_ct(self, path: Path):
        node = self.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", path.name.split(".")[0])
        storage = self.scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
        storage.SetFileName(str(path))
        if not storage.ReadData(node):
            raise OSError(f"Failed to read {path}.")
        node.SetAndObserveStorageNodeID(storage.GetID())
        node.CreateDefaultDisplayNodes()
        display = node.GetDisplayNode()
        display.SetAutoWindowLevel(False)
        display.SetWindowLevel(CT_WINDOW, CT_LEVEL)
        display.SetAndObserveColorNodeID("vtkMRMLColorTableNodeGrey")
        return node

    def write_slice(self, name: str, ras: tuple[float, float, float] | None, path: Path) -> None:
        view = self.slice_views[name]
        view["logic"].FitSliceToBackground()
        if ras is not None:
            # Offset (not centre) the slice, so the body stays framed as after "fit to window".
            view["node"].JumpSliceByOffsetting(*ras)
        view["mapper"].SetInputConnection(view["logic"].GetImageDataConnection())
        _write_png(view["window"], path)

    def show_slice_in_threed(self, name: str) -> None:
        self.slice_views[name]["node"].SetSliceVisible(True)

    def write_threed(self, path: Path) -> None:
        camera = self.threed["group"].GetDisplayableManagerByClassName("vtkMRMLCameraDisplayableManager")
        camera.GetCameraNode().RotateTo(slicer.vtkMRMLCameraNode.Anterior)
        self.threed["renderer"].ResetCamera()
        # Tilt the anterior view down by 30 degrees, so the axial plane is seen from above.
        active_camera = self.threed["renderer"].GetActiveCamera()
        active_camera.Elevation(30.0)
        active_camera.OrthogonalizeViewUp()
        active_camera.Zoom(1.3)
        _write_png(self.threed["window"], path)


def _offscreen_window():
    renderer = vtk.vtkRenderer()
    window = vtk.vtkRenderWindow()
    window.SetOffScreenRendering(True)
    window.SetSize(*VIEW_SIZE)
    window.AddRenderer(renderer)
    return renderer, window


def _write_png(window, path: Path) -> None:
    window.Render()
    grabber = vtk.vtkWindowToImageFilter()
    grabber.SetInput(window)
    grabber.Update()
    writer = vtk.vtkPNGWriter()
    writer.SetFileName(str(path))
    writer.SetInputConnection(grabber.GetOutputPort())
    writer.Write()


def combine(paths: list[Path], output: Path) -> None:
    """Place the views side by side in one PNG, separated by a thin dark gap."""
    from PIL import Image

    images = [Image.open(path).convert("RGB") for path in paths]
    gap = 4
    width = sum(image.width for image in images) + gap * (len(images) - 1)
    canvas = Image.new("RGB", (width, max(image.height for image in images)), (20, 20, 20))
    x = 0
    for image in images:
        canvas.paste(image, (x, 0))
        x += image.width + gap
    canvas.save(output, optimize=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ct", default=str(REPO_ROOT / "examples" / "lung2_example.nii.gz"), help="CT file")
    parser.add_argument("--model", default=None, help="model name or package folder (default: the bundled model)")
    parser.add_argument("--top-percent", type=float, default=0.5, help="threshold, top %% of normal tissue")
    parser.add_argument("--output", default=str(OUTPUT_FOLDER), help="folder for the PNG files")
    parser.add_argument("--centre-ras", type=float, nargs=3, metavar=("R", "A", "S"), default=None,
                        help="point in mm (RAS) the slice views pass through (default: the top finding)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    output = Path(args.output)
    views = HeadlessViews()
    ct = views.load_ct(Path(args.ct))
    logic = ScreenerLogic(views.scene, views.volume_rendering)
    settings = ScreenerSettings(model=args.model, device="cpu", top_percent=args.top_percent, overlay_opacity=0.6)
    result = logic.run(ct, settings)
    top = result.findings[0].centroid_ras if result.findings else None
    logging.info("%d findings; top finding at RAS %s, peak in the top %.3f %% of normal tissue",
                 len(result.findings), top, result.findings[0].peak_top_percent if result.findings else float("nan"))

    centre = tuple(args.centre_ras) if args.centre_ras else top
    axial, coronal, threed = output / "slicer-axial.png", output / "slicer-coronal.png", output / "slicer-3d.png"
    views.write_slice("Red", centre, axial)
    views.write_slice("Green", centre, coronal)
    views.show_slice_in_threed("Red")
    views.write_threed(threed)
    combine([axial, coronal, threed], output / "slicer-overlay.png")
    for path in (axial, coronal, threed):
        path.unlink()
    print(f"Wrote {output / 'slicer-overlay.png'}")
    # VTK objects torn down by Python's garbage collector at exit crash slicer-core 5.13 (segmentation
    # fault in the observer manager), so leave without tearing them down once the files are written.
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())

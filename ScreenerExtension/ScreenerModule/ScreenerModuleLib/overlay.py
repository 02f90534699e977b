"""The anomaly map as a heat-coloured foreground layer over the CT in the slice views."""

from __future__ import annotations

# Colour nodes that Slicer's colour logic creates at start-up, in order of preference.
HEAT_COLOR_NODE_IDS = ("vtkMRMLPETProceduralColorNodePET-Heat", "vtkMRMLColorTableNodeIron")


def heat_color_node_id(scene) -> str | None:
    for node_id in HEAT_COLOR_NODE_IDS:
        if scene.GetNodeByID(node_id) is not None:
            return node_id
    return None


def style_map_display(map_node, lowest_shown: float, highest: float) -> None:
    """Colour the map with the heat table from `lowest_shown` to `highest`; lower scores are transparent."""
    if map_node.GetDisplayNode() is None:
        map_node.CreateDefaultDisplayNodes()
    display = map_node.GetDisplayNode()
    was_modifying = display.StartModify()
    color_id = heat_color_node_id(map_node.GetScene())
    if color_id is not None:
        display.SetAndObserveColorNodeID(color_id)
    display.SetAutoWindowLevel(False)
    display.SetWindowLevelMinMax(lowest_shown, max(highest, lowest_shown + 1e-3))
    # Transparent below the threshold, so normal tissue shows the CT unchanged.
    display.SetApplyThreshold(True)
    display.SetLowerThreshold(lowest_shown)
    display.SetUpperThreshold(max(highest, lowest_shown) + 1.0)
    display.SetInterpolate(False)
    display.EndModify(was_modifying)


def show_overlay(scene, input_node, map_node, opacity: float) -> None:
    """Show `input_node` as background and `map_node` as foreground at `opacity` in every slice view."""
    composites = scene.GetNodesByClass("vtkMRMLSliceCompositeNode")
    for index in range(composites.GetNumberOfItems()):
        composite = composites.GetItemAsObject(index)
        composite.SetBackgroundVolumeID(input_node.GetID())
        composite.SetForegroundVolumeID(map_node.GetID())
        composite.SetForegroundOpacity(opacity)


def set_overlay_opacity(scene, map_node, opacity: float) -> None:
    """Set the foreground opacity of the slice views that show `map_node`."""
    composites = scene.GetNodesByClass("vtkMRMLSliceCompositeNode")
    for index in range(composites.GetNumberOfItems()):
        composite = composites.GetItemAsObject(index)
        if composite.GetForegroundVolumeID() == map_node.GetID():
            composite.SetForegroundOpacity(opacity)

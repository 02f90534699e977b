"""Volume rendering of the anomaly map: transparent up to the threshold, heat-coloured above it."""

from __future__ import annotations

# Opacity just above the threshold and at the map's maximum; low values keep the CT anatomy
# readable behind the rendering when both are shown.
OPACITY_AT_THRESHOLD = 0.15
OPACITY_AT_MAX = 0.8
# Heat colours (R, G, B) from the threshold (dark red) through orange to the maximum (pale yellow).
HEAT_COLORS = ((0.0, (0.5, 0.0, 0.0)), (0.5, (1.0, 0.4, 0.0)), (1.0, (1.0, 1.0, 0.6)))


def get_or_create_rendering(volume_rendering_logic, map_node):
    """Return the map's volume rendering display node, creating it (with its volume property) when missing."""
    display = volume_rendering_logic.GetFirstVolumeRenderingDisplayNode(map_node)
    if display is None:
        display = volume_rendering_logic.CreateDefaultVolumeRenderingNodes(map_node)
    return display


def update_rendering(display, threshold: float, max_score: float, floor: float, visible: bool) -> None:
    """Show scores above `threshold` only; `floor` and `max_score` bound the transfer functions."""
    max_score = max(max_score, threshold + 1e-3)
    low = min(floor, threshold) - 1.0
    # A step narrower than any score difference that matters (nats) keeps the edge sharp.
    step = min(1e-3, (max_score - threshold) / 10.0)

    volume_property = display.GetVolumePropertyNode().GetVolumeProperty()
    opacity = volume_property.GetScalarOpacity()
    opacity.RemoveAllPoints()
    opacity.AddPoint(low, 0.0)
    opacity.AddPoint(threshold, 0.0)
    opacity.AddPoint(threshold + step, OPACITY_AT_THRESHOLD)
    opacity.AddPoint(max_score, OPACITY_AT_MAX)

    colors = volume_property.GetRGBTransferFunction()
    colors.RemoveAllPoints()
    colors.AddRGBPoint(low, *HEAT_COLORS[0][1])
    for position, rgb in HEAT_COLORS:
        colors.AddRGBPoint(threshold + position * (max_score - threshold), *rgb)

    volume_property.SetInterpolationTypeToLinear()
    volume_property.ShadeOff()
    display.SetVisibility(visible)

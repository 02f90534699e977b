"""Consistency of ScreenerModule.py with its .ui file, checked without Qt (Slicer's GUI cannot run here).

A widget name that the code uses but the .ui lacks would fail only when a user opens the module
in Slicer. These tests catch it from the source.
"""

from __future__ import annotations

import ast
import xml.etree.ElementTree as ElementTree

from module_testing import MODULE_FOLDER

MODULE_SOURCE = MODULE_FOLDER / "ScreenerModule.py"
UI_FILE = MODULE_FOLDER / "Resources" / "UI" / "ScreenerModule.ui"
# Parameters that the widget code keeps in sync by hand instead of through connectGui:
# the model combo box lists registry entries that are only known at run time.
PARAMETERS_WITHOUT_GUI_CONNECTION = {"model"}


def ui_widgets() -> dict[str, str]:
    """Return widget name to class for every widget in the .ui file."""
    root = ElementTree.parse(UI_FILE).getroot()
    return {widget.get("name"): widget.get("class") for widget in root.iter("widget")}


def ui_parameter_names() -> dict[str, str]:
    """Return widget name to its SlicerParameterName property."""
    root = ElementTree.parse(UI_FILE).getroot()
    names = {}
    for widget in root.iter("widget"):
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                names[widget.get("name")] = prop.find("string").text
    return names


def module_tree() -> ast.Module:
    return ast.parse(MODULE_SOURCE.read_text(encoding="utf-8"))


def widget_names_used_in_code() -> set[str]:
    """Return X for every `self.ui.X` in ScreenerModule.py."""
    names = set()
    for node in ast.walk(module_tree()):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute) and node.value.attr == "ui"
                and isinstance(node.value.value, ast.Name) and node.value.value.id == "self"):
            names.add(node.attr)
    return names


def parameter_node_fields() -> set[str]:
    for node in ast.walk(module_tree()):
        if isinstance(node, ast.ClassDef) and node.name == "ScreenerParameterNode":
            return {item.target.id for item in node.body if isinstance(item, ast.AnnAssign)}
    raise AssertionError("ScreenerParameterNode not found in ScreenerModule.py")


def test_every_widget_used_in_code_exists_in_ui():
    used = widget_names_used_in_code()
    assert "computeButton" in used, "the parser found no self.ui.* names; check the test"
    missing = sorted(used - set(ui_widgets()))
    assert not missing, f"ScreenerModule.py uses widgets that ScreenerModule.ui lacks: {missing}"


def test_ui_widget_names_are_unique():
    root = ElementTree.parse(UI_FILE).getroot()
    names = [widget.get("name") for widget in root.iter("widget")]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    assert not duplicates


def test_parameter_names_match_parameter_node():
    fields = parameter_node_fields()
    connected = set(ui_parameter_names().values())
    assert connected <= fields, f"unknown SlicerParameterName values: {sorted(connected - fields)}"
    assert fields - connected == PARAMETERS_WITHOUT_GUI_CONNECTION


def test_required_controls_have_expected_classes():
    widgets = ui_widgets()
    expected = {
        "inputSelector": "qMRMLNodeComboBox",
        "modelComboBox": "QComboBox",
        "deviceComboBox": "QComboBox",
        "computeButton": "QPushButton",
        "progressBar": "QProgressBar",
        "statusLabel": "QLabel",
        "thresholdSlider": "ctkSliderWidget",
        "opacitySlider": "ctkSliderWidget",
        "show3DCheckBox": "QCheckBox",
        "findingsTable": "QTableWidget",
        "cacheFolderLineEdit": "QLineEdit",
        "clearCacheButton": "QPushButton",
    }
    for name, widget_class in expected.items():
        assert widgets.get(name) == widget_class, name


def test_custom_widget_classes_are_declared():
    root = ElementTree.parse(UI_FILE).getroot()
    declared = {custom.find("class").text for custom in root.iter("customwidget")}
    used = {widget_class for widget_class in ui_widgets().values() if widget_class.startswith(("ctk", "qMRML"))}
    assert used <= declared, f"declare these in <customwidgets>: {sorted(used - declared)}"


def test_input_selector_receives_the_scene():
    root = ElementTree.parse(UI_FILE).getroot()
    connections = [(c.find("sender").text, c.find("signal").text, c.find("receiver").text, c.find("slot").text)
                   for c in root.iter("connection")]
    assert ("ScreenerModule", "mrmlSceneChanged(vtkMRMLScene*)", "inputSelector",
            "setMRMLScene(vtkMRMLScene*)") in connections

"""The output nodes of one input volume: found again on re-run, so results are replaced, not duplicated.

Each output node stores a node reference to its input volume and a role attribute. The input
node itself is never changed: no attribute, no reference, no voxel.
"""

from __future__ import annotations

import logging

import slicer

logger = logging.getLogger(__name__)

INPUT_REFERENCE_ROLE = "screenerInputVolume"
ROLE_ATTRIBUTE = "Screener.Role"

MAP_ROLE = "anomalyMap"
SEGMENTATION_ROLE = "anomalySegmentation"
FINDINGS_ROLE = "findingsTable"

# role: (MRML class, suffix of the node name after the input's name)
ROLE_NODES = {
    MAP_ROLE: ("vtkMRMLScalarVolumeNode", "anomaly map"),
    SEGMENTATION_ROLE: ("vtkMRMLSegmentationNode", "anomalies"),
    FINDINGS_ROLE: ("vtkMRMLTableNode", "findings"),
}


def result_nodes(scene, input_node, role: str) -> list:
    """Return every node in `scene` that holds the output `role` of `input_node`."""
    class_name = ROLE_NODES[role][0]
    collection = scene.GetNodesByClass(class_name)
    found = []
    for index in range(collection.GetNumberOfItems()):
        node = collection.GetItemAsObject(index)
        if (node.GetAttribute(ROLE_ATTRIBUTE) == role
                and node.GetNodeReferenceID(INPUT_REFERENCE_ROLE) == input_node.GetID()):
            found.append(node)
    return found


def find_result_node(scene, input_node, role: str):
    """Return the output `role` of `input_node`, or None."""
    nodes = result_nodes(scene, input_node, role)
    return nodes[0] if nodes else None


def get_or_create_result_node(scene, input_node, role: str):
    """Return the output `role` of `input_node`, creating it when missing and removing extra copies."""
    nodes = result_nodes(scene, input_node, role)
    for extra in nodes[1:]:
        # Copies appear when a scene is imported twice; keeping one keeps "replace, not duplicate".
        logger.info("Removing duplicate Screener output node %s", extra.GetID())
        scene.RemoveNode(extra)
    if nodes:
        return nodes[0]

    class_name, suffix = ROLE_NODES[role]
    node = scene.AddNewNodeByClass(class_name, f"{input_node.GetName()} {suffix}")
    node.SetAttribute(ROLE_ATTRIBUTE, role)
    node.SetNodeReferenceID(INPUT_REFERENCE_ROLE, input_node.GetID())
    return node


def place_with_input(scene, input_node, output_nodes) -> None:
    """Put `output_nodes` in the input's subject hierarchy folder (its study) and under its parent transform."""
    transform_id = input_node.GetTransformNodeID()
    for node in output_nodes:
        if hasattr(node, "SetAndObserveTransformNodeID"):
            node.SetAndObserveTransformNodeID(transform_id)

    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    if hierarchy is None:
        return
    input_item = hierarchy.GetItemByDataNode(input_node)
    # A volume that is not in the hierarchy (scripts, headless scenes) has no study to join.
    if not input_item:
        return
    parent_item = hierarchy.GetItemParent(input_item)
    for node in output_nodes:
        item = hierarchy.GetItemByDataNode(node)
        if item:
            hierarchy.SetItemParent(item, parent_item)
        else:
            hierarchy.CreateItem(parent_item, node)

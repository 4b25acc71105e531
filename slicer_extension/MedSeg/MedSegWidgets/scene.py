"""Scene work of the module: volumes, segmentations and label maps in MRML (no Qt, no HTTP)."""
from typing import Optional

import slicer
import vtk

from MedSegLib import (LabelSet, check_label_values, check_segment_names, color_table_rows, number_of_colors,
                       present_labels, segment_ids_by_value)


# Node attributes that tie a volume to its datastore image (kept when the scene is saved).
ATTR_IMAGE_ID = "MedSeg.ImageId"
ATTR_SERVER = "MedSeg.Server"
ATTR_VOLUME = "MedSeg.VolumeID"  # on segmentations and uncertainty maps: which volume they belong to
ATTR_KIND = "MedSeg.Kind"

# Colour maps for the uncertainty overlay, first one present wins (IDs of Slicer's built-in tables).
UNCERTAINTY_COLOR_NODE_IDS = ("vtkMRMLColorTableNodeFileInferno.txt", "vtkMRMLColorTableNodeFileColdToHotRainbow.txt",
                              "vtkMRMLColorTableNodeRainbow")


class SceneLogic:
    """Mixed into ``MedSegLogic``."""

    def segmentEditorNode(self):
        node = slicer.mrmlScene.GetSingletonNode("MedSeg", "vtkMRMLSegmentEditorNode")
        if node is None:
            node = slicer.mrmlScene.CreateNodeByClass("vtkMRMLSegmentEditorNode")
            node.UnRegister(None)
            node.SetSingletonTag("MedSeg")
            node = slicer.mrmlScene.AddNode(node)
        return node

    @staticmethod
    def setEditorSourceVolume(editorWidget, volume) -> None:
        # Slicer 5.4 renamed "master" volume to "source" volume.
        if hasattr(editorWidget, "setSourceVolumeNode"):
            editorWidget.setSourceVolumeNode(volume)
        else:
            editorWidget.setMasterVolumeNode(volume)

    # -------------------------------------------------------------- images
    def loadImage(self, path: str, imageId: str, serverUrl: str):
        volume = slicer.util.loadVolume(path, {"name": imageId, "show": True})
        self.markAsServerImage(volume, imageId, serverUrl)
        return volume

    @staticmethod
    def markAsServerImage(volume, imageId: str, serverUrl: str) -> None:
        volume.SetAttribute(ATTR_IMAGE_ID, imageId)
        volume.SetAttribute(ATTR_SERVER, serverUrl)

    @staticmethod
    def imageIdOf(volume, serverUrl: Optional[str]) -> Optional[str]:
        """The datastore id of a volume that came from (or was uploaded to) this server."""
        if volume is None or serverUrl is None or volume.GetAttribute(ATTR_SERVER) != serverUrl:
            return None
        return volume.GetAttribute(ATTR_IMAGE_ID) or None

    def saveVolume(self, volume, path: str) -> str:
        if not slicer.util.saveNode(volume, path):
            raise RuntimeError(f"Slicer could not write {path}")
        return path

    def removeSampleNodes(self, volume) -> None:
        volumeId = volume.GetID()
        for node in list(slicer.util.getNodesByClass("vtkMRMLNode")):
            if node.GetAttribute(ATTR_VOLUME) == volumeId:
                slicer.mrmlScene.RemoveNode(node)
        slicer.mrmlScene.RemoveNode(volume)

    # -------------------------------------------------------------- segmentations
    def segmentationOf(self, volume):
        for node in slicer.util.getNodesByClass("vtkMRMLSegmentationNode"):
            if node.GetAttribute(ATTR_VOLUME) == volume.GetID():
                return node
        return None

    def createSegmentation(self, volume, labels: LabelSet):
        """An empty segmentation on the volume's grid with one named, coloured segment per label."""
        segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"{volume.GetName()} segmentation")
        segmentation.CreateDefaultDisplayNodes()
        segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
        segmentation.SetAttribute(ATTR_VOLUME, volume.GetID())
        self.ensureSegments(segmentation, labels)
        return segmentation

    @staticmethod
    def ensureSegments(segmentationNode, labels: LabelSet) -> dict:
        """Segment ID per label name, adding the missing segments (label order, label colours)."""
        segmentation = segmentationNode.GetSegmentation()
        ids = {}
        for name, _ in labels:
            segmentId = segmentation.GetSegmentIdBySegmentName(name)
            color = labels.color_of(name)
            if not segmentId:
                segmentId = segmentation.AddEmptySegment(name, name, color)
            else:
                segmentation.GetSegment(segmentId).SetColor(*color)
            ids[name] = segmentId
        return ids

    def importLabelmap(self, path: str, segmentationNode, volume, labels: LabelSet) -> list:
        """Replace the segments with a server label map (values = label indices); labels present.

        One pass for all labels: Slicer fills each segment from its value (a segment ID per value),
        so no per-label full-size mask is made (100 labels on a 512x512x600 CT would be 16 GB).
        """
        labelNode = slicer.util.loadLabelVolume(path, {"show": False})
        try:
            present = check_label_values(slicer.util.arrayFromVolume(labelNode), labels)
            ids = self.ensureSegments(segmentationNode, labels)
            segmentIds = vtk.vtkStringArray()
            for segmentId in segment_ids_by_value(labels, ids):
                segmentIds.InsertNextValue(segmentId)
            # The label node is the reference: its own grid places the segments, whatever the volume's.
            if not slicer.modules.segmentations.logic().ImportLabelmapToSegmentationNode(
                    labelNode, segmentationNode, segmentIds):
                raise RuntimeError(f"Slicer could not import the label map {path}")
        finally:
            slicer.mrmlScene.RemoveNode(labelNode)
        segmentationNode.SetAttribute(ATTR_VOLUME, volume.GetID())
        return present

    def exportLabelmap(self, segmentationNode, volume, labels: LabelSet, path: str):
        """Write the segments as one label map on the volume's grid, value = the app's index of each name.

        Slicer writes every segment in one pass, its value looked up by name in a colour table of
        the app's labels, so neither the segment order nor Slicer's own numbering matters.
        """
        segmentation = segmentationNode.GetSegmentation()
        segmentIds = vtk.vtkStringArray()
        names = []
        for i in range(segmentation.GetNumberOfSegments()):
            segmentId = segmentation.GetNthSegmentID(i)
            segmentIds.InsertNextValue(segmentId)
            names.append(segmentation.GetSegment(segmentId).GetName())
        check_segment_names(names, labels)  # an unknown name would get a made-up value
        colorTable = self.labelColorTable(labels)
        labelNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", f"{volume.GetName()} label")
        try:
            if not slicer.modules.segmentations.logic().ExportSegmentsToLabelmapNode(
                    segmentationNode, segmentIds, labelNode, volume, slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY,
                    colorTable):
                raise RuntimeError("Slicer could not export the segments on the volume's grid")
            present = present_labels(slicer.util.arrayFromVolume(labelNode), labels)
            if not slicer.util.saveNode(labelNode, path):
                raise RuntimeError(f"Slicer could not write {path}")
        finally:
            slicer.mrmlScene.RemoveNode(labelNode)
            slicer.mrmlScene.RemoveNode(colorTable)
        return path, present

    @staticmethod
    def labelColorTable(labels: LabelSet):
        """A colour table whose row v is the label of value v (name and colour): the name -> value map."""
        table = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLColorTableNode", "MedSeg labels")
        table.SetTypeToUser()
        table.SetNumberOfColors(number_of_colors(labels))
        table.SetColor(0, "Background", 0.0, 0.0, 0.0, 0.0)
        for value, name, (r, g, b) in color_table_rows(labels):
            table.SetColor(value, name, r, g, b, 1.0)
        if hasattr(table, "SetNamesInitialised"):  # gone once colour names became per-entry (Slicer 5.8)
            table.SetNamesInitialised(True)
        return table

    def exportSegmentMask(self, segmentationNode, segmentId: str, volume, path: str) -> Optional[str]:
        """One segment as a 0/1 label file on the volume's grid (a guided edit's prior); None when empty."""
        segmentIds = vtk.vtkStringArray()
        segmentIds.InsertNextValue(segmentId)
        labelNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "MedSeg prior")
        try:
            if not slicer.modules.segmentations.logic().ExportSegmentsToLabelmapNode(
                    segmentationNode, segmentIds, labelNode, volume, slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY):
                raise RuntimeError("Slicer could not export the segment on the volume's grid")
            if not slicer.util.arrayFromVolume(labelNode).any():
                return None
            if not slicer.util.saveNode(labelNode, path):
                raise RuntimeError(f"Slicer could not write {path}")
            return path
        finally:
            slicer.mrmlScene.RemoveNode(labelNode)

    @staticmethod
    def readLabelArray(path: str):
        """A label file's voxels as a (k, j, i) array (the file's own grid)."""
        labelNode = slicer.util.loadLabelVolume(path, {"show": False})
        try:
            return slicer.util.arrayFromVolume(labelNode).copy()
        finally:
            slicer.mrmlScene.RemoveNode(labelNode)

    # -------------------------------------------------------------- uncertainty
    def showUncertainty(self, path: str, volume, maxEntropy: float):
        """The voxel entropy map as a colour overlay on the volume (0 .. ln(number of classes))."""
        for node in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode"):
            if node.GetAttribute(ATTR_VOLUME) == volume.GetID() and node.GetAttribute(ATTR_KIND) == "uncertainty":
                slicer.mrmlScene.RemoveNode(node)
        node = slicer.util.loadVolume(path, {"name": f"{volume.GetName()} uncertainty", "show": False})
        node.SetAttribute(ATTR_VOLUME, volume.GetID())
        node.SetAttribute(ATTR_KIND, "uncertainty")
        display = node.GetDisplayNode()
        colorId = next((c for c in UNCERTAINTY_COLOR_NODE_IDS if slicer.mrmlScene.GetNodeByID(c)), None)
        if colorId:
            display.SetAndObserveColorNodeID(colorId)
        display.AutoWindowLevelOff()
        display.SetWindowLevelMinMax(0.0, maxEntropy)
        slicer.util.setSliceViewerLayers(background=volume, foreground=node, foregroundOpacity=0.4)
        return node


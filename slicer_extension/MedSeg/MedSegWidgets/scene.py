"""Scene work of the module: volumes, segmentations and label maps in MRML (no Qt, no HTTP)."""
from typing import Optional

import slicer

from MedSegLib import LabelSet, compose_label_array, masks_from_label_array, present_labels


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
        """Replace the segments with a server label map (values = label indices); labels present."""
        labelNode = slicer.util.loadLabelVolume(path, {"show": False})
        try:
            array = slicer.util.arrayFromVolume(labelNode)
            masks = masks_from_label_array(array, labels)
            present = present_labels(array, labels)
            ids = self.ensureSegments(segmentationNode, labels)
            # The label node is the reference: its own grid places the masks, whatever the volume's.
            for name, mask in masks:
                slicer.util.updateSegmentBinaryLabelmapFromArray(mask, segmentationNode, ids[name], labelNode)
        finally:
            slicer.mrmlScene.RemoveNode(labelNode)
        segmentationNode.SetAttribute(ATTR_VOLUME, volume.GetID())
        return present

    def exportLabelmap(self, segmentationNode, volume, labels: LabelSet, path: str):
        """Write the segments as one label map on the volume's grid, value = the app's index of each name.

        Segments are exported one by one onto the volume's geometry, and the values are set by
        name in MedSegLib, so neither Slicer's segment order nor its own numbering matters.
        """
        segmentation = segmentationNode.GetSegmentation()
        shape = slicer.util.arrayFromVolume(volume).shape
        masks = []
        for i in range(segmentation.GetNumberOfSegments()):
            segmentId = segmentation.GetNthSegmentID(i)
            name = segmentation.GetSegment(segmentId).GetName()
            mask = slicer.util.arrayFromSegmentBinaryLabelmap(segmentationNode, segmentId, volume)
            if mask is None or mask.shape != shape:
                if mask is not None and mask.any():
                    raise RuntimeError(f"segment {name!r} could not be exported on the volume's grid")
                mask = None  # an empty segment: nothing to write
            masks.append((name, mask if mask is not None else zerosUint8(shape)))
        array = compose_label_array(masks, labels)
        labelNode = slicer.modules.volumes.logic().CreateAndAddLabelVolume(volume, f"{volume.GetName()} label")
        try:
            slicer.util.updateVolumeFromArray(labelNode, array)
            if not slicer.util.saveNode(labelNode, path):
                raise RuntimeError(f"Slicer could not write {path}")
        finally:
            slicer.mrmlScene.RemoveNode(labelNode)
        return path, present_labels(array, labels)

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


def zerosUint8(shape):
    import numpy as np

    return np.zeros(shape, dtype=np.uint8)

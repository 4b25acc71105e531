"""The module's "Guided editing" panel: points and a box on the edited segment, sent to the
server's interactive task, its answer written back into that segment, undo.

The request building, coordinates and undo stack are ``MedSegLib.interactive`` (plain Python,
tested against a real server); this panel only reads markups and writes segments.
"""
from typing import Optional

import qt
import slicer
import vtk

from MedSegLib import INTERACTIVE_MODEL, GuidedEdit, ras_to_ijk
from MedSegWidgets.controls import fillCombo
from MedSegWidgets.scene import ATTR_KIND

SERVER_DEFAULT = "server default"


class GuidedEditingPanel:
    """Mixed into ``MedSegWidget``: uses its ``ui``, ``logic``, ``client`` and ``runInBackground``."""

    def setupGuidedEditing(self) -> None:
        """Markups for the clicks and the box; each placed point becomes voxel indices for MedSegLib."""
        self.guidedEdit = None
        self._guidedKey = None
        self._guidedSnapshot = None  # the segment before the edit's first result, for undo
        self._placedOrder = []  # "foreground" / "background" / "box", for undo
        self._guidedNodes = {}
        for kind, widget in (("foreground", self.ui.foregroundPlaceWidget), ("background", self.ui.backgroundPlaceWidget),
                             ("box", self.ui.boxPlaceWidget)):
            widget.setMRMLScene(slicer.mrmlScene)
            widget.placeMultipleMarkups = (widget.ForcePlaceSingleMarkup if kind == "box"
                                           else widget.ForcePlaceMultipleMarkups)
        self.ui.refineButton.connect("clicked(bool)", self.onRefine)
        self.ui.undoClickButton.connect("clicked(bool)", self.onUndoClick)
        self.ui.clearClicksButton.connect("clicked(bool)", self.onClearClicks)
        self.ui.foregroundPlaceWidget.setCurrentNode(self.guidedNode("foreground"))
        self.ui.backgroundPlaceWidget.setCurrentNode(self.guidedNode("background"))
        self.ui.boxPlaceWidget.setCurrentNode(self.guidedNode("box"))
        fillCombo(self.ui.guidedMethodComboBox, [SERVER_DEFAULT])

    def showGuidedMethods(self, info) -> None:
        """The interactive task's methods that can answer now (a stock app's task has none to choose)."""
        fillCombo(self.ui.guidedMethodComboBox, [SERVER_DEFAULT] + info.interactive_methods(INTERACTIVE_MODEL))

    def guidedMethod(self) -> Optional[str]:
        method = self.ui.guidedMethodComboBox.currentText
        return None if method in ("", SERVER_DEFAULT) else method

    def guidedNode(self, kind: str):
        node = self._guidedNodes.get(kind)
        if node is not None and slicer.mrmlScene.IsNodePresent(node):
            return node
        cls = "vtkMRMLMarkupsROINode" if kind == "box" else "vtkMRMLMarkupsFiducialNode"
        node = slicer.mrmlScene.AddNewNodeByClass(cls, f"MedSeg {kind}")
        node.SetAttribute(ATTR_KIND, "guided")
        node.CreateDefaultDisplayNodes()
        color = {"foreground": (0.2, 0.85, 0.2), "background": (0.9, 0.2, 0.2), "box": (1.0, 0.8, 0.2)}[kind]
        node.GetDisplayNode().SetSelectedColor(*color)
        event = slicer.vtkMRMLMarkupsNode.PointPositionDefinedEvent
        self.addObserver(node, event, lambda caller, ev, kind=kind: self.onGuidancePlaced(kind, caller))
        self._guidedNodes[kind] = node
        return node

    def editedSegment(self):
        """(segmentation node, segment ID, segment name) selected in the editor; the segmentation is made if needed."""
        volume = self._parameterNode.inputVolume
        segmentation = self._parameterNode.segmentation
        if segmentation is None:
            segmentation = self.logic.createSegmentation(volume, self.session.info.labels)
            self._parameterNode.segmentation = segmentation
        segmentId = self.logic.segmentEditorNode().GetSelectedSegmentID()
        if not segmentId:
            segmentId = segmentation.GetSegmentation().GetNthSegmentID(0)
        return segmentation, segmentId, segmentation.GetSegmentation().GetSegment(segmentId).GetName()

    def currentEdit(self) -> Optional[GuidedEdit]:
        """The edit of the selected segment on this image; a new one when either changed."""
        volume = self._parameterNode.inputVolume if self._parameterNode else None
        if volume is None or self.session.image_id is None or not self.session.connected:
            self.setStatus("Guided editing needs an image of the server (Next sample or Upload) and a connection.")
            return None
        segmentation, segmentId, name = self.editedSegment()
        fromStored = bool(self.ui.refineStoredCheckBox.checked)
        method = self.guidedMethod()
        key = (self.session.image_id, segmentation.GetID(), segmentId, fromStored, method)
        if self.guidedEdit is None or key != self._guidedKey:
            label = name if name in self.session.info.labels.names else None
            self.guidedEdit = GuidedEdit(self.client, self.session.image_id, label=label,
                                         prior_tag="final" if fromStored and label else None, dest_dir=self.tmpdir,
                                         method=method)
            self._guidedKey = key
            self._guidedSnapshot = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, segmentId, volume)
            self._placedOrder = []
        return self.guidedEdit

    def onGuidancePlaced(self, kind: str, node) -> None:
        edit = self.currentEdit()
        if edit is None or node.GetNumberOfControlPoints() == 0:
            return
        volume = self._parameterNode.inputVolume
        matrix = vtk.vtkMatrix4x4()
        volume.GetRASToIJKMatrix(matrix)
        rows = [[matrix.GetElement(r, c) for c in range(4)] for r in range(4)]
        if kind == "box":
            centre, size = [0.0] * 3, node.GetSize()
            node.GetCenterWorld(centre)
            edit.set_box(ras_to_ijk(rows, [c - h / 2 for c, h in zip(centre, size)]),
                         ras_to_ijk(rows, [c + h / 2 for c, h in zip(centre, size)]))
        else:
            ras = [0.0] * 3
            node.GetNthControlPointPositionWorld(node.GetNumberOfControlPoints() - 1, ras)
            edit.add_click(ras_to_ijk(rows, ras), foreground=kind == "foreground")
        self._placedOrder.append(kind)
        if self.ui.refineOnClickCheckBox.checked:
            self.onRefine()

    def onRefine(self) -> None:
        edit = self.currentEdit()
        if edit is None or edit.state.is_empty():
            return
        if self.jobs.busy("guided"):  # clicked again while the server works: ask once more when it answers
            self._refinePending = True
            return
        self._refinePending = False
        self.runInBackground("guided", "Guided editing failed", edit.run, onDone=self.showGuidedResult,
                             busyText="Segmenting the structure from the clicks (runs on the server) ...")

    def showGuidedResult(self, result) -> None:
        edit = self.guidedEdit
        segmentation, segmentId, name = self.editedSegment()
        volume = self._parameterNode.inputVolume
        with slicer.util.tryWithErrorDisplay("Could not show the result.", waitCursor=True):
            self._importing = True
            try:
                if result is None or not result.path:
                    slicer.util.updateSegmentBinaryLabelmapFromArray(self._guidedSnapshot, segmentation, segmentId,
                                                                     volume)
                else:
                    labelNode = slicer.util.loadLabelVolume(result.path, {"show": False})
                    try:
                        mask = (slicer.util.arrayFromVolume(labelNode) == 1).astype("uint8")
                        slicer.util.updateSegmentBinaryLabelmapFromArray(mask, segmentation, segmentId, labelNode)
                    finally:
                        slicer.mrmlScene.RemoveNode(labelNode)
            finally:
                self._importing = False
            self.session.dirty = True
        if result is not None and edit is not None and edit.last_latency_s is not None:
            server = (result.params.get("latencies") or {}).get("infer")
            self.ui.guidedResultLabel.text = (f"{name}: {edit.interactions} interactions; last answer "
                                              f"{edit.last_latency_s:.2f} s (server {server} s)")
        if self._refinePending:
            qt.QTimer.singleShot(0, self.onRefine)

    def onUndoClick(self) -> None:
        edit = self.guidedEdit
        if edit is None or not self._placedOrder:
            return
        kind = self._placedOrder.pop()
        node = self.guidedNode(kind)
        if kind == "box":
            node.RemoveAllControlPoints()
        elif node.GetNumberOfControlPoints():
            node.RemoveNthControlPoint(node.GetNumberOfControlPoints() - 1)
        self.showGuidedResult(edit.undo())

    def onClearClicks(self) -> None:
        for node in self._guidedNodes.values():
            node.RemoveAllControlPoints()
        self.guidedEdit, self._guidedKey, self._placedOrder = None, None, []
        self.ui.guidedResultLabel.text = ""

    # ------------------------------------------------------------------ submit

"""The module's "Guided editing" panel: points and a box on the edited segment, sent to the
server's interactive task, each answer pasted into that segment, undo.

The requests, their bookkeeping, the geometry and the undo of pasted answers are
``MedSegLib.interactive`` and ``MedSegLib.geometry`` (plain Python, tested against a real
server); this panel reads markups and the scene, and writes the segment.
"""
import os
from typing import Optional

import qt
import slicer
import vtk

from MedSegLib import (INTERACTIVE_MODEL, AnswerTarget, GuidedEdit, clamp_ijk, describe_answer, ras_to_ijk,
                       roi_box_ijk, roi_is_placed, world_to_ijk_matrix)
from MedSegWidgets.controls import fillCombo, matrixRows
from MedSegWidgets.scene import ATTR_KIND

SERVER_DEFAULT = "server default"
GUIDANCE_COLORS = {"foreground": (0.2, 0.85, 0.2), "background": (0.9, 0.2, 0.2), "box": (1.0, 0.8, 0.2)}


class GuidedEditingPanel:
    """Mixed into ``MedSegWidget``: uses its ``ui``, ``logic``, ``client`` and ``runInBackground``."""

    def setupGuidedEditing(self) -> None:
        """Markups for the clicks and the box; each placed point becomes voxel indices for MedSegLib."""
        self.guidedEdit = None
        self._guidedKey = None
        self._guidedRequest = None  # the request on its way (a snapshot), to check its answer against
        self._placedOrder = []  # "foreground" / "background" / "box", for undo
        self._guidedNodes = {}
        self._guidedObservations = []
        self._replacingBox = False
        for kind, widget in self.guidanceWidgets().items():
            widget.setMRMLScene(slicer.mrmlScene)
            widget.placeMultipleMarkups = (widget.ForcePlaceSingleMarkup if kind == "box"
                                           else widget.ForcePlaceMultipleMarkups)
        self.ui.boxPlaceWidget.connect("activeMarkupsPlaceModeChanged(bool)", self.onBoxPlaceMode)
        self.ui.refineButton.connect("clicked(bool)", self.onRefine)
        self.ui.undoClickButton.connect("clicked(bool)", self.onUndoClick)
        self.ui.clearClicksButton.connect("clicked(bool)", self.onClearClicks)
        self.attachGuidanceNodes()
        fillCombo(self.ui.guidedMethodComboBox, [SERVER_DEFAULT])

    def guidanceWidgets(self) -> dict:
        return {"foreground": self.ui.foregroundPlaceWidget, "background": self.ui.backgroundPlaceWidget,
                "box": self.ui.boxPlaceWidget}

    def attachGuidanceNodes(self) -> None:
        """(Re)create the markups nodes and hand them to the place widgets: after Close Scene the old
        nodes are gone, and a widget left on a deleted node places nothing."""
        for kind, widget in self.guidanceWidgets().items():
            widget.setCurrentNode(self.guidedNode(kind))

    def showGuidedMethods(self, info) -> None:
        """The interactive task's methods that can answer now (a stock app's task has none to choose)."""
        fillCombo(self.ui.guidedMethodComboBox, [SERVER_DEFAULT] + info.interactive_methods(INTERACTIVE_MODEL))

    def guidedMethod(self) -> Optional[str]:
        method = self.ui.guidedMethodComboBox.currentText
        return None if method in ("", SERVER_DEFAULT) else method

    def guidedNode(self, kind: str, fresh: bool = False):
        node = self._guidedNodes.get(kind)
        if node is not None and slicer.mrmlScene.IsNodePresent(node) and not fresh:
            return node
        if node is not None and slicer.mrmlScene.IsNodePresent(node):
            slicer.mrmlScene.RemoveNode(node)
        cls = "vtkMRMLMarkupsROINode" if kind == "box" else "vtkMRMLMarkupsFiducialNode"
        node = slicer.mrmlScene.AddNewNodeByClass(cls, f"MedSeg {kind}")
        node.SetAttribute(ATTR_KIND, "guided")
        node.CreateDefaultDisplayNodes()
        node.GetDisplayNode().SetSelectedColor(*GUIDANCE_COLORS[kind])
        markups = slicer.vtkMRMLMarkupsNode
        if kind == "box":
            # Read the box whenever it changes (a drag reports every step); send it when its placement
            # or a drag ends. VTK hands observers an event name, not the id, so each event has its own.
            self.addObserver(node, markups.PointModifiedEvent, lambda caller, ev: self.onBoxChanged(caller, False))
            for event in (markups.PointPositionDefinedEvent, markups.PointEndInteractionEvent):
                self.addObserver(node, event, lambda caller, ev: self.onBoxChanged(caller, True))
        else:
            self.addObserver(node, markups.PointPositionDefinedEvent,
                             lambda caller, ev, kind=kind: self.onClickPlaced(kind, caller))
        self._guidedNodes[kind] = node
        return node

    # ------------------------------------------------------------------ which edit
    def editedSegment(self):
        """(segmentation node, segment ID, segment name) selected in the editor; the segmentation is made if needed."""
        volume = self._parameterNode.inputVolume
        segmentation = self._parameterNode.segmentation
        if segmentation is None:
            segmentation = self.logic.createSegmentation(volume, self.session.info.labels)
            self._parameterNode.segmentation = segmentation
        segmentId = self.logic.segmentEditorNode().GetSelectedSegmentID()
        if not segmentId or segmentation.GetSegmentation().GetSegment(segmentId) is None:
            segmentId = segmentation.GetSegmentation().GetNthSegmentID(0)
        return segmentation, segmentId, segmentation.GetSegmentation().GetSegment(segmentId).GetName()

    def currentTarget(self) -> Optional[AnswerTarget]:
        """Where an answer would go now: this image, this segmentation node, the selected segment."""
        volume = self._parameterNode.inputVolume if self._parameterNode else None
        segmentation = self._parameterNode.segmentation if self._parameterNode else None
        if volume is None or segmentation is None or self.session.image_id is None:
            return None
        segmentId = self.logic.segmentEditorNode().GetSelectedSegmentID() or \
            segmentation.GetSegmentation().GetNthSegmentID(0)
        return AnswerTarget(self.session.image_id, segmentation.GetID(), segmentId or "")

    def currentEdit(self) -> Optional[GuidedEdit]:
        """The edit of the selected segment on this image; a new one when either changed.

        A new edit starts from the segment as it is now (the model's prediction, painted
        corrections): that segment is sent as the prior, so a click corrects it near the click.
        """
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
            medseg = bool(self.session.info.interactive_methods(INTERACTIVE_MODEL))  # MedSeg's task takes priors
            priorPath = None
            if medseg and not fromStored:
                # A file per edit: a request of the previous edit may still be uploading its own.
                self._priorCount = getattr(self, "_priorCount", 0) + 1
                priorPath = self.logic.exportSegmentMask(
                    segmentation, segmentId, volume, os.path.join(self.tmpdir, f"guided_prior_{self._priorCount}.nii.gz"))
            self.guidedEdit = GuidedEdit(self.client, self.session.image_id, label=label,
                                         prior_tag="final" if fromStored and label else None, dest_dir=self.tmpdir,
                                         method=method, prior_path=priorPath,
                                         target=AnswerTarget(self.session.image_id, segmentation.GetID(), segmentId),
                                         changed_region_only=medseg)
            self._guidedKey = key
            self._placedOrder = []
        return self.guidedEdit

    # ------------------------------------------------------------------ guidance placed
    def worldToIjk(self, volume):
        """World RAS -> the volume's voxel indices, through its parent transforms (linear ones)."""
        rasToIjk = vtk.vtkMatrix4x4()
        volume.GetRASToIJKMatrix(rasToIjk)
        worldToLocal = None
        if volume.GetParentTransformNode() is not None:
            matrix = vtk.vtkMatrix4x4()
            if not slicer.vtkMRMLTransformNode.GetMatrixTransformBetweenNodes(None, volume.GetParentTransformNode(),
                                                                            matrix):
                raise RuntimeError("the volume is under a non-linear transform: harden it before guided editing")
            worldToLocal = matrixRows(matrix)
        return world_to_ijk_matrix(matrixRows(rasToIjk), worldToLocal)

    def onClickPlaced(self, kind: str, node) -> None:
        edit = self.currentEdit()
        if edit is None or node.GetNumberOfControlPoints() == 0:
            return
        volume = self._parameterNode.inputVolume
        with slicer.util.tryWithErrorDisplay("Could not read the point.", waitCursor=False):
            ras = [0.0] * 3
            node.GetNthControlPointPositionWorld(node.GetNumberOfControlPoints() - 1, ras)
            ijk = clamp_ijk(ras_to_ijk(self.worldToIjk(volume), ras), volume.GetImageData().GetDimensions())
            if ijk is None:
                self.setStatus("That point is outside the image; it was not sent.")
                return
            edit.add_click(ijk, foreground=kind == "foreground")
            self._placedOrder.append(kind)
            if self.ui.refineOnClickCheckBox.checked:
                self.onRefine()

    def onBoxPlaceMode(self, placing: bool) -> None:
        """A new box replaces a placed one: Slicer lets a finished ROI take no further placement."""
        node = self._guidedNodes.get("box")
        if not placing or self._replacingBox or node is None or node.GetNumberOfControlPoints() == 0:
            return
        self._replacingBox = True
        try:
            self.ui.boxPlaceWidget.setCurrentNode(self.guidedNode("box", fresh=True))
        finally:
            self._replacingBox = False
        qt.QTimer.singleShot(0, lambda: self.ui.boxPlaceWidget.setPlaceModeEnabled(True))

    def onBoxChanged(self, node, send: bool) -> None:
        size = list(node.GetSize())
        if not roi_is_placed(node.GetNumberOfControlPoints(), node.GetNumberOfDefinedControlPoints(), size):
            return  # the first corner, or the mouse still drawing it
        edit = self.currentEdit()
        if edit is None:
            return
        volume = self._parameterNode.inputVolume
        box = roi_box_ijk(matrixRows(node.GetObjectToWorldMatrix()), size, self.worldToIjk(volume),
                          volume.GetImageData().GetDimensions())
        if box is None:
            self.setStatus("The box does not cover the image; it was not sent.")
            return
        if edit.set_box(*box):
            if "box" not in self._placedOrder:
                self._placedOrder.append("box")
        if send and self.ui.refineOnClickCheckBox.checked:
            self.onRefine()

    # ------------------------------------------------------------------ requests and answers
    def onRefine(self) -> None:
        edit = self.currentEdit()
        if edit is None or edit.state.is_empty():
            return
        if self.jobs.busy("guided"):  # clicked again while the server works: ask once more when it answers
            self._refinePending = True
            return
        self._refinePending = False
        request = edit.request()  # a snapshot: clicks placed from now on are the next request's
        self._guidedRequest = request
        self.runInBackground("guided", "Guided editing failed", edit.send, request,
                             onDone=lambda answer: self.showGuidedResult(edit, request, answer),
                             onFailed=self.serviceRefinePending,
                             busyText="Segmenting the structure from the clicks (runs on the server) ...")

    def serviceRefinePending(self) -> None:
        # A click made while the last request ran is sent after it, whether that one succeeded or failed.
        if self._refinePending:
            qt.QTimer.singleShot(0, self.onRefine)

    def showGuidedResult(self, edit, request, answer) -> None:
        try:
            if edit is not self.guidedEdit or edit.accept(request, answer, self.currentTarget()) is None:
                self.setStatus("A guided-editing answer arrived for an earlier click, image or segment; not shown.")
                return
            result = edit.result
            segmentation, segmentId, name = self.editedSegment()
            volume = self._parameterNode.inputVolume
            with slicer.util.tryWithErrorDisplay("Could not show the result.", waitCursor=True):
                answerMask = self.logic.readLabelArray(result.path)
                self.writeSegment(segmentation, segmentId, volume,
                                  lambda mask: edit.apply(mask, answerMask, result.params))
            if edit.last_latency_s is not None:
                server = (result.params.get("latencies") or {}).get("infer")
                self.ui.guidedResultLabel.text = (f"{name}: {edit.interactions} interactions; last answer "
                                                  f"{edit.last_latency_s:.2f} s (server {server} s; "
                                                  f"{describe_answer(result)})")
        finally:
            self.serviceRefinePending()

    def writeSegment(self, segmentation, segmentId, volume, change) -> None:
        """Apply ``change(mask)`` to one segment's (k, j, i) mask, undoable with the editor's Ctrl+Z."""
        self.segmentEditorWidget.saveStateForUndo()
        mask = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, segmentId, volume)
        change(mask)
        self._importing = True
        try:
            slicer.util.updateSegmentBinaryLabelmapFromArray(mask, segmentation, segmentId, volume)
        finally:
            self._importing = False
        self.session.dirty = True

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
        if self.jobs.busy("guided"):
            self.jobs.cancel("guided")  # its answer would include the click just taken back
        segmentation, segmentId, _ = self.editedSegment()
        if edit.target == self.currentTarget():
            self.writeSegment(segmentation, segmentId, self._parameterNode.inputVolume, edit.undo)
        else:
            edit.undo()
        self.updateButtons()

    def onClearClicks(self) -> None:
        """Forget the points and the box (the segment keeps what they made; Ctrl+Z takes that back)."""
        for node in self._guidedNodes.values():
            if slicer.mrmlScene.IsNodePresent(node):
                node.RemoveAllControlPoints()
        self.jobs.cancel("guided")
        self.guidedEdit, self._guidedKey, self._placedOrder, self._refinePending = None, None, [], False
        self.ui.guidedResultLabel.text = ""

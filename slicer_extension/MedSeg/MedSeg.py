"""MedSeg: label images with a MedSeg (or any MONAI Label) server from 3D Slicer.

Next sample -> Segment -> correct in the Segment Editor -> Submit -> Train, as one panel.
The HTTP client, label-index mapping, workflow state and training-progress logic live in
``MedSegLib`` (plain Python, tested with pytest against a real server); this file only moves
arrays in and out of MRML nodes and wires Qt signals to that library.
"""
import logging
import os
import shutil
import tempfile
from typing import Optional

import qt
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.parameterNodeWrapper import parameterNodeWrapper
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin

from MedSegLib import (BackgroundJobs, GuidedEdit, LabelingSession, LabelSet, MedSegClient, MedSegClientError,
                       TrainingMonitor, compose_label_array, default_client_id, fetch_sample_image,
                       fetch_training_state, image_id_for, masks_from_label_array, normalize_server_url,
                       present_labels, ras_to_ijk, submit_label)

# Node attributes that tie a volume to its datastore image (kept when the scene is saved).
ATTR_IMAGE_ID = "MedSeg.ImageId"
ATTR_SERVER = "MedSeg.Server"
ATTR_VOLUME = "MedSeg.VolumeID"  # on segmentations and uncertainty maps: which volume they belong to
ATTR_KIND = "MedSeg.Kind"

SETTINGS_URL = "MedSeg/serverUrl"
SETTINGS_HISTORY = "MedSeg/serverUrlHistory"
SETTINGS_AUTO_SEGMENT = "MedSeg/autoSegment"
SETTINGS_AUTO_NEXT = "MedSeg/autoNext"
DEFAULT_URL = "http://127.0.0.1:8000"

# Voxel edits change the segmentation's source representation (called "master" before Slicer 5.4).
SEGMENT_EDIT_EVENTS = (
    getattr(slicer.vtkSegmentation, "SourceRepresentationModified", None)
    or slicer.vtkSegmentation.MasterRepresentationModified,
    slicer.vtkSegmentation.SegmentModified,
)

# Colour maps for the uncertainty overlay, first one present wins (IDs of Slicer's built-in tables).
UNCERTAINTY_COLOR_NODE_IDS = ("vtkMRMLColorTableNodeFileInferno.txt", "vtkMRMLColorTableNodeFileColdToHotRainbow.txt",
                              "vtkMRMLColorTableNodeRainbow")


class MedSeg(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "MedSeg"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["MedSeg project"]
        self.parent.helpText = (
            "Label images with a MedSeg label server (a MONAI Label app): fetch the next image to label, "
            "segment it with a server model, correct it with the Segment Editor, submit it, and retrain. "
            "Works with any MONAI Label server. See slicer_extension/README.md in the MedSeg repository.")
        self.parent.acknowledgementText = (
            "Follows the REST contract of MONAI Label (Project MONAI) and the scripted-module conventions "
            "of 3D Slicer.")


@parameterNodeWrapper
class MedSegParameterNode:
    """GUI state kept in the scene; widgets with the .ui property SlicerParameterName bind to it."""

    inputVolume: vtkMRMLScalarVolumeNode
    segmentation: vtkMRMLSegmentationNode
    tta: bool = False
    uncertainty: bool = False
    maxIterations: int = 0


class MedSegWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self.client: Optional[MedSegClient] = None
        self.session = LabelingSession()
        self.jobs = BackgroundJobs()
        self.monitor: Optional[TrainingMonitor] = None
        self.tmpdir = None
        self.jobTimer = None
        self.trainTimer = None
        self.segmentEditorWidget = None
        self._observedSegmentation = None
        self._importing = False
        self.guidedEdit: Optional[GuidedEdit] = None
        self._placedOrder = []
        self._refinePending = False

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/MedSeg.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = MedSegLogic()
        self.tmpdir = tempfile.mkdtemp(prefix="medseg-slicer-")

        # The Segment Editor is embedded, with its own editor node, so the clinician corrects
        # the prediction without leaving the module.
        self.segmentEditorWidget = slicer.qMRMLSegmentEditorWidget()
        self.segmentEditorWidget.setMRMLScene(slicer.mrmlScene)
        self.segmentEditorWidget.setMRMLSegmentEditorNode(self.logic.segmentEditorNode())
        self.ui.segmentEditorFrame.layout().addWidget(self.segmentEditorWidget)

        self.ui.serverUrlComboBox.addItems(self.urlHistory())
        self.ui.serverUrlComboBox.setEditText(slicer.util.settingsValue(SETTINGS_URL, DEFAULT_URL) or DEFAULT_URL)
        self.ui.autoSegmentCheckBox.checked = slicer.util.settingsValue(SETTINGS_AUTO_SEGMENT, False, converter=slicer.util.toBool)
        self.ui.autoNextCheckBox.checked = slicer.util.settingsValue(SETTINGS_AUTO_NEXT, False, converter=slicer.util.toBool)
        self.ui.trainingProgressBar.setValue(0)
        self.ui.datastoreProgressBar.setValue(0)

        self.ui.connectButton.connect("clicked(bool)", self.onConnect)
        self.ui.serverUrlComboBox.lineEdit().connect("returnPressed()", self.onConnect)
        self.ui.nextSampleButton.connect("clicked(bool)", self.onNextSample)
        self.ui.uploadButton.connect("clicked(bool)", self.onUpload)
        self.ui.segmentButton.connect("clicked(bool)", self.onSegment)
        self.ui.submitButton.connect("clicked(bool)", self.onSubmit)
        self.ui.trainButton.connect("clicked(bool)", self.onTrain)
        self.ui.stopTrainingButton.connect("clicked(bool)", self.onStopTraining)
        self.ui.autoSegmentCheckBox.connect("toggled(bool)", lambda on: qt.QSettings().setValue(SETTINGS_AUTO_SEGMENT, on))
        self.ui.autoNextCheckBox.connect("toggled(bool)", lambda on: qt.QSettings().setValue(SETTINGS_AUTO_NEXT, on))
        self.setupGuidedEditing()

        # Results of background requests are handed back on the main thread by this timer.
        self.jobTimer = qt.QTimer()
        self.jobTimer.setInterval(200)
        self.jobTimer.connect("timeout()", self.onJobTimer)
        self.trainTimer = qt.QTimer()
        self.trainTimer.setInterval(3000)
        self.trainTimer.connect("timeout()", self.pollTraining)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.initializeParameterNode()
        self.updateButtons()

    def cleanup(self) -> None:
        self.removeObservers()
        for timer in (self.jobTimer, self.trainTimer):
            if timer is not None:
                timer.stop()
        self.jobs.shutdown()
        if self.tmpdir:
            shutil.rmtree(self.tmpdir, ignore_errors=True)

    def enter(self) -> None:
        self.initializeParameterNode()
        if self.segmentEditorWidget is not None:
            self.segmentEditorWidget.installKeyboardShortcuts()

    def exit(self) -> None:
        if self.segmentEditorWidget is not None:
            self.segmentEditorWidget.setActiveEffect(None)
            self.segmentEditorWidget.uninstallKeyboardShortcuts()
        if self._parameterNode:
            if self._parameterNodeGuiTag is not None:
                self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
                self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)
        self.observeSegmentation(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()
        self.updateButtons()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            firstVolumeNode = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolumeNode and not firstVolumeNode.IsA("vtkMRMLLabelMapVolumeNode"):
                self._parameterNode.inputVolume = firstVolumeNode

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            if self._parameterNodeGuiTag is not None:
                self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
                self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)
        self.onParameterNodeModified()

    def onParameterNodeModified(self, caller=None, event=None) -> None:
        """Keep the editor on the selected volume and its segmentation; refresh the buttons."""
        if self._parameterNode is None:
            return
        volume = self._parameterNode.inputVolume
        segmentation = self.logic.segmentationOf(volume) if volume is not None else None
        if _nodeId(self._parameterNode.segmentation) != _nodeId(segmentation):
            self._parameterNode.segmentation = segmentation  # re-enters here with the new value
            return
        self.session.image_id = self.logic.imageIdOf(volume, self.client.server_url if self.client else None)
        if self.segmentEditorWidget is not None:
            self.segmentEditorWidget.setSegmentationNode(segmentation)
            self.logic.setEditorSourceVolume(self.segmentEditorWidget, volume)
        self.observeSegmentation(segmentation)
        self.updateButtons()

    def observeSegmentation(self, segmentation) -> None:
        # Edits after Segment make the sample "dirty": Next sample then asks before dropping them.
        if self._observedSegmentation is not None:
            for event in SEGMENT_EDIT_EVENTS:
                self.removeObserver(self._observedSegmentation, event, self.onSegmentEdited)
        self._observedSegmentation = segmentation
        if segmentation is not None:
            for event in SEGMENT_EDIT_EVENTS:
                self.addObserver(segmentation, event, self.onSegmentEdited)

    def onSegmentEdited(self, caller=None, event=None) -> None:
        if not self._importing:
            self.session.dirty = True

    # ------------------------------------------------------------------ state shown in the GUI
    def updateButtons(self) -> None:
        if not hasattr(self, "ui"):
            return
        volume = self._parameterNode.inputVolume if self._parameterNode else None
        segmentation = self._parameterNode.segmentation if self._parameterNode else None
        busy = self.jobs.busy
        connected = self.session.connected
        training = self.monitor is not None and self.monitor.last is not None and self.monitor.last.running
        self.ui.connectButton.enabled = not busy("connect")
        self.ui.nextSampleButton.enabled = connected and self.ui.strategyComboBox.count > 0 and not busy("sample")
        self.ui.uploadButton.enabled = self.session.can_upload(volume is not None) and not busy("upload")
        self.ui.segmentButton.enabled = (self.session.can_segment() and volume is not None
                                         and self.ui.modelComboBox.count > 0 and not busy("segment"))
        self.ui.segmentButton.text = "Segmenting..." if busy("segment") else "Segment"
        self.ui.submitButton.enabled = self.session.can_submit() and segmentation is not None and not busy("submit")
        self.ui.trainButton.enabled = self.session.can_train() and not training and not busy("train")
        self.ui.stopTrainingButton.enabled = connected and training and not busy("stop")
        guided = self.session.can_segment() and volume is not None and not busy("guided")
        self.ui.refineButton.enabled = guided
        self.ui.undoClickButton.enabled = guided and bool(self._placedOrder)
        if volume is not None and self.session.image_id is None and connected:
            self.ui.sampleLabel.text = f"{volume.GetName()}: not on the server (Upload to label it)"

    def setStatus(self, text: str) -> None:
        logging.info("MedSeg: %s", text)
        self.ui.statusLabel.text = text

    def runInBackground(self, name: str, failure: str, fn, *args, onDone=None, busyText: str = "") -> None:
        """Run a blocking call off the main thread; ``onDone(result)`` runs back on it."""
        def onError(error, details):
            self.setStatus(f"{failure}.")
            message = str(error) if isinstance(error, MedSegClientError) else f"{failure}: {error}"
            slicer.util.errorDisplay(message, detailedText=details)

        def done(result):
            self.setStatus("Ready.")
            if onDone is not None:
                onDone(result)

        self.jobs.submit(name, fn, *args, on_done=done, on_error=onError)
        if busyText:
            self.setStatus(busyText)
        self.jobTimer.start()
        self.updateButtons()

    def onJobTimer(self) -> None:
        try:
            self.jobs.poll()
        finally:
            if not self.jobs.busy():
                self.jobTimer.stop()
            self.updateButtons()

    # ------------------------------------------------------------------ server
    def urlHistory(self):
        history = slicer.util.settingsValue(SETTINGS_HISTORY, "") or ""
        return [url for url in str(history).split(";") if url]

    def rememberServerUrl(self, url: str) -> None:
        settings = qt.QSettings()
        settings.setValue(SETTINGS_URL, url)
        history = [url] + [u for u in self.urlHistory() if u != url]
        settings.setValue(SETTINGS_HISTORY, ";".join(history[:10]))
        if self.ui.serverUrlComboBox.findText(url) < 0:
            self.ui.serverUrlComboBox.insertItem(0, url)

    def onConnect(self) -> None:
        if self.jobs.busy("connect"):
            return
        with slicer.util.tryWithErrorDisplay("Invalid server address.", waitCursor=False):
            url = normalize_server_url(self.ui.serverUrlComboBox.currentText)
            if self.client is None or self.client.server_url != url:
                # Another server: its images, models and training are not the previous one's.
                self.session = LabelingSession()
                self.monitor = None
                self.trainTimer.stop()
            self.client = MedSegClient(url, client_id=default_client_id())
            self.rememberServerUrl(url)
            self.runInBackground("connect", "Could not connect to the label server", self.client.server_info,
                                 onDone=self.showServerInfo, busyText=f"Connecting to {url} ...")

    def refreshInfo(self) -> None:
        if self.client is not None and not self.jobs.busy("connect"):
            self.runInBackground("connect", "Could not refresh the server state", self.client.server_info,
                                 onDone=self.showServerInfo)

    def showServerInfo(self, info) -> None:
        firstConnect = not self.session.connected
        self.session.info = info
        self.ui.appLabel.text = f"{info.name} {info.version}".strip() or "(unnamed app)"
        self.ui.appLabel.toolTip = info.description
        self.ui.labelsLabel.text = " ".join(
            f'<span style="color:{_hex(info.labels.color_of(name))}">&#9632;</span> {name} ({idx})'
            for name, idx in info.labels) or "(no labels)"
        self.ui.datastoreProgressBar.setMaximum(max(info.total, 1))
        self.ui.datastoreProgressBar.setValue(info.labeled)
        self.ui.datastoreProgressBar.setFormat(info.progress_text)
        _fillCombo(self.ui.strategyComboBox, info.strategies, preferred=("epistemic", "random"))
        _fillCombo(self.ui.modelComboBox, info.segmentation_models(), preferred=("auto",))
        for i in range(self.ui.modelComboBox.count):
            model = info.models[self.ui.modelComboBox.itemText(i)]
            version = f" (weights version {model.weights_version})" if model.weights_version is not None else ""
            self.ui.modelComboBox.setItemData(i, model.description + version, qt.Qt.ToolTipRole)
        _fillCombo(self.ui.trainModelComboBox, info.trainers)
        self.onParameterNodeModified()  # the selected volume may be a server image
        self.setStatus(f"Connected: {info.summary()}")
        if firstConnect and info.trainers:
            self.monitor = TrainingMonitor(self.ui.trainModelComboBox.currentText or None)
            self.pollTraining()  # show a training that was already running

    # ------------------------------------------------------------------ next sample / upload
    def onNextSample(self) -> None:
        if self.session.dirty and not slicer.util.confirmOkCancelDisplay(
                "The current segmentation has changes that were not submitted. Fetch the next sample anyway?"):
            return
        strategy = self.ui.strategyComboBox.currentText
        client = self.client
        tmpdir = self.tmpdir

        def fetch():
            sample = client.next_sample(strategy)
            if sample is None:
                return None
            path, source = fetch_sample_image(client, sample, tmpdir)
            return sample, path, source

        self.runInBackground("sample", "Could not fetch the next sample", fetch, onDone=self.showSample,
                             busyText=f"Asking the server for the next image ({strategy}) ...")

    def showSample(self, fetched) -> None:
        if fetched is None:
            slicer.util.infoDisplay("The server has no image left to label for you (all are labeled or "
                                    "reserved by other annotators).")
            return
        sample, path, source = fetched
        with slicer.util.tryWithErrorDisplay("Could not load the image.", waitCursor=True):
            previous = self._parameterNode.inputVolume
            if previous is not None and self.logic.imageIdOf(previous, self.client.server_url):
                self.logic.removeSampleNodes(previous)  # one sample at a time keeps memory bounded
            volume = self.logic.loadImage(path, str(sample["id"]), self.client.server_url)
            labels = self.session.info.labels
            segmentation = self.logic.createSegmentation(volume, labels)
            self._parameterNode.inputVolume = volume
            self._parameterNode.segmentation = segmentation
            self.session.sample_loaded(str(sample["id"]), source)
            how = "from the shared studies folder" if source == "shared" else "downloaded"
            self.ui.sampleLabel.text = f"{sample['id']} ({how})"
            self.ui.segmentResultLabel.text = ""
            self.ui.submitResultLabel.text = ""
            self.updateButtons()
        if self.ui.autoSegmentCheckBox.checked and self.ui.segmentButton.enabled:
            self.onSegment()

    def onUpload(self) -> None:
        volume = self._parameterNode.inputVolume
        if volume is None:
            return
        imageId = image_id_for(volume.GetName())
        if not slicer.util.confirmOkCancelDisplay(
                f"Add volume '{volume.GetName()}' to the server's datastore as image '{imageId}'?"):
            return
        with slicer.util.tryWithErrorDisplay("Could not save the volume for upload.", waitCursor=True):
            path = self.logic.saveVolume(volume, os.path.join(self.tmpdir, f"{imageId}.nii.gz"))
            client = self.client

            def uploaded(storedId):
                self.logic.markAsServerImage(volume, storedId, client.server_url)
                if self.logic.segmentationOf(volume) is None:
                    self._parameterNode.segmentation = self.logic.createSegmentation(volume, self.session.info.labels)
                self.session.sample_loaded(storedId, "uploaded")
                self.ui.sampleLabel.text = f"{storedId} (uploaded)"
                self.onParameterNodeModified()
                self.refreshInfo()

            self.runInBackground("upload", "Could not upload the volume", client.upload_image, path, imageId,
                                 onDone=uploaded, busyText=f"Uploading {volume.GetName()} ...")

    # ------------------------------------------------------------------ segment
    def onSegment(self) -> None:
        imageId = self.session.image_id
        model = self.ui.modelComboBox.currentText
        params = {"tta": True} if self._parameterNode.tta else {}  # unchecked: the server's default
        withUncertainty = bool(self._parameterNode.uncertainty)
        client, tmpdir = self.client, self.tmpdir

        def infer():
            label = client.infer(model, imageId, params=params, dest_dir=tmpdir)
            uncertainty = client.infer(model, imageId, params={**params, "uncertainty": True},
                                       dest_dir=tmpdir) if withUncertainty else None
            return label, uncertainty

        self.runInBackground("segment", "Segmentation failed", infer, onDone=self.showSegmentation,
                             busyText=f"Segmenting {imageId} with {model} (runs on the server) ...")

    def showSegmentation(self, results) -> None:
        label, uncertainty = results
        volume = self._parameterNode.inputVolume
        if volume is None or self.logic.imageIdOf(volume, self.client.server_url) != label.image_id:
            self.setStatus(f"Segmentation of {label.image_id} arrived after switching images; not shown.")
            return
        with slicer.util.tryWithErrorDisplay("Could not show the segmentation.", waitCursor=True):
            if not label.path:
                raise RuntimeError(f"model '{label.model}' answered without a label map: {label.params}")
            labels = self.session.info.labels_for(label.model)
            segmentation = self._parameterNode.segmentation
            if segmentation is None:
                segmentation = self.logic.createSegmentation(volume, labels)
            self._importing = True
            try:
                present = self.logic.importLabelmap(label.path, segmentation, volume, labels)
            finally:
                self._importing = False
            self._parameterNode.segmentation = segmentation
            if uncertainty is not None and uncertainty.path:
                self.logic.showUncertainty(uncertainty.path, volume, labels.max_entropy_nats())
            self.session.segmented(label.model, label.model_version)
            version = f" v{label.model_version}" if label.model_version is not None else ""
            latency = f", {label.latency_s:.1f} s" if label.latency_s is not None else ""
            missing = [n for n in labels.names if n not in present]
            note = f"; not found: {', '.join(missing)}" if missing else ""
            self.ui.segmentResultLabel.text = f"{label.model}{version}{latency}{note}"

    # ------------------------------------------------------------------ guided editing
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
        key = (self.session.image_id, segmentation.GetID(), segmentId, fromStored)
        if self.guidedEdit is None or key != self._guidedKey:
            label = name if name in self.session.info.labels.names else None
            self.guidedEdit = GuidedEdit(self.client, self.session.image_id, label=label,
                                         prior_tag="final" if fromStored and label else None, dest_dir=self.tmpdir)
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
    def onSubmit(self) -> None:
        volume = self._parameterNode.inputVolume
        segmentation = self._parameterNode.segmentation
        imageId = self.session.image_id
        labels = self.session.info.labels
        with slicer.util.tryWithErrorDisplay("Could not export the segmentation.", waitCursor=True):
            path, present = self.logic.exportLabelmap(segmentation, volume, labels,
                                                      os.path.join(self.tmpdir, f"{imageId}_final.nii.gz"))
            if not present and not slicer.util.confirmOkCancelDisplay(
                    f"The segmentation of {imageId} is empty. Submit it as an image without any of the labels?"):
                return
            effort = self.guidedEdit.effort() if self.guidedEdit is not None else None
            if effort:
                effort = {"interactions": effort["interactions"], "seconds_waited": effort["seconds_waited"]}
            self.runInBackground("submit", "Submitting the label failed", submit_label, self.client, imageId, path,
                                 labels, None, effort, onDone=self.showSubmitted,
                                 busyText=f"Submitting the label of {imageId} ...")

    def showSubmitted(self, result) -> None:
        self.session.submitted(result.version)
        self.ui.submitResultLabel.text = result.describe()
        self.setStatus(result.describe())
        self.refreshInfo()
        if self.ui.autoNextCheckBox.checked:
            self.onNextSample()

    # ------------------------------------------------------------------ training
    def onTrain(self) -> None:
        model = self.ui.trainModelComboBox.currentText or None
        options = {}
        if self._parameterNode.maxIterations > 0:
            options["max_iterations"] = int(self._parameterNode.maxIterations)
        self.monitor = TrainingMonitor(model)

        def started(answer):
            self.monitor.started(answer)
            self.ui.trainingProgressBar.setValue(0)
            self.ui.trainingStatusLabel.text = f"Training {model or ''}: submitted."
            self.trainTimer.start()
            self.pollTraining()

        self.runInBackground("train", "Could not start training", self.client.train_start, model, options,
                             onDone=started, busyText="Starting training ...")

    def onStopTraining(self) -> None:
        if not slicer.util.confirmOkCancelDisplay("Stop the running training? Its weights are discarded."):
            return
        self.runInBackground("stop", "Could not stop training", self.client.train_stop,
                             onDone=lambda answer: self.pollTraining(), busyText="Stopping training ...")

    def pollTraining(self) -> None:
        if self.client is None or self.monitor is None or self.jobs.busy("trainPoll"):
            return
        self.jobs.submit("trainPoll", fetch_training_state, self.client, self.monitor.model,
                         on_done=self.showTrainingState, on_error=self.onTrainingPollError)
        self.jobTimer.start()

    def showTrainingState(self, state) -> None:
        if self.monitor is None:  # connected to another server meanwhile
            return
        task, stats = state
        progress = self.monitor.update(task, stats)
        self.ui.trainingProgressBar.setValue(progress.percent)
        dice = progress.mean_val_dice
        self.ui.trainingProgressBar.setFormat(f"%p%   val Dice {dice:.3f}" if dice is not None else "%p%")
        self.ui.trainingStatusLabel.text = progress.message
        if progress.running:
            if not self.trainTimer.isActive():
                self.trainTimer.start()
        else:
            self.trainTimer.stop()
            if progress.finished and self.monitor.task_id is not None:
                self.monitor.task_id = None  # report the end of a run started here once
                self.refreshInfo()  # new weights version in the model list
        self.updateButtons()

    def onTrainingPollError(self, error, details) -> None:
        # A missed poll is not worth a dialog (the server may be busy); the next tick retries.
        self.ui.trainingStatusLabel.text = f"Training status unavailable: {error}"
        logging.warning("MedSeg training poll failed: %s", details)


def _nodeId(node) -> Optional[str]:
    return node.GetID() if node is not None else None


def _fillCombo(combo, items, preferred=()) -> None:
    current = combo.currentText
    wasBlocked = combo.blockSignals(True)
    combo.clear()
    combo.addItems(list(items))
    choice = current if current in items else next((p for p in preferred if p in items), None)
    if choice:
        combo.setCurrentIndex(combo.findText(choice))
    combo.blockSignals(wasBlocked)


def _hex(rgb) -> str:
    return "#" + "".join(f"{int(round(255 * c)):02x}" for c in rgb)


class MedSegLogic(ScriptedLoadableModuleLogic):
    """Scene work for the module: volumes, segmentations and label maps (no Qt, no HTTP)."""

    def getParameterNode(self):
        return MedSegParameterNode(super().getParameterNode())

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
            masks.append((name, mask if mask is not None else _zeros(shape)))
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


def _zeros(shape):
    import numpy as np

    return np.zeros(shape, dtype=np.uint8)


class MedSegTest(ScriptedLoadableModuleTest):
    """Against a running server: next sample, segment, correct, submit.

    The server is ``MEDSEG_SERVER_URL`` (else the module's remembered address, else
    http://127.0.0.1:8000). The test stores a final label on that server: use a test server.
    """

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_SegmentCorrectSubmit()

    def serverUrl(self) -> str:
        return (os.environ.get("MEDSEG_SERVER_URL") or slicer.util.settingsValue(SETTINGS_URL, "")
                or DEFAULT_URL)

    def test_SegmentCorrectSubmit(self):
        import numpy as np

        self.delayDisplay(f"Connecting to {self.serverUrl()}")
        client = MedSegClient(self.serverUrl(), client_id="medseg-selftest")
        info = client.server_info()
        models = info.segmentation_models()
        self.assertTrue(models, "the server serves no segmentation model")
        model = os.environ.get("MEDSEG_MODEL") or models[0]
        self.assertIn(model, models)
        labels = info.labels_for(model)
        self.assertGreater(len(labels), 0)

        self.delayDisplay("Fetching the next sample")
        strategy = "first" if "first" in info.strategies else info.strategies[0]
        sample = client.next_sample(strategy)
        self.assertIsNotNone(sample, "the server has no image left to label")
        tmpdir = tempfile.mkdtemp(prefix="medseg-selftest-")
        try:
            path, _ = fetch_sample_image(client, sample, tmpdir)
            logic = MedSegLogic()
            volume = logic.loadImage(path, str(sample["id"]), client.server_url)
            shape = slicer.util.arrayFromVolume(volume).shape
            self.assertEqual(len(shape), 3)
            self.assertEqual(logic.imageIdOf(volume, client.server_url), str(sample["id"]))

            self.delayDisplay(f"Segmenting {sample['id']} with {model}")
            segmentationNode = logic.createSegmentation(volume, labels)
            result = client.infer(model, str(sample["id"]), dest_dir=tmpdir)
            self.assertTrue(result.path and os.path.exists(result.path))
            present = logic.importLabelmap(result.path, segmentationNode, volume, labels)
            self.assertTrue(present, "the model found none of the labels in the sample")

            segmentation = segmentationNode.GetSegmentation()
            names = [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]
            self.assertEqual(sorted(names), sorted(labels.names))
            for name in names:
                segment = segmentation.GetSegment(segmentation.GetSegmentIdBySegmentName(name))
                np.testing.assert_allclose(segment.GetColor(), labels.color_of(name), atol=1e-3)

            # The segments, exported on the volume's grid, reproduce the server's label map exactly.
            predictedNode = slicer.util.loadLabelVolume(result.path, {"show": False})
            predicted = slicer.util.arrayFromVolume(predictedNode).copy()
            slicer.mrmlScene.RemoveNode(predictedNode)
            self.assertEqual(predicted.shape, shape)
            exported = self._exported(logic, segmentationNode, volume, labels, os.path.join(tmpdir, "unchanged.nii.gz"))
            np.testing.assert_array_equal(exported, predicted)

            self.delayDisplay("Correcting: erasing the first label in the upper half of the slices")
            first = labels.names[0]
            segmentId = segmentation.GetSegmentIdBySegmentName(first)
            mask = slicer.util.arrayFromSegmentBinaryLabelmap(segmentationNode, segmentId, volume)
            mask[: shape[0] // 2] = 0
            slicer.util.updateSegmentBinaryLabelmapFromArray(mask, segmentationNode, segmentId, volume)
            expected = predicted.copy()
            expected[: shape[0] // 2][expected[: shape[0] // 2] == labels.index_of(first)] = 0
            labelPath = os.path.join(tmpdir, "corrected.nii.gz")
            corrected = self._exported(logic, segmentationNode, volume, labels, labelPath)
            np.testing.assert_array_equal(corrected, expected)

            self.delayDisplay("Submitting")
            before = info.labeled
            submitted = submit_label(client, str(sample["id"]), labelPath, info.labels)
            self.assertEqual(submitted.image_id, str(sample["id"]))
            if info.name == "MedSeg":  # MedSeg keeps numbered versions of every final label
                self.assertIsInstance(submitted.version, int)
                versions = client.label_versions(str(sample["id"]))
                self.assertEqual(versions[-1]["version"], submitted.version)
                self.assertEqual(versions[-1]["params"]["label_info"], info.labels.label_info())
            after = client.server_info()
            self.assertGreaterEqual(after.labeled, before)
            self.delayDisplay("MedSeg self-test passed")
        finally:
            shutil.rmtree(tmpdir, ignore_errors=True)

    def _exported(self, logic, segmentationNode, volume, labels, path):
        logic.exportLabelmap(segmentationNode, volume, labels, path)
        node = slicer.util.loadLabelVolume(path, {"show": False})
        array = slicer.util.arrayFromVolume(node).copy()
        slicer.mrmlScene.RemoveNode(node)
        return array

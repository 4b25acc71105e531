"""MedSeg: label images with a MedSeg (or any MONAI Label) server from 3D Slicer.

Next sample -> Segment -> correct in the Segment Editor -> Submit -> Train, as one panel.
The HTTP client, label-index mapping, workflow state and training-progress logic live in
``MedSegLib`` (plain Python, tested with pytest against a real server). The panels and the
scene work that move arrays in and out of MRML nodes are in ``MedSegWidgets``; this file wires
them together.
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

from MedSegLib import (AnswerTarget, AuthenticationRequiredError, BackgroundJobs, GuidedEdit, LabelingSession,
                       MedSegClient, MedSegClientError, RequestCancelledError, TrainingMonitor, connect,
                       default_client_id, describe_version, fetch_sample_image, image_id_for, normalize_server_url,
                       submit_label)
from MedSegWidgets.controls import fillCombo, hexColour, nodeId
from MedSegWidgets.guided_editing import GuidedEditingPanel
from MedSegWidgets.scene import SceneLogic
from MedSegWidgets.training_panel import TrainingPanel

SETTINGS_URL = "MedSeg/serverUrl"
SETTINGS_HISTORY = "MedSeg/serverUrlHistory"
SETTINGS_AUTO_SEGMENT = "MedSeg/autoSegment"
SETTINGS_AUTO_NEXT = "MedSeg/autoNext"
SETTINGS_TOKEN = "MedSeg/token/"  # + server URL; only when the user asks to stay logged in
# Requests the Cancel button stops waiting for (training has Stop; polls are not the user's).
CANCELLABLE_JOBS = ("sample", "segment", "guided", "upload", "submit", "versions", "restore")
DEFAULT_URL = "http://127.0.0.1:8000"

# Voxel edits change the segmentation's source representation (called "master" before Slicer 5.4).
SEGMENT_EDIT_EVENTS = (
    getattr(slicer.vtkSegmentation, "SourceRepresentationModified", None)
    or slicer.vtkSegmentation.MasterRepresentationModified,
    slicer.vtkSegmentation.SegmentModified,
)



class MedSeg(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "MedSeg"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["MedSeg developers (MedSeg project)"]
        self.parent.helpText = (
            "Label images with a MedSeg label server (a MONAI Label app): fetch the next image to label, "
            "segment it with a server model, correct it with the Segment Editor, submit it, and retrain. "
            "Works with any MONAI Label server. "
            '<a href="https://github.com/Project-MONAI/MONAILabel">MONAI Label</a>; '
            "the module's guide is slicer_extension/README.md in the MedSeg repository.")
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


class MedSegWidget(ScriptedLoadableModuleWidget, VTKObservationMixin, GuidedEditingPanel, TrainingPanel):
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
        self.ui.loginButton.connect("clicked(bool)", self.onLogin)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancel)
        self.ui.restoreVersionButton.connect("clicked(bool)", self.onRestoreVersion)
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
        # Answers on their way belong to nodes that are about to go.
        for name in CANCELLABLE_JOBS:
            self.jobs.cancel(name)
        self.guidedEdit, self._guidedKey, self._placedOrder = None, None, []
        self.setParameterNode(None)
        self.observeSegmentation(None)

    def onSceneEndClose(self, caller, event) -> None:
        self.attachGuidanceNodes()  # Close Scene deleted the markups the place widgets were using
        self.session.sample_loaded(None, "")
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
        if nodeId(self._parameterNode.segmentation) != nodeId(segmentation):
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
            # Painted by hand: the next click starts a new guided edit from the segment as it is now.
            self.guidedEdit, self._guidedKey = None, None

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
        # A new sample while a prediction or a click is computed would leave it nowhere to go.
        self.ui.nextSampleButton.enabled = (connected and self.ui.strategyComboBox.count > 0 and not busy("sample")
                                            and not busy("segment") and not busy("guided"))
        self.ui.uploadButton.enabled = self.session.can_upload(volume is not None) and not busy("upload")
        self.ui.segmentButton.enabled = (self.session.can_segment() and volume is not None
                                         and self.ui.modelComboBox.count > 0 and not busy("segment"))
        self.ui.segmentButton.text = "Segmenting..." if busy("segment") else "Segment"
        self.ui.submitButton.enabled = self.session.can_submit() and segmentation is not None and not busy("submit")
        self.ui.trainButton.enabled = self.session.can_train() and not training and not busy("train")
        self.ui.stopTrainingButton.enabled = connected and training and not busy("stop")
        guided = self.session.can_segment() and volume is not None and not busy("guided")
        self.ui.refineButton.enabled = guided
        self.ui.undoClickButton.enabled = self.session.can_segment() and bool(self._placedOrder)
        self.ui.cancelButton.enabled = any(busy(name) for name in CANCELLABLE_JOBS)
        self.ui.loginButton.enabled = self.client is not None and not busy("connect")
        self.ui.restoreVersionButton.enabled = (self.session.image_id is not None and self.ui.versionsComboBox.count > 1
                                                and not busy("restore"))
        if volume is not None and self.session.image_id is None and connected:
            self.ui.sampleLabel.text = f"{volume.GetName()}: not on the server (Upload to label it)"

    def setStatus(self, text: str) -> None:
        logging.info("MedSeg: %s", text)
        self.ui.statusLabel.text = text

    def runInBackground(self, name: str, failure: str, fn, *args, onDone=None, onFailed=None,
                        busyText: str = "", cancellable: bool = False) -> None:
        """Run a blocking call off the main thread; ``onDone(result)`` (or ``onFailed()``) runs back on it.

        ``cancellable``: ``fn`` takes ``cancel`` (an event the Cancel button sets) and stops its transfer.
        """
        def onError(error, details):
            # A modal dialog runs Qt's event loop: never inside the poll that called us, hence singleShot.
            if isinstance(error, RequestCancelledError):
                self.setStatus("Cancelled.")
            elif isinstance(error, AuthenticationRequiredError):
                self.setStatus(str(error))
                self.ui.loginLabel.text = "expired: log in again" if error.had_token else "needed: press Log in"
                qt.QTimer.singleShot(0, self.onLogin)
            else:
                self.setStatus(f"{failure}.")
                message = str(error) if isinstance(error, MedSegClientError) else f"{failure}: {error}"
                qt.QTimer.singleShot(0, lambda: slicer.util.errorDisplay(message, detailedText=details))
            if onFailed is not None:
                onFailed()

        def done(result):
            self.setStatus("Ready.")
            if onDone is not None:
                onDone(result)

        self.jobs.submit(name, fn, *args, on_done=done, on_error=onError, with_cancel=cancellable)
        if busyText:
            self.setStatus(busyText)
        self.jobTimer.start()
        self.updateButtons()

    def onCancel(self) -> None:
        cancelled = [name for name in CANCELLABLE_JOBS if self.jobs.cancel(name)]
        if cancelled:
            self._refinePending = False
            self.setStatus(f"Cancelled ({', '.join(cancelled)}); the server may still finish it, and its answer "
                           "is dropped.")
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
            token = self.client.token if self.client is not None and self.client.server_url == url else None
            self.client = MedSegClient(url, client_id=default_client_id(),
                                       token=token or slicer.util.settingsValue(SETTINGS_TOKEN + url, None))
            self.rememberServerUrl(url)
            self.runInBackground("connect", "Could not connect to the label server", connect, self.client,
                                 onDone=self.showServerInfo, busyText=f"Connecting to {url} ...")

    def refreshInfo(self) -> None:
        if self.client is not None and not self.jobs.busy("connect"):
            self.runInBackground("connect", "Could not refresh the server state", connect, self.client,
                                 onDone=self.showServerInfo)

    # ------------------------------------------------------------------ login
    def onLogin(self) -> None:
        """MONAI Label's password login (POST /auth/token); the token lives in memory unless asked."""
        if self.client is None or self.jobs.busy("connect"):
            return
        dialog = qt.QDialog(slicer.util.mainWindow())
        dialog.setWindowTitle(f"Log in to {self.client.server_url}")
        form = qt.QFormLayout(dialog)
        user, password = qt.QLineEdit(), qt.QLineEdit()
        user.text = slicer.util.settingsValue("MedSeg/user", "") or ""
        password.setEchoMode(qt.QLineEdit.Password)
        remember = qt.QCheckBox("Stay logged in on this computer (the token is saved in Slicer's settings)")
        form.addRow("User:", user)
        form.addRow("Password:", password)
        form.addRow(remember)
        buttons = qt.QDialogButtonBox(qt.QDialogButtonBox.Ok | qt.QDialogButtonBox.Cancel)
        buttons.connect("accepted()", dialog.accept)
        buttons.connect("rejected()", dialog.reject)
        form.addRow(buttons)
        if not dialog.exec_():
            return
        username, secret, keep = user.text.strip(), password.text, bool(remember.checked)
        qt.QSettings().setValue("MedSeg/user", username)
        client = self.client

        def loggedIn(token):
            settings = qt.QSettings()
            if keep:
                settings.setValue(SETTINGS_TOKEN + client.server_url, token)
            else:
                settings.remove(SETTINGS_TOKEN + client.server_url)
            self.ui.loginLabel.text = f"logged in as {username}"
            self.refreshInfo()

        self.client.logout()
        self.runInBackground("connect", "Could not log in", client.login, username, secret, onDone=loggedIn,
                             busyText=f"Logging in as {username} ...")

    def showServerInfo(self, answer) -> None:
        authEnabled, info = answer
        if info is None:  # authentication on, no token yet
            self.ui.loginLabel.text = "needed: press Log in"
            self.setStatus("This server needs a login.")
            qt.QTimer.singleShot(0, self.onLogin)
            self.updateButtons()
            return
        if not authEnabled:
            self.ui.loginLabel.text = "not needed (authentication is off)"
        elif not self.ui.loginLabel.text.startswith("logged in"):
            self.ui.loginLabel.text = "logged in (remembered token)"
        firstConnect = not self.session.connected
        self.session.info = info
        self.ui.appLabel.text = f"{info.name} {info.version}".strip() or "(unnamed app)"
        self.ui.appLabel.toolTip = info.description
        self.ui.labelsLabel.text = " ".join(
            f'<span style="color:{hexColour(info.labels.color_of(name))}">&#9632;</span> {name} ({idx})'
            for name, idx in info.labels) or "(no labels)"
        self.ui.datastoreProgressBar.setMaximum(max(info.total, 1))
        self.ui.datastoreProgressBar.setValue(info.labeled)
        self.ui.datastoreProgressBar.setFormat(info.progress_text)
        # The server's measured default first; a stock server marks none.
        fillCombo(self.ui.strategyComboBox, info.strategies,
                  preferred=tuple(s for s in (info.default_strategy, "epistemic", "random") if s))
        fillCombo(self.ui.modelComboBox, info.segmentation_models(), preferred=("auto",))
        for i in range(self.ui.modelComboBox.count):
            model = info.models[self.ui.modelComboBox.itemText(i)]
            version = f" (weights version {model.weights_version})" if model.weights_version is not None else ""
            self.ui.modelComboBox.setItemData(i, model.description + version, qt.Qt.ToolTipRole)
        fillCombo(self.ui.trainModelComboBox, info.trainers)
        self.showGuidedMethods(info)
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
        self.onClearClicks()  # the points belong to the image being left

        def fetch(cancel=None):
            sample = client.next_sample(strategy)
            if sample is None:
                return None
            path, source = fetch_sample_image(client, sample, tmpdir, cancel=cancel)
            return sample, path, source

        self.runInBackground("sample", "Could not fetch the next sample", fetch, onDone=self.showSample,
                             busyText=f"Asking the server for the next image ({strategy}) ...", cancellable=True)

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
        self.refreshVersions()
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
        if self.session.dirty and not slicer.util.confirmOkCancelDisplay(
                "Segment replaces the segments, and they have changes that were not submitted. Replace them? "
                "(Ctrl+Z in the editor brings them back.)"):
            return
        imageId = self.session.image_id
        model = self.ui.modelComboBox.currentText
        params = {"tta": True} if self._parameterNode.tta else {}  # unchecked: the server's default
        withUncertainty = bool(self._parameterNode.uncertainty)
        client, tmpdir = self.client, self.tmpdir
        segmentation = self._parameterNode.segmentation
        target = AnswerTarget(imageId, segmentation.GetID() if segmentation is not None else "")

        def infer(cancel=None):
            label = client.infer(model, imageId, params=params, dest_dir=tmpdir, cancel=cancel)
            uncertainty = client.infer(model, imageId, params={**params, "uncertainty": True},
                                       dest_dir=tmpdir, cancel=cancel) if withUncertainty else None
            return label, uncertainty

        self.runInBackground("segment", "Segmentation failed", infer,
                             onDone=lambda results: self.showSegmentation(results, target),
                             busyText=f"Segmenting {imageId} with {model} (runs on the server) ...", cancellable=True)

    def showSegmentation(self, results, target) -> None:
        label, uncertainty = results
        volume = self._parameterNode.inputVolume
        segmentation = self._parameterNode.segmentation
        now = AnswerTarget(self.logic.imageIdOf(volume, self.client.server_url) if volume is not None else "",
                           segmentation.GetID() if segmentation is not None and target.segmentation_id else "")
        if now != target:
            self.setStatus(f"Segmentation of {label.image_id} arrived after switching images; not shown.")
            return
        with slicer.util.tryWithErrorDisplay("Could not show the segmentation.", waitCursor=True):
            if not label.path:
                raise RuntimeError(f"model '{label.model}' answered without a label map: {label.params}")
            labels = self.session.info.labels_for(label.model)
            segmentation = self._parameterNode.segmentation
            if segmentation is None:
                segmentation = self.logic.createSegmentation(volume, labels)
            self.segmentEditorWidget.saveStateForUndo()  # Ctrl+Z brings back what was there
            self._importing = True
            try:
                present = self.logic.importLabelmap(label.path, segmentation, volume, labels)
            finally:
                self._importing = False
            self.guidedEdit, self._guidedKey = None, None  # a click now corrects the new prediction
            self._parameterNode.segmentation = segmentation
            if uncertainty is not None and uncertainty.path:
                self.logic.showUncertainty(uncertainty.path, volume, labels.max_entropy_nats())
            self.session.segmented(label.model, label.model_version)
            version = f" v{label.model_version}" if label.model_version is not None else ""
            latency = f", {label.latency_s:.1f} s" if label.latency_s is not None else ""
            missing = [n for n in labels.names if n not in present]
            note = f"; not found: {', '.join(missing)}" if missing else ""
            self.ui.segmentResultLabel.text = f"{label.model}{version}{latency}{note}"

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
        self.refreshVersions()
        if self.ui.autoNextCheckBox.checked:
            self.onNextSample()

    # ------------------------------------------------------------------ stored label versions
    def refreshVersions(self) -> None:
        """The image's stored final labels, newest first (MedSeg servers keep every one)."""
        imageId, client = self.session.image_id, self.client
        self.ui.versionsComboBox.clear()
        if imageId is None or client is None or self.jobs.busy("versions"):
            return

        def show(versions):
            if imageId != self.session.image_id:
                return
            self.ui.versionsComboBox.clear()
            for version in reversed(versions or []):
                self.ui.versionsComboBox.addItem(describe_version(version), version.get("version"))
            if versions is None:
                self.ui.versionsComboBox.addItem("(this server keeps no versions)")
            self.updateButtons()

        self.runInBackground("versions", "Could not list the stored labels", client.label_versions, imageId,
                             onDone=show)

    def onRestoreVersion(self) -> None:
        imageId, client, tmpdir = self.session.image_id, self.client, self.tmpdir
        version = self.ui.versionsComboBox.currentData
        if imageId is None or version is None:
            return
        if not slicer.util.confirmOkCancelDisplay(
                f"Make version {version} the final label of {imageId} again (stored as a new version) and load it "
                "into the segments?"):
            return

        def restore():
            client.restore_label_version(imageId, int(version))
            return client.download_label(imageId, tmpdir, "final")

        def restored(path):
            volume, segmentation = self._parameterNode.inputVolume, self._parameterNode.segmentation
            if imageId != self.session.image_id or volume is None or segmentation is None:
                return
            with slicer.util.tryWithErrorDisplay("Could not load the restored label.", waitCursor=True):
                self.segmentEditorWidget.saveStateForUndo()
                self._importing = True
                try:
                    self.logic.importLabelmap(path, segmentation, volume, self.session.info.labels)
                finally:
                    self._importing = False
                self.session.submitted(None)  # the segments are the stored final label again
            self.refreshVersions()

        self.runInBackground("restore", "Could not restore the label version", restore, onDone=restored,
                             busyText=f"Restoring version {version} of {imageId} ...")


class MedSegLogic(ScriptedLoadableModuleLogic, SceneLogic):
    """Scene work for the module (``MedSegWidgets.scene``), with the module's parameter node."""

    def getParameterNode(self):
        return MedSegParameterNode(super().getParameterNode())


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

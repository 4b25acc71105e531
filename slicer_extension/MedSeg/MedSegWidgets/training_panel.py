"""The module's "Train" panel: start and stop a run, and poll its progress off the GUI thread.

What a progress answer means (iteration, validation Dice, published or rejected) is
``MedSegLib.training.TrainingMonitor``; this panel shows it.
"""
import logging

import slicer

from MedSegLib import TrainingMonitor, fetch_training_state


class TrainingPanel:
    """Mixed into ``MedSegWidget``: uses its ``ui``, ``client``, ``trainTimer`` and ``runInBackground``."""

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

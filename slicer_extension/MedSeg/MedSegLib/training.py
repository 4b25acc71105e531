"""Training progress from polling the server, as one small state machine.

Two sources, both MONAI Label's contract:
- ``GET /train/``: the task (``status`` SUBMITTED/RUNNING/DONE/ERROR/STOPPED) and its last
  output lines; a MedSeg trainer prints one ``{"progress": {...}}`` JSON line per logged iteration.
- ``GET /info/`` ``train_stats[<model>]``: the trainer's stats. MedSeg's hold the current
  iteration, loss, validation Dice per label and, at the end, the published version; a stock
  trainer's hold ``epoch``, ``total_epochs`` and ``best_metric``.
The monitor keeps the last validation Dice it saw, because only some progress lines carry one.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

TERMINAL = ("DONE", "ERROR", "STOPPED")


@dataclass
class TrainingProgress:
    status: str  # IDLE, SUBMITTED, RUNNING, DONE, ERROR, STOPPED
    fraction: Optional[float] = None  # 0..1 when known
    iteration: Optional[int] = None
    max_iterations: Optional[int] = None
    epoch: Optional[float] = None
    loss: Optional[float] = None
    val_dice_per_label: Dict[str, float] = field(default_factory=dict)
    version: Optional[int] = None
    published: Optional[bool] = None
    error: Optional[str] = None
    message: str = ""

    @property
    def running(self) -> bool:
        return self.status in ("SUBMITTED", "RUNNING")

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL

    @property
    def mean_val_dice(self) -> Optional[float]:
        values = [float(v) for v in self.val_dice_per_label.values()]
        return sum(values) / len(values) if values else None

    @property
    def percent(self) -> int:
        return int(round(100 * (self.fraction or 0.0)))


def progress_entries(details) -> List[dict]:
    """The ``{"progress": {...}}`` lines of a training task's output, oldest first."""
    entries = []
    for line in details or []:
        line = str(line).strip()
        if not line.startswith('{"progress"'):
            continue
        try:
            entry = json.loads(line).get("progress")
        except ValueError:
            continue
        if isinstance(entry, dict):
            entries.append(entry)
    return entries


class TrainingMonitor:
    def __init__(self, model: Optional[str] = None):
        self.model = model
        self.task_id: Optional[str] = None
        self.val_dice_per_label: Dict[str, float] = {}
        self.last: Optional[TrainingProgress] = None

    def started(self, answer: Optional[dict]) -> None:
        """Remember the task a ``POST /train/<model>`` answer describes."""
        if isinstance(answer, dict):
            self.task_id = answer.get("id") or self.task_id
        self.val_dice_per_label = {}

    def update(self, task: Optional[dict], stats: Optional[dict]) -> TrainingProgress:
        stats = stats if isinstance(stats, dict) else {}
        if task and not _same_run(stats, task):
            stats = {}  # the stats of an earlier run: this one has not written any yet
        if not task:
            progress = TrainingProgress(status="IDLE", message="No training has run on this server yet.")
            self.last = progress
            return progress
        status = str(task.get("status", "RUNNING")).upper()
        entries = progress_entries(task.get("details"))
        latest = entries[-1] if entries else {}
        for entry in entries:
            if isinstance(entry.get("val_dice_per_label"), dict):
                self.val_dice_per_label = dict(entry["val_dice_per_label"])
        own_run = str(stats.get("status", "")).upper()
        if not entries and own_run == "RUNNING":
            latest = stats  # the task output was cut; MedSeg's stats hold the same fields
        if status in TERMINAL and own_run in TERMINAL:
            # The trainer's own verdict is more precise than the process exit code.
            if own_run != "DONE" or status == "DONE":
                status = own_run
            if isinstance(stats.get("val_dice_per_label"), dict):
                self.val_dice_per_label = dict(stats["val_dice_per_label"])
        progress = TrainingProgress(status=status)
        progress.iteration = _int(latest.get("iteration"))
        progress.max_iterations = _int(latest.get("max_iterations"))
        progress.epoch = _float(latest.get("epoch"))
        progress.loss = _float(latest.get("loss"))
        if progress.iteration and progress.max_iterations:
            progress.fraction = min(1.0, progress.iteration / progress.max_iterations)
        elif "total_epochs" in stats and stats.get("total_epochs"):  # stock MONAI Label trainer
            progress.epoch = _float(stats.get("epoch"))
            progress.fraction = min(1.0, (progress.epoch or 0) / float(stats["total_epochs"]))
            if stats.get("best_metric") is not None and not self.val_dice_per_label:
                progress.val_dice_per_label = {"mean": float(stats["best_metric"])}
        if not progress.val_dice_per_label:
            progress.val_dice_per_label = dict(self.val_dice_per_label)
        if status in TERMINAL:
            progress.version = _int(stats.get("version"))
            progress.published = stats.get("published") if isinstance(stats.get("published"), bool) else None
            if status == "DONE":
                progress.fraction = 1.0
            if status == "ERROR":
                progress.error = str(stats.get("error") or _last_line(task.get("details")) or "unknown error")
        progress.message = describe(progress, self.model)
        self.last = progress
        return progress


def describe(p: TrainingProgress, model: Optional[str] = None) -> str:
    who = f"Training {model}" if model else "Training"
    dice = _dice_text(p.val_dice_per_label)
    if p.status == "IDLE":
        return "No training has run on this server yet."
    if p.status == "SUBMITTED":
        return f"{who}: queued."
    if p.status == "RUNNING":
        parts = []
        if p.iteration and p.max_iterations:
            parts.append(f"iteration {p.iteration}/{p.max_iterations}")
        elif p.epoch is not None:
            parts.append(f"epoch {p.epoch:g}")
        else:
            parts.append("starting (loading data)")
        if p.loss is not None:
            parts.append(f"loss {p.loss:.3f}")
        if dice:
            parts.append(f"validation Dice {dice}")
        return f"{who}: " + ", ".join(parts)
    if p.status == "DONE":
        if p.published is False:
            return (f"{who} finished, but its weights were not published: validation Dice was lower than the "
                    "served model's. Segment keeps using the served model.")
        version = f" version {p.version}" if p.version is not None else ""
        return (f"{who} finished: weights{version} published"
                + (f" (validation Dice {dice})" if dice else "") + ". The next Segment uses them.")
    if p.status == "STOPPED":
        return f"{who} stopped. The served model is unchanged."
    return f"{who} failed: {p.error}. The served model is unchanged."


def fetch_training_state(client, model: Optional[str]) -> Tuple[Optional[dict], dict]:
    """(task, stats) for ``TrainingMonitor.update``: two quick GETs, run on a worker thread."""
    task = client.train_status()
    info = client.info()
    stats = {}
    if isinstance(info, dict) and isinstance(info.get("train_stats"), dict):
        all_stats = info["train_stats"]
        if model and isinstance(all_stats.get(model), dict):
            stats = all_stats[model]
        elif all_stats and not any(isinstance(v, dict) for v in all_stats.values()):
            stats = all_stats
    return task, stats


def _same_run(stats: dict, task: dict) -> bool:
    """Whether the trainer's stats can belong to this task (they start after it is submitted).

    Both times are the server's local time to the second; MedSeg writes ``started_at``
    (ISO, with a T), MONAI Label ``start_ts`` (with a space).
    """
    started = str(stats.get("started_at") or stats.get("start_ts") or "").replace("T", " ")[:19]
    submitted = str(task.get("start_ts") or "").replace("T", " ")[:19]
    if len(started) != 19 or len(submitted) != 19 or not started[:4].isdigit() or not submitted[:4].isdigit():
        return True  # no comparable times: trust the stats
    return started >= submitted


def _dice_text(values: Dict[str, float]) -> str:
    if not values:
        return ""
    numbers = [float(v) for v in values.values()]
    if len(numbers) == 1:
        return f"{numbers[0]:.3f}"
    per_label = ", ".join(f"{k} {float(v):.3f}" for k, v in values.items())
    return f"{sum(numbers) / len(numbers):.3f} ({per_label})"


def _last_line(details) -> str:
    lines = [str(d) for d in (details or []) if str(d).strip()]
    return lines[-1][-300:] if lines else ""


def _int(value) -> Optional[int]:
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _float(value) -> Optional[float]:
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None

"""Model weights on disk: shipped weights, published weights, and hot reload.

A checkpoint is one ``torch.save`` file that carries everything needed to run the
model: the state dict, the plan, the training config and metrics and a version.
Shipped weights live in the app folder (read-only, in git); weights trained on a
user's data are published into the work folder of that datastore, so training
never writes into the repository and the shipped weights stay as a fallback.
"""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import torch

from medseg.pipeline.plan import Plan

CHECKPOINT_NAME = "model.pt"


def save_checkpoint(path: str | os.PathLike, checkpoint: dict) -> None:
    """Atomic write: readers see the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(checkpoint, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | os.PathLike) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


class ModelStore:
    """Where one model's current weights are, with reload when they change on disk."""

    def __init__(self, name: str, shipped_dir: Path, runtime_dir: Path):
        self.name = name
        self.shipped_path = Path(shipped_dir) / name / CHECKPOINT_NAME
        self.runtime_path = Path(runtime_dir) / name / CHECKPOINT_NAME
        self._lock = threading.Lock()
        self._cached: tuple[str, int, dict] | None = None

    def current_path(self) -> Path | None:
        for p in (self.runtime_path, self.shipped_path):
            if p.exists():
                return p
        return None

    def load(self) -> dict | None:
        """The current checkpoint, re-read only when its file changed (hot reload)."""
        path = self.current_path()
        if path is None:
            return None
        stamp = os.stat(path).st_mtime_ns
        with self._lock:
            if self._cached and self._cached[0] == str(path) and self._cached[1] == stamp:
                return self._cached[2]
            ckpt = load_checkpoint(path)
            self._cached = (str(path), stamp, ckpt)
            return ckpt

    def publish(self, checkpoint: dict) -> Path:
        checkpoint = dict(checkpoint)
        checkpoint.setdefault("published_at", time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        # The plan also lies beside the weights as JSON, for people and other tools.
        plan_path = self.runtime_path.with_name("plan.json")
        plan_path.parent.mkdir(parents=True, exist_ok=True)
        Plan.from_dict(checkpoint["plan"]).save(plan_path)
        save_checkpoint(self.runtime_path, checkpoint)
        return self.runtime_path


def plan_of(checkpoint: dict) -> Plan:
    return Plan.from_dict(checkpoint["plan"])


def model_stores(cfg) -> dict[str, ModelStore]:
    """The weights of every configured model (``cfg`` is a medseg.config.AppConfig)."""
    return {spec.name: ModelStore(spec.name, cfg.shipped_model_dir, cfg.work_dir / "models") for spec in cfg.models}

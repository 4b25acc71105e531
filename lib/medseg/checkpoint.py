"""Model weights on disk: shipped weights, published weights, and hot reload.

A checkpoint is one ``torch.save`` file that carries everything needed to run the
model: the state dict, the plan, the training config and metrics and a version.
Shipped weights live in the app folder (read-only, in git); weights trained on a
user's data are published into the work folder of that datastore, so training
never writes into the repository and the shipped weights stay as a fallback.
"""
from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

import torch

from medseg.pipeline.plan import Plan

CHECKPOINT_NAME = "model.pt"
# What a listing of versions shows of each checkpoint.
VERSION_SUMMARY = ("version", "source", "trained_at", "n_train_cases", "val_dice_per_label", "parent_version")


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

    def __init__(self, name: str, shipped_dir: Path | None, runtime_dir: Path):
        self.name = name
        # No shipped folder: a path that never exists, so every lookup below stays the same.
        self.shipped_path = Path(shipped_dir) / name / CHECKPOINT_NAME if shipped_dir else Path(os.devnull) / CHECKPOINT_NAME
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

    # ------------------------------------------------------------ versions and rollback

    def archived_path(self, version: int) -> Path:
        return self.runtime_path.with_name(f"model.v{int(version)}.pt")

    def archive_current(self) -> None:
        """Keep the current weights as model.v<version>.pt before they are replaced."""
        current = self.load()
        if current is None:
            return
        dest = self.archived_path(current.get("version") or 0)
        if not dest.exists():
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
            shutil.copyfile(self.current_path(), tmp)
            os.replace(tmp, dest)

    def version_paths(self) -> dict[int, Path]:
        """Every version on disk: archived ones, the shipped one, and the current one."""
        paths: dict[int, Path] = {}
        for path in sorted(self.runtime_path.parent.glob("model.v*.pt")):
            try:
                paths[int(path.name[len("model.v"):-len(".pt")])] = path
            except ValueError:
                continue
        for path in (self.shipped_path, self.runtime_path):
            if path.exists():
                paths[int(load_checkpoint(path).get("version") or 0)] = path
        return paths

    def next_version(self) -> int:
        return max(self.version_paths(), default=0) + 1

    def versions(self) -> list[dict]:
        current = (self.load() or {}).get("version")
        out = []
        for version, path in sorted(self.version_paths().items()):
            ckpt = load_checkpoint(path)
            out.append({key: ckpt.get(key) for key in VERSION_SUMMARY} | {"version": version,
                                                                         "current": version == current})
        return out

    def restore(self, version: int) -> dict:
        """Make an earlier version current again (hot reload picks it up); the replaced one is archived."""
        path = self.version_paths().get(int(version))
        if path is None:
            raise KeyError(version)
        checkpoint = load_checkpoint(path)
        self.archive_current()
        self.publish(dict(checkpoint, restored_at=time.strftime("%Y-%m-%dT%H:%M:%S%z")))
        return {key: checkpoint.get(key) for key in VERSION_SUMMARY}

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

"""Uncertainty scores cached per model version, and which model the strategies ask.

``<work_dir>/uncertainty/<model>_v<version>_<method>.json`` maps image id to its score
entry. New weights get a new file, so scores of old weights are never mixed with new
ones, and a strategy only reads one small file to rank every image.
"""
from __future__ import annotations

from pathlib import Path

from medseg.activelearning.jsonstore import locked, read_json, write_json


class ScoreCache:
    def __init__(self, work_dir: Path, model: str, version, method: str):
        self.model, self.version, self.method = model, version, method
        self.path = Path(work_dir) / "uncertainty" / f"{model}_v{version}_{method}.json"

    def load(self) -> dict[str, dict]:
        return (read_json(self.path, {}) or {}).get("scores", {})

    def put(self, image_id: str, entry: dict) -> None:
        # Saved after every image: a long run shows progress, and a killed one keeps its work.
        with locked(self.path):
            scores = self.load()
            scores[image_id] = entry
            write_json(self.path, {"model": self.model, "version": self.version, "method": self.method,
                                   "scores": scores})

    def missing(self, image_ids: list[str]) -> list[str]:
        cached = self.load()
        return [i for i in image_ids if i not in cached]


def pick_model(infers: dict, choice: str):
    """The single-model infer task the uncertainty strategies use, or None without weights.

    ``choice``: "" = the first served model with weights; "auto" = the auto task's choice
    (when that is the ensemble, the member with the best own validation Dice: MC
    dropout and TTA need one network); otherwise the model of that name.
    """
    from medseg.tasks.infer import EnsembleInferTask, MedSegInferTask

    ready = [t for t in infers.values() if isinstance(t, MedSegInferTask) and t.is_valid()]
    if choice == "auto" and infers.get("auto") is not None:
        chosen = infers["auto"].choose()
        if isinstance(chosen, EnsembleInferTask):
            scored = [(t.validation_score(), -i, t) for i, t in enumerate(ready) if t.validation_score() is not None]
            return max(scored, key=lambda s: s[:2])[2] if scored else (ready or [None])[0]
        return chosen
    if choice not in ("", "auto"):
        return next((t for t in ready if t.spec.name == choice), None)
    return (ready or [None])[0]


def cache_for(task, work_dir: Path, method: str) -> ScoreCache | None:
    """The score cache of the task's current weights."""
    if task is None:
        return None
    ckpt = task.store.load() or {}
    return ScoreCache(work_dir, task.spec.name, ckpt.get("version", 0), method)
